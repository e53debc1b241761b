"""Errors that the command line reports as bad input or a refused action (exit code 2)."""


class TunerError(Exception):
    """Bad input or a refused action.

    The message is one line that names the input and says how to fix it; the command line
    prints it without a traceback and exits with code 2.
    """


class SpecError(TunerError):
    """A study spec (TOML) that cannot be used: unknown key, wrong type or value out of range."""


class DataError(TunerError):
    """A dataset source that cannot be loaded or split."""


class StudyRefused(TunerError):
    """An action the study's state forbids: a sealed study, a second finalize, changed data."""


class ArtifactStoreError(TunerError):
    """The artifact store (model weights, plots) cannot be written: full or read-only."""

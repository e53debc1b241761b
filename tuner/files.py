"""Files a command writes (``--out``, ``--split-out``): checked before any work is done, so a
mistyped path costs one line, not a finished computation and a traceback."""

from __future__ import annotations

from pathlib import Path

from tuner.errors import TunerError


def check_output_file(path: str | Path, option: str) -> Path:
    """``path`` as a :class:`Path`, if a file can be written there.

    Raises:
        TunerError: naming ``option``: the folder does not exist, or ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise TunerError(f"{option} {str(path)!r} is a folder; name a file in it")
    if not path.parent.is_dir():
        raise TunerError(
            f"{option} {str(path)!r}: folder {str(path.parent)!r} does not exist; create it "
            "or name a file in an existing folder"
        )
    return path


def write_error(path: str | Path, option: str, error: OSError) -> TunerError:
    """The one-line error for an ``OSError`` raised while writing ``path``."""
    reason = error.strerror or str(error) or type(error).__name__
    return TunerError(f"{option} {str(path)!r}: cannot write it ({reason}); name a writable file")

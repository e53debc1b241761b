"""The package version, in one place (``tuner.__version__``, recorded with every test result)."""

__version__ = "0.1.0"

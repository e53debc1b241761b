"""Trials as a table (pandas), and the table written as CSV, Parquet or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from tuner.errors import TunerError

if TYPE_CHECKING:  # pandas comes with the trials table; every other command starts faster
    import pandas as pd

FORMATS = (".csv", ".parquet", ".json")


def trials_table(study: optuna.Study, *, intermediate: bool = False) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``value``, ``datetime_start``,
    ``datetime_complete``, ``duration_s`` (seconds, float), one ``param_NAME`` column per
    parameter, and with ``intermediate`` one ``epoch_E`` column per reported epoch (the
    validation score; empty where a trial stopped earlier)."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "datetime_start", "datetime_complete",
                                       "duration", "params", "intermediate_values" if intermediate else "number"))
    df = df.loc[:, ~df.columns.duplicated()]
    df["duration_s"] = df.pop("duration").dt.total_seconds()
    df = df.rename(columns=lambda c: c.replace("params_", "param_", 1) if c.startswith("params_") else c)
    if intermediate:
        df = df.rename(columns=lambda c: f"epoch_{c.split('_')[-1]}" if c.startswith("intermediate_values_") else c)
    return df


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` by the file's extension: ``.csv``, ``.parquet`` or ``.json`` (records).

    Raises:
        TunerError: another extension, or a folder that does not exist.
    """
    path = Path(path)
    if path.suffix not in FORMATS:
        raise TunerError(f"--out {str(path)!r}: the file name must end in {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise TunerError(f"--out {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_json(path, orient="records", date_format="iso", indent=1)
    return path

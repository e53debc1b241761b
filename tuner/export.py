"""Trials as a table (pandas), and the table written as CSV, Parquet or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna

from tuner.errors import TunerError
from tuner.files import check_output_file, write_error

if TYPE_CHECKING:  # pandas comes with the trials table; every other command starts faster
    import pandas as pd

FORMATS = (".csv", ".parquet", ".json")


#: The columns of the table of a study without trials.
EMPTY_COLUMNS = ["number", "state", "value", "datetime_start", "datetime_complete", "duration_s"]


def trials_table(study: optuna.Study, *, intermediate: bool = False) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``value``, ``datetime_start``,
    ``datetime_complete``, ``duration_s`` (seconds, float), one ``param_NAME`` column per
    parameter, and with ``intermediate`` one ``epoch_E`` column per reported epoch (the
    validation score; empty where a trial stopped earlier)."""
    df = study.trials_dataframe(
        attrs=(
            "number",
            "state",
            "value",
            "datetime_start",
            "datetime_complete",
            "duration",
            "params",
            "intermediate_values" if intermediate else "number",
        )
    )
    df = df.loc[:, ~df.columns.duplicated()]
    if "duration" not in df:  # a study without trials: Optuna's table has no columns
        return df.reindex(columns=EMPTY_COLUMNS)
    # Microseconds / 10**6, as datetime.timedelta.total_seconds() divides: pandas multiplies
    # by 1e-6, which gives 1.4586890000000001 for 1,458,689 microseconds.
    duration = df.pop("duration")
    microseconds = duration.to_numpy(dtype="timedelta64[us]").astype(np.int64)
    df["duration_s"] = np.where(duration.isna(), np.nan, microseconds / 1e6)
    df = df.rename(
        columns=lambda c: c.replace("params_", "param_", 1) if c.startswith("params_") else c
    )
    if intermediate:
        df = df.rename(
            columns=lambda c: (
                f"epoch_{c.split('_')[-1]}" if c.startswith("intermediate_values_") else c
            )
        )
    return df


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` by the file's extension, in any case: ``.csv``, ``.parquet`` or ``.json``
    (a list of records; floats written with the 17 significant digits that give them back
    exactly, times in ISO 8601, missing values as null).

    Raises:
        TunerError: another extension, a folder that does not exist, a path that is a folder,
            or a file that cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise TunerError(f"--out {str(path)!r}: the file name must end in {', '.join(FORMATS)}")
    check_output_file(path, "--out")
    try:
        if suffix == ".csv":
            df.to_csv(path, index=False)
        elif suffix == ".parquet":
            df.to_parquet(path, index=False)
        else:
            path.write_text(json.dumps(records(df), indent=1, allow_nan=False) + "\n")
    except OSError as e:
        raise write_error(path, "--out", e) from None
    return path


def records(df: pd.DataFrame) -> list[dict]:
    """The rows of ``df`` as JSON-able dicts: Python floats (``json`` writes them with
    ``repr``, which round-trips; pandas' ``to_json`` keeps at most 15 digits), ISO 8601 times,
    None for a missing value (NaN, NaT)."""
    import pandas as pd

    def plain(v):
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return None
        if isinstance(v, pd.Timestamp):
            return v.isoformat()
        return v.item() if hasattr(v, "item") else v

    return [{k: plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]

"""Tables (CSV and Parquet, read through pandas): a label column and feature columns.

Numeric and boolean columns become features as they are; text columns are categorical
(one-hot encoded later, fitted on the training split, or refused); a column that mixes
numbers and text is refused, and so is a text column with a distinct value in most rows (an
identifier). Only an empty cell is missing, unless ``data.na_values`` lists more texts. Rows
are counted from 0 after the header, as in ``tuner data inspect --split-out``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tuner.data.arrays import row_count
from tuner.errors import DataError

#: How many column names an error message lists before it abbreviates.
MAX_LISTED_COLUMNS = 20
#: Rows of a CSV file read first to learn which columns hold numbers.
SAMPLE_ROWS = 1000
#: A text column with more distinct values than this fraction of its rows (and more than
#: :data:`IDENTIFIER_MIN_DISTINCT`) is an identifier, not a category: one-hot encoding would
#: make a feature of nearly every row, which no model can learn from. It is refused with the
#: ``data.features`` that leaves it out, rather than warned about: a warning scrolls away, and
#: the study would record features that are noise.
IDENTIFIER_FRACTION = 0.5
IDENTIFIER_MIN_DISTINCT = 20


@dataclass(frozen=True)
class Table:
    """A table's columns, sorted into numeric features, categorical features and labels.

    ``X`` float32 ``(n_rows, n_numeric)`` with NaN for a missing value; ``categorical`` int32
    ``(n_rows, n_categorical)``: for each row the index of its value in ``categories[j]``
    (the column's distinct values, sorted), -1 for a missing value; ``labels`` ``(n_rows,)``
    numbers or strings, none missing.
    """

    X: np.ndarray
    feature_names: list[str]
    categorical: np.ndarray
    categorical_names: list[str]
    categories: list[list[str]]
    labels: np.ndarray


def column_list(columns: list[str]) -> str:
    """Column names for a message, abbreviated after :data:`MAX_LISTED_COLUMNS`."""
    shown = ", ".join(map(repr, columns[:MAX_LISTED_COLUMNS]))
    more = len(columns) - MAX_LISTED_COLUMNS
    return f"{shown}, ... ({len(columns)} in all)" if more > 0 else shown


def _read_csv(file: Path, target: str, na_values: tuple[str, ...]) -> pd.DataFrame:
    # Only an empty cell (and what data.na_values lists) is missing: pandas' default list
    # would read a category "NA" (North America) or "null" as missing.
    missing = ["", *na_values]
    # Numeric columns straight to float32: pandas would hold them as int64 or float64, twice
    # the memory of the features the network gets. Their types come from the first rows; a
    # later value that does not parse sends us back to pandas' own typing (and its errors).
    head = pd.read_csv(file, nrows=SAMPLE_ROWS, keep_default_na=False, na_values=missing)
    float32 = {
        c: np.float32
        for c in head.columns
        if c != target
        and pd.api.types.is_numeric_dtype(head[c])
        and not pd.api.types.is_bool_dtype(head[c])
    }
    try:
        with warnings.catch_warnings():  # a value beyond float32 is reported by read_table
            warnings.simplefilter("ignore", RuntimeWarning)
            df = pd.read_csv(file, dtype=float32, keep_default_na=False, na_values=missing)
        if not any(np.isinf(df[c].to_numpy()).any() for c in float32):
            return df
    except (ValueError, TypeError):
        pass
    # float64: read_table names any value beyond float32.
    return pd.read_csv(file, keep_default_na=False, na_values=missing)


def _header(file: Path, scheme: str) -> list[str]:
    """The column names as the file has them: pandas renames a repeated CSV name (``a``,
    ``a.1``), so the header row is read as data."""
    if scheme == "csv":
        row = pd.read_csv(file, header=None, nrows=1, dtype=str, keep_default_na=False)
        return [str(c) for c in row.iloc[0].tolist()]
    import pyarrow.parquet as pq

    return [str(c) for c in pq.read_schema(file).names]


def _refuse_repeated_columns(source: str, names: list[str]) -> None:
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        positions.setdefault(name, []).append(i)
    repeated = {n: p for n, p in positions.items() if len(p) > 1}
    if repeated:
        listed = "; ".join(
            f"{n!r} at columns {', '.join(map(str, p))}" for n, p in repeated.items()
        )
        raise DataError(
            f"data.source {source!r}: repeated column name {listed} (counted from 1); give "
            "each column its own name in the header"
        )


def _read(
    source: str, file: Path, scheme: str, target: str, na_values: tuple[str, ...]
) -> pd.DataFrame:
    try:
        _refuse_repeated_columns(source, _header(file, scheme))
        if scheme == "csv":
            return _read_csv(file, target, na_values)
        df = pd.read_parquet(file)
        return df.replace(list(na_values), np.nan) if na_values else df
    except pd.errors.EmptyDataError:
        raise DataError(f"data.source {source!r}: the file has no header and no rows") from None
    except pd.errors.ParserError as e:
        raise DataError(
            f"data.source {source!r}: not a valid CSV file ({str(e).strip().splitlines()[-1]}); "
            "every line needs the header's number of comma-separated fields"
        ) from None
    except UnicodeDecodeError:
        raise DataError(
            f"data.source {source!r}: not UTF-8 text; save the CSV file as UTF-8"
        ) from None
    except ImportError:
        raise DataError(
            f"data.source {source!r}: reading Parquet needs pyarrow; pip install pyarrow"
        ) from None
    except (ValueError, OSError) as e:  # pyarrow.ArrowInvalid is a ValueError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"data.source {source!r}: not a readable {scheme} file ({first})") from None


def _is_number_column(column: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column)


def _is_text_column(column: pd.Series) -> bool:
    return (
        pd.api.types.is_string_dtype(column)
        or pd.api.types.is_object_dtype(column)
        or isinstance(column.dtype, pd.CategoricalDtype)
    )


def read_table(
    source: str,
    file: Path,
    scheme: str,
    *,
    target: str,
    features: list[str] | None,
    categorical: str,
    na_values: tuple[str, ...] = (),
) -> Table:
    """Read a CSV or Parquet table and sort its columns.

    Args:
        source: the ``data.source`` string, for messages.
        file: the existing, non-empty file.
        scheme: ``"csv"`` or ``"parquet"``.
        target: the label column (``data.target``).
        features: the feature columns (``data.features``); None means every other column.
        categorical: ``"onehot"`` keeps text columns as categorical features; ``"refuse"``
            refuses them.
        na_values: texts that mark a missing value besides an empty cell (``data.na_values``).

    Raises:
        DataError: the file cannot be parsed; the target or a listed feature column is absent
            (the available columns are listed); a label is missing; a text column under
            ``categorical = "refuse"``; a column mixing numbers and text; a column of another
            type (dates, ...).
    """
    df = _read(source, file, scheme, target, na_values)
    df.columns = [str(c) for c in df.columns]
    columns = list(df.columns)
    if target not in df.columns:
        raise DataError(
            f"data.source {source!r}: no column {target!r} (data.target); "
            f"the columns are {column_list(columns)}; set data.target to the label column"
        )
    if features is None:
        features = [c for c in columns if c != target]
    else:
        absent = [c for c in features if c not in df.columns]
        if absent:
            raise DataError(
                f"data.source {source!r}: data.features names {column_list(absent)}, not in the file; "
                f"the columns are {column_list(columns)}"
            )
    if len(df) == 0:
        raise DataError(f"data.source {source!r}: the file has a header but no rows")
    label_column = df[target]
    if label_column.isna().any():
        raise DataError(
            f"data.source {source!r}: the label column {target!r} is empty in "
            f"{row_count(label_column.isna().to_numpy())}; every row needs a label"
        )
    labels = (
        label_column.to_numpy()
        if _is_number_column(label_column)
        else label_column.astype(str).to_numpy()
    )

    numeric, text, identifiers = [], [], []
    for name in features:
        column = df[name]
        if _is_number_column(column):
            numeric.append(name)
        elif _is_text_column(column):
            values = column.astype(str)
            present = values.notna().to_numpy()
            is_number = pd.to_numeric(values, errors="coerce").notna().to_numpy()
            if is_number.any():
                not_number = present & ~is_number
                first = values.iloc[int(np.flatnonzero(not_number)[0])]
                raise DataError(
                    f"data.source {source!r}: column {name!r} needs numbers but holds text such as "
                    f"{first!r} in {row_count(not_number)}; correct those values"
                )
            if categorical == "refuse":
                example = values.iloc[int(np.flatnonzero(present)[0])] if present.any() else None
                raise DataError(
                    f"data.source {source!r}: column {name!r} is not numeric (e.g. {example!r}); "
                    'set data.categorical = "onehot" to one-hot encode it, or leave it out of data.features'
                )
            n_present = int(column.notna().sum())
            n_distinct = int(column.dropna().astype(str).nunique())
            if n_distinct > max(IDENTIFIER_MIN_DISTINCT, IDENTIFIER_FRACTION * n_present):
                identifiers.append((name, n_distinct, n_present))
            text.append(name)
        else:
            raise DataError(
                f"data.source {source!r}: column {name!r} has type {column.dtype}, neither numbers "
                "nor text; convert it to numbers or leave it out of data.features"
            )

    if identifiers:
        name, n_distinct, n_present = identifiers[0]
        keep = [c for c in features if c not in {i[0] for i in identifiers}]
        raise DataError(
            f"data.source {source!r}: text column {name!r} has {n_distinct} distinct values in "
            f"{n_present} rows, an identifier rather than a category (one-hot encoding would make "
            f"a feature of nearly every row); leave it out with data.features = {json.dumps(keep)}"
        )
    X = np.empty((len(df), len(numeric)), dtype=np.float32)
    for j, name in enumerate(numeric):  # column by column: no float64 copy of the whole table
        as_float = df[name].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(over="ignore"):
            X[:, j] = as_float
        overflow = np.isinf(X[:, j]) & np.isfinite(as_float)
        if overflow.any():
            raise DataError(
                f"data.source {source!r}: column {name!r} exceeds the float32 range (|x| > 3.4e38) "
                f"in {row_count(overflow)}; rescale it"
            )
    codes = np.empty((len(df), len(text)), dtype=np.int32)
    categories = []
    for j, name in enumerate(text):
        # A missing value stays missing (code -1): pandas 2's astype(str) makes it "nan".
        as_text = df[name].astype(str).where(df[name].notna())
        column_codes, uniques = pd.factorize(as_text, sort=True)
        codes[:, j] = column_codes
        categories.append([str(u) for u in uniques])
    return Table(
        X=X,
        feature_names=numeric,
        categorical=codes,
        categorical_names=text,
        categories=categories,
        labels=labels,
    )

"""Preprocessing fitted on the training split only: imputation, one-hot encoding, scaling.

:class:`Preprocessor` learns everything it needs (fill values for missing numbers, the
categories of each text column, the scaler's statistics) from the training rows alone, then
maps any rows with it. Validation and test rows therefore change nothing that is fitted: a
category seen only outside the training split, or a missing category, is encoded as all
zeros, and missing numbers get the training split's mean or median.

The network's input columns are the numeric features (imputed, then scaled), followed by one
0/1 column per (text column, category seen in training), named ``column=category``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tuner.data.arrays import block_rows, nonfinite_columns
from tuner.data.scaling import SCALERS
from tuner.data.sources import Dataset
from tuner.errors import DataError


class Imputer:
    """Fills NaN in numeric features with each column's training mean or median.

    Only columns with a NaN anywhere in the data get a fill value; the value comes from the
    training rows alone.
    """

    def __init__(self, strategy: str) -> None:
        self.strategy = strategy

    def fit(self, X: np.ndarray, rows: np.ndarray, feature_names: list[str]) -> Imputer:
        """Learn fill values from ``X[rows]`` (``X`` ``(n_rows, n_numeric)``, ``rows`` int64).

        Raises:
            DataError: a column with missing values has none in the training rows.
        """
        columns = np.flatnonzero(nonfinite_columns(X))
        values = X[np.ix_(rows, columns)].astype(np.float64)
        empty = np.isnan(values).all(axis=0) if rows.size else np.ones(columns.size, dtype=bool)
        if empty.any():
            name = feature_names[columns[np.flatnonzero(empty)[0]]]
            raise DataError(
                f"column {name!r} has no value in the training split, so data.missing = "
                f"{self.strategy!r} has nothing to impute from; fill it or leave it out of data.features"
            )
        reduce = np.nanmean if self.strategy == "mean" else np.nanmedian
        self.columns_ = columns
        self.values_ = reduce(values, axis=0) if columns.size else np.empty(0)
        return self

    def fill(self, block: np.ndarray) -> np.ndarray:
        """Fill ``block`` (float64 ``(n, n_numeric)``) in place and return it."""
        for column, value in zip(self.columns_, self.values_, strict=True):
            part = block[:, column]
            part[np.isnan(part)] = value
        return block


class OneHotEncoder:
    """One 0/1 column per category of each text column seen in the training rows."""

    def fit(
        self, codes: np.ndarray, categories: list[list[str]], names: list[str]
    ) -> OneHotEncoder:
        """Learn the categories from training codes ``(n_train, n_categorical)`` int32.

        Output columns follow the categories' sorted order, so they do not depend on which
        values appear outside the training split.
        """
        self.lookups_: list[np.ndarray] = []
        self.feature_names_: list[str] = []
        for j, (values, name) in enumerate(zip(categories, names, strict=True)):
            seen = np.unique(codes[:, j])
            seen = seen[seen >= 0]
            lookup = np.full(len(values) + 1, -1, dtype=np.int64)  # the extra slot takes code -1
            lookup[seen] = np.arange(len(self.feature_names_), len(self.feature_names_) + seen.size)
            self.lookups_.append(lookup)
            self.feature_names_ += [f"{name}={values[c]}" for c in seen]
        return self

    def transform(self, codes: np.ndarray) -> np.ndarray:
        """float32 ``(n, len(feature_names_))`` one-hot rows for codes ``(n, n_categorical)``."""
        out = np.zeros((codes.shape[0], len(self.feature_names_)), dtype=np.float32)
        for j, lookup in enumerate(self.lookups_):
            column = lookup[codes[:, j]]
            known = column >= 0
            out[np.flatnonzero(known), column[known]] = 1.0
        return out


class Preprocessor:
    """Imputation, one-hot encoding and scaling, fitted on the training rows of a dataset.

    Args:
        scaling: ``"standard"``, ``"minmax"`` or ``"none"`` (``data.scaling``).
        missing: ``"refuse"``, ``"mean"`` or ``"median"`` (``data.missing``).

    Example::

        pre = Preprocessor(scaling="standard", missing="refuse").fit(dataset, split.train)
        X_validation = pre.transform(dataset, split.validation)
    """

    def __init__(self, *, scaling: str, missing: str) -> None:
        self.scaling, self.missing = scaling, missing

    def _numeric_blocks(self, X: np.ndarray, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """``(offset, float64 block)`` over ``X[rows]``, imputed if an imputer was fitted."""
        step = block_rows(X.shape[1])
        for start in range(0, rows.size, step):
            block = np.asarray(X[rows[start : start + step]], dtype=np.float64)
            yield start, (self.imputer_.fill(block) if self.imputer_ else block)

    def fit(self, dataset: Dataset, rows: np.ndarray) -> Preprocessor:
        """Learn from the training rows ``rows`` (int64 indices) of ``dataset`` only.

        Raises:
            DataError: a column to impute has no value in the training rows.
        """
        X = dataset.X
        self.imputer_: Imputer | None = None
        if self.missing != "refuse" and X.dtype.kind == "f":
            self.imputer_ = Imputer(self.missing).fit(X, rows, dataset.feature_names)
        self.scaler_ = SCALERS[self.scaling]()
        for _, block in self._numeric_blocks(X, rows):
            self.scaler_.partial_fit(block)
        self.encoder_ = OneHotEncoder().fit(
            dataset.categorical[rows], dataset.categories, dataset.categorical_names
        )
        self.feature_names_ = [*dataset.feature_names, *self.encoder_.feature_names_]
        return self

    @property
    def n_features(self) -> int:
        """Number of input columns of the network."""
        return len(self.feature_names_)

    def transform(self, dataset: Dataset, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` of ``dataset``, preprocessed: a new float32 array
        ``(len(rows), n_features)``. Works in blocks of rows, so the only large allocation is
        the result itself; ``dataset`` is not modified."""
        n_numeric = dataset.X.shape[1]
        out = np.empty((rows.size, self.n_features), dtype=np.float32)
        for start, block in self._numeric_blocks(dataset.X, rows):
            out[start : start + block.shape[0], :n_numeric] = self.scaler_.transform(block)
        if len(self.encoder_.feature_names_):
            out[:, n_numeric:] = self.encoder_.transform(dataset.categorical[rows])
        return out

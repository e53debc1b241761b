"""Load a spec's data, split it, preprocess it, and hand out only what each step may see.

:func:`load_training_data` returns the training and validation splits and never the test rows;
only :func:`load_holdout_data` (used by finalize) returns the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuner import schema
from tuner.data.fingerprint import fingerprint, test_fingerprint
from tuner.data.preprocessing import Preprocessor
from tuner.data.sources import Dataset, load_source
from tuner.data.split import Split, stratified_split
from tuner.errors import DataError


@dataclass(frozen=True)
class DataSpec:
    """The ``[data]`` table of a spec, validated by :mod:`tuner.spec`: where the rows come
    from, the label column, the split fractions (only ``test`` with ``folds``), the number of
    cross-validation folds (None: one validation split), preprocessing and the split's seed."""

    source: str
    target: str | None
    split: dict[str, float]
    scaling: str
    seed: int
    folds: int | None = None
    features: list[str] | None = None
    categorical: str = "onehot"
    missing: str = "refuse"
    #: Texts read as a missing value in a table, besides an empty cell.
    na_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingData:
    """Preprocessed training and validation splits. Features float32 ``(n, n_features)``,
    labels int64 ``(n,)``; ``feature_names`` names the ``n_features`` input columns."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_validation: np.ndarray
    y_validation: np.ndarray
    classes: list[str]
    fingerprint: str
    feature_names: list[str] = field(default_factory=list)
    #: The number of test rows (a count: no test row is here).
    n_test: int = 0
    #: With ``data.folds``: the fold (int8 ``(n,)``, ``0..K-1``) of each row; the training and
    #: validation arrays are then the same arrays, every non-test row (see :meth:`folds`).
    fold_of_row: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_folds(self) -> int | None:
        """K with ``data.folds``, else None."""
        return None if self.fold_of_row is None else int(self.fold_of_row.max()) + 1

    def folds(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | slice]]:
        """What each model of a trial trains on and is scored on: ``(X_train, y_train,
        validation_rows)``, where ``validation_rows`` index the validation arrays. One split:
        one entry, every validation row (``slice(None)``, no copy). K folds: K entries, the
        model of fold ``k`` trained on the other folds' rows and scored on fold ``k``'s
        (int64 indices)."""
        if self.fold_of_row is None:
            return [(self.X_train, self.y_train, slice(None))]
        return [
            (
                self.X_train[self.fold_of_row != k],
                self.y_train[self.fold_of_row != k],
                np.flatnonzero(self.fold_of_row == k),
            )
            for k in range(self.n_folds or 0)
        ]

    def describe_rows(self) -> str:
        """``"1078 training, 359 validation rows"``, or ``"1438 rows in 5 folds"``."""
        return schema.rows_text(self.y_train.size, self.y_validation.size, self.n_folds)


@dataclass(frozen=True)
class HoldoutData:
    """The preprocessed test split (float32 ``(n_test, n_features)``, int64 ``(n_test,)``),
    with the preprocessing fitted on the training split; ``fingerprint`` identifies the data
    and split, ``test_fingerprint`` the test rows alone."""

    X_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    fingerprint: str
    test_fingerprint: str


def _load_and_split(data_spec: DataSpec) -> tuple[Dataset, Split, str]:
    """The source of ``data_spec``, loaded whole, its split and fingerprint.

    Every row, test rows included: only this package (for :func:`load_holdout_data` and the
    audit in :mod:`tuner.data.inspect`) may call it.
    """
    dataset = load_source(
        data_spec.source,
        target=data_spec.target,
        features=data_spec.features,
        categorical=data_spec.categorical,
        missing=data_spec.missing,
        na_values=data_spec.na_values,
    )
    try:
        split = stratified_split(
            dataset.y,
            data_spec.split,
            data_spec.seed,
            dataset.classes,
            test_rows=dataset.test_rows,
            folds=data_spec.folds,
        )
    except DataError as e:
        raise DataError(f"data.source {data_spec.source!r}: {e}") from None
    fp = fingerprint(
        dataset.X, dataset.y, split, categorical=dataset.categorical, categories=dataset.categories
    )
    return dataset, split, fp


def _fit_preprocessor(data_spec: DataSpec, dataset: Dataset, split: Split) -> Preprocessor:
    try:
        return Preprocessor(scaling=data_spec.scaling, missing=data_spec.missing).fit(
            dataset, split.train
        )
    except DataError as e:
        raise DataError(f"data.source {data_spec.source!r}: {e}") from None


def load_training_data(data_spec: DataSpec) -> TrainingData:
    """Training and validation splits of ``data_spec`` (a :class:`DataSpec`),
    preprocessed (imputation, one-hot encoding, scaling) as fitted on the training rows.
    The test rows are dropped before this returns. With ``data.folds`` the training rows are
    every non-test row, and the folds share that preprocessing: a fold's validation rows enter
    the scaling's means and deviations (never their labels), as they do in a scikit-learn
    pipeline scaled before ``cross_val_score``; the refit that finalize evaluates
    (:mod:`tuner.objective`) is scaled exactly so.

    Memory: the source once (as loaded: float32, or uint8 for IDX pixels) plus the float32
    result; preprocessing works in blocks of rows.

    Raises:
        DataError: the source cannot be loaded, split or preprocessed.
    """
    dataset, split, fp = _load_and_split(data_spec)
    pre = _fit_preprocessor(data_spec, dataset, split)
    X_train, y_train = pre.transform(dataset, split.train), dataset.y[split.train]
    if split.folds is not None:  # every non-test row, once
        X_validation, y_validation = X_train, y_train
    else:
        X_validation = pre.transform(dataset, split.validation)
        y_validation = dataset.y[split.validation]
    return TrainingData(
        X_train=X_train,
        y_train=y_train,
        X_validation=X_validation,
        y_validation=y_validation,
        classes=dataset.classes,
        fingerprint=fp,
        feature_names=pre.feature_names_,
        n_test=int(split.test.size),
        fold_of_row=split.folds,
    )


def load_holdout_data(data_spec: DataSpec) -> HoldoutData:
    """The test split of ``data_spec``, preprocessed as fitted on the training rows.

    Only the locked test evaluation (:mod:`tuner.holdout`) calls this.

    Raises:
        DataError: the source cannot be loaded, split or preprocessed.
    """
    dataset, split, fp = _load_and_split(data_spec)
    pre = _fit_preprocessor(data_spec, dataset, split)
    return HoldoutData(
        X_test=pre.transform(dataset, split.test),
        y_test=dataset.y[split.test],
        classes=dataset.classes,
        fingerprint=fp,
        test_fingerprint=test_fingerprint(
            dataset.X,
            dataset.y,
            split.test,
            categorical=dataset.categorical,
            categories=dataset.categories,
        ),
    )

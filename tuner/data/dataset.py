"""Load a spec's data, split it, preprocess it, and hand out only what each step may see.

:func:`load_training_data` returns the training and validation splits and never the test rows;
only :func:`load_holdout_data` (used by finalize) returns the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuner.data.fingerprint import fingerprint, test_fingerprint
from tuner.data.preprocessing import Preprocessor
from tuner.data.sources import Dataset, load_source
from tuner.data.split import Split, stratified_split
from tuner.errors import DataError


@dataclass(frozen=True)
class DataSpec:
    """The ``[data]`` table of a spec, validated by :mod:`tuner.spec`: where the rows come
    from, the label column, the split fractions, preprocessing and the split's seed."""

    source: str
    target: str | None
    split: dict[str, float]
    scaling: str
    seed: int
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

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


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
            dataset.y, data_spec.split, data_spec.seed, dataset.classes, test_rows=dataset.test_rows
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
    The test rows are dropped before this returns.

    Memory: the source once (as loaded: float32, or uint8 for IDX pixels) plus the float32
    result; preprocessing works in blocks of rows.

    Raises:
        DataError: the source cannot be loaded, split or preprocessed.
    """
    dataset, split, fp = _load_and_split(data_spec)
    pre = _fit_preprocessor(data_spec, dataset, split)
    return TrainingData(
        X_train=pre.transform(dataset, split.train),
        y_train=dataset.y[split.train],
        X_validation=pre.transform(dataset, split.validation),
        y_validation=dataset.y[split.validation],
        classes=dataset.classes,
        fingerprint=fp,
        feature_names=pre.feature_names_,
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

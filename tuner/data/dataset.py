"""Load a spec's data, split it, scale it, and hand out only what each step may see.

:func:`load_training_data` returns the training and validation splits and never the test rows;
only :func:`load_holdout_data` (used by finalize) returns the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tuner.data.fingerprint import fingerprint
from tuner.data.scaling import SCALERS
from tuner.data.sources import load_source
from tuner.data.split import Split, stratified_split
from tuner.errors import DataError


@dataclass(frozen=True)
class TrainingData:
    """Scaled training and validation splits. Features float32 ``(n, n_features)``, labels int64 ``(n,)``."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_validation: np.ndarray
    y_validation: np.ndarray
    classes: list[str]
    fingerprint: str

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


@dataclass(frozen=True)
class HoldoutData:
    """The scaled test split, with the scaler fitted on the training split."""

    X_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    fingerprint: str


def _load_and_split(data_spec) -> tuple[np.ndarray, np.ndarray, list[str], Split, str]:
    X, y, classes = load_source(data_spec.source)
    try:
        split = stratified_split(y, data_spec.split, data_spec.seed, classes)
    except DataError as e:
        raise DataError(f"data.source {data_spec.source!r}: {e}") from None
    return X, y, classes, split, fingerprint(X, y, split)


def load_training_data(data_spec) -> TrainingData:
    """Training and validation splits of ``data_spec`` (a :class:`tuner.spec.DataSpec`), scaled
    by a scaler fitted on the training rows. The test rows are dropped before this returns.

    Raises:
        DataError: the source cannot be loaded or split.
    """
    X, y, classes, split, fp = _load_and_split(data_spec)
    scaler = SCALERS[data_spec.scaling]().fit(X[split.train])
    return TrainingData(
        X_train=scaler.transform(X[split.train]), y_train=y[split.train],
        X_validation=scaler.transform(X[split.validation]), y_validation=y[split.validation],
        classes=classes, fingerprint=fp,
    )


def load_holdout_data(data_spec) -> HoldoutData:
    """The test split of ``data_spec``, scaled by the scaler fitted on the training rows.

    Only the locked test evaluation (:mod:`tuner.holdout`) calls this.

    Raises:
        DataError: the source cannot be loaded or split.
    """
    X, y, classes, split, fp = _load_and_split(data_spec)
    scaler = SCALERS[data_spec.scaling]().fit(X[split.train])
    return HoldoutData(X_test=scaler.transform(X[split.test]), y_test=y[split.test],
                       classes=classes, fingerprint=fp)

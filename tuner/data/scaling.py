"""Feature scaling fitted on the training split only.

Each scaler learns its statistics from the training rows, given whole (:meth:`fit`) or in
blocks of rows (:meth:`partial_fit`, so that a 60,000-row training split need not be copied
to float64 at once), and maps any rows with them (:meth:`transform`), in float64, to float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import numpy as np

from tuner.data.arrays import block_rows


class StandardScaler:
    """x -> (x - mean) / std per feature, with mean and std of the training split.

    A feature with zero spread in the training split is only centred (its std is taken as 1).
    Blocks are merged with the pairwise update of Chan, Golub and LeVeque (1979), "Updating
    formulae and a pairwise algorithm for computing sample variances"; one block gives
    exactly ``X.mean(axis=0)`` and ``X.std(axis=0)``.
    """

    def __init__(self) -> None:
        self.n_samples_seen_ = 0

    def partial_fit(self, X: np.ndarray) -> StandardScaler:
        """Add a block of training rows ``X`` ``(n_samples, n_features)``; returns self."""
        X64 = np.asarray(X, dtype=np.float64)
        n = X64.shape[0]
        if n == 0:
            return self
        mean = X64.mean(axis=0)
        m2 = ((X64 - mean) ** 2).sum(axis=0)
        if self.n_samples_seen_ == 0:
            self.mean_, self._m2 = mean, m2
        else:
            total = self.n_samples_seen_ + n
            delta = mean - self.mean_
            self.mean_ = self.mean_ + delta * (n / total)
            self._m2 = self._m2 + m2 + delta**2 * (self.n_samples_seen_ * n / total)
        self.n_samples_seen_ += n
        std = np.sqrt(self._m2 / self.n_samples_seen_)
        std[std == 0] = 1.0
        self.scale_ = std
        return self

    def fit(self, X: np.ndarray) -> StandardScaler:
        """Learn mean and std from ``X`` ``(n_samples, n_features)``; returns self."""
        return _fit_in_blocks(self, X)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """A new float32 array ``(n_samples, n_features)``; ``X`` is not modified."""
        return ((np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_).astype(np.float32)


class MinMaxScaler:
    """x -> (x - min) / (max - min) per feature, with min and max of the training split.

    Training rows land in [0, 1]; validation and test rows may fall outside. A feature with
    zero range in the training split is only shifted (its range is taken as 1).
    """

    def __init__(self) -> None:
        self.n_samples_seen_ = 0

    def partial_fit(self, X: np.ndarray) -> MinMaxScaler:
        """Add a block of training rows ``X`` ``(n_samples, n_features)``; returns self."""
        X64 = np.asarray(X, dtype=np.float64)
        if X64.shape[0] == 0:
            return self
        low, high = X64.min(axis=0), X64.max(axis=0)
        if self.n_samples_seen_ == 0:
            self.min_, self.max_ = low, high
        else:
            self.min_, self.max_ = np.minimum(self.min_, low), np.maximum(self.max_, high)
        self.n_samples_seen_ += X64.shape[0]
        scale = self.max_ - self.min_
        scale[scale == 0] = 1.0
        self.scale_ = scale
        return self

    def fit(self, X: np.ndarray) -> MinMaxScaler:
        """Learn min and max from ``X`` ``(n_samples, n_features)``; returns self."""
        return _fit_in_blocks(self, X)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """A new float32 array ``(n_samples, n_features)``; ``X`` is not modified."""
        return ((np.asarray(X, dtype=np.float64) - self.min_) / self.scale_).astype(np.float32)


_Blockwise = TypeVar("_Blockwise", "StandardScaler", "MinMaxScaler")


def _fit_in_blocks(scaler: _Blockwise, X: np.ndarray) -> _Blockwise:
    """Fit ``scaler`` from scratch on ``X`` through ``partial_fit`` over blocks of rows, so
    that no float64 copy of the whole array is made."""
    scaler.n_samples_seen_ = 0
    step = block_rows(X.shape[1])
    for start in range(0, max(len(X), 1), step):
        scaler.partial_fit(X[start : start + step])
    return scaler


class NoScaler:
    """Leaves features as they are (``scaling = "none"``)."""

    def partial_fit(self, X: np.ndarray) -> NoScaler:
        return self

    def fit(self, X: np.ndarray) -> NoScaler:
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """A new float32 array ``(n_samples, n_features)``; ``X`` is not modified."""
        return np.array(X, dtype=np.float32)


class Scaler(Protocol):
    """What every scaler offers (the methods above)."""

    def partial_fit(self, X: np.ndarray) -> Scaler: ...

    def fit(self, X: np.ndarray) -> Scaler: ...

    def transform(self, X: np.ndarray) -> np.ndarray: ...


#: ``data.scaling`` name -> scaler class.
SCALERS: dict[str, Callable[[], Scaler]] = {
    "standard": StandardScaler,
    "minmax": MinMaxScaler,
    "none": NoScaler,
}

"""Feature scaling fitted on the training split only."""

from __future__ import annotations

import numpy as np


class StandardScaler:
    """x -> (x - mean) / std per feature, with mean and std of the training split.

    A feature with zero spread in the training split is only centred (its std is taken as 1).
    """

    def fit(self, X: np.ndarray) -> "StandardScaler":
        """Learn mean and std from ``X`` ``(n_samples, n_features)``; returns self."""
        X64 = np.asarray(X, dtype=np.float64)
        self.mean_ = X64.mean(axis=0)
        std = X64.std(axis=0)
        std[std == 0] = 1.0
        self.scale_ = std
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """A new float32 array ``(n_samples, n_features)``; ``X`` is not modified."""
        return ((np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_).astype(np.float32)


class NoScaler:
    """Leaves features as they are (``scaling = "none"``)."""

    def fit(self, X: np.ndarray) -> "NoScaler":
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.array(X, dtype=np.float32)


SCALERS = {"standard": StandardScaler, "none": NoScaler}

"""A SHA-256 fingerprint of a dataset and its split."""

from __future__ import annotations

import hashlib

import numpy as np

from tuner.data.split import SPLITS, Split


def fingerprint(X: np.ndarray, y: np.ndarray, split: Split) -> str:
    """Hex SHA-256 over the features, labels and split indices (shapes and dtypes included).

    Any change to a feature value, a label or which rows fall in which split changes it.
    """
    h = hashlib.sha256()
    for name, array in [("X", X), ("y", y), *((s, getattr(split, s)) for s in SPLITS)]:
        array = np.ascontiguousarray(array)
        h.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        h.update(array.tobytes())
    return h.hexdigest()

"""A SHA-256 fingerprint of a dataset and its split."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from tuner.data.split import SPLITS, Split


def _update(h: hashlib._Hash, name: str, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    h.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
    # The buffer itself, not array.tobytes(): a copy of a 60,000-image array would double
    # the memory that loading takes.
    h.update(array.reshape(-1).data.cast("B"))


def fingerprint(
    X: np.ndarray,
    y: np.ndarray,
    split: Split,
    *,
    categorical: np.ndarray | None = None,
    categories: Sequence[Sequence[str]] = (),
) -> str:
    """Hex SHA-256 over the features, labels and split indices (shapes and dtypes included).

    Any change to a feature value, a label or which rows fall in which split changes it.

    Args:
        X: ``(n_rows, n_numeric)`` numeric features as loaded (float32, or uint8 for IDX pixels).
        y: ``(n_rows,)`` int64 labels.
        split: the row indices of each split.
        categorical: ``(n_rows, n_categorical)`` int32 codes of text columns, if any; with
            ``categories``, their values. Sources without text columns hash exactly as before
            categorical columns existed, so their studies' fingerprints stay valid.
    """
    h = hashlib.sha256()
    for name, array in [("X", X), ("y", y), *((s, getattr(split, s)) for s in SPLITS)]:
        _update(h, name, array)
    if split.folds is not None:  # a single split hashes as before folds existed
        _update(h, "folds", split.folds)
    if categorical is not None and categorical.shape[1] > 0:
        _update(h, "categorical", categorical)
        h.update(json.dumps([list(c) for c in categories]).encode())
    return h.hexdigest()


def test_fingerprint(
    X: np.ndarray,
    y: np.ndarray,
    test: np.ndarray,
    *,
    categorical: np.ndarray | None = None,
    categories: Sequence[Sequence[str]] = (),
) -> str:
    """Hex SHA-256 of the test rows alone: their features and labels, in row order.

    The identity of what a test evaluation looks at. Two splits of the same source that
    hold out the same rows (MNIST's official test split under any train : validation ratio)
    share it, though their :func:`fingerprint` differs.

    Args:
        X: ``(n_rows, n_numeric)`` numeric features as loaded.
        y: ``(n_rows,)`` int64 labels.
        test: int64 indices of the test rows, sorted.
        categorical, categories: as for :func:`fingerprint`.
    """
    h = hashlib.sha256(b"test rows;")
    _update(h, "X", X[test])
    _update(h, "y", y[test])
    if categorical is not None and categorical.shape[1] > 0:
        _update(h, "categorical", categorical[test])
        h.update(json.dumps([list(c) for c in categories]).encode())
    return h.hexdigest()

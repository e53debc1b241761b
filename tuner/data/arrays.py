"""Array helpers of the data package: blocks of rows, non-finite columns, row counts for
messages. A leaf module: it imports nothing from tuner."""

from __future__ import annotations

import numpy as np

#: Bytes of a float64 block of rows when a large array is fitted or transformed piece by
#: piece: small beside a 60,000 x 784 dataset (376 MB in float64), large enough for speed.
BLOCK_BYTES = 8 * 2**20


def block_rows(n_features: int) -> int:
    """Rows per block, so that a float64 block of ``n_features`` columns takes about
    :data:`BLOCK_BYTES` (16,384 rows of 64 features; 1,337 rows of 784)."""
    return max(1, BLOCK_BYTES // (8 * max(n_features, 1)))


def row_count(mask: np.ndarray) -> str:
    """``"3 rows (first: row 4, counting from 0)"`` for a boolean mask ``(n_rows,)`` with a True."""
    rows = np.flatnonzero(mask)
    return f"{rows.size} row{'s' if rows.size != 1 else ''} (first: row {rows[0]}, counting from 0)"


def nonfinite_columns(X: np.ndarray) -> np.ndarray:
    """bool ``(n_features,)``: which columns of ``X`` ``(n_rows, n_features)`` hold NaN or
    infinity. Checked in blocks of rows, so that no mask the size of ``X`` is ever made."""
    bad = np.zeros(X.shape[1], dtype=bool)
    if X.dtype.kind != "f":
        return bad
    step = block_rows(X.shape[1])
    for start in range(0, X.shape[0], step):
        bad |= ~np.isfinite(X[start : start + step]).all(axis=0)
    return bad

"""Softmax cross-entropy, computed through log-sum-exp."""

from __future__ import annotations

import numpy as np


def check_labels(y: np.ndarray, n: int, classes: int) -> None:
    """Raise ``ValueError`` unless ``y`` is ``(n,)`` integer labels in ``[0, classes)`` (a
    negative label would silently pick a class from the end)."""
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({n},), got {y.dtype} {y.shape}")
    if n and (y.min() < 0 or y.max() >= classes):
        bad = y[(y < 0) | (y >= classes)][0]
        raise ValueError(
            f"labels must be in [0, {classes}) for a model with {classes} outputs, got {bad}"
        )


def softmax_cross_entropy(
    logits: np.ndarray, y: np.ndarray, *, overwrite: bool = False
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    loss = mean_i(log sum_k exp(z_ik) - z_i,y_i), with z = logits - max_k logits (the
    log-sum-exp shift, so no exp overflows).

    Args:
        logits: ``(batch, classes)`` float array.
        y: ``(batch,)`` integer class labels in ``[0, classes)``.
        overwrite: compute the gradient in ``logits``' own memory (the training loop's
            buffer) instead of a new array.

    Returns:
        ``(loss, dlogits)``: the mean loss (a Python float, in nats) and its gradient with
        respect to ``logits``, ``(batch, classes)`` of the logits' dtype:
        (softmax(logits) - onehot(y)) / batch.

    Raises:
        ValueError: ``y`` is not ``(batch,)`` or holds a label outside ``[0, classes)``.
    """
    check_labels(y, *logits.shape)
    n = logits.shape[0]
    rows = np.arange(n)
    z = logits if overwrite else logits.copy()
    z -= z.max(axis=1, keepdims=True)
    picked = z[rows, y]
    np.exp(z, out=z)
    sum_exp = z.sum(axis=1)
    loss = float(np.mean(np.log(sum_exp, dtype=np.float64) - picked))
    z *= (1.0 / (n * sum_exp))[:, None]  # softmax / batch
    z[rows, y] -= 1.0 / n
    return loss, z


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax(logits)) row-wise, ``(batch, classes)``, stable through log-sum-exp."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

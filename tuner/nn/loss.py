"""Softmax cross-entropy, computed through log-sum-exp."""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray, *, overwrite: bool = False
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
    """
    n = logits.shape[0]
    rows = np.arange(n)
    z = logits if overwrite else logits.copy()
    z -= z.max(axis=1, keepdims=True)
    picked = z[rows, y]
    np.exp(z, out=z)
    sum_exp = z.sum(axis=1)
    loss = float(np.mean(np.log(sum_exp, dtype=np.float64) - picked))
    z /= sum_exp[:, None]
    z[rows, y] -= 1.0
    z /= n
    return loss, z


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax(logits)) row-wise, ``(batch, classes)``, stable through log-sum-exp."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

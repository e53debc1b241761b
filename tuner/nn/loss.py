"""Softmax cross-entropy, computed through log-sum-exp."""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    Args:
        logits: ``(batch, classes)`` float array.
        y: ``(batch,)`` integer class labels in ``[0, classes)``.

    Returns:
        ``(loss, dlogits)``: the mean loss (a Python float, in nats) and its gradient with
        respect to ``logits``, ``(batch, classes)`` of the logits' dtype:
        (softmax(logits) - onehot(y)) / batch.
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(sum_exp[:, 0]) - shifted[rows, y]))
    grad = exp / sum_exp
    grad[rows, y] -= 1.0
    grad /= n
    return loss, grad


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax(logits)) row-wise, ``(batch, classes)``, stable through log-sum-exp."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

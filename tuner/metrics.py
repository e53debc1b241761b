"""Classification metrics of a model's logits: the study's metric (``study.metric``), scored on
the validation split every epoch, and the full set finalize reports on the test split."""

from __future__ import annotations

import math

import numpy as np

from tuner.nn.loss import log_softmax

#: Two-sided 95% normal quantile, for the Wilson interval.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai & DasGupta
    2001, eq. 4)."""
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def true_class_log_probability(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log softmax(logits)[i, y[i]]`` ``(n,)`` float64 (nats) of ``logits`` ``(n, n_classes)``,
    computed in float64."""
    return log_softmax(logits.astype(np.float64))[np.arange(y.size), y]


def classification_metrics(logits: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """The metrics of ``logits`` ``(n, n_classes)`` (any float dtype) against labels ``y``
    ``(n,)`` (int): ``accuracy`` (and ``n_correct``) with its 95% Wilson interval
    ``accuracy_ci95``; ``balanced_accuracy``, the mean recall over the classes present in ``y``
    (Brodersen et al. 2010, "The balanced accuracy and its posterior distribution", eq. 1, for
    K classes; scikit-learn's ``balanced_accuracy_score``); ``macro_f1``, the unweighted mean
    over all ``n_classes`` of ``2 TP / (2 TP + FP + FN)`` (0 for a class never true nor
    predicted); ``log_loss``, the mean negative log-probability of the true class in nats, from
    the softmax of the logits computed in float64; and ``confusion_matrix`` (rows true class,
    columns predicted)."""
    pred = logits.argmax(axis=1)
    n = y.size
    correct = int(np.sum(pred == y))
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    true_rows = confusion.sum(axis=1)
    denom = confusion.sum(axis=0) + true_rows
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = true_rows > 0
    return {
        "accuracy": correct / n,
        "n_correct": correct,
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "balanced_accuracy": float(np.mean(tp[present] / true_rows[present])),
        "macro_f1": float(f1.mean()),
        "log_loss": float(-true_class_log_probability(logits, y).mean()),
        "confusion_matrix": confusion.tolist(),
    }


def metric_value(metric: str, logits: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """The value of ``metric`` (a key of :data:`tuner.spec.METRICS`) of ``logits`` ``(n, n_classes)``
    against ``y`` ``(n,)``, as :func:`classification_metrics` computes it; accuracy and log
    loss without the confusion matrix (every epoch of every trial computes one)."""
    if metric == "accuracy":
        return float(np.mean(logits.argmax(axis=1) == y))
    if metric == "log_loss":
        return float(-true_class_log_probability(logits, y).mean())
    return float(classification_metrics(logits, y, n_classes)[metric])

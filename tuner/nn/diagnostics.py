"""Initialization diagnostics: how activations spread through the layers of a fresh model.

With too small a weight scale (``normal:0.01`` without BatchNorm) activations shrink layer
by layer towards zero; with sigmoid and too large a scale they saturate at 0 and 1; He (for
ReLU) and Xavier (for sigmoid, tanh) keep a healthy spread (Saito, "Deep Learning from
Scratch", section 6.2; Glorot & Bengio 2010, section 4).
"""

from __future__ import annotations

import numpy as np

from tuner.nn.layers import Dropout, ReLU, Sigmoid, Tanh
from tuner.nn.model import MLP

#: A unit is saturated where the activation's derivative is below this fraction of its maximum.
SATURATION = 0.01


def _saturated(layer: ReLU | Sigmoid | Tanh, y: np.ndarray) -> np.ndarray:
    if isinstance(layer, ReLU):
        return y <= 0
    if isinstance(layer, Sigmoid):
        return y * (1 - y) < SATURATION * 0.25
    return 1 - y * y < SATURATION  # tanh


def activation_statistics(model: MLP, X: np.ndarray, *, bins: int = 30) -> list[dict]:
    """Statistics of each hidden layer's activation output for inputs ``X`` ``(n, n_inputs)``.

    BatchNorm uses the batch statistics of ``X`` (as in training); the model's running
    statistics are left untouched and dropout is skipped.

    Returns:
        One dict per hidden layer: ``layer`` (1-based), ``mean``, ``std``,
        ``saturated_fraction`` (activation values where the derivative is below 1% of its
        maximum: zero for ReLU, the flat tails for sigmoid and tanh), ``dead_unit_fraction``
        (units saturated for every row of ``X``), and ``histogram`` (``counts`` and
        ``edges``, ``bins`` bins over the values' range).
    """
    saved = {k: v.copy() for k, v in model.buffers.items()}
    out = np.array(X, dtype=model.dtype)  # a copy: the training-mode pass works in place
    stats: list[dict] = []
    try:
        for layer in model.layers:
            if isinstance(layer, Dropout):
                continue
            out = layer.forward(out, train=True)
            if isinstance(layer, (ReLU, Sigmoid, Tanh)):
                y = out.astype(np.float64)
                saturated = _saturated(layer, y)
                counts, edges = np.histogram(y, bins=bins)
                stats.append(
                    {
                        "layer": len(stats) + 1,
                        "mean": float(y.mean()),
                        "std": float(y.std()),
                        "saturated_fraction": float(saturated.mean()),
                        "dead_unit_fraction": float(saturated.all(axis=0).mean()),
                        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
                    }
                )
    finally:
        for k, v in saved.items():
            model.buffers[k][...] = v
    return stats

"""Optimizers that update a model's ``params`` in place from its ``grads``.

Weight decay is not applied here: for this SGD family it is the L2 term of the loss
(:class:`tuner.nn.model.MLP` adds lambda * W to the weight gradients).
"""

from __future__ import annotations

import numpy as np


class SGD:
    """Plain stochastic gradient descent: p <- p - lr * g."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = float(learning_rate)

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for k, p in params.items():
            p -= self.learning_rate * grads[k]


class Momentum:
    """SGD with momentum: v <- mu * v - lr * g; p <- p + v (Polyak 1964; Sutskever et al. 2013, eq. 1-2)."""

    def __init__(self, learning_rate: float, momentum: float = 0.9) -> None:
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self._velocity: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for k, p in params.items():
            v = self._velocity.get(k)
            if v is None:
                v = self._velocity[k] = np.zeros_like(p)
            v *= self.momentum
            v -= self.learning_rate * grads[k]
            p += v


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum}


def make_optimizer(name: str, learning_rate: float, **options: float):
    """Build an optimizer by name (``"sgd"`` or ``"momentum"``).

    Raises:
        ValueError: unknown name.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, **options)

"""Optimizers that update a model's ``params`` in place from its ``grads``.

Weight decay: for SGD, Momentum, Nesterov, AdaGrad, RMSprop and Adam it is the L2 term of the
loss (the model adds lambda * W to the weight gradients; give ``weight_decay`` to
:class:`tuner.nn.MLP`). AdamW decouples it (Loshchilov & Hutter 2019, Algorithm 2): the model's
``weight_decay`` stays 0 and AdamW shrinks the weight matrices named in ``decay_keys`` by
lr * lambda each step. All updates run in place on preallocated state.

``step(params, grads)`` takes dicts of arrays with the same keys. A key may be a tuple of
parameter names whose values share one array (a model's ``param_groups``, views into its flat
parameter buffer): then one update covers all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

#: A parameter's name, or the names of parameters sharing one array (a model's param_groups).
ParamKey = str | tuple[str, ...]
_Key = TypeVar("_Key", bound=ParamKey)


class Optimizer:
    """Base: keeps per-parameter state arrays, created on the first step."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = float(learning_rate)
        self._state: dict[ParamKey, dict[str, np.ndarray]] = {}

    def _slots(self, key: ParamKey, p: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = {n: np.zeros_like(p) for n in names}
        return [state[n] for n in names]

    def step(self, params: Mapping[_Key, np.ndarray], grads: Mapping[_Key, np.ndarray]) -> None:
        for k, p in params.items():
            self._update(k, p, grads[k])

    def _update(self, key: ParamKey, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """p <- p - lr * g (Robbins & Monro 1951)."""

    def _update(self, key: ParamKey, p: np.ndarray, g: np.ndarray) -> None:
        (tmp,) = self._slots(key, p, ("tmp",))
        np.multiply(g, self.learning_rate, out=tmp)
        p -= tmp


class Momentum(Optimizer):
    """v <- mu * v - lr * g; p <- p + v (Polyak 1964; Sutskever et al. 2013, eq. 1-2)."""

    def __init__(self, learning_rate: float, momentum: float = 0.9) -> None:
        super().__init__(learning_rate)
        self.momentum = float(momentum)

    def _update(self, key: ParamKey, p: np.ndarray, g: np.ndarray) -> None:
        v, tmp = self._slots(key, p, ("v", "tmp"))
        v *= self.momentum
        np.multiply(g, self.learning_rate, out=tmp)
        v -= tmp
        p += v


class Nesterov(Momentum):
    """Nesterov momentum in the form of Sutskever et al. 2013 (eq. 3-4), rewritten for the
    current parameters (Bengio et al. 2013, eq. 7): v <- mu * v - lr * g;
    p <- p + mu * v - lr * g."""

    def _update(self, key: ParamKey, p: np.ndarray, g: np.ndarray) -> None:
        v, tmp = self._slots(key, p, ("v", "tmp"))
        v *= self.momentum
        np.multiply(g, self.learning_rate, out=tmp)
        v -= tmp
        p -= tmp
        np.multiply(v, self.momentum, out=tmp)
        p += tmp


def _step_by_root(
    p: np.ndarray, g: np.ndarray, h: np.ndarray, tmp: np.ndarray, learning_rate: float, eps: float
) -> None:
    """p <- p - lr * g / (sqrt(h) + eps), in place through ``tmp``: the update AdaGrad and
    RMSprop share (they differ in how ``h`` accumulates g^2)."""
    np.sqrt(h, out=tmp)
    tmp += eps
    np.divide(g, tmp, out=tmp)
    tmp *= learning_rate
    p -= tmp


class AdaGrad(Optimizer):
    """h <- h + g^2; p <- p - lr * g / (sqrt(h) + eps) (Duchi et al. 2011)."""

    def __init__(self, learning_rate: float, eps: float = 1e-8) -> None:
        super().__init__(learning_rate)
        self.eps = float(eps)

    def _update(self, key: ParamKey, p: np.ndarray, g: np.ndarray) -> None:
        h, tmp = self._slots(key, p, ("h", "tmp"))
        np.multiply(g, g, out=tmp)
        h += tmp
        _step_by_root(p, g, h, tmp, self.learning_rate, self.eps)


class RMSprop(Optimizer):
    """h <- rho * h + (1 - rho) * g^2; p <- p - lr * g / (sqrt(h) + eps) (Tieleman & Hinton
    2012, lecture 6.5)."""

    def __init__(self, learning_rate: float, rho: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__(learning_rate)
        self.rho, self.eps = float(rho), float(eps)

    def _update(self, key: ParamKey, p: np.ndarray, g: np.ndarray) -> None:
        h, tmp = self._slots(key, p, ("h", "tmp"))
        h *= self.rho
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.rho
        h += tmp
        _step_by_root(p, g, h, tmp, self.learning_rate, self.eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1): m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    p <- p - lr * m_hat / (sqrt(v_hat) + eps) with bias-corrected m_hat and v_hat."""

    def __init__(
        self, learning_rate: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        super().__init__(learning_rate)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.t = 0

    def step(self, params: Mapping[_Key, np.ndarray], grads: Mapping[_Key, np.ndarray]) -> None:
        self.t += 1
        super().step(params, grads)

    def _update(self, key: ParamKey, p: np.ndarray, g: np.ndarray) -> None:
        m, v, tmp = self._slots(key, p, ("m", "v", "tmp"))
        b1, b2 = self.beta1, self.beta2
        m *= b1
        np.multiply(g, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        # sqrt(v_hat) + eps with v_hat = v / (1 - b2^t); m_hat = m / (1 - b1^t).
        np.sqrt(v, out=tmp)
        tmp /= np.sqrt(1.0 - b2**self.t)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= self.learning_rate / (1.0 - b1**self.t)
        p -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2, line 12):
    the weight matrices in ``decay_keys`` also shrink by lr * lambda * p each step.

    Raises:
        ValueError (in ``step``): a group key (a tuple of names) only partly in ``decay_keys``.
    """

    def __init__(
        self,
        learning_rate: float,
        weight_decay: float = 0.0,
        *,
        decay_keys: Iterable[str] = (),
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(learning_rate, beta1, beta2, eps)
        self.weight_decay = float(weight_decay)
        self.decay_keys = frozenset(decay_keys)

    def _decays(self, key: ParamKey) -> bool:
        names = key if isinstance(key, tuple) else (key,)
        decayed = [name in self.decay_keys for name in names]
        if any(decayed) and not all(decayed):
            raise ValueError(
                f"decay_keys cover only part of the parameter group {key}: "
                "decay all of its parameters or none"
            )
        return all(decayed)

    def _update(self, key: ParamKey, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay and self._decays(key):
            p *= 1.0 - self.learning_rate * self.weight_decay
        super()._update(key, p, g)


OPTIMIZERS = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
}


def make_optimizer(name: str, learning_rate: float, **options: Any) -> Optimizer:
    """Build an optimizer by name (a key of :data:`OPTIMIZERS`) with its options.

    Raises:
        ValueError: unknown name.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](learning_rate, **options)

"""Weight initializers for Linear layers.

The scale of the initial weights decides whether activations keep a healthy spread through
the layers. Names accepted by :func:`initialize` (``n_in`` inputs, ``n_out`` outputs):

- ``"he"``: normal, std = sqrt(2 / n_in), for ReLU (He et al. 2015, "Delving Deep into
  Rectifiers", eq. 10).
- ``"he_uniform"``: uniform on [-a, a], a = sqrt(6 / n_in): the same variance 2 / n_in.
- ``"xavier"``: normal, std = 1 / sqrt(n_in), for sigmoid and tanh (the fan-in form of Glorot
  & Bengio 2010, "Understanding the difficulty of training deep feedforward neural
  networks", as in Saito, "Deep Learning from Scratch", section 6.2).
- ``"xavier_uniform"``: uniform on [-a, a], a = sqrt(6 / (n_in + n_out)) (Glorot & Bengio
  2010, eq. 16, the "normalized initialization"); variance 2 / (n_in + n_out).
- ``"normal:STD"``: normal with a fixed std, e.g. ``"normal:0.01"``. Without BatchNorm the
  activations of deeper layers collapse towards zero and gradients vanish: it is offered to
  show that failure.
- ``"auto"``: ``"he"`` for ReLU, ``"xavier"`` for sigmoid and tanh.

All-zero (or otherwise identical) initial weights are not offered: every unit of a layer
would compute and learn the same thing (the symmetry problem).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import DTypeLike

INITIALIZERS = ("he", "he_uniform", "xavier", "xavier_uniform", "normal:STD", "auto")
#: What ``"auto"`` picks for each activation.
AUTO = {"relu": "he", "sigmoid": "xavier", "tanh": "xavier"}


def _fixed_std(name: str) -> float:
    try:
        std = float(name.split(":", 1)[1])
    except ValueError:
        std = float("nan")
    if not (std > 0 and math.isfinite(std)):
        raise ValueError(f"initializer {name!r}: the std after 'normal:' must be a positive number")
    return std


def resolve(name: str, activation: str) -> str:
    """The concrete initializer name (``"auto"`` replaced by the activation's choice).

    Raises:
        ValueError: unknown initializer name, or a ``normal:`` std that is not positive.
    """
    if name == "auto":
        return AUTO[activation]
    if name.startswith("normal:"):
        _fixed_std(name)
        return name
    if name not in INITIALIZERS:
        raise ValueError(f"unknown initializer {name!r}; known: {', '.join(INITIALIZERS)}")
    return name


def weight_std(name: str, n_in: int, n_out: int = 1, activation: str = "relu") -> float:
    """Standard deviation of the initial weights of a layer with ``n_in`` inputs and
    ``n_out`` outputs under initializer ``name``.

    Raises:
        ValueError: unknown initializer name.
    """
    name = resolve(name, activation)
    if name in ("he", "he_uniform"):
        return math.sqrt(2.0 / n_in)
    if name == "xavier":
        return 1.0 / math.sqrt(n_in)
    if name == "xavier_uniform":
        return math.sqrt(2.0 / (n_in + n_out))
    return _fixed_std(name)


def initialize(
    name: str,
    n_in: int,
    n_out: int,
    rng: np.random.Generator,
    dtype: DTypeLike,
    activation: str = "relu",
) -> np.ndarray:
    """Draw a weight matrix of shape ``(n_in, n_out)`` and dtype ``dtype``.

    Raises:
        ValueError: unknown initializer name.
    """
    std = weight_std(name, n_in, n_out, activation)
    if resolve(name, activation).endswith("_uniform"):
        bound = std * math.sqrt(3.0)  # U(-a, a) has std a / sqrt(3)
        w = rng.uniform(-bound, bound, (n_in, n_out))
    else:
        w = rng.standard_normal((n_in, n_out)) * std
    return w.astype(dtype, copy=False)

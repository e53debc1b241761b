"""Weight initializers for Linear layers.

The scale of the initial weights decides whether activations keep a healthy spread through
the layers. Names accepted by :func:`initialize`:

- ``"he"``: normal with std = sqrt(2 / n_in), for ReLU (He et al. 2015, "Delving Deep into
  Rectifiers", eq. 10).
- ``"xavier"``: normal with std = 1 / sqrt(n_in), for sigmoid and tanh (the fan-in form of
  Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural
  networks", as used in Saito, "Deep Learning from Scratch", ch. 6.2).
- ``"normal:STD"``: normal with a fixed std, e.g. ``"normal:0.01"``; with several layers the
  activations collapse towards zero and gradients vanish, which is why it is offered.
"""

from __future__ import annotations

import math

import numpy as np

INITIALIZERS = ("he", "xavier", "normal:STD")


def weight_std(name: str, n_in: int) -> float:
    """Standard deviation of the initial weights of a layer with ``n_in`` inputs.

    Raises:
        ValueError: ``name`` is not one of :data:`INITIALIZERS` or its std is not a positive
            number.
    """
    if name == "he":
        return math.sqrt(2.0 / n_in)
    if name == "xavier":
        return 1.0 / math.sqrt(n_in)
    if name.startswith("normal:"):
        text = name.split(":", 1)[1]
        try:
            std = float(text)
        except ValueError:
            std = float("nan")
        if not (std > 0 and math.isfinite(std)):
            raise ValueError(f"initializer {name!r}: the std after 'normal:' must be a positive number")
        return std
    raise ValueError(f"unknown initializer {name!r}; known: {', '.join(INITIALIZERS)}")


def initialize(
    name: str, n_in: int, n_out: int, rng: np.random.Generator, dtype: np.dtype
) -> np.ndarray:
    """Draw a weight matrix of shape ``(n_in, n_out)`` and dtype ``dtype``.

    Raises:
        ValueError: unknown initializer name.
    """
    std = weight_std(name, n_in)
    return (rng.standard_normal((n_in, n_out)) * std).astype(dtype, copy=False)

"""Layers of the BN-MLP, each with ``forward(x, train)`` and ``backward(dout)``.

Every layer keeps what its backward pass needs from the last training-mode forward pass.
Parameters live in the model's ``params`` dict and gradients in its ``grads`` dict, under the
names a layer is given (``W1``, ``gamma1``, ...); gradients are written into those
preallocated arrays. In training mode the layers work in preallocated buffers (one set per
batch size) and in place; ``forward`` may overwrite its input there, and ``backward`` its
``dout``. Evaluation mode allocates fresh arrays and changes nothing.

Sums over the mini-batch (a column sum of a ``(batch, features)`` array, for the BatchNorm
statistics and the bias and BatchNorm gradients) are written as the matrix-vector product
``ones @ x``: one BLAS call, several times faster than ``x.sum(axis=0)`` at these shapes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

#: BatchNorm running-statistics update: running = (1 - momentum) * running + momentum * batch
#: (the convention of PyTorch's BatchNorm1d).
BN_MOMENTUM = 0.1
#: Added to the variance before the square root (Ioffe & Szegedy 2015, Algorithm 1).
BN_EPS = 1e-5


#: What a layer holds for its backward pass before its first training forward pass: an empty
#: array (never written), so that the caches are typed as arrays.
_BEFORE_FORWARD = np.empty((0,), np.float32)


class _Buffers:
    """Arrays reused across training steps, one per (name, shape)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: DTypeLike) -> np.ndarray:
        key = (name, shape)
        array = self._arrays.get(key)
        if array is None or array.dtype != dtype:
            array = self._arrays[key] = np.empty(shape, dtype)
        return array

    def filled(self, name: str, n: int, value: float, dtype: DTypeLike) -> np.ndarray:
        """A vector ``(n,)`` of ``value``, made once per (name, n, dtype)."""
        key = (name, n)
        array = self._arrays.get(key)
        if array is None or array.dtype != dtype:
            array = self._arrays[key] = np.full(n, value, dtype)
        return array


class Linear:
    """Affine map y = x @ W + b.

    Shapes: x ``(batch, n_in)``, W ``(n_in, n_out)``, b ``(n_out,)``, y ``(batch, n_out)``.
    ``bias_key`` may be None: before BatchNorm a bias is redundant, since BatchNorm subtracts
    the batch mean (Ioffe & Szegedy 2015, section 3.2). ``input_grad=False`` (the first
    layer) skips the gradient with respect to x, which nothing uses.
    """

    def __init__(
        self,
        params: dict[str, np.ndarray],
        grads: dict[str, np.ndarray],
        weight_key: str,
        bias_key: str | None,
        *,
        input_grad: bool = True,
    ) -> None:
        self.params, self.grads = params, grads
        self.weight_key, self.bias_key, self.input_grad = weight_key, bias_key, input_grad
        self._buffers = _Buffers()
        self._x: np.ndarray = _BEFORE_FORWARD

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        W = self.params[self.weight_key]
        if train:
            self._x = x
            y = np.matmul(x, W, out=self._buffers.get("y", (x.shape[0], W.shape[1]), W.dtype))
        else:
            y = x @ W
        if self.bias_key is not None:
            y += self.params[self.bias_key]
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        W = self.params[self.weight_key]
        np.matmul(self._x.T, dout, out=self.grads[self.weight_key])
        if self.bias_key is not None:
            ones = self._buffers.filled("ones", dout.shape[0], 1.0, dout.dtype)
            np.matmul(ones, dout, out=self.grads[self.bias_key])
        if not self.input_grad:
            return None
        return np.matmul(dout, W.T, out=self._buffers.get("dx", self._x.shape, W.dtype))


class BatchNorm1d:
    """Batch normalization over the mini-batch (Ioffe & Szegedy 2015, Algorithm 1).

    Training: mu_B and sigma_B^2 of the batch, x_hat = (x - mu_B) / sqrt(sigma_B^2 + eps),
    y = gamma * x_hat + beta; the running mean and (unbiased) variance are updated with
    :data:`BN_MOMENTUM`. Evaluation: the running statistics replace the batch ones.
    Shapes: x and y ``(batch, features)``; gamma, beta and running statistics ``(features,)``.
    """

    def __init__(
        self,
        params: dict[str, np.ndarray],
        grads: dict[str, np.ndarray],
        buffers: dict[str, np.ndarray],
        index: int,
    ) -> None:
        self.params, self.grads, self.buffers = params, grads, buffers
        self.gamma_key, self.beta_key = f"gamma{index}", f"beta{index}"
        self.mean_key, self.var_key = f"running_mean{index}", f"running_var{index}"
        self._buffers = _Buffers()
        self._centered: np.ndarray = _BEFORE_FORWARD
        self._inv_std: np.ndarray = _BEFORE_FORWARD
        self._scale: np.ndarray = _BEFORE_FORWARD

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        gamma, beta = self.params[self.gamma_key], self.params[self.beta_key]
        if not train:
            inv_std = 1.0 / np.sqrt(self.buffers[self.var_key] + BN_EPS)
            return (x - self.buffers[self.mean_key]) * (inv_std * gamma) + beta
        n, features = x.shape
        buffers = self._buffers
        # Batch means as (1/n) 1^T x, one matrix-vector product each.
        averaging = buffers.filled("averaging", n, 1.0 / n, x.dtype)
        mean = np.matmul(averaging, x, out=buffers.get("mean", (features,), x.dtype))
        centered = x  # x - mu_B, in place: the input buffer is not needed again
        centered -= mean
        square = buffers.get("tmp", x.shape, x.dtype)
        np.multiply(centered, centered, out=square)
        var = np.matmul(averaging, square, out=buffers.get("var", (features,), x.dtype))
        inv_std = buffers.get("inv_std", (features,), x.dtype)
        np.add(var, BN_EPS, out=inv_std)
        np.sqrt(inv_std, out=inv_std)
        np.reciprocal(inv_std, out=inv_std)
        # y = gamma * x_hat + beta with x_hat = centered * inv_std, as one scaling of the
        # centered input: x_hat itself is never stored (backward works from centered).
        scale = np.multiply(gamma, inv_std, out=buffers.get("scale", (features,), x.dtype))
        self._centered, self._inv_std, self._scale = centered, inv_std, scale
        running_mean, running_var = self.buffers[self.mean_key], self.buffers[self.var_key]
        running_mean *= 1.0 - BN_MOMENTUM
        mean *= BN_MOMENTUM
        running_mean += mean
        running_var *= 1.0 - BN_MOMENTUM
        var *= BN_MOMENTUM * n / max(n - 1, 1)  # unbiased batch variance
        running_var += var
        y = np.multiply(centered, scale, out=buffers.get("y", x.shape, x.dtype))
        y += beta
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        centered, inv_std, scale = self._centered, self._inv_std, self._scale
        n, features = dout.shape
        buffers = self._buffers
        ones = buffers.filled("ones", n, 1.0, dout.dtype)
        dbeta = np.matmul(ones, dout, out=self.grads[self.beta_key])
        tmp = buffers.get("tmp", dout.shape, dout.dtype)
        np.multiply(dout, centered, out=tmp)
        dgamma = np.matmul(ones, tmp, out=self.grads[self.gamma_key])
        dgamma *= inv_std  # sum(dout * x_hat) = inv_std * sum(dout * centered)
        # The closed-form backward pass of Ioffe & Szegedy 2015 (section 3), with
        # mean(dout) = dbeta / n and mean(dout * x_hat) = dgamma / n:
        #   dx = gamma * inv_std * (dout - mean(dout) - x_hat * mean(dout * x_hat))
        #      = scale * dout - centered * (scale * inv_std * dgamma / n) - scale * dbeta / n.
        per_centered = buffers.get("per_centered", (features,), dout.dtype)
        np.multiply(scale, inv_std, out=per_centered)
        per_centered *= dgamma
        per_centered *= 1.0 / n
        offset = np.multiply(scale, dbeta, out=buffers.get("offset", (features,), dout.dtype))
        offset *= 1.0 / n
        np.multiply(centered, per_centered, out=tmp)
        dx = dout
        dx *= scale
        dx -= tmp
        dx -= offset
        return dx


class ReLU:
    """max(0, x) elementwise; the gradient is 1 where x > 0, else 0."""

    def __init__(self) -> None:
        self._buffers = _Buffers()
        self._mask: np.ndarray = _BEFORE_FORWARD

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        if not train:
            return np.maximum(x, 0)
        # A boolean mask and a multiply: several times faster than np.copyto(..., where=).
        self._mask = np.greater(x, 0, out=self._buffers.get("mask", x.shape, np.bool_))
        return np.multiply(x, self._mask, out=x)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return np.multiply(dout, self._mask, out=dout)


class Sigmoid:
    """1 / (1 + exp(-x)); the gradient is y * (1 - y)."""

    def __init__(self) -> None:
        self._y: np.ndarray = _BEFORE_FORWARD

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        y = x if train else x.copy()
        # Computed as exp(-logaddexp(0, -x)) so that large |x| neither overflows nor warns.
        np.logaddexp(0, -y, out=y)
        np.negative(y, out=y)
        np.exp(y, out=y)
        if train:
            self._y = y
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dout *= self._y
        dout *= 1 - self._y
        return dout


class Tanh:
    """tanh(x); the gradient is 1 - y**2."""

    def __init__(self) -> None:
        self._y: np.ndarray = _BEFORE_FORWARD

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        if not train:
            return np.tanh(x)
        self._y = np.tanh(x, out=x)
        return self._y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dout *= 1 - self._y * self._y
        return dout


class Dropout:
    """Inverted dropout (Srivastava et al. 2014, with the 1 / (1 - p) scaling at training time).

    In training each unit is kept with probability 1 - ``rate`` and scaled by 1 / (1 - rate),
    so evaluation is the identity. ``frozen = True`` reuses the last mask (for gradient checks).
    """

    def __init__(self, rate: float, rng: np.random.Generator) -> None:
        self.rate, self.rng = float(rate), rng
        self.frozen = False
        self._mask: np.ndarray = _BEFORE_FORWARD
        self._buffers = _Buffers()

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        if not train:
            return x
        if not (self.frozen and self._mask.shape == x.shape):
            keep = self.rng.random(x.shape, dtype=x.dtype) >= self.rate
            self._mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.rate)
        # Not in place: the activation before keeps its output for its own backward pass.
        return np.multiply(x, self._mask, out=self._buffers.get("y", x.shape, x.dtype))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dout *= self._mask
        return dout


ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}

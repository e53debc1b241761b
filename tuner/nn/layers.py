"""Layers of the BN-MLP, each with ``forward(x, train)`` and ``backward(dout)``.

Every layer keeps what its backward pass needs from the last training-mode forward pass.
Parameters live in the model's ``params`` dict and gradients in its ``grads`` dict, under the
names a layer is given (``W1``, ``gamma1``, ...); gradients are written into those
preallocated arrays. In training mode the layers work in preallocated buffers (one set per
batch size) and in place; ``forward`` may overwrite its input there, and ``backward`` its
``dout``. Evaluation mode allocates fresh arrays and changes nothing.
"""

from __future__ import annotations

import numpy as np

#: BatchNorm running-statistics update: running = (1 - momentum) * running + momentum * batch
#: (the convention of PyTorch's BatchNorm1d).
BN_MOMENTUM = 0.1
#: Added to the variance before the square root (Ioffe & Szegedy 2015, Algorithm 1).
BN_EPS = 1e-5


class _Buffers:
    """Arrays reused across training steps, one per (name, shape)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        key = (name, shape)
        array = self._arrays.get(key)
        if array is None or array.dtype != dtype:
            array = self._arrays[key] = np.empty(shape, dtype)
        return array


class Linear:
    """Affine map y = x @ W + b.

    Shapes: x ``(batch, n_in)``, W ``(n_in, n_out)``, b ``(n_out,)``, y ``(batch, n_out)``.
    ``bias_key`` may be None: before BatchNorm a bias is redundant, since BatchNorm subtracts
    the batch mean (Ioffe & Szegedy 2015, section 3.2). ``input_grad=False`` (the first
    layer) skips the gradient with respect to x, which nothing uses.
    """

    def __init__(self, params: dict, grads: dict, weight_key: str, bias_key: str | None,
                 *, input_grad: bool = True):
        self.params, self.grads = params, grads
        self.weight_key, self.bias_key, self.input_grad = weight_key, bias_key, input_grad
        self._buffers = _Buffers()
        self._x: np.ndarray | None = None

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
            np.sum(dout, axis=0, out=self.grads[self.bias_key])
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

    def __init__(self, params: dict, grads: dict, buffers: dict, index: int):
        self.params, self.grads, self.buffers = params, grads, buffers
        self.gamma_key, self.beta_key = f"gamma{index}", f"beta{index}"
        self.mean_key, self.var_key = f"running_mean{index}", f"running_var{index}"
        self._buffers = _Buffers()
        self._x_hat: np.ndarray | None = None
        self._inv_std: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        gamma, beta = self.params[self.gamma_key], self.params[self.beta_key]
        if not train:
            inv_std = 1.0 / np.sqrt(self.buffers[self.var_key] + BN_EPS)
            return (x - self.buffers[self.mean_key]) * (inv_std * gamma) + beta
        n = x.shape[0]
        mean = x.mean(axis=0)
        x_hat = x  # normalized in place: the input buffer is not needed again
        x_hat -= mean
        square = self._buffers.get("tmp", x.shape, x.dtype)
        np.multiply(x_hat, x_hat, out=square)
        var = square.mean(axis=0)
        inv_std = 1.0 / np.sqrt(var + BN_EPS)
        x_hat *= inv_std
        self._x_hat, self._inv_std = x_hat, inv_std
        running_mean, running_var = self.buffers[self.mean_key], self.buffers[self.var_key]
        running_mean *= 1.0 - BN_MOMENTUM
        running_mean += BN_MOMENTUM * mean
        running_var *= 1.0 - BN_MOMENTUM
        running_var += (BN_MOMENTUM * n / max(n - 1, 1)) * var  # unbiased batch variance
        y = np.multiply(x_hat, gamma, out=self._buffers.get("y", x.shape, x.dtype))
        y += beta
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x_hat, n = self._x_hat, dout.shape[0]
        dbeta = np.sum(dout, axis=0, out=self.grads[self.beta_key])
        tmp = self._buffers.get("tmp", dout.shape, dout.dtype)
        np.multiply(dout, x_hat, out=tmp)
        dgamma = np.sum(tmp, axis=0, out=self.grads[self.gamma_key])
        # dx = gamma / sqrt(var + eps) * (dout - mean(dout) - x_hat * mean(dout * x_hat)):
        # the backward pass of Ioffe & Szegedy 2015 (section 3), with mean(dout) = dbeta / n
        # and mean(dout * x_hat) = dgamma / n.
        np.multiply(x_hat, dgamma / n, out=tmp)
        dx = dout
        dx -= tmp
        dx -= dbeta / n
        dx *= self.params[self.gamma_key] * self._inv_std
        return dx


class ReLU:
    """max(0, x) elementwise; the gradient is 1 where x > 0, else 0."""

    def __init__(self) -> None:
        self._buffers = _Buffers()
        self._mask: np.ndarray | None = None

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
        self._y: np.ndarray | None = None

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
        self._y: np.ndarray | None = None

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
        self._mask: np.ndarray | None = None
        self._buffers = _Buffers()

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        if not train:
            return x
        if not (self.frozen and self._mask is not None and self._mask.shape == x.shape):
            keep = self.rng.random(x.shape, dtype=x.dtype) >= self.rate
            self._mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.rate)
        # Not in place: the activation before keeps its output for its own backward pass.
        return np.multiply(x, self._mask, out=self._buffers.get("y", x.shape, x.dtype))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        dout *= self._mask
        return dout


ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}

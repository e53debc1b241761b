"""Layers of the BN-MLP, each with ``forward`` and ``backward``.

Every layer keeps what its backward pass needs from the last forward pass. Parameters live in
the model's ``params`` dict and gradients in its ``grads`` dict, under the names a layer is
given (``W1``, ``gamma1``, ...); a layer holds those names, not copies of the arrays, so
``load_state_dict`` and optimizers that update arrays in place stay consistent.
"""

from __future__ import annotations

import numpy as np

#: BatchNorm running-statistics update: running = (1 - momentum) * running + momentum * batch
#: (the convention of PyTorch's BatchNorm1d).
BN_MOMENTUM = 0.1
#: Added to the variance before the square root (Ioffe & Szegedy 2015, Algorithm 1).
BN_EPS = 1e-5


class Linear:
    """Affine map y = x @ W + b.

    Shapes: x ``(batch, n_in)``, W ``(n_in, n_out)``, b ``(n_out,)``, y ``(batch, n_out)``.
    ``bias_key`` may be None: before BatchNorm a bias is redundant, since BatchNorm subtracts
    the batch mean (Ioffe & Szegedy 2015, section 3.2).
    """

    def __init__(self, params: dict, grads: dict, weight_key: str, bias_key: str | None):
        self.params, self.grads = params, grads
        self.weight_key, self.bias_key = weight_key, bias_key
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self._x = x
        y = x @ self.params[self.weight_key]
        if self.bias_key is not None:
            y += self.params[self.bias_key]
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.grads[self.weight_key] = self._x.T @ dout
        if self.bias_key is not None:
            self.grads[self.bias_key] = dout.sum(axis=0)
        return dout @ self.params[self.weight_key].T


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
        self._x_hat: np.ndarray | None = None
        self._inv_std: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        if train:
            n = x.shape[0]
            mean = x.mean(axis=0)
            centered = x - mean
            var = np.mean(centered * centered, axis=0)
            inv_std = 1.0 / np.sqrt(var + BN_EPS)
            x_hat = centered * inv_std
            self._x_hat, self._inv_std = x_hat, inv_std
            unbiased = var * (n / (n - 1)) if n > 1 else var
            running_mean, running_var = self.buffers[self.mean_key], self.buffers[self.var_key]
            running_mean *= 1.0 - BN_MOMENTUM
            running_mean += BN_MOMENTUM * mean
            running_var *= 1.0 - BN_MOMENTUM
            running_var += BN_MOMENTUM * unbiased
        else:
            inv_std = 1.0 / np.sqrt(self.buffers[self.var_key] + BN_EPS)
            x_hat = (x - self.buffers[self.mean_key]) * inv_std
        return x_hat * self.params[self.gamma_key] + self.params[self.beta_key]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x_hat = self._x_hat
        self.grads[self.beta_key] = dout.sum(axis=0)
        self.grads[self.gamma_key] = np.sum(dout * x_hat, axis=0)
        dx_hat = dout * self.params[self.gamma_key]
        # dx = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / sqrt(var + eps),
        # the batch-norm backward pass of Ioffe & Szegedy 2015, section 3, in closed form.
        return (
            dx_hat - dx_hat.mean(axis=0) - x_hat * np.mean(dx_hat * x_hat, axis=0)
        ) * self._inv_std


class ReLU:
    """max(0, x) elementwise; its gradient is 1 where x > 0, else 0."""

    def __init__(self) -> None:
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        self._mask = x > 0
        return x * self._mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout * self._mask


ACTIVATIONS = {"relu": ReLU}

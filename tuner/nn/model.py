"""The multi-layer perceptron with optional batch normalization."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tuner.nn.initializers import initialize, resolve
from tuner.nn.layers import ACTIVATIONS, BatchNorm1d, Dropout, Linear
from tuner.nn.loss import log_softmax, softmax_cross_entropy


class MLP:
    """Linear -> [BatchNorm1d] -> activation -> [Dropout], per hidden layer, then a Linear output.

    Parameters are in ``params`` keyed ``W1, gamma1, beta1, W2, ..., WL, bL`` (hidden layers
    carry a bias ``bI`` only without BatchNorm); BatchNorm running statistics are in
    ``buffers`` keyed ``running_meanI`` and ``running_varI``. Every parameter is a view into
    one 1-D array ``flat_params`` (weight matrices first, ``n_weight_entries`` of them), and
    every gradient a view into ``flat_grads`` laid out alike; ``param_groups`` and
    ``grad_groups`` cut both into the weight matrices and the rest, for ``optimizer.step``.

    Args:
        n_inputs: number of input features.
        hidden: widths of the hidden layers.
        n_outputs: number of classes.
        activation: ``"relu"``, ``"sigmoid"`` or ``"tanh"``.
        initializer: ``"he"``, ``"he_uniform"``, ``"xavier"``, ``"xavier_uniform"``,
            ``"normal:STD"`` or ``"auto"`` (see :mod:`tuner.nn.initializers`).
        batchnorm: insert BatchNorm1d after each hidden Linear.
        dropout: inverted-dropout rate after each hidden activation, in [0, 1).
        weight_decay: L2 coefficient lambda; the loss gains 0.5 * lambda * sum(W**2) over
            the weight matrices (not biases, gamma or beta), the gradient lambda * W. For
            decoupled weight decay (AdamW) leave it 0 and give it to the optimizer.
        dtype: float dtype of parameters and computation.
        seed: seed of the weight initialization and the dropout masks.

    Raises:
        ValueError: an unknown activation or initializer, or a non-positive size.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: Sequence[int],
        n_outputs: int,
        *,
        activation: str = "relu",
        initializer: str = "he",
        batchnorm: bool = True,
        dropout: float = 0.0,
        weight_decay: float = 0.0,
        dtype: type = np.float32,
        seed: int = 0,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        sizes = [int(n_inputs), *map(int, hidden), int(n_outputs)]
        if min(sizes) < 1:
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        resolve(initializer, activation)
        self.config: dict[str, Any] = {  # JSON-serializable: saved with the weights
            "n_inputs": sizes[0],
            "hidden": sizes[1:-1],
            "n_outputs": sizes[-1],
            "activation": activation,
            "initializer": initializer,
            "batchnorm": bool(batchnorm),
            "dropout": float(dropout),
            "weight_decay": float(weight_decay),
            "dtype": np.dtype(dtype).name,
        }
        self.dtype = np.dtype(dtype)
        self.weight_decay = float(weight_decay)
        init_rng, dropout_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)
        )
        n_layers = len(sizes) - 1
        # Parameter names and shapes in layer order; weight matrices first in the flat buffer.
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(1, n_layers + 1):
            shapes[f"W{i}"] = (sizes[i - 1], sizes[i])
            if i < n_layers and batchnorm:
                shapes[f"gamma{i}"] = shapes[f"beta{i}"] = (sizes[i],)
            else:
                shapes[f"b{i}"] = (sizes[i],)
        self.weight_keys = [f"W{i}" for i in range(1, n_layers + 1)]
        layout = self.weight_keys + [k for k in shapes if k not in self.weight_keys]
        # One buffer each for parameters and gradients; params[k] and grads[k] are views into
        # them, so an optimizer updates every parameter in a few calls (see param_groups).
        self.flat_params = np.zeros(sum(int(np.prod(shapes[k])) for k in layout), self.dtype)
        self.flat_grads = np.zeros_like(self.flat_params)
        self.n_weight_entries = sum(int(np.prod(shapes[k])) for k in self.weight_keys)
        views_p, views_g, offset = {}, {}, 0
        for k in layout:
            size = int(np.prod(shapes[k]))
            views_p[k] = self.flat_params[offset : offset + size].reshape(shapes[k])
            views_g[k] = self.flat_grads[offset : offset + size].reshape(shapes[k])
            offset += size
        self.params: dict[str, np.ndarray] = {k: views_p[k] for k in shapes}
        self.grads: dict[str, np.ndarray] = {k: views_g[k] for k in shapes}
        self.buffers: dict[str, np.ndarray] = {}
        self.layers: list = []
        for i in range(1, n_layers + 1):
            is_hidden = i < n_layers
            self.params[f"W{i}"][...] = initialize(
                initializer, sizes[i - 1], sizes[i], init_rng, self.dtype, activation
            )
            bias_key = None if (is_hidden and batchnorm) else f"b{i}"
            self.layers.append(Linear(self.params, self.grads, f"W{i}", bias_key, input_grad=i > 1))
            if is_hidden:
                if batchnorm:
                    self.params[f"gamma{i}"][...] = 1.0
                    self.buffers[f"running_mean{i}"] = np.zeros(sizes[i], self.dtype)
                    self.buffers[f"running_var{i}"] = np.ones(sizes[i], self.dtype)
                    self.layers.append(BatchNorm1d(self.params, self.grads, self.buffers, i))
                self.layers.append(ACTIVATIONS[activation]())
                if dropout:
                    self.layers.append(Dropout(dropout, dropout_rng))
        nw = self.n_weight_entries
        #: The flat buffers cut into the weight matrices (one view, the entries weight decay
        #: acts on) and everything else, keyed by the names each view holds: pass them to
        #: ``optimizer.step``.
        self.param_groups = {
            tuple(self.weight_keys): self.flat_params[:nw],
            tuple(layout[len(self.weight_keys) :]): self.flat_params[nw:],
        }
        self.grad_groups = {
            tuple(self.weight_keys): self.flat_grads[:nw],
            tuple(layout[len(self.weight_keys) :]): self.flat_grads[nw:],
        }
        self._decay_tmp = np.empty(nw, self.dtype)

    # -- forward and backward -------------------------------------------------------------

    def forward(self, X: np.ndarray, *, train: bool) -> np.ndarray:
        """Logits ``(batch, n_outputs)`` for inputs ``X`` of shape ``(batch, n_inputs)``.

        ``train=True`` uses batch statistics, updates the running ones, draws dropout masks
        and returns a buffer that the next training-mode call overwrites.
        """
        out = np.asarray(X, dtype=self.dtype)
        self.check_inputs(out)
        for layer in self.layers:
            out = layer.forward(out, train)
        return out

    def check_inputs(self, X: np.ndarray) -> None:
        """Raise ``ValueError`` unless ``X`` is ``(batch, n_inputs)``."""
        n_inputs = self.config["n_inputs"]
        if X.ndim != 2 or X.shape[1] != n_inputs:
            raise ValueError(
                f"inputs must have shape (batch, {n_inputs}) for this model, got {X.shape}"
            )

    def _penalty(self) -> float:
        if not self.weight_decay:
            return 0.0
        weights = self.flat_params[: self.n_weight_entries]
        return 0.5 * self.weight_decay * float(np.dot(weights, weights))

    def loss(self, X: np.ndarray, y: np.ndarray, train: bool = True) -> float:
        """Mean softmax cross-entropy plus the weight-decay term, in nats.

        ``train=True`` uses batch statistics in BatchNorm (and updates the running ones).
        """
        data_loss, _ = softmax_cross_entropy(self.forward(X, train=train), y, overwrite=train)
        return data_loss + self._penalty()

    def loss_and_gradients(self, X: np.ndarray, y: np.ndarray) -> float:
        """One training-mode forward and backward pass; fills ``grads``, returns the loss."""
        data_loss, dout = softmax_cross_entropy(self.forward(X, train=True), y, overwrite=True)
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        if self.weight_decay:  # the L2 term's gradient, lambda * W, on every weight matrix
            nw = self.n_weight_entries
            np.multiply(self.flat_params[:nw], self.weight_decay, out=self._decay_tmp)
            self.flat_grads[:nw] += self._decay_tmp
        return data_loss + self._penalty()

    def gradients(self, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of :meth:`loss` (training mode), a dict with the keys of ``params``."""
        self.loss_and_gradients(X, y)
        return {k: self.grads[k].copy() for k in self.params}

    def freeze_dropout(self, frozen: bool = True) -> None:
        """Reuse the last dropout masks in training-mode passes (for gradient checks)."""
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.frozen = frozen

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(batch, n_outputs)`` in evaluation mode."""
        return np.exp(log_softmax(self.forward(X, train=False)))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class indices ``(batch,)`` (int64) in evaluation mode."""
        return np.argmax(self.forward(X, train=False), axis=1)

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and running statistic, keyed by name."""
        return {k: v.copy() for k, v in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state`` into the model in place.

        Raises:
            ValueError: a key is missing or extra, or an array has the wrong shape.
        """
        own = {**self.params, **self.buffers}
        if set(state) != set(own):
            raise ValueError(
                f"state keys differ: missing {sorted(set(own) - set(state))}, "
                f"unexpected {sorted(set(state) - set(own))}"
            )
        for k, target in own.items():
            if np.shape(state[k]) != target.shape:
                raise ValueError(f"{k}: shape {np.shape(state[k])}, expected {target.shape}")
            target[...] = state[k]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the configuration and state to an ``.npz`` file (no pickles)."""
        arrays = {"__config__": np.array(json.dumps(self.config)), **self.state_dict()}
        np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub: a key could be allow_pickle

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MLP:
        """Rebuild a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            config = json.loads(str(data["__config__"]))
            state = {k: data[k] for k in data.files if k != "__config__"}
        hidden = config.pop("hidden")
        model = cls(
            config.pop("n_inputs"),
            hidden,
            config.pop("n_outputs"),
            dtype=np.dtype(config.pop("dtype")),
            **config,
        )
        model.load_state_dict(state)
        return model

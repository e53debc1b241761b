"""The multi-layer perceptron with optional batch normalization."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from tuner.nn.initializers import initialize, resolve
from tuner.nn.layers import ACTIVATIONS, BatchNorm1d, Dropout, Linear
from tuner.nn.loss import log_softmax, softmax_cross_entropy


class MLP:
    """Linear -> [BatchNorm1d] -> activation -> [Dropout], per hidden layer, then a Linear output.

    Parameters are in ``params`` keyed ``W1, gamma1, beta1, W2, ..., WL, bL`` (hidden layers
    carry a bias ``bI`` only without BatchNorm); BatchNorm running statistics are in
    ``buffers`` keyed ``running_meanI`` and ``running_varI``.

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
        self.config = {
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
        init_rng, dropout_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.layers: list = []
        n_layers = len(sizes) - 1
        for i in range(1, n_layers + 1):
            n_in, n_out = sizes[i - 1], sizes[i]
            is_hidden = i < n_layers
            self.params[f"W{i}"] = initialize(initializer, n_in, n_out, init_rng, self.dtype, activation)
            bias_key = None if (is_hidden and batchnorm) else f"b{i}"
            if bias_key:
                self.params[bias_key] = np.zeros(n_out, self.dtype)
            self.layers.append(Linear(self.params, self.grads, f"W{i}", bias_key, input_grad=i > 1))
            if is_hidden:
                if batchnorm:
                    self.params[f"gamma{i}"] = np.ones(n_out, self.dtype)
                    self.params[f"beta{i}"] = np.zeros(n_out, self.dtype)
                    self.buffers[f"running_mean{i}"] = np.zeros(n_out, self.dtype)
                    self.buffers[f"running_var{i}"] = np.ones(n_out, self.dtype)
                    self.layers.append(BatchNorm1d(self.params, self.grads, self.buffers, i))
                self.layers.append(ACTIVATIONS[activation]())
                if dropout:
                    self.layers.append(Dropout(dropout, dropout_rng))
        self.grads.update({k: np.zeros_like(p) for k, p in self.params.items()})
        self.weight_keys = [f"W{i}" for i in range(1, n_layers + 1)]

    # -- forward and backward -------------------------------------------------------------

    def forward(self, X: np.ndarray, *, train: bool) -> np.ndarray:
        """Logits ``(batch, n_outputs)`` for inputs ``X`` of shape ``(batch, n_inputs)``.

        ``train=True`` uses batch statistics, updates the running ones, draws dropout masks
        and returns a buffer that the next training-mode call overwrites.
        """
        out = np.asarray(X, dtype=self.dtype)
        for layer in self.layers:
            out = layer.forward(out, train)
        return out

    def _penalty(self) -> float:
        if not self.weight_decay:
            return 0.0
        return 0.5 * self.weight_decay * sum(
            float(np.sum(self.params[k] * self.params[k])) for k in self.weight_keys
        )

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
        if self.weight_decay:
            for k in self.weight_keys:
                self.grads[k] += self.weight_decay * self.params[k]
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

    def save(self, path) -> None:
        """Write the configuration and state to an ``.npz`` file (no pickles)."""
        np.savez(path, __config__=np.array(json.dumps(self.config)), **self.state_dict())

    @classmethod
    def load(cls, path) -> "MLP":
        """Rebuild a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            config = json.loads(str(data["__config__"]))
            state = {k: data[k] for k in data.files if k != "__config__"}
        hidden = config.pop("hidden")
        model = cls(config.pop("n_inputs"), hidden, config.pop("n_outputs"),
                    dtype=np.dtype(config.pop("dtype")), **config)
        model.load_state_dict(state)
        return model

"""Mini-batch training loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from tuner.nn.loss import check_labels
from tuner.nn.model import MLP
from tuner.nn.optimizers import Optimizer


class DivergedError(ArithmeticError):
    """Training diverged: the loss, a parameter or a BatchNorm running statistic became NaN or
    infinite (too large a learning rate, usually)."""

    def __init__(self, epoch: int, what: str) -> None:
        super().__init__(f"{what} became non-finite at epoch {epoch}")
        self.epoch, self.what = epoch, what


def _first_non_finite(model: MLP) -> str | None:
    if np.isfinite(model.flat_params).all() and all(
        np.isfinite(a).all() for a in model.buffers.values()
    ):
        return None
    for name, array in (*model.params.items(), *model.buffers.items()):
        if not np.isfinite(array).all():
            return name
    return None


def fit(
    model: MLP,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    optimizer: Optimizer,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` on ``(X, y)`` with mini-batches reshuffled every epoch.

    Args:
        X: ``(n_samples, n_inputs)`` features; cast once to the model's dtype.
        y: ``(n_samples,)`` integer labels.
        epochs: passes over the data.
        batch_size: samples per mini-batch; a last partial batch of one sample is dropped
            (BatchNorm needs at least two).
        optimizer: an object with ``step(params, grads)``; it is given the model's
            ``param_groups`` and ``grad_groups`` (views into the flat buffers).
        seed: seed of the shuffling Generator.
        on_epoch: called after each epoch with ``(epoch, mean training loss)``, epochs
            counted from 1; it may raise to stop training (e.g. ``optuna.TrialPruned``).

    Returns:
        The mean training loss of each epoch.

    Raises:
        ValueError: ``X`` is not ``(n_samples, n_inputs)``, or ``y`` not ``(n_samples,)``
            integer labels in ``[0, n_outputs)``.
        DivergedError: a mini-batch loss is not finite (raised at once), or a parameter or
            running statistic is not finite at the end of an epoch.
    """
    history = []
    for epoch, loss in enumerate(
        train_epochs(
            model, X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, seed=seed
        ),
        start=1,
    ):
        history.append(loss)
        if on_epoch is not None:
            on_epoch(epoch, loss)
    return history


def train_epochs(
    model: MLP,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    optimizer: Optimizer,
    seed: int = 0,
) -> Iterator[float]:
    """:func:`fit`, one epoch per step: yields each epoch's mean training loss, so that several
    models can train in lock-step (the K fold models of a cross-validated trial). Arguments
    and errors as for :func:`fit`; the arrays are checked when the first epoch is asked for."""
    X = np.ascontiguousarray(X, dtype=model.dtype)
    model.check_inputs(X)
    check_labels(y, X.shape[0], model.config["n_outputs"])
    y = np.asarray(y, dtype=np.int64)
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    X_batch = np.empty((batch_size, X.shape[1]), model.dtype)
    y_batch = np.empty(batch_size, np.int64)
    n_used = n - 1 if n % batch_size == 1 else n  # a last batch of one sample is dropped
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        total = 0.0
        # Overflow is expected when training diverges; it is detected and raised as
        # DivergedError. (Set per epoch: a generator must not hold NumPy's error state.)
        with np.errstate(over="ignore", invalid="ignore"):
            for b, start in enumerate(range(0, n - 1, batch_size)):
                idx = order[start : start + batch_size]
                xb, yb = X_batch[: idx.size], y_batch[: idx.size]
                # mode="clip" (the indices are a permutation, always in range): the default
                # "raise" buffers the output and is 1.3x to 2x slower.
                np.take(X, idx, axis=0, out=xb, mode="clip")
                np.take(y, idx, out=yb, mode="clip")
                loss = model.loss_and_gradients(xb, yb)
                if not math.isfinite(loss):
                    raise DivergedError(epoch, f"training loss ({loss}) in mini-batch {b}")
                optimizer.step(model.param_groups, model.grad_groups)
                total += loss * idx.size
            # A finite loss can hide an overflowed state (BatchNorm renormalizes huge
            # values): check every parameter and running statistic once per epoch.
            bad = _first_non_finite(model)
        if bad is not None:
            raise DivergedError(epoch, bad)
        yield total / n_used

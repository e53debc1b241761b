"""The NumPy network: layers, initializers, loss, optimizers, the MLP, its training loop and
initialization diagnostics. No Optuna here."""

from tuner.nn.diagnostics import activation_statistics
from tuner.nn.initializers import INITIALIZERS, initialize, weight_std
from tuner.nn.layers import (
    ACTIVATIONS,
    BN_EPS,
    BN_MOMENTUM,
    BatchNorm1d,
    Dropout,
    Linear,
    ReLU,
    Sigmoid,
    Tanh,
)
from tuner.nn.loss import softmax_cross_entropy
from tuner.nn.model import MLP
from tuner.nn.optimizers import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    AdamW,
    Momentum,
    Nesterov,
    RMSprop,
    make_optimizer,
)
from tuner.nn.training import DivergedError, fit, train_epochs

__all__ = [
    "ACTIVATIONS",
    "BN_EPS",
    "BN_MOMENTUM",
    "INITIALIZERS",
    "OPTIMIZERS",
    "SGD",
    "AdaGrad",
    "Adam",
    "AdamW",
    "BatchNorm1d",
    "DivergedError",
    "Dropout",
    "Linear",
    "MLP",
    "Momentum",
    "Nesterov",
    "RMSprop",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "activation_statistics",
    "fit",
    "train_epochs",
    "initialize",
    "make_optimizer",
    "softmax_cross_entropy",
    "weight_std",
]

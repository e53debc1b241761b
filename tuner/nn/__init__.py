"""The NumPy network: layers, initializers, loss, optimizers, the MLP and its training loop."""

from tuner.nn.initializers import initialize, weight_std
from tuner.nn.layers import BN_EPS, BN_MOMENTUM, BatchNorm1d, Linear, ReLU
from tuner.nn.loss import softmax_cross_entropy
from tuner.nn.model import MLP
from tuner.nn.optimizers import SGD, Momentum, make_optimizer
from tuner.nn.training import DivergedError, fit

__all__ = [
    "BN_EPS", "BN_MOMENTUM", "BatchNorm1d", "DivergedError", "Linear", "MLP", "Momentum",
    "ReLU", "SGD", "fit", "initialize", "make_optimizer", "softmax_cross_entropy", "weight_std",
]

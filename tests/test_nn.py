"""The NumPy network: gradients against finite differences, BatchNorm modes, initializers."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.nn import BN_EPS, MLP, Momentum, fit, weight_std
from tuner.nn.loss import softmax_cross_entropy


def numerical_gradient(f, p: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to each entry of ``p`` (in place)."""
    grad = np.zeros_like(p)
    for i in np.ndindex(p.shape):
        old = p[i]
        p[i] = old + h
        plus = f()
        p[i] = old - h
        minus = f()
        p[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


def max_relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest entry-wise difference relative to the gradient's largest entry: unlike a
    per-entry ratio it is not dominated by round-off in entries near zero."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b))))


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_gradients_match_finite_differences(batchnorm, weight_decay):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 5))
    y = rng.integers(0, 3, 10)
    model = MLP(5, [7, 6], 3, batchnorm=batchnorm, weight_decay=weight_decay,
                dtype=np.float64, seed=1)
    # Non-trivial gamma and beta so that their gradients are exercised away from the start.
    for k in model.params:
        if k.startswith(("gamma", "beta")):
            model.params[k][...] = rng.uniform(0.5, 1.5, model.params[k].shape)
    analytic = model.gradients(X, y)
    expected_keys = {"W1", "W2", "W3", "b3"} | (
        {"gamma1", "beta1", "gamma2", "beta2"} if batchnorm else {"b1", "b2"})
    assert set(analytic) == set(model.params) == expected_keys
    for key, p in model.params.items():
        numeric = numerical_gradient(lambda: model.loss(X, y, train=True), p)
        assert max_relative_error(analytic[key], numeric) < 1e-6, key


def test_softmax_cross_entropy_is_stable_and_exact():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    loss, grad = softmax_cross_entropy(logits, np.array([0, 2]))
    expected_second = np.log(np.exp(1) + np.exp(2) + np.exp(3)) - 3.0
    assert loss == pytest.approx((0.0 + expected_second) / 2, rel=1e-12)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)


def test_batchnorm_evaluation_uses_running_statistics():
    rng = np.random.default_rng(3)
    model = MLP(4, [5], 2, batchnorm=True, dtype=np.float64, seed=0)
    X = rng.normal(3.0, 2.0, (64, 4))
    for _ in range(200):
        model.loss(X, np.zeros(64, dtype=np.int64), train=True)
    h = X @ model.params["W1"]
    np.testing.assert_allclose(model.buffers["running_mean1"], h.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.buffers["running_var1"], h.var(axis=0, ddof=1), rtol=1e-6)
    # In evaluation mode a single row is normalized by the running statistics, not its own.
    row = X[:1]
    bn = model.layers[1]
    z = row @ model.params["W1"]
    expected = (z - model.buffers["running_mean1"]) / np.sqrt(model.buffers["running_var1"] + BN_EPS)
    np.testing.assert_allclose(bn.forward(z, train=False), expected, rtol=1e-12)


@pytest.mark.parametrize("name,formula", [
    ("he", lambda n: np.sqrt(2 / n)), ("xavier", lambda n: 1 / np.sqrt(n)),
    ("normal:0.01", lambda n: 0.01)])
def test_initializer_std_follows_formula(name, formula):
    model = MLP(400, [300, 200], 10, initializer=name, seed=0)
    for key, n_in in [("W1", 400), ("W2", 300), ("W3", 200)]:
        assert weight_std(name, n_in) == pytest.approx(formula(n_in))
        assert model.params[key].std() == pytest.approx(formula(n_in), rel=0.05)
        assert model.params[key].dtype == np.float32


def test_save_and_load_restore_identical_predictions(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 6)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    model = MLP(6, [8, 8], 3, seed=2)
    fit(model, X, y, epochs=3, batch_size=16, optimizer=Momentum(0.1), seed=0)
    model.save(tmp_path / "m.npz")
    loaded = MLP.load(tmp_path / "m.npz")
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_training_is_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 6)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    runs = []
    for _ in range(2):
        model = MLP(6, [16, 16], 3, seed=5)
        runs.append(fit(model, X, y, epochs=4, batch_size=32, optimizer=Momentum(0.05), seed=7))
    assert runs[0] == runs[1]

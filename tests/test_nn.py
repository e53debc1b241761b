"""The NumPy network: gradients against finite differences and PyTorch, BatchNorm modes,
initializers, optimizers, divergence, and a real training run on digits."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.data import load_training_data
from tuner.nn import (
    BN_EPS,
    MLP,
    OPTIMIZERS,
    DivergedError,
    Momentum,
    activation_statistics,
    fit,
    make_optimizer,
    weight_std,
)
from tuner.nn.loss import softmax_cross_entropy
from tuner.spec import parse_spec_dict

try:
    import torch
except ImportError:  # torch is an optional extra (bench); the parity tests need it
    torch = None
needs_torch = pytest.mark.skipif(
    torch is None, reason="PyTorch is not installed (pip install -e '.[bench]')"
)


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


def _check_gradients(model: MLP, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    analytic = model.gradients(X, y)
    assert set(analytic) == set(model.params)
    return {
        key: max_relative_error(
            analytic[key], numerical_gradient(lambda: model.loss(X, y, train=True), p)
        )
        for key, p in model.params.items()
    }


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_gradients_match_finite_differences(activation, batchnorm, weight_decay):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 5))
    y = rng.integers(0, 3, 10)
    model = MLP(
        5,
        [7, 6],
        3,
        activation=activation,
        initializer="auto",
        batchnorm=batchnorm,
        weight_decay=weight_decay,
        dtype=np.float64,
        seed=1,
    )
    for k in model.params:  # move gamma, beta and biases away from their initial 1 and 0
        if not k.startswith("W"):
            model.params[k][...] = rng.uniform(0.5, 1.5, model.params[k].shape)
    expected = {"W1", "W2", "W3", "b3"} | (
        {"gamma1", "beta1", "gamma2", "beta2"} if batchnorm else {"b1", "b2"}
    )
    assert set(model.params) == expected
    errors = _check_gradients(model, X, y)
    assert max(errors.values()) < 1e-6, errors


def test_gradients_with_dropout_under_a_fixed_mask():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 6))
    y = rng.integers(0, 4, 12)
    model = MLP(6, [9, 8], 4, dropout=0.3, weight_decay=1e-3, dtype=np.float64, seed=2)
    model.loss(X, y)  # draw the masks
    model.freeze_dropout()
    mask = model.layers[3]._mask
    assert set(np.unique(mask)) == {0.0, 1 / 0.7}  # inverted dropout: kept units scaled
    errors = _check_gradients(model, X, y)
    assert max(errors.values()) < 1e-6, errors


def test_dropout_is_identity_in_evaluation():
    X = np.random.default_rng(0).standard_normal((20, 6))
    with_dropout = MLP(6, [8], 3, dropout=0.5, batchnorm=False, dtype=np.float64, seed=3)
    without = MLP(6, [8], 3, batchnorm=False, dtype=np.float64, seed=3)
    np.testing.assert_array_equal(with_dropout.predict_proba(X), without.predict_proba(X))


def test_softmax_cross_entropy_is_stable_and_exact():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    loss, grad = softmax_cross_entropy(logits, np.array([0, 2]))
    expected_second = np.log(np.exp(1) + np.exp(2) + np.exp(3)) - 3.0
    assert loss == pytest.approx((0.0 + expected_second) / 2, rel=1e-12)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)
    assert logits[0, 0] == 1000.0  # not overwritten unless asked


def test_batchnorm_evaluation_uses_running_statistics():
    rng = np.random.default_rng(3)
    model = MLP(4, [5], 2, batchnorm=True, dtype=np.float64, seed=0)
    X = rng.normal(3.0, 2.0, (64, 4))
    for _ in range(200):
        model.loss(X, np.zeros(64, dtype=np.int64), train=True)
    h = X @ model.params["W1"]
    np.testing.assert_allclose(model.buffers["running_mean1"], h.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.buffers["running_var1"], h.var(axis=0, ddof=1), rtol=1e-6)
    # In evaluation a single row is normalized with the running statistics, not its own.
    z = X[:1] @ model.params["W1"]
    expected = (z - model.buffers["running_mean1"]) / np.sqrt(
        model.buffers["running_var1"] + BN_EPS
    )
    np.testing.assert_allclose(model.layers[1].forward(z, train=False), expected, rtol=1e-12)


@needs_torch
def test_forward_and_gradients_equal_torch():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((32, 12))
    y = rng.integers(0, 5, 32)
    ours = MLP(12, [16, 8], 5, dtype=np.float64, seed=5)
    layers = []
    for i, (n_in, n_out) in enumerate([(12, 16), (16, 8)], start=1):
        lin = torch.nn.Linear(n_in, n_out, bias=False).double()
        lin.weight.data = torch.from_numpy(ours.params[f"W{i}"].T.copy())
        layers += [lin, torch.nn.BatchNorm1d(n_out, eps=BN_EPS).double(), torch.nn.ReLU()]
    out = torch.nn.Linear(8, 5).double()
    out.weight.data = torch.from_numpy(ours.params["W3"].T.copy())
    out.bias.data = torch.from_numpy(ours.params["b3"].copy())
    net = torch.nn.Sequential(*layers, out).train()

    logits = net(torch.from_numpy(X))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    twin = MLP(12, [16, 8], 5, dtype=np.float64, seed=5)  # the same weights, for the forward pass
    np.testing.assert_allclose(
        twin.forward(X, train=True), logits.detach().numpy(), atol=1e-5, rtol=0
    )
    assert ours.loss_and_gradients(X, y) == pytest.approx(
        loss.item(), abs=1e-5
    )  # one training pass each
    pairs = {
        "W1": layers[0].weight.grad.T,
        "gamma1": layers[1].weight.grad,
        "beta1": layers[1].bias.grad,
        "W2": layers[3].weight.grad.T,
        "gamma2": layers[4].weight.grad,
        "beta2": layers[4].bias.grad,
        "W3": out.weight.grad.T,
        "b3": out.bias.grad,
    }
    assert set(pairs) == set(ours.params)
    for key, theirs in pairs.items():
        np.testing.assert_allclose(ours.grads[key], theirs.numpy(), atol=1e-5, rtol=0, err_msg=key)
    # Evaluation mode uses the running statistics, which one training pass moved alike.
    for i, bn in ((1, layers[1]), (2, layers[4])):
        np.testing.assert_allclose(
            ours.buffers[f"running_mean{i}"], bn.running_mean.numpy(), atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(
            ours.buffers[f"running_var{i}"], bn.running_var.numpy(), atol=1e-5, rtol=0
        )
    with torch.no_grad():
        torch_eval = torch.softmax(net.eval()(torch.from_numpy(X[:3])), dim=1).numpy()
    np.testing.assert_allclose(ours.predict_proba(X[:3]), torch_eval, atol=1e-5, rtol=0)


TORCH_OPTIMIZERS = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "nesterov": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
    "adagrad": lambda p, lr: torch.optim.Adagrad(p, lr=lr, eps=1e-8),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.99, eps=1e-8),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "adamw": lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.1),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_steps_equal_torch(name):
    rng = np.random.default_rng(6)
    p0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(5)]
    options = {"weight_decay": 0.1, "decay_keys": ["W1"]} if name == "adamw" else {}
    ours = make_optimizer(name, 0.05, **options)
    params = {"W1": p0.copy()}
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    theirs = TORCH_OPTIMIZERS[name]([tp], 0.05)
    for g in grads:
        ours.step(params, {"W1": g})
        tp.grad = torch.from_numpy(g.copy())
        theirs.step()
    np.testing.assert_allclose(params["W1"], tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_weight_decay_is_l2_in_the_loss_and_decoupled_in_adamw():
    rng = np.random.default_rng(7)
    X, y = rng.standard_normal((16, 4)), rng.integers(0, 2, 16)
    plain = MLP(4, [5], 2, dtype=np.float64, seed=0)
    decayed = MLP(4, [5], 2, weight_decay=0.5, dtype=np.float64, seed=0)
    penalty = 0.25 * sum(np.sum(plain.params[k] ** 2) for k in ("W1", "W2"))
    assert decayed.loss(X, y) - plain.loss(X, y) == pytest.approx(penalty, rel=1e-12)
    g_plain, g_decayed = plain.gradients(X, y), decayed.gradients(X, y)
    np.testing.assert_allclose(
        g_decayed["W1"] - g_plain["W1"], 0.5 * plain.params["W1"], atol=1e-12
    )
    np.testing.assert_array_equal(
        g_decayed["gamma1"], g_plain["gamma1"]
    )  # not on gamma, beta, biases
    np.testing.assert_array_equal(g_decayed["b2"], g_plain["b2"])
    # AdamW with zero gradients: weight matrices shrink by lr * lambda, the rest stays.
    params = {"W1": np.ones((2, 2)), "b1": np.ones(2)}
    make_optimizer("adamw", 0.1, weight_decay=0.5, decay_keys=["W1"]).step(
        params, {k: np.zeros_like(v) for k, v in params.items()}
    )
    np.testing.assert_allclose(params["W1"], 0.95)
    np.testing.assert_array_equal(params["b1"], 1.0)


INITIALIZER_FORMULAS = {
    "he": lambda n_in, n_out: np.sqrt(2 / n_in),
    "he_uniform": lambda n_in, n_out: np.sqrt(2 / n_in),
    "xavier": lambda n_in, n_out: 1 / np.sqrt(n_in),
    "xavier_uniform": lambda n_in, n_out: np.sqrt(2 / (n_in + n_out)),
    "normal:0.01": lambda n_in, n_out: 0.01,
}


@pytest.mark.parametrize("name", sorted(INITIALIZER_FORMULAS))
def test_initializer_std_within_5_percent_of_formula(name):
    sizes = [400, 300, 200, 10]
    model = MLP(sizes[0], sizes[1:-1], sizes[-1], initializer=name, seed=0)
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        formula = INITIALIZER_FORMULAS[name](n_in, n_out)
        assert weight_std(name, n_in, n_out) == pytest.approx(formula)
        assert model.params[f"W{i}"].std() == pytest.approx(formula, rel=0.05), f"W{i}"
        assert model.params[f"W{i}"].dtype == np.float32


def test_auto_initializer_follows_the_activation():
    assert weight_std("auto", 100, activation="relu") == pytest.approx(np.sqrt(2 / 100))
    assert weight_std("auto", 100, activation="tanh") == pytest.approx(0.1)
    assert weight_std("auto", 100, activation="sigmoid") == pytest.approx(0.1)


@pytest.mark.parametrize("activation,good", [("relu", "he"), ("tanh", "xavier")])
def test_small_std_collapses_activations_while_scaled_init_keeps_them(activation, good):
    X = np.random.default_rng(0).standard_normal((1000, 100))
    last = {}
    for init in (good, "normal:0.01"):
        model = MLP(
            100,
            [100] * 5,
            10,
            activation=activation,
            initializer=init,
            batchnorm=False,
            dtype=np.float64,
            seed=0,
        )
        last[init] = activation_statistics(model, X)[-1]
    assert last["normal:0.01"]["std"] < 1e-4  # collapsed: about 0.01 * sqrt(100 * k) per layer
    assert last[good]["std"] > 0.2  # healthy spread in the fifth layer
    assert sum(last[good]["histogram"]["counts"]) == 1000 * 100


def test_activation_statistics_leave_running_statistics_untouched():
    model = MLP(10, [8], 2, seed=0)
    before = model.state_dict()
    activation_statistics(model, np.random.default_rng(0).standard_normal((50, 10)))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_divergence_raises_at_once():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)).astype(np.float32) * 100
    y = rng.integers(0, 3, 200)
    model = MLP(6, [32], 3, batchnorm=False, seed=0)
    epochs_seen = []
    with pytest.raises(DivergedError) as info:
        fit(
            model,
            X,
            y,
            epochs=50,
            batch_size=20,
            optimizer=Momentum(1e4),
            seed=0,
            on_epoch=lambda e, loss: epochs_seen.append(e),
        )
    assert info.value.epoch == 1 and epochs_seen == []  # stopped inside the first epoch
    assert info.value.what.startswith("training loss")


def test_divergence_hidden_by_batchnorm_is_caught_at_the_epoch_end():
    """With BatchNorm a huge learning rate can overflow the running variance while the
    training loss stays finite; the end-of-epoch check catches it."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6)).astype(np.float32)
    y = rng.integers(0, 3, 200)
    model = MLP(6, [32, 32], 3, seed=0)
    with pytest.raises(DivergedError) as info:
        fit(model, X, y, epochs=30, batch_size=20, optimizer=Momentum(50.0), seed=0)
    assert "non-finite" in str(info.value)


def test_save_and_load_restore_identical_predictions(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 6)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    model = MLP(6, [8, 8], 3, activation="tanh", dropout=0.2, seed=2)
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
        model = MLP(6, [16, 16], 3, dropout=0.1, seed=5)
        runs.append(fit(model, X, y, epochs=4, batch_size=32, optimizer=Momentum(0.05), seed=7))
    assert runs[0] == runs[1]


def test_bn_mlp_reaches_097_validation_accuracy_on_digits():
    data = load_training_data(parse_spec_dict({"data": {"source": "sklearn:digits"}}).data)
    model = MLP(64, [512, 512], 10, weight_decay=1e-4, seed=0)
    fit(
        model,
        data.X_train,
        data.y_train,
        epochs=30,
        batch_size=32,
        optimizer=Momentum(0.03),
        seed=0,
    )
    accuracy = np.mean(model.predict(data.X_validation) == data.y_validation)
    assert accuracy >= 0.97


def test_parameters_and_gradients_are_views_into_one_flat_buffer_each():
    model = MLP(5, [7, 6], 3, dtype=np.float64, seed=0)
    offset = 0
    for k in model.weight_keys:  # the weight matrices first, in layer order
        size = model.params[k].size
        assert np.shares_memory(model.params[k], model.flat_params[offset : offset + size])
        offset += size
    assert offset == model.n_weight_entries
    assert sum(p.size for p in model.params.values()) == model.flat_params.size
    for k, p in model.params.items():
        assert np.shares_memory(p, model.flat_params) and p.base is not None, k
        assert np.shares_memory(model.grads[k], model.flat_grads), k
    X, y = np.random.default_rng(0).standard_normal((10, 5)), np.arange(10) % 3
    model.loss_and_gradients(X, y)
    np.testing.assert_array_equal(
        model.flat_grads, np.concatenate([model.grads[k].ravel() for k in _layout(model)])
    )


def _layout(model):
    return model.weight_keys + [k for k in model.params if k not in model.weight_keys]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_step_over_the_flat_groups_equals_steps_per_parameter(name):
    """fit() steps the two flat groups; the result is that of stepping every parameter on
    its own (weight decay included: L2 in the loss, or decoupled in AdamW on weights only)."""
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    decay = name == "adamw"
    models = [
        MLP(5, [7, 6], 3, weight_decay=0.0 if decay else 1e-2, dtype=np.float64, seed=1)
        for _ in range(2)
    ]
    options = {"weight_decay": 0.1, "decay_keys": models[0].weight_keys} if decay else {}
    grouped, per_key = (make_optimizer(name, 0.05, **options) for _ in range(2))
    for _ in range(3):
        models[0].loss_and_gradients(X, y)
        grouped.step(models[0].param_groups, models[0].grad_groups)
        models[1].loss_and_gradients(X, y)
        per_key.step(models[1].params, models[1].grads)
    for k in models[0].params:
        np.testing.assert_allclose(
            models[0].params[k], models[1].params[k], rtol=1e-12, atol=1e-14, err_msg=k
        )


def test_adamw_refuses_to_decay_part_of_a_group():
    model = MLP(5, [7], 3, seed=0)
    optimizer = make_optimizer("adamw", 0.01, weight_decay=0.1, decay_keys=["W1"])
    with pytest.raises(ValueError, match="decay_keys cover only part of the parameter group"):
        optimizer.step(model.param_groups, model.grad_groups)

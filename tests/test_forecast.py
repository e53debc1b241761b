"""The forecast of the test score before the test split is opened (BBC-CV, tuner/forecast.py):
the weighted metrics it resamples, the bias correction itself, and the stored validation
predictions it reads, end to end through a study, show and finalize."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from conftest import invoke_tuner, write_spec
from sklearn import metrics as skm

import tuner
from tuner import schema
from tuner.forecast import bbc_forecast, study_forecast, weighted_metric
from tuner.metrics import classification_metrics, true_class_log_probability

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")


def _trials(rng, n_trials: int, n: int, n_classes: int):
    """Random logits of ``n_trials`` trials on ``n`` rows, and labels where class 3 is absent."""
    logits = rng.normal(size=(n_trials, n, n_classes))
    y = rng.choice([k for k in range(n_classes) if k != 3], size=n)
    return logits, y


@pytest.mark.parametrize("metric", METRICS)
def test_weighted_metric_is_the_metric_of_the_rows_repeated_by_their_weights(metric):
    """Ones give classification_metrics; integer weights give it on the rows repeated that
    many times (a bootstrap sample), with class 3 never true and some classes left out.
    Macro-F1 averages over the classes true or predicted in those rows, as scikit-learn's
    default labels do (classification_metrics, over all 5, counts class 3 as 0 instead)."""
    rng = np.random.default_rng(0)
    logits, y = _trials(rng, 3, 40, 5)
    predicted = logits.argmax(axis=2)
    log_p = np.stack([true_class_log_probability(z, y) for z in logits])
    counts = rng.integers(0, 3, size=(4, 40)).astype(float)
    counts[3, y == 0] = 0  # one sample without class 0 at all
    weights = np.vstack([np.ones(40), counts])
    got = weighted_metric(metric, predicted, log_p, y, 5, weights)
    assert got.shape == (3, 5)
    for c in range(3):
        for b in range(5):
            rows = np.repeat(np.arange(40), weights[b].astype(int))
            if metric == "macro_f1":
                want = skm.f1_score(y[rows], predicted[c][rows], average="macro", zero_division=0)
            else:
                want = classification_metrics(logits[c][rows], y[rows], 5)[metric]
            assert got[c, b] == pytest.approx(want, rel=1e-12), (c, b)


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "macro_f1"])
def test_a_perfect_trial_forecasts_1_even_where_samples_leave_a_class_out(metric):
    """6 validation rows of 3 classes: many bootstrap samples leave all of a class out of
    bag. A perfect trial still forecasts 1.0 (macro-F1 over all 3 classes gave 0.59)."""
    y = np.array([0, 0, 1, 1, 2, 2])
    f = bbc_forecast(metric, "maximize", y[None], None, y, 3, seed=0)
    assert f["value"] == 1.0 and f["ci95"] == [1.0, 1.0]


def test_the_interval_holds_the_forecast_when_nearly_every_sample_scores_the_same():
    """36 rows, a perfect trial and one with 4 errors: nearly every sample selects the perfect
    one and scores 1.0, so the 2.5th percentile is 1.0 while the mean is below it; the
    interval is widened to hold the forecast."""
    y = np.arange(36) % 3
    worse = y.copy()
    worse[:4] = (worse[:4] + 1) % 3
    f = bbc_forecast("accuracy", "maximize", np.stack([worse, y]), None, y, 3, seed=0)
    assert f["value"] < 1.0 and f["ci95"] == [f["value"], 1.0]


def test_weighted_metric_refuses_log_loss_without_probabilities_and_unknown_metrics():
    y = np.array([0, 1])
    with pytest.raises(ValueError, match="log_loss needs the true-class log-probabilities"):
        weighted_metric("log_loss", np.zeros((1, 2), int), None, y, 2, np.ones((1, 2)))
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        weighted_metric("auc", np.zeros((1, 2), int), None, y, 2, np.ones((1, 2)))


def test_the_forecast_removes_the_winners_curse_of_trials_that_guess():
    """200 trials that guess one of 10 classes at random on 300 validation rows: each scores
    0.1 on new data, but the best of them scores 0.15 on validation. The forecast is within a
    fifth of that optimism of 0.1 (0.0995 here), and its interval covers 0.1."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, size=300)
    predicted = rng.integers(0, 10, size=(200, 300))
    best_validation = weighted_metric("accuracy", predicted, None, y, 10, np.ones((1, 300))).max()
    f = bbc_forecast("accuracy", "maximize", predicted, None, y, 10, seed=0)
    assert best_validation == 0.15  # the winner's curse
    assert abs(f["value"] - 0.1) < 0.2 * (best_validation - 0.1), (f, best_validation)
    assert f["ci95"][0] <= 0.1 <= f["ci95"][1]
    assert (f["n_trials"], f["n_validation_rows"], f["n_bootstrap"]) == (200, 300, 1000)
    assert f == bbc_forecast("accuracy", "maximize", predicted, None, y, 10, seed=0)  # seeded


def test_one_trial_forecasts_its_own_validation_score_and_ties_go_to_the_first_trial():
    """No selection, no correction: one trial's forecast is its validation accuracy, up to the
    bootstrap's noise. Two identical trials and a worse one: the worse is never selected."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=500)
    good = np.where(rng.random(500) < 0.8, y, (y + 1) % 4)
    f = bbc_forecast("accuracy", "maximize", good[None], None, y, 4, seed=0)
    assert f["value"] == pytest.approx(np.mean(good == y), abs=0.002)
    bad = (y + 1) % 4  # always wrong
    f3 = bbc_forecast("accuracy", "maximize", np.stack([good, good, bad]), None, y, 4, seed=0)
    assert f3["value"] == f["value"]  # the same bootstrap samples, the same selected scores


def test_log_loss_is_forecast_by_selecting_the_lowest():
    """Under log loss (minimized) the selected trial is the one with the lowest loss: a
    confident right trial and a uniform one forecast the confident one's loss."""
    y = np.arange(200) % 2
    confident = np.full((200,), np.log(0.9))
    uniform = np.full((200,), np.log(0.5))
    log_p = np.stack([uniform, confident])
    predicted = np.stack([y, y])
    f = bbc_forecast("log_loss", "minimize", predicted, log_p, y, 2, seed=0)
    assert f["value"] == pytest.approx(-np.log(0.9), rel=1e-12)
    assert f["ci95"] == pytest.approx([-np.log(0.9)] * 2, rel=1e-12)


def test_each_trial_stores_its_last_epochs_validation_predictions_and_show_forecasts(tmp_path):
    """A study in this process: every complete and pruned trial stores the predicted class of
    each validation row, the best trial's equal to its saved model's; the study stores the
    validation labels; show --json and show print the forecast; finalize records that very
    forecast, made before the test split was opened, and show then puts it beside the test."""
    spec = write_spec(tmp_path, n_trials=8, epochs=4)
    url = f"sqlite:///{tmp_path / 't.db'}"
    api = tuner.create_study(spec, storage=url)
    api.optimize()
    study = api.optuna_study
    y, n_classes = schema.validation_labels(study)
    assert np.array_equal(y, api.data.y_validation) and n_classes == 10
    finished = study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    assert len(finished) == 8
    for t in finished:
        predicted, log_p = schema.validation_predictions(t)
        assert predicted.shape == (y.size,) and log_p is None
        assert np.mean(predicted == y) == pytest.approx(
            t.value if t.value is not None else list(t.intermediate_values.values())[-1]
        )
    stored = study.best_trial.user_attrs[schema.VALIDATION_PREDICTIONS_ATTR]
    assert len(json.dumps(stored)) == 4 * -(-y.size // 3) + 45  # 4/3 bytes a row, base64
    best_predicted, _ = schema.validation_predictions(study.best_trial)
    model_predicted = api.best_model().predict_proba(api.data.X_validation).argmax(axis=1)
    assert np.array_equal(best_predicted, model_predicted)

    forecast = api.forecast()
    assert forecast == study_forecast(study)
    n_complete = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    assert forecast["n_trials"] == n_complete and forecast["n_validation_rows"] == y.size
    low, high = forecast["ci95"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    predicted = np.stack([schema.validation_predictions(t)[0] for t in complete])
    seed = api.spec.seed  # the forecast's bootstrap is seeded with the spec's study.seed
    assert forecast["n_test_rows"] == api.data.n_test == 359  # recorded at creation
    assert forecast == bbc_forecast(
        "accuracy", "maximize", predicted, None, y, 10, seed=seed, n_test=359
    )
    assert forecast["value"] < study.best_value  # the winner's curse taken out
    shown = json.loads(
        invoke_tuner("study", "show", "tiny", "--storage", url, "--json", cwd=tmp_path).stdout
    )
    assert shown["forecast"] == forecast
    text = invoke_tuner("study", "show", "tiny", "--storage", url, cwd=tmp_path).stdout
    line = (
        f"forecast of the best trial's test accuracy: {forecast['value']:.4f} (95% interval "
        f"{low:.4f}-{high:.4f}; BBC-CV over {n_complete} complete trials)"
    )
    assert line in text, text

    record = api.finalize()
    assert record["forecast"] == forecast
    test = record["metrics"]["accuracy"]
    where = "inside" if low <= test <= high else "outside"
    text = invoke_tuner("study", "show", "tiny", "--storage", url, cwd=tmp_path).stdout
    assert (
        f"forecast made without the test split: {forecast['value']:.4f} (95% interval "
        f"{low:.4f}-{high:.4f}; BBC-CV over {n_complete} complete trials); test accuracy "
        f"{test:.4f}, {where} the interval"
    ) in text, text
    assert "forecast of the best trial" not in text
    assert (
        json.loads(
            invoke_tuner("study", "show", "tiny", "--storage", url, "--json", cwd=tmp_path).stdout
        )["forecast"]
        == forecast
    )


def test_a_study_without_stored_predictions_says_why_it_has_no_forecast(tmp_path):
    """Trials of an earlier tuner stored no predictions: the forecast says so, and finalize
    still records the test result."""
    spec = write_spec(tmp_path, n_trials=3, epochs=2)
    url = f"sqlite:///{tmp_path / 't.db'}"
    api = tuner.create_study(spec, storage=url)
    assert api.forecast() == {"value": None, "reason": "no complete trial yet"}
    api.optimize()
    with sa.create_engine(url).begin() as conn:  # the trials as an earlier tuner left them
        deleted = conn.execute(
            sa.text("DELETE FROM trial_user_attributes WHERE key = :k"),
            {"k": schema.VALIDATION_PREDICTIONS_ATTR},
        ).rowcount
    assert deleted == 3
    api = tuner.load_study("tiny", storage=url)  # not the cached trials of this one
    n = len(api.optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    reason = (
        f"{n} of {n} complete trials have no stored validation predictions (trials of an "
        "earlier tuner, or added by hand)"
    )
    assert api.forecast() == {"value": None, "reason": reason}
    text = invoke_tuner("study", "show", "tiny", "--storage", url, cwd=tmp_path).stdout
    assert f"forecast of the best trial's test accuracy: none ({reason})" in text, text
    record = api.finalize()
    assert record["forecast"]["value"] is None and 0 <= record["metrics"]["accuracy"] <= 1


@pytest.mark.parametrize("n_validation", [100, 1000])
def test_with_the_test_size_the_interval_covers_the_test_score_95_percent_of_the_time(
    n_validation,
):
    """One trial of true accuracy 0.9, 100 test rows, 300 simulated studies: the prediction
    interval (n_test given) covers the simulated test accuracy about 95% of the time, with 100
    validation rows as with 1,000 (as with data.folds). The interval of the true score alone
    is narrow on 1,000 rows and misses the test rows' own noise most of the time."""
    rng = np.random.default_rng(7)
    y = np.zeros(n_validation, dtype=np.int64)
    covered = {"prediction": 0, "true score": 0}
    for sim in range(300):
        predicted = np.where(rng.random(n_validation) < 0.9, 0, 1)[None, :]
        test = rng.binomial(100, 0.9) / 100
        for kind, n_test in (("prediction", 100), ("true score", None)):
            f = bbc_forecast("accuracy", "maximize", predicted, None, y, 2, seed=sim, n_test=n_test)
            low, high = f["ci95"]
            covered[kind] += low <= test <= high
            assert f["n_test_rows"] == n_test
    rates = {k: v / 300 for k, v in covered.items()}
    print(f"figures: {n_validation} validation rows, coverage {rates}")
    assert 0.90 <= rates["prediction"] <= 0.98, rates
    if n_validation == 1000:
        assert rates["true score"] < 0.7, rates


def test_a_trial_right_on_every_validation_row_still_allows_test_errors():
    """Wine-sized: 36 validation rows all right. Without the test size the interval is
    [1, 1]; with 36 test rows it reaches 2 errors (Jeffreys' half row each way), and its
    bounds are attainable test accuracies (multiples of 1/36)."""
    y = np.repeat(np.arange(3), 12)
    alone = bbc_forecast("accuracy", "maximize", y[None], None, y, 3, seed=0)
    assert alone["value"] == 1.0 and alone["ci95"] == [1.0, 1.0]
    f = bbc_forecast("accuracy", "maximize", y[None], None, y, 3, seed=0, n_test=36)
    low, high = f["ci95"]
    assert f["value"] == 1.0 and high == 1.0 and low <= 34 / 36
    assert low * 36 == pytest.approx(round(low * 36), abs=1e-9)

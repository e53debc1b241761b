"""``study.metric``: each metric scored on validation every epoch (what the sampler and the
pruner see), the direction it is optimized in, and the locked test record of all of them."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from conftest import invoke_tuner, run_tuner, write_spec
from sklearn import metrics as skm

import tuner
from tuner import schema
from tuner.data import load_holdout_data
from tuner.forecast import bbc_forecast
from tuner.report import _validation_accuracy, write_report
from tuner.spec import load_spec

SKLEARN = {
    "accuracy": lambda y, p: skm.accuracy_score(y, p.argmax(axis=1)),
    "balanced_accuracy": lambda y, p: skm.balanced_accuracy_score(y, p.argmax(axis=1)),
    "macro_f1": lambda y, p: skm.f1_score(
        y, p.argmax(axis=1), average="macro", labels=range(p.shape[1]), zero_division=0
    ),
    "log_loss": lambda y, p: skm.log_loss(y, p, labels=range(p.shape[1])),
}


def _check_study(study: optuna.Study, metric: str, n_trials: int) -> None:
    """Direction, pruning, per-epoch curves: what the sampler and pruner saw was ``metric``."""
    direction = "minimize" if metric == "log_loss" else "maximize"
    assert study.direction.name.lower() == direction
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(complete) + len(pruned) == n_trials and pruned, [t.state for t in study.trials]
    assert study.best_value == (min if direction == "minimize" else max)(t.value for t in complete)
    for t in complete + pruned:  # the intermediate values are the metric's per-epoch curve
        curve = t.user_attrs[schema.validation_curve_attr(metric)]
        assert curve == pytest.approx(list(t.intermediate_values.values()), rel=1e-5)


@pytest.mark.parametrize("metric", ["balanced_accuracy", "macro_f1", "log_loss"])
def test_each_metric_end_to_end(tmp_path, metric):
    """optimize (TPE, median pruning), finalize, export, report and show, on breast_cancer
    (212 malignant, 357 benign), where accuracy and balanced accuracy differ; in this process,
    through the Python API that `start`, `finalize`, `export` and `report` call (the CLI is in
    test_a_log_loss_study_through_the_cli)."""
    spec = write_spec(tmp_path, n_trials=8, epochs=4, source="sklearn:breast_cancer", metric=metric)
    url = f"sqlite:///{tmp_path / 't.db'}"
    api = tuner.create_study(spec, storage=url)
    api.optimize()
    study = api.optuna_study
    _check_study(study, metric, 8)

    # The best trial's value is the metric of its saved model on the validation split.
    model, data = api.best_model(), api.data
    p = model.predict_proba(data.X_validation)
    assert study.best_value == pytest.approx(SKLEARN[metric](data.y_validation, p), rel=1e-6)

    record = api.finalize()
    assert record["metric"] == metric and record["validation_value"] == study.best_value
    holdout = load_holdout_data(load_spec(spec).data)
    p_test = model.predict_proba(holdout.X_test)
    for name, score in SKLEARN.items():  # all four metrics on the test split, whatever the study's
        assert record["metrics"][name] == pytest.approx(score(holdout.y_test, p_test), rel=1e-6)
    assert record["gap"] == pytest.approx(record["validation_value"] - record["metrics"][metric])

    table = api.trials_dataframe().set_index("number")
    assert table["value"].to_dict() == pytest.approx({t.number: t.value for t in study.trials})

    # The report's figure has an accuracy axis: the trial's validation accuracy goes on it, from
    # its stored predictions, not its value of the study's metric.
    assert _validation_accuracy(study, record["trial_number"]) == pytest.approx(
        float(np.mean(p.argmax(axis=1) == data.y_validation)), abs=0
    )
    write_report(study, api.storage, tmp_path / "r")
    page = (tmp_path / "r" / "report.html").read_text()
    label = metric.replace("_", " ")
    assert f"validation {label} in brackets" in page
    assert (
        f"trial {record['trial_number']}, validation {label} {record['validation_value']:.4f}"
        in page
    )
    shown = invoke_tuner("study", "show", "tiny", "--storage", url, cwd=tmp_path)
    gap = (
        f"validation {label} {record['validation_value']:.4f}, test "
        f"{record['metrics'][metric]:.4f}, gap (validation - test) "
    )
    assert f"{gap}{record['gap']:+.4f}" in shown.stdout, shown.stdout
    forecast = record["forecast"]  # the study's metric, in its direction
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert forecast["n_trials"] == len(complete)
    stored = [schema.validation_predictions(t) for t in complete]
    log_p = np.stack([lp for _, lp in stored]) if metric == "log_loss" else None
    assert forecast == bbc_forecast(
        metric,
        study.direction.name.lower(),
        np.stack([p for p, _ in stored]),
        log_p,
        data.y_validation,
        len(data.classes),
        seed=api.spec.seed,
        n_test=data.n_test,
    )


def test_a_log_loss_study_through_the_cli(tmp_path):
    spec = write_spec(tmp_path, n_trials=6, epochs=4, metric="log_loss")
    url = f"sqlite:///{tmp_path / 't.db'}"
    started = run_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    _check_study(study, "log_loss", 6)
    assert f"validation log_loss {study.best_value:.4f}" in started.stdout
    finalized = run_tuner("study", "finalize", "tiny", "--storage", url, cwd=tmp_path)
    assert finalized.returncode == 0, finalized.stderr
    assert finalized.stdout.count("validation log loss") == 1, finalized.stdout
    assert finalized.stdout.count("gap (validation - test)") == 1, finalized.stdout
    shown = run_tuner("study", "show", "tiny", "--storage", url, "--json", cwd=tmp_path)
    info = json.loads(shown.stdout)
    assert (info["direction"], info["metric"], info["final"]["metric"]) == (
        "minimize",
        "log_loss",
        "log_loss",
    )
    assert info["final"]["validation_value"] == study.best_value


@pytest.mark.parametrize(
    "text,message",
    [
        ('metric = "f1"', "study.metric: must be one of"),
        ('metric = "LOG_LOSS"', "study.metric: must be one of"),
    ],
)
def test_an_unknown_metric_exits_2_naming_the_key(tmp_path, text, message):
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace('metric = "accuracy"', text))
    result = invoke_tuner("study", "start", str(spec), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tuner.db").exists()


def test_changing_the_metric_on_resume_exits_2_naming_the_key(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    first = tuner.create_study(write_spec(tmp_path, n_trials=2, epochs=2), storage=url)
    first.optimize()
    changed = write_spec(tmp_path, n_trials=2, epochs=2, metric="log_loss")
    result = invoke_tuner("study", "start", str(changed), "--storage", url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "study.metric" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 2

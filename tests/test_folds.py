"""K-fold cross-validation (``data.folds``): the split, the lock-step trial, the refit that
finalize evaluates, the fingerprint, and the combinations refused."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from conftest import invoke_tuner, write_spec
from optuna.trial import TrialState

import tuner
from tuner import schema
from tuner.data.dataset import DataSpec, load_training_data
from tuner.data.split import stratified_split
from tuner.metrics import metric_value
from tuner.nn import MLP
from tuner.note import study_note
from tuner.objective import Objective, trial_seeds
from tuner.search import suggest

FOLDS = "folds = 3\nsplit = { test = 0.2 }"


def test_folds_are_stratified_disjoint_and_cover_every_non_test_row():
    y = np.repeat(np.arange(3), [50, 31, 12])
    split = stratified_split(y, {"test": 0.2}, seed=4, folds=5)
    assert np.array_equal(split.train, split.validation)
    assert np.array_equal(np.sort(np.concatenate([split.train, split.test])), np.arange(y.size))
    sizes = np.bincount(split.folds)
    assert sizes.size == 5 and sizes.max() - sizes.min() <= 1
    for label, n in zip(range(3), (40, 25, 10), strict=True):  # 80% of each class
        per_fold = np.bincount(split.folds[y[split.train] == label], minlength=5)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1
    again = stratified_split(y, {"test": 0.2}, seed=4, folds=5)
    assert np.array_equal(again.folds, split.folds)
    other = stratified_split(y, {"test": 0.2}, seed=5, folds=5)
    assert not np.array_equal(other.folds, split.folds)
    parts = split.parts()
    assert list(parts) == ["fold 1", "fold 2", "fold 3", "fold 4", "fold 5", "test"]


def test_the_fingerprint_covers_the_folds():
    spec = DataSpec(
        source="sklearn:wine", target=None, split={"test": 0.2}, scaling="standard", seed=0
    )
    prints = {
        folds: load_training_data(DataSpec(**{**spec.__dict__, "folds": folds})).fingerprint
        for folds in (3, 4)
    }
    single = DataSpec(**{**spec.__dict__, "split": {"train": 0.6, "validation": 0.2, "test": 0.2}})
    assert len({*prints.values(), load_training_data(single).fingerprint}) == 3


def test_a_cross_validated_trial_scores_the_mean_of_its_folds_and_saves_the_refit(tmp_path):
    url = f"sqlite:///{tmp_path / 'cv.db'}"
    spec_path = write_spec(tmp_path, n_trials=4, epochs=4, data_extra=FOLDS, pruner='name = "none"')
    study = tuner.create_study(spec_path, storage=url)
    data = study.data
    assert data.n_folds == 3 and data.y_validation.size == data.y_train.size == 1438
    study.optimize()
    trials = study.optuna_study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for t in trials:
        predicted, _log_p = schema.validation_predictions(t)
        assert predicted.shape == (1438,)  # out of fold: one prediction for every row
        per_fold = [
            np.mean(predicted[data.fold_of_row == k] == data.y_validation[data.fold_of_row == k])
            for k in range(3)
        ]
        assert t.value == pytest.approx(np.mean(per_fold), abs=1e-12)
        assert t.intermediate_values[4] == t.value
    # The saved model of the best trial is the refit on every row, not a fold's model.
    best = study.optuna_study.best_trial
    artifact_id, _sha = schema.weights(best)
    path = tmp_path / "best.npz"
    optuna.artifacts.download_artifact(
        artifact_store=study.artifact_store(), artifact_id=artifact_id, file_path=str(path)
    )
    saved = MLP.load(path)
    hp = suggest(optuna.trial.FixedTrial(best.params), study.spec.search)
    init_seed, shuffle_seed = trial_seeds(study.seed, best.number)
    objective = Objective(study.spec, data, study.artifact_store(), seed=study.seed)
    refit = objective._refit(hp, init_seed, shuffle_seed)
    assert np.array_equal(saved.flat_params, refit.flat_params)
    refit_accuracy = metric_value(
        "accuracy", refit.forward(data.X_train, train=False), data.y_train, 10
    )
    record = study.finalize()
    assert record["trial_number"] == best.number and record["weights_sha256"] == _sha
    print(
        f"figures: best fold mean {best.value:.4f}, refit on its own rows {refit_accuracy:.4f}, "
        f"test {record['metrics']['accuracy']:.4f}"
    )
    assert record["metrics"]["accuracy"] > 0.9


def test_pruning_sees_the_fold_mean_every_epoch(tmp_path):
    url = f"sqlite:///{tmp_path / 'cv.db'}"
    spec_path = write_spec(tmp_path, n_trials=8, epochs=6, data_extra=FOLDS)
    study = tuner.create_study(spec_path, storage=url)
    study.optimize()
    trials = study.optuna_study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [t.state for t in trials]
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))


def _csv_with_a_class_of(tmp_path, rows: int) -> str:
    rng = np.random.default_rng(0)
    lines = ["a,b,label"]
    for label, n in (("x", 30), ("y", 30), ("z", rows)):
        lines += [f"{rng.normal():.4f},{rng.normal():.4f},{label}" for _ in range(n)]
    (tmp_path / "small.csv").write_text("\n".join(lines) + "\n")
    return "csv:small.csv"


@pytest.mark.parametrize(
    "data_extra,message",
    [
        (
            "folds = 5\nsplit = { train = 0.6, validation = 0.2, test = 0.2 }",
            "data.split.train: is set with data.folds = 5; with folds the split gives only the "
            "test fraction",
        ),
        (
            "folds = 5\nsplit = { validation = 0.2, test = 0.2 }",
            "data.split.validation: is set with data.folds = 5",
        ),
        ("folds = 5\nsplit = {}", "data.split: needs a test fraction; 'test' missing"),
        (
            "folds = 5\nsplit = { test = 0.997 }",
            "class '0' has 1 row outside the test split, fewer than the folds (each fold "
            "needs a row of every class); lower data.split.test, add rows or drop the class",
        ),
        ("folds = 1", "data.folds: must be an integer in [2, 10], got 1"),
        ("folds = 11", "data.folds: must be an integer in [2, 10], got 11"),
        ('folds = "5"', "data.folds: must be an integer in [2, 10], got '5'"),
        ("folds = 5\nsplit = { test = 1.5 }", "data.split.test: must be a fraction in (0, 1)"),
        (
            'target = "label"\nfolds = 5\nsplit = { test = 0.2 }',
            "data.folds = 5: class 'z' has 4 rows outside the test split, fewer than the folds",
        ),
    ],
)
def test_bad_folds_exit_2_with_one_line_naming_the_key(tmp_path, data_extra, message):
    source = _csv_with_a_class_of(tmp_path, 5) if "label" in data_extra else "sklearn:digits"
    spec = write_spec(tmp_path, source=source, data_extra=data_extra)
    result = invoke_tuner("study", "start", str(spec), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "tuner.db").exists()


@pytest.mark.parametrize(
    "first,then,key",
    [
        (FOLDS, "folds = 4\nsplit = { test = 0.2 }", "data.folds"),
        (FOLDS, "", "data.folds"),  # back to one validation split
        ("", FOLDS, "data.folds"),
    ],
)
def test_changing_the_folds_on_resume_exits_2_and_keeps_the_trials(tmp_path, first, then, key):
    url = f"sqlite:///{tmp_path / 't.db'}"
    study = tuner.create_study(
        write_spec(tmp_path, n_trials=2, epochs=2, data_extra=first), storage=url
    )
    study.optimize()
    changed = write_spec(tmp_path, n_trials=3, epochs=2, data_extra=then)
    result = invoke_tuner("study", "start", str(changed), "--storage", url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 2


def test_data_inspect_and_the_note_show_the_folds(tmp_path):
    spec = write_spec(tmp_path, n_trials=1, epochs=1, data_extra=FOLDS)
    shown = invoke_tuner("data", "inspect", str(spec), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    splits = json.loads(shown.stdout)["splits"]
    assert {k: v["rows"] for k, v in splits.items()} == {
        "fold 1": 480,
        "fold 2": 479,
        "fold 3": 479,
        "test": 359,
    }
    started = invoke_tuner(
        "study", "start", str(spec), "--storage", f"sqlite:///{tmp_path / 'n.db'}", cwd=tmp_path
    )
    assert started.returncode == 0, started.stderr
    assert "study 'tiny': 1438 rows in 3 folds, 1 trials in total" in started.stdout
    note = study_note(
        optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'n.db'}")
    )
    assert "- 1438 rows in 3 folds; the test split is held out" in note
    shown = invoke_tuner(
        "study", "show", "tiny", "--storage", f"sqlite:///{tmp_path / 'n.db'}", cwd=tmp_path
    )
    assert shown.returncode == 0 and "(mean of 3 folds)" in shown.stdout, shown.stdout


def test_a_log_loss_study_with_folds_is_minimized_on_the_mean_of_its_folds(tmp_path):
    url = f"sqlite:///{tmp_path / 'cv.db'}"
    spec_path = write_spec(
        tmp_path, n_trials=3, epochs=3, data_extra=FOLDS, metric="log_loss", pruner='name = "none"'
    )
    study = tuner.create_study(spec_path, storage=url)
    study.optimize()
    fold = study.data.fold_of_row
    for t in study.optuna_study.get_trials():
        _predicted, log_p = schema.validation_predictions(t)
        per_fold = [-np.mean(log_p[fold == k], dtype=np.float64) for k in range(3)]
        assert t.value == pytest.approx(np.mean(per_fold), rel=1e-5)  # log_p is float32
    assert study.optuna_study.direction == optuna.study.StudyDirection.MINIMIZE
    best = min(t.value for t in study.optuna_study.get_trials())
    assert study.optuna_study.best_value == best
    record = study.finalize()
    assert (
        record["metrics"]["log_loss"] > 0
        and record["trial_number"] == study.optuna_study.best_trial.number
    )

"""Search spaces, samplers, pruners, interruption, output modes and export (issue: specs,
search spaces, samplers and pruners, and the CLI)."""

from __future__ import annotations

import json
import signal
import time

import optuna
import pandas as pd
import pytest
import sqlalchemy
from conftest import REPO, invoke_tuner, popen_tuner, run_tuner, stop_process, write_spec
from optuna.trial import TrialState

import tuner
from tuner.data import load_training_data
from tuner.spec import PRUNERS, SAMPLERS, load_spec
from tuner.storage import get_storage
from tuner.study import stop_after_no_improvement

BASE = '[data]\nsource = "sklearn:digits"\n'
BAD_SPECS = [
    ('[studdy]\nname = "x"\n' + BASE, "studdy: unknown key; did you mean 'study'?"),
    (BASE + 'scalling = "none"\n', "data.scalling: unknown key; did you mean 'scaling'?"),
    ('[data]\ntarget = "y"\n', "data.source: is required"),
    (
        BASE + "[search]\nlearning_rat = 0.1\n",
        "search.learning_rat: unknown key; did you mean 'learning_rate'?",
    ),
    (
        BASE + "[search]\nlearning_rate = { low = 0.1, high = 0.01 }\n",
        "search.learning_rate: low must be < high",
    ),
    (
        BASE + "[search]\nweight_decay = { low = 0.0, high = 0.1, log = true }\n",
        "search.weight_decay.low: must be > 0 when log = true",
    ),
    (
        BASE + "[search]\nbatch_size = { choices = [] }\n",
        "search.batch_size.choices: must be a non-empty list",
    ),
    (
        BASE + '[search]\ninitializer = { choices = ["he", "zeros"] }\n',
        "search.initializer.choices: each choice must be",
    ),
    (
        BASE + "[search]\nepochs = { low = 2, high = 4, step = 3 }\n",
        "search.epochs.step: high - low (2) must be a multiple of step (3); e.g. high = 5",
    ),
    (
        BASE + "[search]\nlearning_rate = { low = 0.01, high = 0.1, step = 0.04 }\n",
        "search.learning_rate.step: high - low (0.09) must be a multiple of step (0.04); "
        "e.g. high = 0.09 or 0.13",
    ),
    (
        BASE + "[model]\nepochs = { low = 8, high = 30, step = 8 }\n",
        "model.epochs.step: high - low (22) must be a multiple of step (8); e.g. high = 24 or 32",
    ),
    (
        BASE + "[search]\nwidth = { low = 8, high = 64, step = 0.5 }\n",
        "search.width.step: must be an integer",
    ),
    (
        BASE + "[search]\nmomentum = { low = 0.5, high = 1.5 }\n",
        "search.momentum.high: must be a number in [0, 1)",
    ),
    (
        BASE + '[search]\nlearning_rate = { low = 0.01, high = 0.1, log = "yes" }\n',
        "search.learning_rate.log: must be true or false",
    ),
    (
        BASE + "[search]\nlearning_rate = { low = 0.01 }\n",
        "search.learning_rate: a range needs 'low' and 'high'",
    ),
    (
        BASE + "[search]\nbatch_size = { choices = [32, 32] }\n",
        "search.batch_size.choices: has a repeated choice",
    ),
    (BASE + "[model]\nepochs = 0\n", "model.epochs: must be an integer in [1, 100000], got 0"),
    (
        BASE + "[model]\nepochs = 5\n[search]\nepochs = { low = 2, high = 9 }\n",
        "search.epochs: is also set as model.epochs",
    ),
    (
        BASE + '[model]\nactivation = "gelu"\n',
        "model.activation: must be 'relu' or 'sigmoid' or 'tanh', got 'gelu'",
    ),
    (
        BASE + '[sampler]\nname = "bayes"\n',
        "sampler.name: must be one of 'tpe', 'random', 'gp', 'cmaes', 'qmc', 'grid'",
    ),
    (
        BASE + '[sampler]\nname = "random"\nn_startup_trials = 5\n',
        "sampler.n_startup_trials: does not apply to sampler 'random'",
    ),
    (BASE + '[sampler]\nname = "grid"\n', "search.learning_rate: the grid sampler needs choices"),
    (
        BASE + '[pruner]\nname = "hyperband"\nreduction_factor = 1\n',
        "pruner.reduction_factor: must be an integer >= 2",
    ),
    (
        BASE + '[pruner]\nname = "percentile"\npercentile = 150\n',
        "pruner.percentile: must be a number in (0, 100)",
    ),
    (
        BASE + '[pruner]\nname = "median"\nmin_resource = 2\n',
        "pruner.min_resource: does not apply to pruner 'median'",
    ),
    (
        BASE + "[study]\nstop_after_no_improvement = 0\n",
        "study.stop_after_no_improvement: must be an integer >= 1",
    ),
    (BASE + "[study]\nn_trials = 2.5\n", "study.n_trials: must be an integer >= 1, got 2.5"),
    (
        BASE + "[search]\nmomentum = { choices = [0.9], per_layer = true }\n",
        "search.momentum.per_layer: applies to search.width only",
    ),
    ("[data\nsource = 1\n", "is not valid TOML"),
]


@pytest.fixture(scope="module")
def bad_spec_results(tmp_path_factory) -> list:
    """Each bad spec run through `tuner study start` in this process
    (:func:`conftest.invoke_tuner`); one also runs as a real process, in
    :func:`test_a_bad_spec_gets_the_same_line_from_a_real_process`."""
    results = []
    for i, (text, _) in enumerate(BAD_SPECS):
        folder = tmp_path_factory.mktemp(f"bad-spec-{i}")
        (folder / "bad.toml").write_text(text)
        results.append((folder, invoke_tuner("study", "start", "bad.toml", cwd=folder)))
    return results


@pytest.mark.parametrize(
    "index", range(len(BAD_SPECS)), ids=[m.split(":")[0] for _, m in BAD_SPECS]
)
def test_bad_spec_exits_2_with_one_line_naming_the_key(bad_spec_results, index):
    message = BAD_SPECS[index][1]
    folder, result = bad_spec_results[index]
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("tuner: error: bad.toml: ") or "TOML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (folder / "tuner.db").exists()  # nothing created


def test_a_bad_spec_gets_the_same_line_from_a_real_process(bad_spec_results, tmp_path):
    (tmp_path / "bad.toml").write_text(BAD_SPECS[0][0])
    process = run_tuner("study", "start", "bad.toml", cwd=tmp_path)
    assert process.returncode == 2 and not (tmp_path / "tuner.db").exists()
    assert process.stderr == bad_spec_results[0][1].stderr
    assert process.stderr == f"tuner: error: bad.toml: {BAD_SPECS[0][1]}\n"


def _run_in_process(tmp_path, spec_text, name="s"):
    path = tmp_path / f"{name}.toml"
    path.write_text(spec_text)
    study = tuner.create_study(path, storage=f"sqlite:///{tmp_path / (name + '.db')}")
    study.optimize()
    return study.optuna_study


SMALL = (
    BASE
    + """[study]
n_trials = {n}
[model]
epochs = 3
[search]
learning_rate = {{ low = 0.01, high = 0.2, log = true }}
width = {{ low = 8, high = 32 }}
batch_size = {{ choices = [64, 128] }}
"""
)

GRID = """[study]
n_trials = 4
[model]
epochs = 3
[search]
learning_rate = { choices = [0.05, 0.1] }
width = { low = 8, high = 16, step = 8 }
batch_size = { choices = [64, 128] }
weight_decay = 1e-4
initializer = "he"
[sampler]
name = "grid"
"""


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_runs_a_study(tmp_path, sampler):
    if sampler == "gp":
        pytest.importorskip("torch", reason="the GP sampler needs PyTorch (pip install -e '.[gp]')")
    text = SMALL.format(n=4) + f'[sampler]\nname = "{sampler}"\n'
    if sampler == "grid":  # every parameter discrete: 2 x 2 x 2 = 8 grid points
        text = BASE + GRID
    study = _run_in_process(tmp_path, text)
    trials = study.get_trials()
    assert len(trials) == 4 and all(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials
    )
    if sampler == "grid":  # 2 x 2 x 2 = 8 grid points, 4 distinct ones visited
        assert len({tuple(sorted(t.params.items())) for t in trials}) == 4


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_every_pruner_runs_a_study(tmp_path, pruner):
    text = SMALL.format(n=6).replace("epochs = 3", "epochs = 6") + f'[pruner]\nname = "{pruner}"\n'
    study = _run_in_process(tmp_path, text)
    counts = {s: sum(t.state == s for t in study.get_trials()) for s in TrialState}
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 6
    if pruner == "none":
        assert counts[TrialState.PRUNED] == 0


#: Pruner tables, and the epochs (of 1 to 6) at which each can prune a trial.
PRUNING_EPOCHS = {
    'name = "median"\nn_startup_trials = 2\nn_warmup_steps = 3': {3, 4, 5, 6},
    'name = "percentile"\npercentile = 40.0\nn_startup_trials = 2\nn_warmup_steps = 3': {
        3,
        4,
        5,
        6,
    },
    # rungs at 1 * 2 ** (1 + k)
    'name = "successive_halving"\nmin_resource = 1\nreduction_factor = 2\n'
    "min_early_stopping_rate = 1": {2, 4},
    # the rungs of every bracket: 1 * 2 ** k
    'name = "hyperband"\nmin_resource = 1\nreduction_factor = 2': {1, 2, 4},
    'name = "none"': set(),
}


@pytest.mark.parametrize("pruner", PRUNING_EPOCHS)
def test_the_pruner_is_asked_only_where_it_can_prune_and_prunes_alike(
    tmp_path, monkeypatch, pruner
):
    """Each call of an Optuna pruner reads from storage: the objective asks it only at the
    epochs where it can prune (after the median and percentile pruners' warm-up, at the
    rungs of successive halving and Hyperband). The same seeded study, asked every epoch,
    prunes the same trials at the same epochs."""
    text = SMALL.format(n=10).replace("epochs = 3", "epochs = 6") + f"[pruner]\n{pruner}\n"
    # One study name in both databases: Hyperband assigns brackets by a hash of it.
    text = text.replace("[study]\n", '[study]\nname = "pruning"\n')
    asked = []
    should_prune = optuna.Trial.should_prune

    def counted(trial):
        asked.append((trial.number, max(trial._cached_frozen_trial.intermediate_values)))
        return should_prune(trial)

    monkeypatch.setattr(optuna.Trial, "should_prune", counted)
    where_it_can = _run_in_process(tmp_path, text, name="where_it_can").get_trials()
    epochs = PRUNING_EPOCHS[pruner]
    assert sorted(asked) == [
        (t.number, e) for t in where_it_can for e in sorted(t.intermediate_values) if e in epochs
    ]
    asked.clear()
    monkeypatch.setattr(tuner.study, "pruning_epochs", lambda pruner: lambda epoch: True)
    every_epoch = _run_in_process(tmp_path, text, name="every_epoch").get_trials()
    assert len(asked) == sum(len(t.intermediate_values) for t in every_epoch)

    def record(trials):
        return [(t.state, t.params, t.intermediate_values) for t in trials]

    assert record(where_it_can) == record(every_epoch)
    pruned_at = {len(t.intermediate_values) for t in where_it_can if t.state == TrialState.PRUNED}
    assert pruned_at <= epochs, pruned_at
    assert bool(pruned_at) == bool(epochs), pruned_at  # every pruner but none pruned trials


@pytest.mark.parametrize("by_hand", ["threshold", "median without warm-up"])
def test_a_pruner_set_by_hand_on_the_optuna_study_is_asked_every_epoch(
    tmp_path, monkeypatch, by_hand
):
    """The epochs skipped are those where the pruner the spec built cannot prune. Another
    pruner set on ``study.optuna_study``, even of the spec's class, is asked from the first
    epoch: a validation accuracy below 0.999 prunes at once, and a median pruner without the
    spec's 4-epoch warm-up is asked every epoch."""
    path = tmp_path / "s.toml"
    path.write_text(
        SMALL.format(n=4).replace("epochs = 3", "epochs = 6")
        + '[pruner]\nname = "median"\nn_startup_trials = 0\nn_warmup_steps = 4\n'
    )
    asked = []
    should_prune = optuna.Trial.should_prune

    def counted(trial):
        asked.append(trial.number)
        return should_prune(trial)

    monkeypatch.setattr(optuna.Trial, "should_prune", counted)
    study = tuner.create_study(path, storage=f"sqlite:///{tmp_path / 's.db'}")
    study.optuna_study.pruner = (
        optuna.pruners.ThresholdPruner(lower=0.999)
        if by_hand == "threshold"
        else optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    study.optimize()
    trials = study.optuna_study.get_trials()
    assert len(asked) == sum(len(t.intermediate_values) for t in trials)
    if by_hand == "threshold":
        assert [(t.state, len(t.intermediate_values)) for t in trials] == [
            (TrialState.PRUNED, 1)
        ] * 4


@pytest.mark.parametrize("recorded", ["recorded now", "recorded before the fix"])
def test_a_study_searching_model_keys_resumes_runs_workers_and_finalizes(tmp_path, recorded):
    """Searched model keys (epochs, hidden_layers) are recorded in [search] only; a spec
    recorded with their [model] defaults too, as before the fix, still loads. Each command
    that parses the recorded spec again works: start again (resume), worker, finalize,
    report."""
    text = (
        SMALL.format(n=2)
        .replace("[model]\nepochs = 3\n", "")
        .replace(
            "[search]\n",
            "[search]\nepochs = { choices = [2, 3] }\nhidden_layers = { low = 1, high = 2 }\n",
        )
    )
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    url = f"sqlite:///{tmp_path / 's.db'}"
    art = ["--storage", url, "--artifact-dir", str(tmp_path / "artifacts")]
    first = invoke_tuner("study", "start", str(spec), *art, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    study = optuna.load_study(study_name="s", storage=url)
    stored = study.user_attrs["spec"]
    assert "epochs" not in stored["model"] and "hidden_layers" not in stored["model"]
    assert stored["search"]["epochs"] == {"choices": [2, 3]}
    if recorded == "recorded before the fix":
        study.set_user_attr(
            "spec", {**stored, "model": {**stored["model"], "epochs": 30, "hidden_layers": 2}}
        )
    steps = [
        ("study", "start", str(spec), "--n-trials", "3", *art),
        ("study", "worker", "s", "--n-trials", "4", *art),
        ("study", "finalize", "s", *art),
        ("study", "report", "s", "--out", str(tmp_path / "report"), "--storage", url),
    ]
    for args in steps:
        result = invoke_tuner(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert len(trials) == 4 and {t.params["epochs"] for t in trials} <= {2, 3}
    assert all(len(t.intermediate_values) <= t.params["epochs"] for t in trials)


def test_trial_pngs_are_drawn_for_complete_trials_only(tmp_path):
    """A pruned trial cannot be the best: it keeps its per-epoch attributes but gets no PNGs,
    whose drawing took a third of the default study's time."""
    text = (
        SMALL.format(n=6).replace("[study]\n", "[study]\ntrial_plots = true\n")
        + '[pruner]\nname = "percentile"\npercentile = 99.0\nn_startup_trials = 1\n'
        + "n_warmup_steps = 0\n"
    )
    study = _run_in_process(tmp_path, text)
    states = [t.state for t in study.get_trials()]
    assert TrialState.COMPLETE in states and TrialState.PRUNED in states, states
    storage = get_storage(f"sqlite:///{tmp_path / 's.db'}")
    for t in study.get_trials():
        pngs = sorted(
            m.filename
            for m in optuna.artifacts.get_all_artifact_meta(t, storage=storage)
            if m.mimetype == "image/png"
        )
        expected = [
            f"trial-{t.number}-activations-at-init.png",
            f"trial-{t.number}-learning-curve.png",
        ]
        assert pngs == (expected if t.state == TrialState.COMPLETE else []), t.number
        assert len(t.user_attrs["validation_accuracy"]) == len(t.intermediate_values)


def test_conditional_and_per_layer_parameters(tmp_path):
    text = (
        BASE
        + """[study]
n_trials = 8
[model]
epochs = 2
[search]
hidden_layers = { low = 1, high = 3 }
width = { low = 8, high = 32, per_layer = true }
optimizer = { choices = ["momentum", "adam", "sgd"] }
momentum = { low = 0.5, high = 0.95 }
beta1 = { low = 0.8, high = 0.95 }
dropout = { low = 0.0, high = 0.3 }
activation = { choices = ["relu", "tanh"] }
"""
    )
    study = _run_in_process(tmp_path, text)
    seen = set()
    for t in study.get_trials():
        p = t.params
        layers = p["hidden_layers"]
        assert {k for k in p if k.startswith("width_")} == {
            f"width_{i}" for i in range(1, layers + 1)
        }
        assert ("momentum" in p) == (p["optimizer"] == "momentum")
        assert ("beta1" in p) == (p["optimizer"] == "adam")
        assert "width" not in p and "beta2" not in p  # beta2 is fixed, not suggested
        seen.add(p["optimizer"])
    assert len(seen) >= 2


def test_stop_after_no_improvement_stops_the_study():
    values = iter([0.5, 0.9, 0.8, 0.7, 0.95, 0.99])
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: next(values), n_trials=6, callbacks=[stop_after_no_improvement(2)])
    assert [t.value for t in study.trials] == [0.5, 0.9, 0.8, 0.7]


def test_stop_after_no_improvement_from_the_spec(tmp_path):
    text = SMALL.format(n=30).replace(
        "n_trials = 30", "n_trials = 30\nstop_after_no_improvement = 3"
    )
    study = _run_in_process(tmp_path, text)
    trials = study.get_trials()
    best = study.best_trial
    assert len(trials) < 30
    assert len([t for t in trials if t.number > best.number]) == 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_trial_leaves_no_running_trial_and_start_resumes(tmp_path, signum):
    spec = write_spec(tmp_path, n_trials=4, epochs=150)
    # No pruning: every trial trains all its epochs (a few seconds), so the signal lands mid-trial.
    spec.write_text(
        spec.read_text().replace(
            'name = "median"\nn_startup_trials = 2\nn_warmup_steps = 2\n', 'name = "none"\n'
        )
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = popen_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.poll() else ""
            )
            try:  # the study process may still be creating the schema
                created = (tmp_path / "s.db").exists() and "tiny" in optuna.get_all_study_names(url)
                trials = (
                    optuna.load_study(study_name="tiny", storage=url).get_trials()
                    if created
                    else []
                )
            except sqlalchemy.exc.OperationalError:
                trials = []
            if any(t.state == TrialState.RUNNING for t in trials) and any(
                t.state.is_finished() for t in trials
            ):
                break
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 130
    finally:
        stop_process(proc, terminate=False)
    stderr = proc.stderr.read()
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("tuner: interrupted: ")
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert not any(t.state == TrialState.RUNNING for t in trials)
    assert any(t.state == TrialState.FAIL for t in trials)
    kept = {
        t.number: t.value for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    }
    assert kept
    again = run_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    for number, value in kept.items():
        assert trials[number].value == value


def test_json_lines_output_and_export_round_trip(tmp_path):
    spec = write_spec(tmp_path, n_trials=4, epochs=3)
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = run_tuner("study", "start", str(spec), "--storage", url, "--json-lines", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["number"] for r in lines] == [0, 1, 2, 3]
    assert all(r["state"] in ("COMPLETE", "PRUNED") and set(r["params"]) for r in lines)

    study = optuna.load_study(study_name="tiny", storage=url)
    for suffix, read in (
        (".csv", pd.read_csv),
        (".parquet", pd.read_parquet),
        (".json", pd.read_json),
    ):
        out = tmp_path / f"trials{suffix}"
        exported = run_tuner(
            "study",
            "export",
            "tiny",
            "--storage",
            url,
            "--out",
            str(out),
            "--intermediate",
            cwd=tmp_path,
        )
        assert exported.returncode == 0, exported.stderr
        df = read(out)
        assert len(df) == 4 and list(df["number"]) == [0, 1, 2, 3]
        assert {
            "state",
            "value",
            "duration_s",
            "param_learning_rate",
            "param_width",
            "param_batch_size",
            "param_initializer",
            "param_weight_decay",
            "epoch_1",
        } <= set(df.columns)
        for t, (_, row) in zip(study.trials, df.iterrows(), strict=True):
            assert row["state"] == t.state.name and row["value"] == pytest.approx(t.value)
            assert row["param_learning_rate"] == pytest.approx(t.params["learning_rate"])
            assert row["epoch_1"] == pytest.approx(t.intermediate_values[1])
            assert row["duration_s"] == pytest.approx(t.duration.total_seconds())

    listed = run_tuner("study", "list", "--storage", url, cwd=tmp_path)
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == [
        "name",
        "running",
        "complete",
        "pruned",
        "fail",
        "waiting",
        "best",
        "sealed",
    ]
    assert row.split()[0] == "tiny" and row.split()[-1] == "False"


def test_book_baseline_spec_follows_the_books_protocol():
    spec = load_spec(REPO / "studies" / "book_random_search.toml")
    assert (
        spec.sampler["name"] == "random" and spec.pruner["name"] == "none" and spec.n_trials == 100
    )
    s = spec.search
    assert (s["learning_rate"].low, s["learning_rate"].high, s["learning_rate"].log) == (
        1e-6,
        1e-2,
        True,
    )
    assert (s["weight_decay"].low, s["weight_decay"].high, s["weight_decay"].log) == (
        1e-8,
        1e-4,
        True,
    )
    assert (
        s["hidden_layers"].value,
        s["width"].value,
        s["batch_size"].value,
        s["epochs"].value,
    ) == (6, 100, 100, 50)
    assert s["optimizer"].value == "sgd" and spec.model["batchnorm"] is False
    data = load_training_data(spec.data)
    assert (len(data.y_train), len(data.y_validation)) == (400, 100)

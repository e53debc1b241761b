"""What a fresh user ran into (issue 14): exports that lose digits or trace back, names with
control characters, data read differently than it reads, refusals after something was
created, runs that stop or do nothing without saying why, worker output, ``tuner.nn``
shape errors. Each case asserts the exact line and exit code. The commands run
``tuner.cli.main`` in this process (``invoke_tuner``), except where a real process is the point
(PyTorch hidden from a fresh interpreter)."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import invoke_tuner, run_tuner, write_spec
from optuna.trial import TrialState

import tuner
from tuner.data import load_training_data
from tuner.nn import MLP, fit, make_optimizer
from tuner.spec import load_spec
from tuner.storage import get_storage


def _trials(url, name="tiny"):
    return optuna.load_study(
        study_name=name, storage=get_storage(url)
    ).get_trials()  # one pool per URL


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A SQLite study with 3 finished trials: ``(folder, url)``."""
    folder = tmp_path_factory.mktemp("finished")
    spec = write_spec(folder, n_trials=3, epochs=2)
    url = f"sqlite:///{folder / 's.db'}"
    result = invoke_tuner("study", "start", str(spec), "--storage", url, "--quiet", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder, url


# -- export ---------------------------------------------------------------------------------

ROUND_TRIP = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def test_export_keeps_every_float_exactly_in_any_case_of_extension(finished_study):
    folder, url = finished_study
    trials = _trials(url)
    for name, read in (
        ("t.JSON", lambda p: pd.DataFrame(json.loads(p.read_text()))),
        # The file holds 17 significant digits; pandas 2.0's default float parser reads
        # 0.021219958513921902 as 0.0212199585139219, pandas 3 reads it exactly (and
        # deprecates float_precision).
        ("t.Csv", lambda p: pd.read_csv(p, **ROUND_TRIP)),
        ("t.PARQUET", pd.read_parquet),
    ):
        result = invoke_tuner(
            "study", "export", "tiny", "--storage", url, "--out", name, cwd=folder
        )
        assert result.returncode == 0, result.stderr
        df = read(folder / name)
        assert len(df) == 3
        for t, (_, row) in zip(trials, df.iterrows(), strict=True):
            assert row["value"] == t.value  # exactly: 17 significant digits, not 15
            for key in ("learning_rate", "weight_decay"):
                assert row[f"param_{key}"] == t.params[key], (name, key)
            assert row["duration_s"] == t.duration.total_seconds()
    records = json.loads((folder / "t.JSON").read_text())
    assert records[0]["datetime_start"] == trials[0].datetime_start.isoformat()


@pytest.mark.parametrize("intermediate", [False, True])
def test_export_of_a_study_without_trials_writes_the_columns_and_no_row(tmp_path, intermediate):
    spec = write_spec(tmp_path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert (
        invoke_tuner("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    )
    extra = ["--intermediate"] if intermediate else []
    columns = ["number", "state", "value", "datetime_start", "datetime_complete", "duration_s"]
    for suffix in (".csv", ".json", ".parquet"):
        out = tmp_path / f"t{suffix}"
        result = invoke_tuner(
            "study", "export", "tiny", "--storage", url, "--out", str(out), *extra, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"wrote 0 trials, 6 columns to {out}"
        if suffix == ".csv":
            assert list(pd.read_csv(out).columns) == columns
        elif suffix == ".parquet":
            assert list(pd.read_parquet(out).columns) == columns
        else:
            assert json.loads(out.read_text()) == []


def test_export_to_a_folder_or_another_extension_exits_2_with_one_line(finished_study):
    folder, url = finished_study
    (folder / "DIR.csv").mkdir()
    for out, message in (
        ("DIR.csv", "--out 'DIR.csv' is a folder; name a file in it"),
        ("t.xlsx", "--out 't.xlsx': the file name must end in .csv, .parquet, .json"),
        (
            "no/t.csv",
            "--out 'no/t.csv': folder 'no' does not exist; create it or name a file in an "
            "existing folder",
        ),
    ):
        result = invoke_tuner("study", "export", "tiny", "--storage", url, "--out", out, cwd=folder)
        assert result.returncode == 2
        assert result.stderr == f"tuner: error: {message}\n"


# -- study names ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a\nb", "tab\there", "bell\x07", "rtl\u202eoverride"])
def test_study_names_with_control_characters_are_refused_before_anything_is_created(tmp_path, bad):
    spec = write_spec(tmp_path)
    url = f"sqlite:///{tmp_path / 'n.db'}"
    result = invoke_tuner(
        "study", "start", str(spec), "--storage", url, "--name", bad, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.startswith("tuner: error: Invalid value for '--name': ")
    assert "must be printable, without newlines, tabs or other control characters" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    spec.write_text(spec.read_text().replace('name = "tiny"', f"name = {json.dumps(bad)}"))
    result = invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"tuner: error: {spec}: study.name: must be printable, without newlines, tabs or other "
        f"control characters; got {bad!r}, which holds {next(c for c in bad if not c.isprintable())!r}\n"
    )
    assert not (tmp_path / "n.db").exists()


# -- refused before anything is created -----------------------------------------------------


def test_gp_without_pytorch_is_refused_before_the_database_or_study_exists(tmp_path):
    fake = tmp_path / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no torch here')\n")
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace('name = "tpe"\nn_startup_trials = 3', 'name = "gp"'))
    env = {"PYTHONPATH": str(tmp_path / "no-torch")}
    url = f"sqlite:///{tmp_path / 'gp.db'}"
    for command in ("start", "create"):
        result = run_tuner("study", command, str(spec), "--storage", url, cwd=tmp_path, env=env)
        assert result.returncode == 2
        assert result.stderr == (
            "tuner: error: sampler.name 'gp' needs PyTorch: pip install -e '.[gp]'\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-torch", "tiny.toml"]


def test_an_artifact_folder_that_is_a_file_is_refused_before_the_database_exists(tmp_path):
    spec = write_spec(tmp_path)
    (tmp_path / "weights").write_text("a file")
    result = invoke_tuner("study", "start", str(spec), "--artifact-dir", "weights", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"tuner: error: artifact folder {str(tmp_path / 'weights')!r} is a file; pass a folder "
        "with --artifact-dir\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml", "weights"]


def test_quiet_with_json_lines_is_refused_before_the_database_exists(tmp_path):
    spec = write_spec(tmp_path)
    result = invoke_tuner("study", "start", str(spec), "--quiet", "--json-lines", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "tuner: error: --quiet and --json-lines exclude each other; pick one\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


# -- data -------------------------------------------------------------------------------------


def _table(tmp_path, df, extra=""):
    df.to_csv(tmp_path / "t.csv", index=False)
    path = tmp_path / "t.toml"
    path.write_text(f'[data]\nsource = "csv:t.csv"\ntarget = "label"\n{extra}')
    return path


def _regions(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n).astype(float),
            "region": rng.choice(["NA", "EU", "null"], n),
            "label": np.where(np.arange(n) % 4 == 0, "a", "b"),
        }
    )


def test_na_and_null_are_categories_unless_na_values_lists_them(tmp_path):
    spec = _table(tmp_path, _regions())
    result = invoke_tuner("data", "inspect", str(spec), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["numeric_features"], info["categorical_features"], info["features"]) == (1, 1, 4)
    data = load_training_data(load_spec(spec).data)
    assert not np.isnan(data.X_train).any()

    spec = _table(tmp_path, _regions(), 'na_values = ["NA"]\n')
    result = invoke_tuner("data", "inspect", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    n_na = int((_regions()["region"] == "NA").sum())
    first = int(np.flatnonzero(_regions()["region"] == "NA")[0])
    assert result.stderr == (
        f"tuner: error: data.source 'csv:{tmp_path / 't.csv'}': column 'region' has missing values "
        f"in {n_na} rows (first: row {first}, counting from 0); fill them, or set data.missing = "
        '"mean" or "median" (a missing category is then encoded as all zeros)\n'
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'na_values = "NA"\n',
            "data.na_values: must be a list of texts that mark a missing value, e.g. "
            '["NA", "?"], got \'NA\'',
        ),
        (
            "na_values = [1]\n",
            'data.na_values: must be a list of texts that mark a missing value, e.g. ["NA", "?"], '
            "got [1]",
        ),
    ],
)
def test_bad_na_values_exit_2(tmp_path, extra, message):
    spec = _table(tmp_path, _regions(), extra)
    result = invoke_tuner("data", "inspect", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"tuner: error: {spec}: {message}\n"


def test_na_values_applies_to_tables_only(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[data]\nsource = "sklearn:iris"\nna_values = ["NA"]\n')
    result = invoke_tuner("data", "inspect", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"tuner: error: {path}: data.na_values: applies to table sources (csv, parquet) only; "
        "remove it for a sklearn: source\n"
    )


def test_a_value_beyond_float32_in_a_csv_gives_one_line(tmp_path):
    df = _regions()
    df.loc[7, "age"] = 1e300
    spec = _table(tmp_path, df)
    result = invoke_tuner("data", "inspect", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"tuner: error: data.source 'csv:{tmp_path / 't.csv'}': column 'age' exceeds the float32 "
        "range (|x| > 3.4e38) in 1 row (first: row 7, counting from 0); rescale it\n"
    )


def test_an_identifier_column_is_refused_with_the_features_that_leave_it_out(tmp_path):
    df = _regions(n=80)
    df.insert(0, "customer_id", [f"c{i:05d}" for i in range(80)])
    spec = _table(tmp_path, df)
    result = invoke_tuner("data", "inspect", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"tuner: error: data.source 'csv:{tmp_path / 't.csv'}': text column 'customer_id' has 80 "
        "distinct values in 80 rows, an identifier rather than a category (one-hot encoding "
        'would make a feature of nearly every row); leave it out with data.features = ["age", '
        '"region"]\n'
    )
    spec = _table(tmp_path, df, 'features = ["age", "region"]\n')
    assert invoke_tuner("data", "inspect", str(spec), cwd=tmp_path).returncode == 0


def test_an_unknown_scheme_is_reported_before_the_target_key(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[data]\nsource = "foo:bar"\ntarget = "label"\n')
    result = invoke_tuner("data", "inspect", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"tuner: error: {path}: data.source 'foo:bar': unknown scheme 'foo'; known: sklearn:..., "
        "npz:..., csv:..., parquet:..., mnist:..., mlxtend:...\n"
    )


# -- runs that do nothing or stop early say why ----------------------------------------------


def test_start_with_a_total_already_reached_says_nothing_will_run(finished_study):
    folder, url = finished_study
    before = _trials(url)
    recorded = optuna.load_study(study_name="tiny", storage=url).user_attrs["n_trials"]
    spec = folder / "tiny.toml"
    result = invoke_tuner(
        "study", "start", str(spec), "--storage", url, "--n-trials", "2", cwd=folder
    )
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr == (
        "tuner: nothing to run: study 'tiny' already has 3 finished trials, at least the total of "
        "2 (--n-trials, else the recorded or spec total); pass --n-trials larger than 3 to run more\n"
    )
    worker = invoke_tuner("study", "worker", "tiny", "--storage", url, cwd=folder)
    assert worker.returncode == 0
    assert (
        "nothing to run: study 'tiny' already has 3 finished trials, at least the total of 3"
        in (worker.stderr)
    )
    assert len(_trials(url)) == len(before)
    assert optuna.load_study(study_name="tiny", storage=url).user_attrs["n_trials"] == recorded


def _run_with_notices(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    study = tuner.create_study(
        path,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        name="s",
        seed=0,
        artifact_dir=tmp_path / "artifacts",
    )
    notices: list[str] = []
    study.optimize(on_notice=notices.append)
    return study.optuna_study.get_trials(), notices


def test_an_exhausted_grid_says_why_the_run_stopped(tmp_path):
    trials, notices = _run_with_notices(
        tmp_path,
        """[data]
source = "sklearn:iris"
[study]
n_trials = 10
[model]
epochs = 2
[search]
learning_rate = { choices = [0.05, 0.1] }
batch_size = { choices = [16, 32] }
width = 8
weight_decay = 1e-4
initializer = "he"
[sampler]
name = "grid"
""",
    )
    assert len(trials) == 4
    assert notices == [
        "stopped: every combination of the grid has been run (4 combinations, fewer than the "
        "total of 10 trials)"
    ]
    # Resumed, by start and by two workers: nothing to run, no combination repeated.
    url = f"sqlite:///{tmp_path / 's.db'}"
    for args in (
        ["start", str(tmp_path / "s.toml")],
        ["start", str(tmp_path / "s.toml"), "--workers", "2"],
    ):
        again = run_tuner("study", *args, "--storage", url, "--name", "s", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "nothing to run: every combination of the grid has been run (4 combinations)" in (
            again.stdout + again.stderr
        )
    assert len(optuna.load_study(study_name="s", storage=url).get_trials()) == 4


def test_stop_after_no_improvement_says_why_the_run_stopped(tmp_path):
    trials, notices = _run_with_notices(
        tmp_path,
        """[data]
source = "sklearn:iris"
[study]
n_trials = 40
stop_after_no_improvement = 2
[model]
epochs = 2
[search]
learning_rate = { low = 1e-4, high = 1e-3, log = true }
width = 8
initializer = "he"
[sampler]
name = "random"
""",
    )
    assert len(trials) < 40
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert notices == [
        f"stopped: 2 trials finished since the best trial {best.number} without improving on it "
        "(study.stop_after_no_improvement = 2)"
    ]


# -- worker output -------------------------------------------------------------------------


def test_a_worker_prints_only_its_own_trials_with_its_id(finished_study):
    folder, url = finished_study
    result = invoke_tuner(
        "study",
        "worker",
        "tiny",
        "--storage",
        url,
        "--n-trials",
        "5",
        "--worker-index",
        "7",
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "trial " in line and "  value=" in line]
    assert [line.split()[:3] for line in lines] == [["worker", "7", "trial"]] * 2
    assert [int(line.split()[3]) for line in lines] == [3, 4]
    json_run = invoke_tuner(
        "study",
        "worker",
        "tiny",
        "--storage",
        url,
        "--n-trials",
        "6",
        "--json-lines",
        cwd=folder,
    )
    assert json_run.returncode == 0, json_run.stderr
    (record,) = [json.loads(line) for line in json_run.stdout.splitlines()]
    assert record["number"] == 5 and record["worker"].startswith("worker ")
    assert math.isfinite(record["value"])


# -- tuner.nn ---------------------------------------------------------------------------------


def test_nn_refuses_wrong_shapes_and_labels_with_value_errors():
    model = MLP(4, [8], 3)
    X = np.random.default_rng(0).random((10, 4), dtype=np.float32)
    y = np.arange(10) % 3
    sgd = make_optimizer("sgd", 0.1)
    with pytest.raises(
        ValueError, match=r"^labels must be in \[0, 3\) for a model with 3 outputs, got 3$"
    ):
        fit(model, X, y + 1, epochs=1, batch_size=4, optimizer=sgd)
    with pytest.raises(ValueError, match=r"got -1$"):
        fit(model, X, y - 1, epochs=1, batch_size=4, optimizer=sgd)
    with pytest.raises(
        ValueError, match=r"^labels must be integers of shape \(10,\), got int64 \(5,\)$"
    ):
        fit(model, X, y[:5], epochs=1, batch_size=4, optimizer=sgd)
    with pytest.raises(
        ValueError, match=r"^inputs must have shape \(batch, 4\) for this model, got \(10, 3\)$"
    ):
        fit(model, X[:, :3], y, epochs=1, batch_size=4, optimizer=sgd)
    with pytest.raises(ValueError, match=r"got \(10, 5\)$"):
        model.predict(np.ones((10, 5)))
    with pytest.raises(ValueError, match=r"got \(4,\)$"):
        model.predict(np.ones(4))
    with pytest.raises(ValueError, match="labels must be in"):
        model.loss(X, np.full(10, 7))


def test_export_durations_are_timedeltas_total_seconds_exactly():
    """pandas' total_seconds multiplies microseconds by 1e-6 (1.4586890000000001 for a trial of
    1,458,689 microseconds); the export divides by 10**6, as datetime.timedelta does."""
    from datetime import datetime, timedelta

    from tuner.export import trials_table

    study = optuna.create_study()
    start = datetime(2026, 1, 1)

    def trial(number, state, end, value):
        return optuna.trial.FrozenTrial(
            number, state, value, start, end, {}, {}, {}, {}, {}, number
        )

    for us in (1_458_689, 1, 999_999_999):
        study.add_trial(trial(0, TrialState.COMPLETE, start + timedelta(microseconds=us), 0.5))
    study.add_trial(trial(0, TrialState.RUNNING, None, None))
    table = trials_table(study)
    want = [t.duration.total_seconds() for t in study.trials[:3]]
    assert table["duration_s"].tolist()[:3] == want == [1.458689, 1e-06, 999.999999]
    assert math.isnan(table["duration_s"].iloc[3])

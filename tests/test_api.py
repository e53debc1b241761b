"""The Python API (tuner.create_study / tuner.load_study -> tuner.Study), the stored-key schema
and its format version, and the sampler and pruner registries."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from conftest import (
    REPO,
    _tuner_env,
    invoke_tuner,
    popen_tuner,
    run_tuner,
    stop_process,
    write_spec,
)

import tuner
from tuner import schema
from tuner.data import load_source
from tuner.errors import DataError, TunerError
from tuner.samplers import PRUNERS, SAMPLERS, TrialSeededSampler, make_pruner, make_sampler
from tuner.spec import PRUNERS as PRUNER_OPTIONS
from tuner.spec import SAMPLERS as SAMPLER_OPTIONS


def _readme_python_example() -> str:
    """The code block of the README's "Python API" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _trial_rows(url: str, name: str) -> list[tuple]:
    study = optuna.load_study(study_name=name, storage=url)
    return [
        (t.number, t.state.name, t.value, t.params, t.intermediate_values)
        for t in study.get_trials()
    ]


def test_readme_python_example_gives_the_trial_values_of_study_start(tmp_path):
    code = _readme_python_example()
    assert 4 <= len([line for line in code.splitlines() if line.strip()]) <= 6
    # The example's own spec path, holding a tiny spec so that the test stays fast.
    (tmp_path / "studies").mkdir()
    write_spec(tmp_path / "studies", name="digits", n_trials=40, epochs=3)
    example = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_tuner_env({}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert example.returncode == 0, example.stderr
    n_trials = int(re.search(r"optimize\(n_trials=(\d+)\)", code).group(1))
    cli = run_tuner(
        "study",
        "start",
        "studies/digits.toml",
        "--storage",
        "sqlite:///cli.db",
        "--n-trials",
        str(n_trials),
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
    from_api = _trial_rows(f"sqlite:///{tmp_path / 'tuner.db'}", "digits")
    from_cli = _trial_rows(f"sqlite:///{tmp_path / 'cli.db'}", "digits")
    assert len(from_api) == n_trials
    assert all(state in ("COMPLETE", "PRUNED") for _, state, *_ in from_api)
    assert from_api == from_cli  # identical values, parameters and per-epoch scores
    best = json.loads(run_tuner("study", "show", "digits", "--json", cwd=tmp_path).stdout)["best"]
    assert example.stdout.strip() == str(best)  # what the example printed is show's best


def test_api_runs_finalizes_and_gives_the_scored_model(tmp_path, storage_url, study_name):
    spec = write_spec(tmp_path, n_trials=3, epochs=3)
    folder = tmp_path / "artifacts"
    study = tuner.create_study(spec, storage=storage_url, name=study_name, artifact_dir=folder)
    assert study.created and study.artifact_dir == folder and study.name == study_name
    assert study.optimize() == 3
    assert study.optimize() == 0  # the study-wide total is reached
    assert study.count_trials()["COMPLETE"] + study.count_trials()["PRUNED"] == 3
    summary = study.summary()
    assert summary["total_trials"] == 3 and summary["final"] is None and not summary["sealed"]
    model = study.best_model()
    accuracy = float(np.mean(model.predict(study.data.X_validation) == study.data.y_validation))
    assert accuracy == study.optuna_study.best_value  # the very weights scored on validation
    df = study.trials_dataframe(intermediate=True)
    assert list(df["number"]) == [0, 1, 2] and "epoch_3" in df.columns

    # A resumed study is not created again; a loaded one joins with the recorded total.
    again = tuner.create_study(spec, storage=storage_url, name=study_name)
    assert not again.created and again.optimize(n_trials=4) == 1
    joined = tuner.load_study(study_name, storage=storage_url)
    assert joined.total_trials() == 4 and joined.optimize() == 0

    record = joined.finalize()
    assert record["trial_number"] == joined.optuna_study.best_trial.number
    assert tuner.load_study(study_name, storage=storage_url).summary()["sealed"] is True
    with pytest.raises(tuner.StudyRefused, match="is sealed"):
        again.optimize(n_trials=5)
    with pytest.raises(tuner.StudyRefused, match="is sealed"):
        joined.finalize()


def test_api_errors_are_the_clis(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(tuner.SpecError, match="not found"):
        tuner.create_study(tmp_path / "missing.toml", storage=url)
    with pytest.raises(tuner.SpecError, match="data.source: is required"):
        tuner.create_study({"study": {"n_trials": 2}}, storage=url)
    with pytest.raises(tuner.TunerError, match="no database file"):
        tuner.load_study("nope", storage=f"sqlite:///{tmp_path / 'absent.db'}")
    study = tuner.create_study(
        {"study": {"name": "d", "n_trials": 1}, "data": {"source": "sklearn:iris"}}, storage=url
    )
    with pytest.raises(tuner.StudyRefused, match="no study named 'nope'.*known studies: d"):
        tuner.load_study("nope", storage=url)
    with pytest.raises(TunerError, match="n_trials: must be an integer >= 1, got 0"):
        study.optimize(n_trials=0)
    with pytest.raises(TunerError, match="timeout: must be a finite number"):
        study.optimize(timeout=float("inf"))
    with pytest.raises(TunerError, match=r"seed: must be an integer in \[0, 4294967295\]"):
        tuner.create_study({"data": {"source": "sklearn:iris"}}, storage=url, seed=-1)
    with pytest.raises(tuner.StudyRefused, match="has no completed trial"):
        study.best_model()
    assert study.count_trials()["COMPLETE"] == 0  # nothing ran


def test_reading_a_study_while_a_worker_runs_it_changes_nothing(tmp_path, storage_url, study_name):
    """``load_study(...).summary()`` every 0.3 s while a real ``tuner study start`` process runs
    the study: no trial fails, the counts reach the total, and the trials are those of the same
    study run with nobody reading."""
    spec = write_spec(tmp_path, n_trials=6, epochs=8)
    proc = popen_tuner(
        "study", "start", str(spec), "--storage", storage_url, "--name", study_name, cwd=tmp_path
    )
    reads, during = [], 0
    try:
        # Its first line comes once the study exists: the reads then find its tables made.
        assert proc.stdout.readline().startswith(f"study {study_name!r}: "), proc.stderr.read()
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            reads.append(tuner.load_study(study_name, storage=storage_url).summary()["n_trials"])
            during += proc.poll() is None
            time.sleep(0.3)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        stop_process(proc)
    assert during >= 3, reads  # the reads overlapped the run
    done = [c["COMPLETE"] + c["PRUNED"] for c in reads]
    assert done == sorted(done) and all(c["FAIL"] == 0 for c in reads)
    final = tuner.load_study(study_name, storage=storage_url).summary()["n_trials"]
    assert final["COMPLETE"] + final["PRUNED"] == 6 and final["FAIL"] == final["RUNNING"] == 0

    control = f"sqlite:///{tmp_path / 'control.db'}"
    quiet = run_tuner(
        "study", "start", str(spec), "--storage", control, "--name", study_name, cwd=tmp_path
    )
    assert quiet.returncode == 0, quiet.stderr
    assert _trial_rows(storage_url, study_name) == _trial_rows(control, study_name)


def test_new_studies_record_the_format_version_and_a_newer_one_is_refused(tmp_path):
    spec = write_spec(tmp_path, n_trials=1, epochs=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.user_attrs["format_version"] == schema.FORMAT_VERSION == 1

    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a study from before format versions were recorded
        conn.execute(sa.text("DELETE FROM study_user_attributes WHERE key = 'format_version'"))
    assert "format_version" not in optuna.load_study(study_name="tiny", storage=url).user_attrs
    shown = invoke_tuner("study", "show", "tiny", "--storage", url, "--json", cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["n_trials"]["COMPLETE"] == 1
    resumed = invoke_tuner(
        "study", "start", str(spec), "--storage", url, "--n-trials", "2", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr

    optuna.load_study(study_name="tiny", storage=url).set_user_attr("format_version", 2)
    for args in (
        ("study", "show", "tiny"),
        ("study", "start", str(spec), "--n-trials", "3"),
        ("study", "worker", "tiny"),
        ("study", "finalize", "tiny"),
        ("study", "export", "tiny", "--out", str(tmp_path / "t.csv")),
    ):
        refused = invoke_tuner(*args, "--storage", url, cwd=tmp_path)
        assert refused.returncode == 2, (args, refused.stderr)
        assert refused.stderr.strip() == (
            "tuner: error: study 'tiny' was written by tuner storage format 2, newer than this "
            "tuner's format 1; upgrade tuner to open it"
        )
    with pytest.raises(tuner.StudyRefused, match="storage format 2"):
        tuner.load_study("tiny", storage=url)
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert len(trials) == 2 and not (tmp_path / "t.csv").exists()  # nothing ran or was written
    engine.dispose()


def test_a_creation_cut_short_anywhere_is_recorded_whole_on_resume(tmp_path, monkeypatch):
    """A Ctrl-C between any two of the writes that record a new study (its attributes, the
    dashboard note, the fingerprint that marks it recorded) leaves a study that the next
    start records whole: the same attributes and note as a creation that was not cut."""
    from optuna_dashboard import get_note

    spec = write_spec(tmp_path, n_trials=1, epochs=2)
    artifacts = tmp_path / "artifacts"
    writes: list[str] = []
    cut_at = [None]

    def counting(write):
        def wrapper(self, *args, **kwargs):
            writes.append(write.__name__)
            if cut_at[0] is not None and len(writes) > cut_at[0]:
                raise KeyboardInterrupt
            return write(self, *args, **kwargs)

        return wrapper

    for cls, name in [
        (optuna.Study, "set_user_attr"),
        (optuna.storages.RDBStorage, "set_study_user_attr"),
        (optuna.storages.RDBStorage, "set_study_system_attr"),
    ]:
        monkeypatch.setattr(cls, name, counting(getattr(cls, name)))
    reference = tuner.create_study(
        spec, storage=f"sqlite:///{tmp_path / 'whole.db'}", artifact_dir=artifacts
    ).optuna_study
    n_writes = len(writes)
    assert n_writes >= 8, writes  # five attributes, the note, the fingerprint, ...

    def recorded(study):  # the study's uuid is its own
        attrs = {k: v for k, v in study.user_attrs.items() if k != schema.STUDY_UUID_ATTR}
        return attrs, get_note(study)

    for k in range(n_writes):
        writes.clear()
        cut_at[0] = k
        url = f"sqlite:///{tmp_path / f'cut{k}.db'}"
        with pytest.raises(KeyboardInterrupt):
            tuner.create_study(spec, storage=url, artifact_dir=artifacts)
        cut_at[0] = None
        resumed = tuner.create_study(spec, storage=url, artifact_dir=artifacts).optuna_study
        assert recorded(resumed) == recorded(reference), k
        assert schema.describe_rows(resumed) == "1079 training, 359 validation rows"


def test_a_study_without_its_recorded_spec_is_named_so_and_start_records_it(tmp_path):
    """A study cut short before its spec was recorded (here an Optuna study of that name):
    show says so in a line, worker refuses it with one line, and start records it and runs."""
    spec = write_spec(tmp_path, n_trials=2, epochs=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(storage=url, study_name="tiny", direction="maximize")
    shown = invoke_tuner("study", "show", "tiny", "--storage", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == [
        "study tiny (maximize)",
        "no recorded spec: its creation was cut short, or it was not created by tuner; starting "
        "it again with its spec records it (`tuner study start SPEC`)",
    ]
    worker = invoke_tuner("study", "worker", "tiny", "--storage", url, cwd=tmp_path)
    assert worker.returncode == 2
    assert worker.stderr == (
        "tuner: error: study 'tiny' has no recorded spec: its creation was cut short, or it was "
        "not created by tuner; starting it again with its spec records it (`tuner study start "
        "SPEC`, tuner.create_study(SPEC))\n"
    )
    started = invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    assert schema.data_fingerprint(study) is not None and len(study.get_trials()) == 2


def test_stored_keys_are_those_of_existing_databases():
    """Databases written before the schema module must keep working: the key strings stay."""
    assert (
        schema.SPEC_ATTR,
        schema.FINGERPRINT_ATTR,
        schema.ARTIFACT_DIR_ATTR,
        schema.N_TRIALS_ATTR,
        schema.N_TRAIN_ATTR,
        schema.N_VALIDATION_ATTR,
        schema.RECORD_ATTR,
        schema.WEIGHTS_ARTIFACT_ATTR,
        schema.WEIGHTS_SHA256_ATTR,
        schema.TRAINING_LOSS_ATTR,
        schema.VALIDATION_ACCURACY_ATTR,
        schema.DIVERGED_ATTR,
        schema.STUDY_UUID_ATTR,
        schema.WAITING_ATTR,
        schema.holdout_table.name,
        schema.legacy_table.name,
    ) == (
        "spec",
        "data_fingerprint",
        "artifact_dir",
        "n_trials",
        "n_train",
        "n_validation",
        "tuner:holdout",
        "weights_artifact_id",
        "weights_sha256",
        "training_loss",
        "validation_accuracy",
        "diverged",
        "tuner:study_uuid",
        "tuner:finalize_waiting",
        "tuner_holdout_v2",
        "tuner_holdout",
    )


def test_no_module_outside_the_schema_spells_a_stored_attribute_key():
    keys = {
        v
        for k, v in vars(schema).items()
        if k.endswith("_ATTR") and k not in ("N_TRIALS_ATTR", "SPEC_ATTR")
    }
    # "n_trials" and "spec" are also spec and show --json keys; their attribute use is checked
    # through the accessors: no module reads user attributes itself.
    assert len(keys) >= 10
    for path in (REPO / "tuner").rglob("*.py"):
        if path.name == "schema.py":
            continue
        text = path.read_text()
        assert "user_attrs" not in text and "set_user_attr" not in text, path
        for key in keys - {"data_fingerprint", "weights_sha256", "diverged"}:
            assert f'"{key}"' not in text and f"'{key}'" not in text, (path, key)


SAMPLER_CLASSES = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
    "grid": optuna.samplers.GridSampler,
}
PRUNER_CLASSES = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}


def test_each_sampler_and_pruner_name_builds_its_optuna_class():
    assert list(SAMPLERS) == list(SAMPLER_OPTIONS) == list(SAMPLER_CLASSES)
    assert list(PRUNERS) == list(PRUNER_OPTIONS) == list(PRUNER_CLASSES)
    base = {"data": {"source": "sklearn:iris"}}
    grid_search = {"learning_rate": {"choices": [0.1]}, "width": {"choices": [8]}}
    grid_search |= {"weight_decay": 0.0, "initializer": "he"}
    for name, cls in SAMPLER_CLASSES.items():
        raw = {**base, "sampler": {"name": name}} | (
            {"search": grid_search} if name == "grid" else {}
        )
        spec = tuner.parse_spec_dict(raw)
        if name == "gp" and importlib.util.find_spec("torch") is None:
            with pytest.raises(TunerError, match=r"sampler.name 'gp' needs PyTorch"):
                make_sampler(spec, 0)
            continue
        sampler = make_sampler(spec, 0)
        assert type(sampler) is TrialSeededSampler and type(sampler.sampler) is cls, name
    for name, cls in PRUNER_CLASSES.items():
        pruner = make_pruner(tuner.parse_spec_dict({**base, "pruner": {"name": name}}))
        assert type(pruner) is cls, name


def test_unknown_sampler_pruner_and_source_names_raise_with_the_known_names():
    spec = tuner.parse_spec_dict({"data": {"source": "sklearn:iris"}})
    with pytest.raises(TunerError) as e:
        make_sampler(dataclasses.replace(spec, sampler={"name": "bayes"}), 0)
    assert str(e.value) == "sampler.name: unknown name 'bayes'; known: " + ", ".join(SAMPLERS)
    with pytest.raises(TunerError) as e:
        make_pruner(dataclasses.replace(spec, pruner={"name": "asha"}))
    assert str(e.value) == "pruner.name: unknown name 'asha'; known: " + ", ".join(PRUNERS)
    with pytest.raises(DataError, match=r"unknown scheme 'hdf5'; known: sklearn:\.\.\., npz:"):
        load_source("hdf5:x.h5")


def test_public_names_resolve_and_importing_tuner_loads_neither_numpy_nor_optuna():
    assert set(tuner.__all__) == set(tuner._API) | {"__version__"}
    for name in tuner.__all__:
        assert getattr(tuner, name) is not None and name in dir(tuner)
    assert tuner.create_study is importlib.import_module("tuner.study").create_study
    with pytest.raises(AttributeError, match="module 'tuner' has no attribute 'nope'"):
        tuner.nope  # noqa: B018
    probe = "import sys, tuner, tuner.workers; print(sorted({'numpy', 'optuna', 'pandas'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_start_and_finalize_on_a_bundled_dataset_do_not_import_scikit_learn(tmp_path):
    """Importing scikit-learn took 2.2 s of every start, worker and finalize (through the
    sklearn: sources and optuna-dashboard's note); the data files and the note are read and
    written without it."""
    spec = write_spec(tmp_path, n_trials=2, epochs=2)
    code = (
        "import sys, tuner\n"
        f"study = tuner.create_study({str(spec)!r}, storage={f'sqlite:///{tmp_path}/t.db'!r})\n"
        "study.optimize()\n"
        "record = study.finalize()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn')\n"
        "import optuna, optuna_dashboard\n"
        "note = optuna_dashboard.get_note(optuna.load_study(study_name='tiny', "
        f"storage={f'sqlite:///{tmp_path}/t.db'!r}))\n"
        "print(record['n_test'], 'Locked test evaluation' in note, loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_tuner_env({}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "359 True []"  # digits: 1,797 rows, 20% test

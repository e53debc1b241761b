"""End to end through the real ``tuner`` command, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json

import optuna
import pytest
from conftest import REPO, invoke_tuner, run_tuner, write_spec

from tuner.holdout import get_record


def _show(name, url, cwd, artifacts=None):
    result = invoke_tuner("study", "show", name, "--storage", url, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_start_show_finalize_and_seal(tmp_path, storage_url, study_name):
    spec = write_spec(tmp_path, n_trials=4, epochs=4)
    art = ["--artifact-dir", str(tmp_path / "artifacts")]
    started = run_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        storage_url,
        "--name",
        study_name,
        *art,
        cwd=tmp_path,
    )
    assert started.returncode == 0, started.stderr
    trial_lines = [line for line in started.stdout.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 4
    assert "best trial" in started.stdout

    info = _show(study_name, storage_url, tmp_path)
    assert set(info) >= {"name", "direction", "metric", "n_trials", "best", "final", "sealed"}
    assert (info["name"], info["direction"], info["metric"]) == (study_name, "maximize", "accuracy")
    counts = info["n_trials"]
    assert counts["COMPLETE"] + counts["PRUNED"] == 4 and counts["RUNNING"] == counts["FAIL"] == 0
    assert info["final"] is None and info["sealed"] is False
    assert set(info["best"]["params"]) == {
        "learning_rate",
        "weight_decay",
        "batch_size",
        "width",
        "initializer",
    }

    # Resuming a complete study runs nothing more: n_trials is a study-wide total.
    again = run_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        storage_url,
        "--name",
        study_name,
        *art,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    storage = optuna.storages.RDBStorage(storage_url)
    assert len(optuna.load_study(study_name=study_name, storage=storage).get_trials()) == 4

    final = run_tuner("study", "finalize", study_name, "--storage", storage_url, *art, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    info = _show(study_name, storage_url, tmp_path)
    assert info["sealed"] is True
    record = info["final"]
    assert record["trial_number"] == info["best"]["number"]
    assert record["validation_value"] == info["best"]["value"]
    assert record["n_test"] == 359 and record["data_fingerprint"] == info["data_fingerprint"]
    assert (
        0
        <= record["metrics"]["accuracy_ci95"][0]
        <= record["metrics"]["accuracy"]
        <= record["metrics"]["accuracy_ci95"][1]
    )
    assert sum(map(sum, record["metrics"]["confusion_matrix"])) == 359

    second = run_tuner(
        "study", "finalize", study_name, "--storage", storage_url, *art, cwd=tmp_path
    )
    assert second.returncode == 2
    assert second.stderr.startswith(f"tuner: error: study {study_name!r} is sealed")
    assert f"test accuracy {record['metrics']['accuracy']:.4f}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    assert get_record(storage, study_name)["completed_at"] == record["completed_at"]

    sealed = run_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        storage_url,
        "--name",
        study_name,
        *art,
        cwd=tmp_path,
    )
    assert sealed.returncode == 2
    assert "is sealed" in sealed.stderr and "Traceback" not in sealed.stderr
    assert len(optuna.load_study(study_name=study_name, storage=storage).get_trials()) == 4
    storage.engine.dispose()


def test_default_study_reaches_096_test_accuracy(tmp_path):
    """The README's main job (studies/digits.toml, all 40 trials) on a temporary SQLite file."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    started = run_tuner(
        "study", "start", str(REPO / "studies" / "digits.toml"), "--storage", url, cwd=tmp_path
    )
    assert started.returncode == 0, started.stderr
    final = run_tuner("study", "finalize", "digits", "--storage", url, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    info = _show("digits", url, tmp_path)
    assert info["n_trials"]["COMPLETE"] + info["n_trials"]["PRUNED"] == 40
    assert info["final"]["metrics"]["accuracy"] >= 0.96
    assert (tmp_path / "tuner.db-artifacts").is_dir()


def test_storage_defaults_to_tuner_storage_then_working_directory(tmp_path):
    spec = write_spec(tmp_path, n_trials=2, epochs=2)
    env_url = f"sqlite:///{tmp_path / 'from-env.db'}"
    assert (
        invoke_tuner(
            "study", "start", str(spec), cwd=tmp_path, env={"TUNER_STORAGE": env_url}
        ).returncode
        == 0
    )
    assert (tmp_path / "from-env.db").exists() and not (tmp_path / "tuner.db").exists()
    assert invoke_tuner("study", "start", str(spec), cwd=tmp_path).returncode == 0
    assert (tmp_path / "tuner.db").exists()
    assert _show("tiny", "sqlite:///tuner.db", tmp_path)["n_trials"]["COMPLETE"] >= 1


def test_resume_with_changed_data_is_refused(tmp_path):
    import numpy as np

    from tuner.data import load_source

    X, y, _ = load_source("sklearn:digits")
    np.savez(tmp_path / "d.npz", X=X, y=y)
    spec = write_spec(tmp_path, n_trials=2, epochs=2, source="npz:d.npz")
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    X[0, 0] += 1.0
    np.savez(tmp_path / "d.npz", X=X, y=y)
    spec = write_spec(tmp_path, n_trials=4, epochs=2, source="npz:d.npz")
    resumed = invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    assert resumed.returncode == 2
    assert (
        "was created with data fingerprint" in resumed.stderr and "Traceback" not in resumed.stderr
    )
    assert (
        _show("tiny", url, tmp_path)["n_trials"]["COMPLETE"]
        + _show("tiny", url, tmp_path)["n_trials"]["PRUNED"]
        == 2
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["study", "start", "missing.toml"], "spec file 'missing.toml' not found"),
        (["study", "show", "nope"], "no study named 'nope'"),
        (["study", "finalize", "nope"], "no study named 'nope'"),
        (
            ["study", "start", "studies/digits.toml", "--n-trials", "0"],
            "Invalid value for '--n-trials'",
        ),
        (
            ["study", "show", "x", "--storage", "notaurl"],
            "storage URL 'notaurl' is not a database URL",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    optuna.create_study(
        study_name="other", storage=f"sqlite:///{tmp_path / 's.db'}"
    )  # a database without 'nope'
    result = invoke_tuner(
        *args,
        cwd=REPO if "studies/digits.toml" in args else tmp_path,
        env={"TUNER_STORAGE": f"sqlite:///{tmp_path / 's.db'}"},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_read_commands_refuse_a_file_that_is_not_an_optuna_database(tmp_path, capsys):
    import hashlib
    import sqlite3

    from tuner.cli import main

    (tmp_path / "empty.db").write_bytes(b"")
    (tmp_path / "notes.db").write_text("not a database\n")
    with sqlite3.connect(tmp_path / "people.db") as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
        conn.execute("INSERT INTO people VALUES ('ada')")
    conn.close()
    what = {
        "empty.db": "is an empty file (0 bytes)",
        "notes.db": "is not a SQLite database",
        "people.db": "is a SQLite database without Optuna's tables (it holds people)",
    }
    commands = [
        ["study", "list"],
        ["study", "show", "s"],
        ["study", "export", "s", "--out", str(tmp_path / "t.csv")],
        ["study", "report", "s", "--out", str(tmp_path / "report")],
        ["study", "worker", "s"],
        ["study", "finalize", "s"],
        ["dashboard", "--read-only", "--port", "1"],
    ]
    for file, description in what.items():
        before = hashlib.sha256((tmp_path / file).read_bytes()).hexdigest()
        for command in commands:
            with pytest.raises(SystemExit) as exit_info:
                main([*command, "--storage", f"sqlite:///{tmp_path / file}"])
            err = capsys.readouterr().err
            assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, (command, err)
            assert f"{str(tmp_path / file)!r} {description}, not an Optuna study database" in err
        assert hashlib.sha256((tmp_path / file).read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(what)  # no -wal, -shm, outputs

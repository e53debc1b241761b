"""Bad input and refused actions: exit code 2, one line on stderr naming the input, no
traceback, and nothing already recorded lost. The cases run ``tuner.cli.main`` in this process
(``invoke_tuner``), as the command does; one of each kind runs the real ``tuner`` command
(``run_tuner``) and must print the very same line."""

from __future__ import annotations

import subprocess

import numpy as np
import optuna
import pytest
from conftest import invoke_tuner, run_tuner, write_spec

from tuner.data import load_source


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    return write_spec(tmp_path, source="npz:d.npz")


def _digits(tmp_path, transform):
    X, y, _ = load_source("sklearn:digits")
    return _npz(tmp_path, X=transform(X.astype(np.float64)), y=y)


CASES = {
    "empty npz file": (
        lambda p: ((p / "d.npz").write_bytes(b""), write_spec(p, source="npz:d.npz"))[1],
        "the file is empty",
    ),
    "npz is a folder": (
        lambda p: ((p / "d.npz").mkdir(), write_spec(p, source="npz:d.npz"))[1],
        "is a folder; name the file itself",
    ),
    "npz not an archive": (
        lambda p: ((p / "d.npz").write_text("hello"), write_spec(p, source="npz:d.npz"))[1],
        "not an npz archive of plain arrays",
    ),
    "npz without y": (lambda p: _npz(p, X=np.ones((10, 2))), "has no array y"),
    "npz with no features": (
        lambda p: _npz(p, X=np.ones((40, 0)), y=np.arange(40) % 2),
        "needs at least one row and one feature",
    ),
    "npz with one class": (
        lambda p: _npz(p, X=np.ones((40, 2)), y=np.zeros(40)),
        "needs at least 2 classes, found 1",
    ),
    "npz complex features": (
        lambda p: _npz(p, X=np.ones((40, 2)) * 1j, y=np.arange(40) % 2),
        "X must hold real numbers, got dtype complex128",
    ),
    "npz beyond float32": (lambda p: _digits(p, lambda X: X * 1e300), "exceed the float32 range"),
    "npz with NaN": (
        lambda p: _digits(p, lambda X: np.where(X > 15, np.nan, X)),
        "features contain NaN or infinity",
    ),
    "class too small": (
        lambda p: _npz(p, X=np.ones((42, 2)), y=np.r_[np.zeros(40), [1, 1]]),
        "class '1.0' has 2 rows, too few",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_exits_2_with_one_line(tmp_path, case):
    make, message = CASES[case]
    spec = make(tmp_path)
    result = invoke_tuner(
        "study", "start", str(spec), "--storage", f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "npz:d.npz" in result.stderr or "d.npz" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--name", ""], "Invalid value for '--name': must be a non-blank string"),
        (["--timeout", "nan"], "Invalid value for '--timeout': must be a finite number of seconds"),
        (["--seed", str(2**40)], "Invalid value for '--seed'"),
        (["--artifact-dir", "afile"], "artifact folder"),
        (["--storage", "sqlite:///notadb.db"], "storage"),
    ],
)
def test_bad_options_exit_2_and_create_nothing(tmp_path, args, message):
    spec = write_spec(tmp_path, n_trials=1, epochs=1)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notadb.db").write_text("this is not a database" * 100)
    default = ["--storage", f"sqlite:///{tmp_path / 's.db'}"] if "--storage" not in args else []
    run = run_tuner if args[0] == "--timeout" else invoke_tuner  # one as a real process
    result = run("study", "start", str(spec), *default, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    if (tmp_path / "s.db").exists():
        assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 's.db'}") == []


@pytest.mark.parametrize(
    "command",
    [
        ["study", "worker", "tiny"],
        ["study", "show", "tiny"],
        ["study", "list"],
        ["study", "export", "tiny", "--out", "t.csv"],
        ["study", "finalize", "tiny"],
        ["study", "report", "tiny", "--out", "r"],
        ["dashboard"],
    ],
    ids=lambda c: c[1] if len(c) > 1 else c[0],
)
def test_commands_that_read_refuse_a_missing_sqlite_file_and_create_none(tmp_path, command):
    run = run_tuner if command[1:2] == ["show"] else invoke_tuner  # one as a real process
    result = run(*command, "--storage", "sqlite:///typo.db", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "tuner: error: storage 'sqlite:///typo.db': no database file 'typo.db'; "
        "run `tuner study start SPEC` first or pass the study's --storage"
    )
    assert not (tmp_path / "typo.db").exists()


def test_read_only_database_exits_2(tmp_path):
    spec = write_spec(tmp_path, n_trials=1, epochs=1)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    # Root writes through permission bits; the immutable attribute stops it too.
    if (
        subprocess.run(["chattr", "+i", str(tmp_path / "s.db")], capture_output=True).returncode
        != 0
    ):
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        result = invoke_tuner(
            "study", "start", str(spec), "--storage", url, "--name", "other", cwd=tmp_path
        )
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "s.db")], check=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("tuner: error: storage") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert optuna.get_all_study_names(url) == ["tiny"]


def test_resume_does_not_replay_the_first_runs_suggestions(tmp_path):
    spec = write_spec(tmp_path, n_trials=3, epochs=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    assert (
        invoke_tuner(
            "study", "start", str(spec), "--storage", url, "--n-trials", "6", cwd=tmp_path
        ).returncode
        == 0
    )
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert len(trials) == 6
    first, resumed = [t.params for t in trials[:3]], [t.params for t in trials[3:]]
    assert not any(p in first for p in resumed)


def test_resume_with_a_changed_spec_is_refused_naming_the_keys(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = write_spec(tmp_path, n_trials=2, epochs=2)
    assert invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    text = (
        spec.read_text()
        .replace("epochs = 2", "epochs = 3")
        .replace("high = 64, log = true", "high = 64")
    )
    spec.write_text(text)
    result = invoke_tuner(
        "study", "start", str(spec), "--storage", url, "--n-trials", "4", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "(model.epochs, search.width.log changed)" in result.stderr
    assert (
        len(optuna.load_study(study_name="tiny", storage=url).get_trials()) == 2
    )  # nothing recorded


def test_diverging_trials_are_pruned_with_the_reason_and_the_study_completes(tmp_path):
    spec = write_spec(tmp_path, n_trials=3, epochs=5)
    spec.write_text(
        spec.read_text().replace(
            "learning_rate = { low = 1e-3, high = 0.3, log = true }", "learning_rate = 50.0"
        )
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert len(trials) == 3 and all(t.state.is_finished() for t in trials)  # the study completed
    diverged = [t for t in trials if "diverged" in t.user_attrs]
    assert diverged, [t.user_attrs for t in trials]
    assert all(
        t.state == optuna.trial.TrialState.PRUNED and "non-finite" in t.user_attrs["diverged"]
        for t in diverged
    )
    for t in diverged:
        assert (
            f"trial {t.number:>4}  PRUNED" in result.stdout
            and t.user_attrs["diverged"] in result.stdout
        )


def test_finalize_with_missing_weights_exits_2_and_keeps_the_study_open(tmp_path):
    spec = write_spec(tmp_path, n_trials=2, epochs=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    folder = tmp_path / "s.db-artifacts"
    for f in folder.iterdir():
        f.unlink()
    result = invoke_tuner("study", "finalize", "tiny", "--storage", url, cwd=tmp_path)
    assert result.returncode == 2 and "are not in the artifact store" in result.stderr
    folder.rmdir()
    result = invoke_tuner("study", "finalize", "tiny", "--storage", url, cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr and not folder.exists()
    shown = invoke_tuner("study", "show", "tiny", "--storage", url, cwd=tmp_path)
    assert "not finalized" in shown.stdout


def test_finalize_from_another_directory_finds_the_studys_artifacts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    spec = write_spec(tmp_path / "a", n_trials=2, epochs=2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert (
        invoke_tuner(
            "study",
            "start",
            str(spec),
            "--storage",
            url,
            "--artifact-dir",
            "arts",
            cwd=tmp_path / "a",
        ).returncode
        == 0
    )
    result = invoke_tuner("study", "finalize", "tiny", "--storage", url, cwd=tmp_path / "b")
    assert result.returncode == 0, result.stderr


def test_a_database_of_an_older_optuna_schema_exits_2_naming_the_upgrade(tmp_path):
    """Tables at another Optuna's schema revision: one line with both revisions and the
    upgrade command, not Optuna's RuntimeError; the database is left as it was. A database at
    this Optuna's revision is opened without alembic (tuner.storage.optuna_schema_revision,
    read from the migration scripts, is the head alembic computes)."""
    import sqlite3

    from tuner.storage import optuna_schema_revision

    url = f"sqlite:///{tmp_path / 's.db'}"
    head = optuna.storages.RDBStorage(url).get_head_version()
    assert optuna_schema_revision() == head
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'v3.0.0.d'")

    def contents():
        with sqlite3.connect(tmp_path / "s.db") as conn:
            tables = conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
            return tables, conn.execute("SELECT * FROM alembic_version").fetchall()

    before = contents()
    for command in (["study", "list"], ["study", "show", "x"]):
        result = invoke_tuner(*command, "--storage", url, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"tuner: error: storage '{url}': its tables have Optuna schema revision v3.0.0.d, "
            f"but Optuna {optuna.__version__} uses {head}; back the database up and run "
            f"`optuna storage upgrade --storage {url}`, or use the Optuna that wrote it\n"
        )
    assert contents() == before and before[1] == [("v3.0.0.d",)]

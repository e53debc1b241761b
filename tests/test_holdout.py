"""The locked test evaluation: exactly once across processes, crash-safe, tamper-evident.
Real processes on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from conftest import invoke_tuner, popen_tuner, run_tuner, stop_process, write_spec

import tuner
from tuner.data import load_source
from tuner.errors import StudyRefused
from tuner.holdout import PAUSE_AFTER_CLAIM_ENV, get_record
from tuner.schema import holdout_table


def _start(tmp_path, url, name, spec=None):
    spec = spec or write_spec(tmp_path, n_trials=3, epochs=3)
    result = invoke_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        url,
        "--name",
        name,
        "--artifact-dir",
        str(tmp_path / "artifacts"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return spec


def _rows(url, name) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count())
                .select_from(holdout_table)
                .where(holdout_table.c.study_name == name)
            ).scalar_one()
    finally:
        engine.dispose()


def _record(url, name):
    storage = optuna.storages.RDBStorage(url)
    try:
        return get_record(storage, name)
    finally:
        storage.engine.dispose()


def test_eight_concurrent_finalize_calls_give_exactly_one_record(tmp_path, storage_url, study_name):
    _start(tmp_path, storage_url, study_name)
    procs = [
        popen_tuner("study", "finalize", study_name, "--storage", storage_url, cwd=tmp_path)
        for _ in range(8)
    ]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [2] * 7, [r[2] for r in results]
    for code, _, err in results:
        if code == 2:
            assert (
                err.startswith(f"tuner: error: study {study_name!r} is sealed")
                and len(err.strip().splitlines()) == 1
            )
    assert _rows(storage_url, study_name) == 1
    assert _record(storage_url, study_name)["completed"] is True


def test_killed_finalize_is_completed_by_recover_with_the_clean_numbers(
    tmp_path, storage_url, study_name
):
    clean, crashed = study_name + "-clean", study_name + "-crashed"
    spec = _start(tmp_path, storage_url, clean)
    _start(tmp_path, storage_url, crashed, spec)
    assert (
        invoke_tuner("study", "finalize", clean, "--storage", storage_url, cwd=tmp_path).returncode
        == 0
    )

    proc = popen_tuner(  # the same test rows as `clean`: a second look, asked for
        "study",
        "finalize",
        crashed,
        "--storage",
        storage_url,
        "--reuse-test",
        cwd=tmp_path,
        env={PAUSE_AFTER_CLAIM_ENV: "60"},
    )
    deadline = time.monotonic() + 60
    while _rows(storage_url, crashed) == 0:
        assert proc.poll() is None and time.monotonic() < deadline, (
            proc.stderr.read() if proc.poll() is not None else "timeout"
        )
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # between the claim and the result
    proc.wait(timeout=30)
    claim = _record(storage_url, crashed)
    assert claim["completed"] is False and claim["pid"] == proc.pid

    again = invoke_tuner("study", "finalize", crashed, "--storage", storage_url, cwd=tmp_path)
    assert again.returncode == 2 and "--recover" in again.stderr
    sealed = invoke_tuner(
        "study", "start", str(spec), "--storage", storage_url, "--name", crashed, cwd=tmp_path
    )
    assert sealed.returncode == 2 and "is sealed" in sealed.stderr

    recovers = [
        popen_tuner(
            "study", "finalize", crashed, "--storage", storage_url, "--recover", cwd=tmp_path
        )
        for _ in range(3)
    ]
    codes = sorted(p.wait(timeout=120) for p in recovers)
    assert codes == [0, 2, 2], [p.stderr.read() for p in recovers]
    assert _rows(storage_url, crashed) == 1
    recovered, reference = _record(storage_url, crashed), _record(storage_url, clean)
    assert recovered["completed"] and recovered["recovery_count"] >= 1
    assert recovered["metrics"] == reference["metrics"]
    assert (
        recovered["trial_number"],
        recovered["weights_sha256"],
        recovered["data_fingerprint"],
    ) == (reference["trial_number"], reference["weights_sha256"], reference["data_fingerprint"])
    shown = json.loads(
        invoke_tuner(
            "study", "show", crashed, "--storage", storage_url, "--json", cwd=tmp_path
        ).stdout
    )
    assert shown["final"]["metrics"] == reference["metrics"] and shown["sealed"] is True


def test_missing_or_changed_weights_or_data_are_refused_by_finalize_and_recover(tmp_path):
    X, y, _ = load_source("sklearn:digits")
    np.savez(tmp_path / "d.npz", X=X, y=y)
    spec = write_spec(tmp_path, n_trials=3, epochs=3, source="npz:d.npz")
    url = f"sqlite:///{tmp_path / 's.db'}"
    _start(tmp_path, url, "s", spec)
    weights = next(
        f for f in (tmp_path / "artifacts").iterdir() if f.name == _best_artifact(url, "s")
    )
    original = weights.read_bytes()

    def finalize(*extra):
        return invoke_tuner("study", "finalize", "s", "--storage", url, *extra, cwd=tmp_path)

    best = optuna.load_study(study_name="s", storage=url).best_trial
    weights.rename(tmp_path / "moved")  # missing weights: refused, with the way to fix it
    result = finalize()
    assert (result.returncode, result.stderr) == (
        2,
        f"tuner: error: study 's': weights of trial {best.number} (artifact {weights.name}) are "
        "not in the artifact store; pass the store's folder with --artifact-dir or "
        "TUNER_ARTIFACT_DIR\n",
    )
    assert _rows(url, "s") == 0 and _record(url, "s") is None
    (tmp_path / "moved").rename(weights)
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    result = finalize()
    assert result.returncode == 2 and "changed since they were scored" in result.stderr
    weights.write_bytes(original)
    X_changed = X.copy()
    X_changed[0, 0] += 1
    np.savez(tmp_path / "d.npz", X=X_changed, y=y)
    result = finalize()
    assert result.returncode == 2 and "data changed since the study was created" in result.stderr
    assert _rows(url, "s") == 0  # refused before evaluating: the claim was released

    # A claim left by a killed process; then the same checks on --recover.
    np.savez(tmp_path / "d.npz", X=X, y=y)
    proc = popen_tuner(
        "study", "finalize", "s", "--storage", url, cwd=tmp_path, env={PAUSE_AFTER_CLAIM_ENV: "60"}
    )
    while _rows(url, "s") == 0:
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    np.savez(tmp_path / "d.npz", X=X_changed, y=y)
    result = finalize("--recover")
    assert result.returncode == 2 and "data changed" in result.stderr
    np.savez(tmp_path / "d.npz", X=X, y=y)
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    result = finalize("--recover")
    assert result.returncode == 2 and "changed since they were scored" in result.stderr
    weights.write_bytes(original)
    assert _record(url, "s")["completed"] is False
    result = finalize("--recover")
    assert result.returncode == 0, result.stderr
    assert finalize("--recover").returncode == 2


def _best_artifact(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    return study.best_trial.user_attrs["weights_artifact_id"]


def test_a_running_worker_stops_once_the_study_is_sealed(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _start(tmp_path, url, "s")
    worker = popen_tuner(
        "study", "worker", "s", "--storage", url, "--n-trials", "500", cwd=tmp_path
    )
    deadline = time.monotonic() + 60
    while len(optuna.load_study(study_name="s", storage=url).get_trials()) < 5:
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    final = run_tuner("study", "finalize", "s", "--storage", url, "--wait", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert worker.wait(timeout=60) == 0
    out = worker.stdout.read()
    assert "stopped: finalize is waiting" in out or "stopped: study sealed" in out, out
    n = len(optuna.load_study(study_name="s", storage=url).get_trials())
    assert n < 60
    late = run_tuner("study", "worker", "s", "--storage", url, cwd=tmp_path)
    assert late.returncode == 2 and "is sealed" in late.stderr
    assert len(optuna.load_study(study_name="s", storage=url).get_trials()) == n


def test_start_and_worker_processes_get_nothing_from_the_test_rows(tmp_path):
    """Real `start` and `worker` processes on two copies of the data that differ only in the
    test rows' features (scrambled): every trial's parameters, per-epoch validation scores
    and value are bit-identical, so no value from a test row reaches any trial. (The loader
    reads the whole file to validate and fingerprint it, then drops the test rows before the
    objective exists; only finalize keeps them.)"""
    from tuner.data import stratified_split

    X, y, _ = load_source("sklearn:digits")
    test_rows = stratified_split(y, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=0).test
    scrambled = X.copy()
    scrambled[test_rows] = (
        np.random.default_rng(7).permutation(scrambled[test_rows].ravel()).reshape(-1, X.shape[1])
        * 3
    )
    runs = []
    for label, features in (("original", X), ("scrambled", scrambled)):
        folder = tmp_path / label
        folder.mkdir()
        np.savez(folder / "d.npz", X=features, y=y)
        spec = write_spec(folder, n_trials=3, epochs=3, source="npz:d.npz")
        url = f"sqlite:///{folder / 's.db'}"
        assert run_tuner("study", "start", str(spec), "--storage", url, cwd=folder).returncode == 0
        worker = run_tuner(
            "study",
            "worker",
            "tiny",
            "--storage",
            url,
            "--n-trials",
            "5",
            "--worker-index",
            "0",
            cwd=folder,
        )
        assert worker.returncode == 0, worker.stderr
        trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
        runs.append([(t.params, t.intermediate_values, t.value, t.state) for t in trials])
    assert len(runs[0]) == 5
    assert runs[0] == runs[1]


# ------------------------------------------------------------------ routes around the seal


def _tuner(capsys, *args: str) -> tuple[int, str, str]:
    """``tuner ARGS`` in this process (the refusals below need no process of their own)."""
    from tuner.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _refusals(capsys, url: str, name: str, spec) -> dict[str, str]:
    """The one-line error of finalize, start and worker on the study ``name``; each exits 2."""
    errors = {}
    for command, *args in (
        ("finalize", name),
        ("start", str(spec), "--name", name, "--quiet"),
        ("worker", name, "--quiet"),
    ):
        code, out, err = _tuner(capsys, "study", command, *args, "--storage", url)
        assert code == 2 and len(err.strip().splitlines()) == 1, (command, name, out, err)
        errors[command] = err
    return errors


def _v2_rows(url) -> list[tuple[str, int]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sa.select(holdout_table.c.study_name, holdout_table.c.look_number)
                )
            ]
    finally:
        engine.dispose()


def test_seal_survives_rename_copy_and_delete_and_recreate(
    tmp_path, storage_url, study_name, capsys
):
    spec = _start(tmp_path, storage_url, study_name)
    sealed = invoke_tuner("study", "finalize", study_name, "--storage", storage_url, cwd=tmp_path)
    assert sealed.returncode == 0, sealed.stderr
    storage = optuna.storages.RDBStorage(storage_url)
    sql, api, copy, fresh = (f"{study_name}-{s}" for s in ("sql", "api", "copy", "fresh"))

    # 1. Renamed in the database itself: the same study row under a new name.
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE studies SET study_name = :new WHERE study_name = :old"),
            {"new": sql, "old": study_name},
        )
    errors = _refusals(capsys, storage_url, sql, spec)
    assert all("is sealed" in e for e in errors.values()), errors
    old = _refusals(capsys, storage_url, study_name, spec)
    assert "is sealed" in old["start"]  # a new study under the sealed name is refused
    assert "no study named" in old["finalize"] and "no study named" in old["worker"]

    # 2. Renamed as optuna-dashboard does it, through Optuna's API: a new study with the trials
    # and user attributes, then the original deleted.
    src = optuna.load_study(study_name=sql, storage=storage)
    dst = optuna.create_study(study_name=api, storage=storage, directions=src.directions)
    dst.add_trials(src.get_trials(deepcopy=False))
    for key, value in src.user_attrs.items():
        dst.set_user_attr(key, value)
    optuna.delete_study(study_name=sql, storage=storage)
    assert all("is sealed" in e for e in _refusals(capsys, storage_url, api, spec).values())
    for command in ("finalize", "worker"):  # gone; under it `start` would make a new study
        code, _, err = _tuner(capsys, "study", command, sql, "--storage", storage_url)
        assert code == 2 and "no study named" in err

    # 3. Copied, into the same storage and into another one: the copy is the same study.
    optuna.copy_study(
        from_study_name=api, from_storage=storage, to_storage=storage, to_study_name=copy
    )
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    optuna.copy_study(from_study_name=api, from_storage=storage, to_storage=elsewhere)
    for url, name in ((storage_url, copy), (elsewhere, api)):
        assert all("is sealed" in e for e in _refusals(capsys, url, name, spec).values())
        code, _, err = _tuner(capsys, "study", "finalize", name, "--storage", url, "--reuse-test")
        assert code == 2 and "is sealed" in err
        shown = json.loads(_tuner(capsys, "study", "show", name, "--storage", url, "--json")[1])
        assert shown["sealed"] is True and shown["final"]["trial_number"] is not None

    # 4. Deleted and created again: under the same name refused; under another name it is a
    # new study whose test rows were seen, so its finalize needs --reuse-test.
    optuna.delete_study(study_name=copy, storage=storage)
    optuna.delete_study(study_name=api, storage=storage)
    assert "is sealed" in _refusals(capsys, storage_url, study_name, spec)["start"]
    _start(tmp_path, storage_url, fresh, spec)
    code, _, err = _tuner(capsys, "study", "finalize", fresh, "--storage", storage_url)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "were already evaluated once in this storage" in err and "--reuse-test" in err
    assert (
        json.loads(_tuner(capsys, "study", "show", fresh, "--storage", storage_url, "--json")[1])[
            "sealed"
        ]
        is False
    )
    again = invoke_tuner(
        "study", "finalize", fresh, "--storage", storage_url, "--reuse-test", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert "test split evaluated 2 times" in again.stdout
    shown = invoke_tuner("study", "show", fresh, "--storage", storage_url, "--json", cwd=tmp_path)
    final = json.loads(shown.stdout)["final"]
    assert final["test_evaluations"] == 2 and final["look_number"] == 2
    single, widened = final["metrics"]["accuracy_ci95"], final["accuracy_ci_simultaneous"]
    assert widened[0] < single[0] <= final["metrics"]["accuracy"] <= single[1] < widened[1]
    text = invoke_tuner("study", "show", fresh, "--storage", storage_url, cwd=tmp_path).stdout
    assert "test split evaluated 2 times" in text and "Bonferroni" in text
    assert sorted(r for r in _v2_rows(storage_url) if r[0].startswith(study_name)) == [
        (study_name, 1),
        (fresh, 2),
    ]
    storage.engine.dispose()


def test_two_new_studies_on_the_same_test_rows_at_once_get_one_look(
    tmp_path, storage_url, study_name
):
    names = [f"{study_name}-a", f"{study_name}-b"]
    spec = _start(tmp_path, storage_url, names[0])
    _start(tmp_path, storage_url, names[1], spec)
    procs = [
        popen_tuner("study", "finalize", n, "--storage", storage_url, cwd=tmp_path) for n in names
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    assert any("--reuse-test" in err for code, err in results if code == 2)
    assert [r[1] for r in _v2_rows(storage_url) if r[0] in names] == [1]


def test_finalize_failing_before_the_test_rows_leaves_the_study_unsealed(
    tmp_path, storage_url, study_name
):
    from tuner.schema import RECORD_ATTR

    X, y, _ = load_source("sklearn:digits")
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "d.npz", X=X, y=y)
    spec = write_spec(tmp_path, n_trials=3, epochs=3, source="npz:data/d.npz")
    _start(tmp_path, storage_url, study_name, spec)

    def finalize():
        return invoke_tuner("study", "finalize", study_name, "--storage", storage_url, cwd=tmp_path)

    (tmp_path / "data").rename(tmp_path / "moved")  # the data folder is gone
    failed = finalize()
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1
    assert "d.npz" in failed.stderr and "Traceback" not in failed.stderr
    assert _rows(storage_url, study_name) == 0 and _record(storage_url, study_name) is None
    (tmp_path / "moved").rename(tmp_path / "data")

    # A claim whose process is stopped (SIGTERM) before it reads a test row is released, and
    # what happened is recorded on the study.
    proc = popen_tuner(
        "study",
        "finalize",
        study_name,
        "--storage",
        storage_url,
        cwd=tmp_path,
        env={PAUSE_AFTER_CLAIM_ENV: "60"},
    )
    deadline = time.monotonic() + 60
    while _rows(storage_url, study_name) == 0:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130, proc.stderr.read()
    assert _rows(storage_url, study_name) == 0
    storage = optuna.storages.RDBStorage(storage_url)
    released = storage.get_study_system_attrs(storage.get_study_id_from_name(study_name))
    storage.engine.dispose()
    assert released[RECORD_ATTR]["status"] == "released"
    assert released[RECORD_ATTR]["reason"] == "KeyboardInterrupt"

    done = finalize()
    assert done.returncode == 0, done.stderr
    assert "test split evaluated 1 time" in done.stdout
    assert _rows(storage_url, study_name) == 1


def test_finalize_refuses_running_trials_and_wait_evaluates_the_best(
    tmp_path, storage_url, study_name
):
    # Unpruned trials of about a second each: one is still running when finalize looks, a second
    # after the test saw it (with 30-epoch prunable trials, both workers were sometimes
    # between trials then, and the refusal did not come).
    spec = write_spec(tmp_path, n_trials=300, epochs=60, pruner='name = "none"')
    start = popen_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        storage_url,
        "--name",
        study_name,
        "--workers",
        "2",
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert start.poll() is None and time.monotonic() < deadline
            try:
                trials = optuna.load_study(study_name=study_name, storage=storage_url).trials
            except KeyError:
                trials = []
            states = [t.state for t in trials]
            if optuna.trial.TrialState.COMPLETE in states and states.count(
                optuna.trial.TrialState.RUNNING
            ):
                break
            time.sleep(0.2)
        refused = run_tuner("study", "finalize", study_name, "--storage", storage_url, cwd=tmp_path)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
        assert "running trial" in refused.stderr and f"{study_name} --wait" in refused.stderr
        assert _rows(storage_url, study_name) == 0
        waited = run_tuner(
            "study", "finalize", study_name, "--storage", storage_url, "--wait", cwd=tmp_path
        )
        assert waited.returncode == 0, waited.stderr
        assert "waiting for" in waited.stderr
        out, err = start.communicate(timeout=120)
    finally:
        stop_process(start)
    assert start.returncode == 0, err
    assert "stopped: study sealed" in out or "stopped: finalize is waiting" in out, out
    record = _record(storage_url, study_name)
    trials = optuna.load_study(study_name=study_name, storage=storage_url).trials
    assert not [t.number for t in trials if not t.state.is_finished()]
    shown = json.loads(
        run_tuner(
            "study", "show", study_name, "--storage", storage_url, "--json", cwd=tmp_path
        ).stdout
    )
    assert shown["best"]["number"] == record["trial_number"] == shown["final"]["trial_number"]
    claimed = datetime.fromisoformat(record["claimed_at"])
    assert all(t.datetime_complete.astimezone() <= claimed for t in trials)


def test_a_database_with_the_old_holdout_table_keeps_its_seals(tmp_path):
    """A database of tuner before ``tuner_holdout_v2``: its table ``tuner_holdout`` (one row
    per study name) holds a completed record and a claim of a process that died, its studies
    have no identity attribute. The new code keeps both sealed, counts them as looks at their
    data, completes the claim with --recover, and leaves the old table as it was."""
    from tuner.schema import STUDY_UUID_ATTR, legacy_metadata, legacy_table

    url = f"sqlite:///{tmp_path / 'old.db'}"
    spec = _start(tmp_path, url, "old")
    _start(tmp_path, url, "pending", spec)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in ("study_system_attributes", "study_user_attributes"):
            conn.execute(sa.text(f"DELETE FROM {table} WHERE key = :k"), {"k": STUDY_UUID_ATTR})
    legacy_metadata.create_all(engine)
    rows = {}
    for name in ("old", "pending"):
        best = optuna.load_study(study_name=name, storage=url).best_trial
        rows[name] = {
            "study_name": name,
            "claimed_at": datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
            "host": "a-host-that-is-gone",
            "pid": 1,
            "trial_number": best.number,
            "artifact_id": best.user_attrs["weights_artifact_id"],
            "weights_sha256": best.user_attrs["weights_sha256"],
            "data_fingerprint": optuna.load_study(study_name=name, storage=url).user_attrs[
                "data_fingerprint"
            ],
            "recovery_count": 0,
        }
    result = {
        "metrics": {"accuracy": 0.9, "accuracy_ci95": [0.86, 0.93], "macro_f1": 0.9},
        "n_test": 359,
        "validation_value": 0.95,
        "gap": 0.05,
        "completed_at": "2026-01-01T00:01:00+00:00",
    }
    rows["old"].update(
        completed_at=datetime.fromisoformat(result["completed_at"]),
        validation_value=0.95,
        test_accuracy=0.9,
        result_json=json.dumps(result),
    )
    with engine.begin() as conn:
        for row in rows.values():
            conn.execute(legacy_table.insert().values(**row))
        columns = [c["name"] for c in sa.inspect(conn).get_columns("tuner_holdout")]
    engine.dispose()

    for name in ("old", "pending"):
        for command in (["finalize", name], ["start", str(spec), "--name", name]):
            result = invoke_tuner("study", *command, "--storage", url, cwd=tmp_path)
            assert result.returncode == 2 and "is sealed" in result.stderr, result.stderr
    shown = invoke_tuner("study", "show", "old", "--storage", url, "--json", cwd=tmp_path)
    shown = json.loads(shown.stdout)
    assert shown["sealed"] is True and shown["final"]["metrics"]["accuracy"] == 0.9

    _start(tmp_path, url, "new", spec)  # the same data: both old rows are looks at its test rows
    refused = invoke_tuner("study", "finalize", "new", "--storage", url, cwd=tmp_path)
    assert refused.returncode == 2 and "already evaluated 2 times" in refused.stderr

    recovered = invoke_tuner(
        "study", "finalize", "pending", "--storage", url, "--recover", cwd=tmp_path
    )
    assert recovered.returncode == 0, recovered.stderr
    assert "test split evaluated 2 times" in recovered.stdout
    assert _record(url, "pending")["completed"] is True
    again = invoke_tuner("study", "finalize", "new", "--storage", url, "--reuse-test", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _record(url, "new")["test_evaluations"] == 3

    with engine.connect() as conn:
        assert [c["name"] for c in sa.inspect(conn).get_columns("tuner_holdout")] == columns
        old_rows = conn.execute(sa.select(legacy_table.c.study_name, legacy_table.c.completed_at))
        assert sorted((n, done is not None) for n, done in old_rows) == [
            ("old", True),
            ("pending", False),
        ]
    engine.dispose()


def test_a_claim_committed_between_the_look_check_and_the_look_number_is_refused(
    tmp_path, monkeypatch
):
    """The race of two finalize processes on PostgreSQL, made certain in one process: study b
    checks the looks at its test rows before study a's claim commits, and reads the highest
    look number after it. Before the fix b took look 2 without --reuse-test (seen in CI)."""
    from tuner import holdout

    url = f"sqlite:///{tmp_path / 't.db'}"
    spec = write_spec(tmp_path, n_trials=2, epochs=2)
    a = tuner.create_study(spec, storage=url, name="a")
    a.optimize()
    b = tuner.create_study(spec, storage=url, name="b")
    b.optimize()
    a.finalize()
    real_looks, calls = holdout._looks, []

    def looks_read_before_a_committed(*args):
        calls.append(args)
        return [] if len(calls) == 1 else real_looks(*args)

    monkeypatch.setattr(holdout, "_looks", looks_read_before_a_committed)
    with pytest.raises(StudyRefused, match="--reuse-test"):
        b.finalize()
    assert len(calls) >= 2
    assert [r[1] for r in _v2_rows(url)] == [1]  # a's look only
    assert not b.is_sealed()

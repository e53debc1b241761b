"""The locked test evaluation: exactly once across processes, crash-safe, tamper-evident.
Real processes on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import optuna
import sqlalchemy as sa

from tuner.data import load_source
from tuner.holdout import PAUSE_AFTER_CLAIM_ENV, get_record, holdout_table

from conftest import popen_tuner, run_tuner, write_spec


def _start(tmp_path, url, name, spec=None):
    spec = spec or write_spec(tmp_path, n_trials=3, epochs=3)
    result = run_tuner("study", "start", str(spec), "--storage", url, "--name", name,
                       "--artifact-dir", str(tmp_path / "artifacts"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return spec


def _rows(url, name) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(holdout_table)
                                .where(holdout_table.c.study_name == name)).scalar_one()
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
    procs = [popen_tuner("study", "finalize", study_name, "--storage", storage_url, cwd=tmp_path) for _ in range(8)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [2] * 7, [r[2] for r in results]
    for code, _, err in results:
        if code == 2:
            assert err.startswith(f"tuner: error: study {study_name!r} is sealed") and len(err.strip().splitlines()) == 1
    assert _rows(storage_url, study_name) == 1
    assert _record(storage_url, study_name)["completed"] is True


def test_killed_finalize_is_completed_by_recover_with_the_clean_numbers(tmp_path, storage_url, study_name):
    clean, crashed = study_name + "-clean", study_name + "-crashed"
    spec = _start(tmp_path, storage_url, clean)
    _start(tmp_path, storage_url, crashed, spec)
    assert run_tuner("study", "finalize", clean, "--storage", storage_url, cwd=tmp_path).returncode == 0

    proc = popen_tuner("study", "finalize", crashed, "--storage", storage_url, cwd=tmp_path,
                       env={PAUSE_AFTER_CLAIM_ENV: "60"})
    deadline = time.monotonic() + 60
    while _rows(storage_url, crashed) == 0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # between the claim and the result
    proc.wait(timeout=30)
    claim = _record(storage_url, crashed)
    assert claim["completed"] is False and claim["pid"] == proc.pid

    again = run_tuner("study", "finalize", crashed, "--storage", storage_url, cwd=tmp_path)
    assert again.returncode == 2 and "--recover" in again.stderr
    sealed = run_tuner("study", "start", str(spec), "--storage", storage_url, "--name", crashed, cwd=tmp_path)
    assert sealed.returncode == 2 and "is sealed" in sealed.stderr

    recovers = [popen_tuner("study", "finalize", crashed, "--storage", storage_url, "--recover", cwd=tmp_path)
                for _ in range(3)]
    codes = sorted(p.wait(timeout=120) for p in recovers)
    assert codes == [0, 2, 2], [p.stderr.read() for p in recovers]
    assert _rows(storage_url, crashed) == 1
    recovered, reference = _record(storage_url, crashed), _record(storage_url, clean)
    assert recovered["completed"] and recovered["recovery_count"] >= 1
    assert recovered["metrics"] == reference["metrics"]
    assert (recovered["trial_number"], recovered["weights_sha256"], recovered["data_fingerprint"]) == (
        reference["trial_number"], reference["weights_sha256"], reference["data_fingerprint"])
    shown = json.loads(run_tuner("study", "show", crashed, "--storage", storage_url, "--json", cwd=tmp_path).stdout)
    assert shown["final"]["metrics"] == reference["metrics"] and shown["sealed"] is True


def test_changed_weights_or_data_are_refused_by_finalize_and_recover(tmp_path):
    X, y, _ = load_source("sklearn:digits")
    np.savez(tmp_path / "d.npz", X=X, y=y)
    spec = write_spec(tmp_path, n_trials=3, epochs=3, source="npz:d.npz")
    url = f"sqlite:///{tmp_path / 's.db'}"
    _start(tmp_path, url, "s", spec)
    weights = next(f for f in (tmp_path / "artifacts").iterdir()
                   if f.name == _best_artifact(url, "s"))
    original = weights.read_bytes()

    def finalize(*extra):
        return run_tuner("study", "finalize", "s", "--storage", url, *extra, cwd=tmp_path)

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
    proc = popen_tuner("study", "finalize", "s", "--storage", url, cwd=tmp_path, env={PAUSE_AFTER_CLAIM_ENV: "60"})
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
    worker = popen_tuner("study", "worker", "s", "--storage", url, "--n-trials", "500", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while len(optuna.load_study(study_name="s", storage=url).get_trials()) < 5:
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    assert run_tuner("study", "finalize", "s", "--storage", url, cwd=tmp_path).returncode == 0
    assert worker.wait(timeout=60) == 0
    assert "stopped: the study was sealed by finalize" in worker.stdout.read()
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
    scrambled[test_rows] = np.random.default_rng(7).permutation(scrambled[test_rows].ravel()).reshape(-1, X.shape[1]) * 3
    runs = []
    for label, features in (("original", X), ("scrambled", scrambled)):
        folder = tmp_path / label
        folder.mkdir()
        np.savez(folder / "d.npz", X=features, y=y)
        spec = write_spec(folder, n_trials=3, epochs=3, source="npz:d.npz")
        url = f"sqlite:///{folder / 's.db'}"
        assert run_tuner("study", "start", str(spec), "--storage", url, cwd=folder).returncode == 0
        worker = run_tuner("study", "worker", "tiny", "--storage", url, "--n-trials", "5", "--worker-index", "0",
                           cwd=folder)
        assert worker.returncode == 0, worker.stderr
        trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
        runs.append([(t.params, t.intermediate_values, t.value, t.state) for t in trials])
    assert len(runs[0]) == 5
    assert runs[0] == runs[1]

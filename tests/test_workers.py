"""Many workers: real processes on PostgreSQL and SQLite, the study-wide trial budget,
heartbeats and retries of a killed worker's trial, SQLite under four writers."""

from __future__ import annotations

import json
import signal
import time

import optuna
import pytest
from conftest import (
    invoke_tuner,
    popen_tuner,
    run_tuner,
    stop_process,
    write_spec,
    write_tiny_trials_spec,
)
from optuna.trial import TrialState

from tuner.storage import durable_begin, get_storage


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _by_state(trials):
    return {s: sum(t.state == s for t in trials) for s in TrialState}


def test_three_workers_finish_exactly_the_study_total(tmp_path, storage_url, study_name):
    spec = write_spec(tmp_path, n_trials=30, epochs=2)
    result = run_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        storage_url,
        "--name",
        study_name,
        "--workers",
        "3",
        "--artifact-dir",
        str(tmp_path / "artifacts"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    trials = _trials(storage_url, study_name)
    counts = _by_state(trials)
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 30
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == counts[TrialState.FAIL] == 0
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == 30
    assert (
        len({line.split()[1] for line in result.stdout.splitlines() if line.startswith("trial ")})
        == 30
    )


@pytest.mark.parametrize(("total", "grace"), [(8, 3), (2, 8)], ids=["budget-left", "last-slot"])
def test_killed_workers_trial_is_failed_within_the_grace_period_and_retried(
    tmp_path, storage_url, study_name, total, grace
):
    """With ``total = 2`` the killed trial holds the last slot of the budget, and the grace
    period outlasts the survivor's start: the survivor finds the budget full of running trials
    and must wait, fail the stale trial and run its retry."""
    spec = write_spec(tmp_path, n_trials=1, epochs=120)  # a trial outlasts a few polls
    hb = ["--heartbeat-interval", "1", "--grace-period", str(grace)]
    created = run_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        storage_url,
        "--name",
        study_name,
        *hb,
        cwd=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    victim = popen_tuner(
        "study",
        "worker",
        study_name,
        "--storage",
        storage_url,
        "--n-trials",
        str(total),
        *hb,
        cwd=tmp_path,
    )
    survivor = None
    # One storage for the polls: opening one each time took longer under load than the trial.
    # Optuna's own, not tuner's get_storage: its SQLite reads do not take the write lock, which
    # the frozen victim may hold.
    reader = optuna.storages.RDBStorage(storage_url)
    polled = optuna.load_study(study_name=study_name, storage=reader)
    try:
        deadline = time.monotonic() + 60
        while True:
            # Mid-trial: running and at least one epoch reported, so its parameters are suggested.
            while not any(
                t.state == TrialState.RUNNING and t.intermediate_values for t in polled.get_trials()
            ):
                assert victim.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            # Frozen, the victim cannot finish the trial between this look and the kill.
            victim.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()  # its last heartbeat came at most 1 s before
            trials = _trials(storage_url, study_name)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if running:
                break
            victim.send_signal(signal.SIGCONT)  # it finished the trial just before: wait again
        (stale,) = running
        finished_before = {t.number: t.value for t in trials if t.state.is_finished()}
        victim.send_signal(signal.SIGKILL)  # mid-trial: its trial stays RUNNING in the database
        victim.wait(timeout=10)
        killed_at = time.monotonic()
        survivor = popen_tuner(
            "study",
            "worker",
            study_name,
            "--storage",
            storage_url,
            "--n-trials",
            str(total),
            *hb,
            cwd=tmp_path,
        )
        while _trials(storage_url, study_name)[stale.number].state == TrialState.RUNNING:
            # The survivor's own start (imports) counts too: on a loaded 2-core machine,
            # beside eight other tuner processes, it was seen to take 15 s.
            assert time.monotonic() - killed_at < grace + 45, "the stale trial was not failed"
            time.sleep(0.1)
        failed_at = time.monotonic()
        assert survivor.wait(timeout=240) == 0, survivor.stderr.read()
    finally:
        for p in (victim, survivor):
            stop_process(p, terminate=False)
        reader.engine.dispose()
    trials = _trials(storage_url, study_name)
    counts = _by_state(trials)
    assert trials[stale.number].state == TrialState.FAIL
    # Never before the grace period has passed since the victim's last heartbeat.
    assert failed_at - stopped_at >= grace - 1 and failed_at - killed_at < grace + 45
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == total
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == stale.number]
    # The retry runs again with the killed trial's parameters.
    assert len(retries) == 1 and retries[0].state.is_finished()
    assert stale.params and retries[0].params == stale.params
    for number, value in finished_before.items():  # no finished trial lost or changed
        assert trials[number].value == value


def test_the_total_set_by_n_trials_is_kept_by_later_workers_and_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'total.db'}"
    spec = write_spec(tmp_path, n_trials=1, epochs=1)

    def finished():
        return sum(t.state.is_finished() for t in _trials(url, "tiny"))

    assert (
        invoke_tuner("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    )
    # The timeout ends this worker after its first trial; the total it set is 3, not the spec's 1.
    first = invoke_tuner(
        "study",
        "worker",
        "tiny",
        "--storage",
        url,
        "--n-trials",
        "3",
        "--timeout",
        "0.001",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    assert finished() == 1
    later = invoke_tuner("study", "worker", "tiny", "--storage", url, cwd=tmp_path)
    assert later.returncode == 0, later.stderr
    assert finished() == 3
    # A start without --n-trials asks for the spec's total (1): nothing to run, it says so and
    # leaves the recorded total (3) alone, which a later worker keeps to.
    resumed = invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "nothing to run: study 'tiny' already has 3 finished trials" in resumed.stderr
    shown = invoke_tuner("study", "show", "tiny", "--storage", url, "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["total_trials"] == 3
    assert invoke_tuner("study", "worker", "tiny", "--storage", url, cwd=tmp_path).returncode == 0
    assert finished() == 3
    raised = invoke_tuner(
        "study", "start", str(spec), "--storage", url, "--n-trials", "4", cwd=tmp_path
    )
    assert raised.returncode == 0, raised.stderr
    assert finished() == 4
    shown = invoke_tuner("study", "show", "tiny", "--storage", url, "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["total_trials"] == 4


def test_sqlite_syncs_at_checkpoints_but_the_holdout_records_at_once(tmp_path):
    storage = get_storage(f"sqlite:///{tmp_path / 'sync.db'}")

    def pragma(conn, name):
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

    with storage.engine.connect() as conn:
        assert pragma(conn, "journal_mode") == "wal"
        assert pragma(conn, "synchronous") == 1  # NORMAL
    with durable_begin(storage.engine) as conn:
        assert pragma(conn, "synchronous") == 2  # FULL, for this transaction only
        assert conn.in_transaction()
    with storage.engine.connect() as conn:  # the same pooled connection, set back
        assert pragma(conn, "synchronous") == 1


def test_four_workers_on_one_sqlite_file_200_trials_without_lock_errors(tmp_path):
    spec = write_tiny_trials_spec(tmp_path, 200)  # the database is the load
    url = f"sqlite:///{tmp_path / 's.db'}"
    result = run_tuner(
        "study", "start", str(spec), "--storage", url, "--workers", "4", cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "database is locked" not in result.stderr and "Traceback" not in result.stderr
    counts = _by_state(_trials(url, "tiny"))
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 200
    assert counts[TrialState.FAIL] == counts[TrialState.RUNNING] == 0


def test_too_many_sqlite_workers_point_to_postgresql(tmp_path):
    spec = write_spec(tmp_path)
    result = invoke_tuner("study", "start", str(spec), "--workers", "5", cwd=tmp_path)
    assert result.returncode == 2
    assert "at most 4 local workers; for more, use PostgreSQL" in result.stderr
    assert not (tmp_path / "tuner.db").exists()


def test_passwords_are_masked_in_output(tmp_path):
    spec = write_spec(tmp_path)
    url = "postgresql+psycopg://alice:s3cret-pw@127.0.0.1:1/nowhere"
    result = invoke_tuner("study", "start", str(spec), "--storage", url, cwd=tmp_path)
    assert result.returncode == 2
    assert "s3cret-pw" not in result.stderr + result.stdout and "***" in result.stderr


def test_a_trial_left_running_without_a_heartbeat_by_a_worker_killed_in_ask_is_retried(tmp_path):
    """A worker killed inside ``ask`` (its trial row created, its first heartbeat not yet
    recorded) leaves a RUNNING trial that Optuna never counts as stale; it held the study's
    last slot, and the next worker waited for it for ever. It is now failed after the grace
    period and retried."""
    url = f"sqlite:///{tmp_path / 'orphan.db'}"
    spec = write_spec(tmp_path, n_trials=1, epochs=2)
    assert run_tuner("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    optuna.load_study(study_name="tiny", storage=url).ask()  # RUNNING, no heartbeat, no process
    worker = run_tuner(
        "study",
        "worker",
        "tiny",
        "--storage",
        url,
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "2",
        cwd=tmp_path,
        timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    trials = _trials(url, "tiny")
    counts = _by_state(trials)
    assert trials[0].state == TrialState.FAIL
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 1
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0

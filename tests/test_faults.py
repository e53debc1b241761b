"""The faults real deployments have (issue 19), with real ``tuner`` processes and a real
database: a PostgreSQL database that is not UTF-8, connections cut mid-trial, PostgreSQL
restarted mid-study, a worker frozen beyond the grace period, an unwritable artifact store,
a full disk under a SQLite database.
Each test checks the closing figures: no finished trial lost, none counted twice, the exact
total, and the one line the user saw."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from conftest import popen_tuner, run_tuner, stop_process, write_spec, write_tiny_trials_spec
from optuna.trial import TrialState

from tuner.storage import get_storage


def _admin_url() -> str:
    url = os.environ.get("TUNER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(
            "needs TUNER_TEST_POSTGRES_URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test"
        )
    return url


@pytest.fixture
def sql_ascii_url():
    """A database of encoding SQL_ASCII on the shared server (the default of an ``initdb``
    without a locale), dropped afterwards."""
    admin = sa.make_url(_admin_url())
    name = f"tuner_ascii_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            sa.text(
                f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                "TEMPLATE template0"
            )
        )
    try:
        yield admin.set(database=name).render_as_string(hide_password=False), name
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        engine.dispose()


def test_a_database_that_is_not_utf8_is_refused_by_every_command(tmp_path, sql_ascii_url):
    url, name = sql_ascii_url
    spec = write_spec(tmp_path, n_trials=2, epochs=1)
    commands = {
        "start": ["study", "start", str(spec)],
        "create": ["study", "create", str(spec)],
        "worker": ["study", "worker", "tiny"],
        "list": ["study", "list"],
        "show": ["study", "show", "tiny"],
        "finalize": ["study", "finalize", "tiny"],
        "dashboard": ["dashboard"],
    }
    expected = (
        f"tuner: error: storage {sa.make_url(url).render_as_string()!r}: database {name!r} has "
        f"encoding SQL_ASCII, tuner needs UTF8; nothing was written to it; create the database "
        f"with CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0 and pass its URL"
    )
    # All at once: each is refused when it opens the storage, a second or two after start.
    procs = {c: popen_tuner(*args, "--storage", url, cwd=tmp_path) for c, args in commands.items()}
    try:
        for command, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=60)
            assert (proc.returncode, stderr.splitlines()) == (2, [expected]), command
            assert stdout == "", command
    finally:
        for proc in procs.values():
            stop_process(proc, terminate=False)
    engine = sa.create_engine(url, connect_args={"client_encoding": "utf8"})
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []  # no Optuna or tuner table
    finally:
        engine.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]  # no artifact folder


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _by_state(trials):
    return {s: sum(t.state == s for t in trials) for s in TrialState}


#: The one line a worker prints when it lost its database connection mid-trial and went on.
RECONNECTED = re.compile(
    r"tuner: the database connection was lost \((?P<cause>[^)]*)\); reconnected"
    r"(, trial (?P<number>\d+) failed and queued again with the same parameters)?, going on$"
)


def _check_closing_figures(trials, finished_before, total, *, unretried=()):
    """No finished trial lost or changed, none counted twice, the exact total, nothing left
    running, and each failed trial retried once with its parameters, the retry finished
    (failed or finished itself). A retry that fails is retried in turn: Optuna's
    ``retry_history`` names the trial each retry repeats. The trials ``unretried`` (which
    the user was told could not be queued again) have none."""
    counts = _by_state(trials)
    print(f"figures: { ({s.name: n for s, n in counts.items() if n}) }")  # shown by pytest -s
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == total
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    for number, value in finished_before.items():
        assert trials[number].state.is_finished() and trials[number].value == value
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        if failed.number in unretried:
            assert _retries_of(trials, failed.number) == []
            continue
        (retry,) = _retries_of(trials, failed.number)
        # A trial cut while it drew its parameters has only the first ones; the retry starts
        # from those.
        assert failed.params.items() <= retry.params.items() and retry.state.is_finished()


def _retries_of(trials, number):
    return [t for t in trials if t.system_attrs.get("retry_history", [None])[-1] == number]


def _wait_mid_trial(url, name, procs, *, epochs=2, running=1, timeout=90):
    """Wait until ``running`` trials run with at least ``epochs`` epochs reported each."""
    deadline = time.monotonic() + timeout
    # One storage for the polls: opening one each time took longer under load than a trial.
    study = optuna.load_study(study_name=name, storage=get_storage(url))
    while True:
        trials = study.get_trials()
        mid = [
            t
            for t in trials
            if t.state == TrialState.RUNNING and len(t.intermediate_values) >= epochs
        ]
        if len(mid) >= running:
            return trials, mid
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("storage_url", ["postgresql"], indirect=True)
def test_a_workers_connections_terminated_mid_trial(tmp_path, storage_url, study_name):
    spec = write_spec(tmp_path, n_trials=2, epochs=60)  # about 1 s a trial here
    hb = ["--heartbeat-interval", "1", "--grace-period", "3"]
    created = run_tuner(
        "study", "create", str(spec), "--storage", storage_url, "--name", study_name, cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    worker = popen_tuner(
        "study",
        "worker",
        study_name,
        "--storage",
        storage_url,
        "--n-trials",
        "2",
        *hb,
        cwd=tmp_path,
    )
    admin = sa.create_engine(_admin_url(), poolclass=sa.pool.NullPool)
    try:
        trials, _running = _wait_mid_trial(storage_url, study_name, [worker])
        finished_before = {t.number: t.value for t in trials if t.state.is_finished()}
        terminated = []
        for _ in range(3):  # a few times: one is likelier to hit a connection in use
            with admin.connect() as conn:
                terminated += conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :name"
                    ),
                    {"name": f"tuner:{worker.pid}"},
                ).all()
            time.sleep(0.15)
        assert terminated and all(ok for (ok,) in terminated)
        stdout, stderr = worker.communicate(timeout=120)
    finally:
        stop_process(worker, terminate=False)
        admin.dispose()
    assert worker.returncode == 0, stderr
    # Either the cut connections were idle in the pool (replaced at checkout, nothing to
    # say) or one was in use: then one line each time, and the trial failed and queued again.
    lines = stderr.splitlines()
    print(f"the user saw: {lines}")
    assert all(RECONNECTED.match(line) for line in lines), stderr
    # The driver's words, not those of Optuna's wrapper ("... invalid data in the commit").
    assert not [line for line in lines if "invalid data" in line], stderr
    trials = _trials(storage_url, study_name)
    _check_closing_figures(trials, finished_before, 2)
    failed = [int(m["number"]) for m in map(RECONNECTED.match, lines) if m["number"]]
    # Each trial a line names is failed (and retried, above); a trial cut inside study.ask,
    # which its worker never learnt the number of, is failed as stale instead.
    assert set(failed) <= {t.number for t in trials if t.state == TrialState.FAIL}


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip(f"needs PostgreSQL's {name} (/usr/lib/postgresql/*/bin)")
    return found[-1]


def _as_postgres(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` OS user when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of this test alone (UTF8, trust, on a free port), which the test
    may restart; stopped and deleted at the end whatever happens. Yields ``(url, restart)``."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    folder = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = [pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "30"]
    try:
        subprocess.run(
            _as_postgres(
                [
                    initdb,
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale",
                    "C",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            _as_postgres([*ctl, "-o", opts, "start"]), check=True, capture_output=True, timeout=60
        )

        def restart():
            subprocess.run(
                _as_postgres([*ctl, "-m", "fast", "restart"]),
                check=True,
                capture_output=True,
                timeout=60,
            )

        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", restart
    finally:
        subprocess.run(
            _as_postgres([*ctl, "-m", "immediate", "stop"]), capture_output=True, timeout=60
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_postgresql_restarted_mid_study_under_three_workers(tmp_path, private_postgres):
    url, restart = private_postgres
    # Trials of about a second each, none pruned, so that two workers are seen mid-trial
    # together: with 10-epoch prunable trials an idle machine finished all six while the
    # third worker was still starting (seen in CI).
    spec = write_spec(tmp_path, n_trials=6, epochs=60, pruner='name = "none"')
    start = popen_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        url,
        "--workers",
        "3",
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "3",
        "--artifact-dir",
        str(tmp_path / "artifacts"),
        cwd=tmp_path,
        env={"PYTHONFAULTHANDLER": "1"},
    )
    try:
        while True:  # the study exists once its first trial runs
            try:
                # Workers mid-trial: a worker still starting up when the server goes away
                # exits with one line (see the README), which is not what this test is about.
                trials, _running = _wait_mid_trial(url, "tiny", [start], epochs=1, running=2)
                break
            except KeyError:
                assert start.poll() is None
                time.sleep(0.2)
        finished_before = {t.number: t.value for t in trials if t.state.is_finished()}
        t0 = time.monotonic()
        restart()
        restarted_s = time.monotonic() - t0
        try:
            stdout, stderr = start.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            start.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: where it hangs
            raise AssertionError(start.communicate(timeout=20)[1]) from None
    finally:
        stop_process(start, terminate=False)
    lines = stderr.splitlines()
    print(f"restart took {restarted_s:.1f} s; the user saw: {lines}")
    assert start.returncode == 0, stderr
    assert lines and all(RECONNECTED.match(line) for line in lines), stderr
    trials = _trials(url, "tiny")
    _check_closing_figures(trials, finished_before, 6)
    failed = [int(m["number"]) for m in map(RECONNECTED.match, lines) if m["number"]]
    # Each trial a line names is failed (and retried, above); a trial cut inside study.ask,
    # which its worker never learnt the number of, is failed as stale instead.
    assert set(failed) <= {t.number for t in trials if t.state == TrialState.FAIL}
    assert "3 workers done" in stdout


#: What a worker prints when it wakes up to find its trial failed and retried elsewhere.
DROPPED = re.compile(
    r"tuner: trial (?P<number>\d+) was marked FAIL by another process while this one ran it "
    r"\(its heartbeat was older than --grace-period\); dropped it, going on$"
)


@pytest.mark.parametrize("storage_url", ["postgresql"], indirect=True)
def test_a_worker_frozen_beyond_the_grace_period_then_woken(tmp_path, storage_url, study_name):
    spec = write_spec(tmp_path, n_trials=3, epochs=30)
    hb = ["--heartbeat-interval", "1", "--grace-period", "3"]
    created = run_tuner(
        "study", "create", str(spec), "--storage", storage_url, "--name", study_name, cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    worker = ["study", "worker", study_name, "--storage", storage_url, "--n-trials", "3", *hb]
    frozen = popen_tuner(*worker, cwd=tmp_path)
    other = None
    try:
        _trials_then, (running,) = _wait_mid_trial(storage_url, study_name, [frozen], epochs=2)
        frozen.send_signal(signal.SIGSTOP)  # a paused VM: no heartbeat, no report
        t0 = time.monotonic()
        time.sleep(0.2)  # a commit it sent before it stopped lands
        trials = _trials(storage_url, study_name)
        stale = trials[running.number]  # as it froze
        finished_before = {t.number: t.value for t in trials if t.state.is_finished()}
        other = popen_tuner(*worker, cwd=tmp_path)
        while _trials(storage_url, study_name)[stale.number].state == TrialState.RUNNING:
            assert time.monotonic() - t0 < 60, "the frozen worker's trial was not failed"
            time.sleep(0.1)
        failed_after_s = time.monotonic() - t0
        frozen.send_signal(signal.SIGCONT)  # it wakes mid-epoch and reports, prunes, tells
        frozen_out, frozen_err = frozen.communicate(timeout=120)
        other_out, other_err = other.communicate(timeout=120)
    finally:
        if frozen.poll() is None:
            frozen.send_signal(signal.SIGCONT)
        for proc in (frozen, other):
            stop_process(proc, terminate=False)
    print(
        f"failed after {failed_after_s:.1f} s; frozen saw {frozen_err.splitlines()}, "
        f"the other {other_err.splitlines()}"
    )
    assert failed_after_s >= 3 - 1  # never before the grace period
    assert (frozen.returncode, other.returncode) == (0, 0), frozen_err + other_err
    assert other_err == ""
    (line,) = frozen_err.splitlines()
    assert DROPPED.match(line)["number"] == str(stale.number)
    trials = _trials(storage_url, study_name)
    _check_closing_figures(trials, finished_before, 3)
    late = trials[stale.number]
    # The woken worker's late reports and tell changed nothing: still failed, no value, and
    # no epoch beyond those recorded before it froze (give or take the one in flight).
    assert late.state == TrialState.FAIL and late.value is None
    assert len(late.intermediate_values) <= len(stale.intermediate_values) + 1
    (retry,) = _retries_of(trials, stale.number)
    assert retry.params == stale.params
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [stale.number]


@pytest.fixture
def tmpfs():
    """``mount(folder, size, *options)``: a tmpfs of ``size`` (``"16k"``) on a new folder
    (``mount(folder, options="remount,...")`` changes it); every one unmounted at the end
    whatever happens. Needs root."""
    mounted = []

    def mount(folder: Path, size: str | None = None, *, options: str | None = None) -> Path:
        if options is not None:
            subprocess.run(["mount", "-o", options, str(folder)], check=True)
            return folder
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


#: How each unwritable artifact store is made, what the OS says, and how it is mended.
UNWRITABLE = {
    "full": ("16k", None, "No space left on device", "remount,size=4m"),
    "read-only": ("4m", "remount,ro", "Read-only file system", "remount,rw"),
}


@pytest.mark.parametrize("fault", sorted(UNWRITABLE))
def test_an_unwritable_artifact_store_fails_the_trial_and_stops_the_run(tmp_path, tmpfs, fault):
    size, make, says, mend = UNWRITABLE[fault]
    folder = tmpfs(tmp_path / "artifacts", size)
    if make:
        tmpfs(folder, options=make)
    url = f"sqlite:///{tmp_path / 'full.db'}"
    spec = write_spec(tmp_path, n_trials=3, epochs=2)
    start = ["study", "start", str(spec), "--storage", url, "--artifact-dir", str(folder)]
    full = run_tuner(*start, cwd=tmp_path)
    # Trial 0 is the best so far, so it saves its weights: the store refuses them.
    expected = (
        f"tuner: error: cannot save trial 0's weights in {str(folder)!r}: {says}; trial 0 "
        "failed, the finished trials are kept; free space or make the folder writable (or "
        "pass another --artifact-dir), then run the same command again to resume"
    )
    print(f"the user saw: {full.stderr.splitlines()}")
    assert (full.returncode, full.stderr.splitlines()) == (2, [expected])
    assert "Traceback" not in full.stdout
    (failed,) = _trials(url, "tiny")
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == expected.split("error: ")[1].split("; ")[0]
    tmpfs(folder, options=mend)  # space freed, or writable again: the same command resumes
    resumed = run_tuner(*start, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(url, "tiny")
    counts = _by_state(trials)
    print(f"figures: { ({s.name: n for s, n in counts.items() if n}) }")
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 3
    assert counts[TrialState.FAIL] == 1 and trials[0].user_attrs == failed.user_attrs
    final = run_tuner("study", "finalize", "tiny", "--storage", url, cwd=tmp_path)
    assert final.returncode == 0, final.stderr  # the best trial's weights are whole


def _fill(folder: Path, leave: int) -> Path:
    """Fill ``folder``'s file system up to ``leave`` free bytes with one file; return it."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free - leave
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free, 0))
    return filler


FULL_DISK = re.compile(
    r"tuner: error: storage '(?P<url>[^']+)' refused a write: database or disk is full; the "
    r"finished trials are kept, (a trial left running is failed and retried after "
    r"--grace-period when the run resumes|trial (?P<number>\d+) failed and (is queued again "
    r"with the same parameters|(?P<unqueued>could not be queued again))); free space or make "
    r"the database writable, then run the same command again to resume$"
)


def test_a_full_disk_under_the_sqlite_database_stops_the_run_and_resumes(tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk", "8m")
    url = f"sqlite:///{disk / 's.db'}"
    spec = write_spec(tmp_path, n_trials=6, epochs=3)
    artifacts = ["--artifact-dir", str(tmp_path / "artifacts")]
    created = run_tuner("study", "create", str(spec), "--storage", url, *artifacts, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    filler = _fill(disk, leave=640 * 1024)
    hb = ["--heartbeat-interval", "1", "--grace-period", "3"]
    start = ["study", "start", str(spec), "--storage", url, *artifacts, *hb]
    full = run_tuner(*start, cwd=tmp_path)
    lines = full.stderr.splitlines()
    print(f"the user saw: {lines}")
    assert full.returncode == 2 and len(lines) == 1, full.stderr
    said = FULL_DISK.match(lines[0])
    assert said and said["url"] == url, lines[0]
    trials = _trials(url, "tiny")
    finished_before = {t.number: t.value for t in trials if t.state.is_finished()}
    assert len(finished_before) < 6
    filler.unlink()  # space freed: the same command resumes
    resumed = run_tuner(*start, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(url, "tiny")
    print(f"finished before the disk was full: {len(finished_before)}")
    unretried = [int(said["number"])] if said["unqueued"] else []
    _check_closing_figures(trials, finished_before, 6, unretried=unretried)


@pytest.mark.skipif(
    not os.environ.get("TUNER_TEST_SCALE"),
    reason="about 50 s on two busy cores (eight interpreters starting): TUNER_TEST_SCALE=60 "
    "runs it with 60 trials, TUNER_TEST_SCALE=500 with 500",
)
@pytest.mark.parametrize("storage_url", ["postgresql"], indirect=True)
def test_eight_workers_on_postgresql_and_their_connections_closed(
    tmp_path, storage_url, study_name
):
    n_trials = int(os.environ["TUNER_TEST_SCALE"])
    spec = write_tiny_trials_spec(tmp_path, n_trials)
    app = f"tuner-test-{uuid.uuid4().hex[:8]}"  # every process's sessions (PGAPPNAME)
    admin = sa.create_engine(_admin_url(), poolclass=sa.pool.NullPool)
    count = sa.text("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = :app")

    def sessions():
        with admin.connect() as conn:
            return conn.execute(count, {"app": app}).scalar()

    baseline = sessions()
    start = popen_tuner(
        "study",
        "start",
        str(spec),
        "--storage",
        storage_url,
        "--name",
        study_name,
        "--workers",
        "8",
        "--artifact-dir",
        str(tmp_path / "artifacts"),
        "--quiet",
        cwd=tmp_path,
        env={"PGAPPNAME": app},
    )
    peak = 0
    try:
        while start.poll() is None:
            peak = max(peak, sessions())
            time.sleep(0.5)
        stdout, stderr = start.communicate(timeout=10)
    finally:
        stop_process(start, terminate=False)
    after = sessions()
    admin.dispose()
    print(f"sessions: baseline {baseline}, peak {peak}, after {after}")
    assert start.returncode == 0, stderr
    assert stderr == "" and stdout == ""
    trials = _trials(storage_url, study_name)
    _check_closing_figures(trials, {}, n_trials)
    assert _by_state(trials)[TrialState.FAIL] == 0 and len(trials) == n_trials
    assert peak >= 8 and after == baseline

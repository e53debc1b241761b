"""Local worker processes: ``tuner study start SPEC --workers K`` runs K ``tuner study worker``
processes on this host, each with BLAS limited to one thread, all on the same study. The
parent creates the study first, so workers only load it. Workers stop when the parent dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuner import interrupt
from tuner.errors import TunerError

#: SQLite copes with a few local writers; beyond this, PostgreSQL.
MAX_SQLITE_WORKERS = 4
#: Thread-count variables of the BLAS and OpenMP runtimes NumPy may use.
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def check_worker_count(workers: int, sqlite: bool) -> None:
    """Raise :class:`TunerError` for more workers than SQLite supports."""
    if sqlite and workers > MAX_SQLITE_WORKERS:
        raise TunerError(
            f"--workers {workers}: a SQLite file supports at most {MAX_SQLITE_WORKERS} local workers; "
            "for more, use PostgreSQL (--storage postgresql+psycopg://user@host:5432/db)"
        )


def worker_command(
    name: str,
    index: int,
    *,
    artifact_dir: Path,
    n_trials: int,
    seed: int,
    heartbeat_interval: int,
    grace_period: int,
    timeout: float | None = None,
) -> list[str]:
    """The command line of local worker ``index`` of study ``name``: ``python -m tuner study
    worker NAME ...`` with the study-wide total, the seed and the heartbeat options, quiet.
    The storage URL is not on it (see :func:`worker_env`), so no password shows in process
    lists."""
    return [
        sys.executable,
        "-m",
        "tuner",
        "study",
        "worker",
        name,
        "--artifact-dir",
        str(artifact_dir),
        "--n-trials",
        str(n_trials),
        "--seed",
        str(seed),
        "--heartbeat-interval",
        str(heartbeat_interval),
        "--grace-period",
        str(grace_period),
        "--quiet",
        *(["--timeout", str(timeout)] if timeout else []),
        "--worker-index",
        str(index),
    ]


def worker_env(storage_url: str, blas_threads: int = 1) -> dict[str, str]:
    """The environment of a local worker: this one's, the storage URL as ``TUNER_STORAGE``
    BLAS limited to ``blas_threads`` threads, and this process's id (:func:`stop_with_parent`)."""
    return {
        **os.environ,
        "TUNER_STORAGE": storage_url,
        **{k: str(blas_threads) for k in THREAD_ENV},
        PARENT_PID_ENV: str(os.getpid()),
    }


@dataclass(frozen=True)
class WorkerExit:
    """How a worker process ended: its index, process id and exit code (negative: killed by
    that signal)."""

    index: int
    pid: int
    returncode: int

    def describe(self) -> str:
        """``"worker 1 (pid 4242) was killed by SIGKILL"`` or ``"... exited with code 2"``."""
        who = f"worker {self.index} (pid {self.pid})"
        if self.returncode < 0:
            return f"{who} was killed by {signal.Signals(-self.returncode).name}"
        return f"{who} exited with code {self.returncode}"


def run_workers(
    name: str,
    workers: int,
    *,
    storage_url: str,
    poll: Callable[[], None] | None = None,
    poll_interval_s: float = 1.0,
    **options,
) -> list[WorkerExit]:
    """Run ``workers`` local processes of ``tuner study worker NAME`` (:func:`worker_command`
    with ``options``, :func:`worker_env`) and wait for them, calling ``poll`` every
    ``poll_interval_s`` seconds.

    The workers run in their own session, so a Ctrl-C at the terminal reaches only this
    process, which passes SIGINT (and SIGTERM) on to each worker once; they finish cleanly,
    even one that is still starting up (:func:`unblock_signals`). Each worker stops (SIGTERM)
    when this process dies, even by SIGKILL (:func:`stop_with_parent`). Returns how each
    worker ended, in index order.
    """
    env = worker_env(storage_url)
    procs: list[subprocess.Popen] = []
    forwarded: set[int] = set()

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None and p.pid not in forwarded:
                forwarded.add(p.pid)
                p.send_signal(signum)

    # Each worker starts with both signals blocked (the mask is inherited), so that one sent
    # while it imports waits until it records signals (unblock_signals); a signal to this
    # process meanwhile waits too, and is forwarded once every worker exists.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, interrupt.SIGNALS)
    previous = {s: signal.signal(s, forward) for s in interrupt.SIGNALS}
    try:
        for i in range(workers):
            procs.append(
                subprocess.Popen(
                    worker_command(name, i, **options), env=env, start_new_session=True
                )
            )
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if interrupt.received():  # before these handlers, and swallowed where it landed
            forward(signal.SIGINT, None)
        while any(p.poll() is None for p in procs):
            if poll is not None:
                poll()
            time.sleep(poll_interval_s)
        return [WorkerExit(i, p.pid, p.returncode) for i, p in enumerate(procs)]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for s, handler in previous.items():
            signal.signal(s, handler)


#: Set by :func:`run_workers` in each worker's environment: the parent's process id.
PARENT_PID_ENV = "TUNER_PARENT_PID"
#: Linux ``prctl`` option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def parent_pid() -> int | None:
    """The process id of the ``start --workers`` parent of this worker, or None."""
    value = os.environ.get(PARENT_PID_ENV)
    return int(value) if value and value.isdigit() else None


def unblock_signals() -> None:
    """In a worker of ``start --workers`` (see :func:`parent_pid`), which :func:`run_workers`
    starts with SIGINT and SIGTERM blocked: record them from now on
    (:func:`tuner.interrupt.record_signals`), then unblock them, so that one sent while the
    worker started up is recorded now. Nothing is raised where a signal lands (a
    :class:`SystemExit` raised in a finalizer is swallowed, and the worker would run on); the
    check before its first trial ends the worker with exit code 130 and no output, and its
    parent prints the one line about the interrupt."""
    interrupt.record_signals(raise_at_once=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupt.SIGNALS)


def stop_with_parent(parent: int) -> None:
    """Make this process get SIGTERM (and so stop, its running trial marked failed) when the
    process ``parent`` dies, even by SIGKILL: ``prctl(PR_SET_PDEATHSIG)`` on Linux, else a
    thread that polls the parent process id once a second."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="tuner-parent-watch").start()

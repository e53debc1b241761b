"""Local worker processes: ``tuner study start SPEC --workers K`` runs K ``tuner study worker``
processes on this host, each with its own sampler seed and BLAS limited to one thread, all on
the same study. The parent creates the study first, so workers only load it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

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


def run_workers(name: str, workers: int, worker_args: list[str], *, env: dict[str, str],
                blas_threads: int = 1, poll: Callable[[], None] | None = None,
                poll_interval_s: float = 1.0) -> int:
    """Run ``workers`` processes of ``tuner study worker NAME WORKER_ARGS`` with the extra
    environment ``env`` and wait for them, calling ``poll`` every ``poll_interval_s`` seconds.

    The workers run in their own session, so a Ctrl-C at the terminal reaches only this
    process, which passes SIGINT (and SIGTERM) on to each worker once; they finish cleanly.
    Returns the highest exit code of the workers (0 when all succeeded).
    """
    env = {**os.environ, **env, **{k: str(blas_threads) for k in THREAD_ENV}}
    procs = [
        subprocess.Popen([sys.executable, "-m", "tuner", "study", "worker", name, *worker_args,
                          "--worker-index", str(i)], env=env, start_new_session=True)
        for i in range(workers)
    ]

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.poll() is None for p in procs):
            if poll is not None:
                poll()
            time.sleep(poll_interval_s)
        return max(p.returncode for p in procs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

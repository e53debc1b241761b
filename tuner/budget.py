"""The study-wide trial budget: ``n_trials`` complete or pruned trials across all workers.

Optuna's ``MaxTrialsCallback`` stops a worker after the count is reached, so several workers
overshoot it by up to one trial each. Here a worker may create a trial only while holding a
study-wide lock and only while fewer than ``n_trials`` trials are complete, pruned or running
(a waiting trial, such as the retry of a killed worker's trial, is always taken). When running
trials hold the rest of the budget and heartbeats are on, a worker waits for them to finish
or to be failed as stale (a killed worker's trial) rather than leave its retry unrun. The lock is
``pg_advisory_xact_lock`` on PostgreSQL and an ``flock`` on a file beside a SQLite database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from collections.abc import Callable, Iterator

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from tuner import interrupt
from tuner.storage import fail_stale_trials, start_heartbeats_of_orphans

#: States of the trials that use up the budget; WAITING trials are created by retries.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def count_states(storage: optuna.storages.RDBStorage, study_id: int) -> dict[str, int]:
    """Trials of the study per state name, by one COUNT query on Optuna's ``trials`` table.

    ``storage.get_n_trials`` loads every trial with all its attributes; under the budget lock
    that made each worker wait for the others' full reads.
    """
    query = sa.text("SELECT state, COUNT(*) FROM trials WHERE study_id = :study_id GROUP BY state")
    with storage.engine.connect() as conn:
        return {str(state): n for state, n in conn.execute(query, {"study_id": study_id})}


class BudgetExhausted(Exception):
    """No trial may be created: the study-wide budget is used up."""


class TrialsStopped(BudgetExhausted):
    """No trial may be created: the study stops taking trials; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: Seconds a worker waits before asking again when the admission check says "wait".
ADMISSION_WAIT_S = 1.0


@contextlib.contextmanager
def study_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Hold a lock that every process on this study's database sees, while the block runs."""
    engine = storage.engine
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(
            hashlib.sha256(f"tuner:{study_name}".encode()).digest()[:8], "big", signed=True
        )
        with engine.begin() as conn:  # released at commit, or when a killed process's session ends
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            yield
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with open(f"{engine.url.database}.trials.lock", "a") as f:  # released when the process dies
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:
        yield


class BudgetedStudy(optuna.Study):
    """A study whose ``ask`` refuses, with :class:`BudgetExhausted`, to create a trial beyond
    the study-wide budget of ``n_trials``.

    ``admission``, called under the study-wide lock before each trial, may refuse too: it
    returns None (go on), ``("stop", reason)`` (:class:`TrialsStopped`) or ``("wait",
    reason)`` (ask again after :data:`ADMISSION_WAIT_S`).
    """

    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.RDBStorage,
        n_trials: int,
        admission: Callable[[], tuple[str, str] | None] | None = None,
    ) -> None:
        super().__init__(
            study_name=study.study_name, storage=storage, sampler=study.sampler, pruner=study.pruner
        )
        self._budget_storage, self.n_trials = storage, n_trials
        self._admission = admission
        #: Number of the latest trial this study created (or took as a retry), else None.
        self.last_trial_number: int | None = None

    def ask(self, fixed_distributions=None) -> optuna.Trial:
        interrupt.check()  # stopped: create no trial
        trial = self._ask_within_budget(fixed_distributions)
        self.last_trial_number = trial.number
        return trial

    def _ask_within_budget(self, fixed_distributions) -> optuna.Trial:
        storage = self._budget_storage
        while True:
            with study_lock(storage, self.study_name):
                verdict = self._admission() if self._admission is not None else None
                if verdict is not None and verdict[0] == "stop":
                    raise TrialsStopped(verdict[1])
                if verdict is None:
                    counts = count_states(storage, self._study_id)
                    waiting = counts.get(TrialState.WAITING.name, 0)
                    used = sum(counts.get(s.name, 0) for s in BUDGET_STATES)
                    if waiting or used < self.n_trials:
                        return super().ask(fixed_distributions)
                    finished = used - counts.get(TrialState.RUNNING.name, 0)
                    interval = storage.get_heartbeat_interval()
                    if finished >= self.n_trials or interval is None:
                        raise BudgetExhausted(
                            f"{used} of {self.n_trials} trials complete, pruned or running"
                        )
            if verdict is not None:  # asked to wait a moment (a finalize checks running trials)
                time.sleep(ADMISSION_WAIT_S)
                continue
            # Running trials hold the rest of the budget. One may belong to a killed worker:
            # wait, fail the stale ones (their retries come back as WAITING), and look again.
            assert interval is not None  # without heartbeats BudgetExhausted was raised above
            time.sleep(interval)
            interrupt.check()
            # A worker killed inside ask leaves its trial RUNNING without any heartbeat, which
            # Optuna never counts as stale: give it one, so it is failed after the grace period.
            start_heartbeats_of_orphans(storage, self._study_id)
            fail_stale_trials(self)

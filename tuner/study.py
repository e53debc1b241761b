"""The study API: :func:`create_study` and :func:`load_study` return one :class:`Study`, which
holds what always travels together (the Optuna study, spec, training data, storage and artifact
store) and runs, summarizes and finalizes it. Below it: create or resume, the study-wide
budgeted run, the summary that ``show --json`` prints.

    import tuner
    study = tuner.create_study("studies/digits.toml", storage="sqlite:///tuner.db")
    study.optimize(n_trials=20)
    study.summary()["best"]
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from threadpoolctl import threadpool_limits

from tuner import holdout, interrupt, schema
from tuner import storage as storage_module
from tuner.budget import BUDGET_STATES, BudgetedStudy, BudgetExhausted, TrialsStopped
from tuner.data import TrainingData, load_training_data
from tuner.data.inspect import describe as describe_data  # noqa: F401  (for the CLI)
from tuner.data.inspect import inspect_data as _inspect_data
from tuner.errors import SpecError, StudyRefused, TunerError
from tuner.export import trials_table
from tuner.forecast import study_forecast
from tuner.nn import MLP
from tuner.note import write_study_note
from tuner.objective import Objective
from tuner.samplers import make_pruner, make_sampler, pruning_epochs
from tuner.search import grid
from tuner.spec import (
    MAX_SEED,
    StudySpec,
    check_study_name,
    load_spec,
    parse_recorded_spec,
    parse_spec_dict,
)
from tuner.storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    check_heartbeat,
    get_artifact_store,
    get_existing_storage,
    get_storage,
    mask_url,
    resolve_storage_url,
)


def stop_after_no_improvement(
    n: int, on_stop: Callable[[str], None] | None = None
) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback that stops the study once ``n`` trials have finished (complete or pruned,
    in any process) since the trial that set the best value, and tells ``on_stop`` why."""

    def callback(study: optuna.Study, _trial: FrozenTrial) -> None:
        try:
            best = study.best_trial
        except ValueError:
            return
        finished = [
            t
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
            if t.datetime_complete
            and best.datetime_complete
            and t.datetime_complete > best.datetime_complete
        ]
        if len(finished) >= n:
            if on_stop is not None:
                on_stop(
                    f"stopped: {len(finished)} trials finished since the best trial "
                    f"{best.number} without improving on it (study.stop_after_no_improvement = {n})"
                )
            study.stop()

    return callback


def stop_when_grid_exhausted(
    spec: StudySpec, n_trials: int, on_stop: Callable[[str], None] | None = None
) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback that stops the study once the grid sampler has run every combination of the
    spec's grid (Optuna's GridSampler stops the study then too), and tells ``on_stop`` why
    when that is before the study's total of ``n_trials``."""
    n_combinations = grid_size(spec)

    def callback(study: optuna.Study, _trial: FrozenTrial) -> None:
        if not grid_exhausted(study):
            return
        if on_stop is not None:
            done = len(study.get_trials(deepcopy=False, states=BUDGET_STATES))
            if done < n_trials:
                on_stop(
                    f"stopped: every combination of the grid has been run ({n_combinations} "
                    f"combinations, fewer than the total of {n_trials} trials)"
                )
        study.stop()

    return callback


def grid_size(spec: StudySpec) -> int:
    """The number of combinations of the spec's grid."""
    return math.prod(len(values) for values in grid(spec.search).values())


def grid_exhausted(study: optuna.Study) -> bool:
    """Whether the study's sampler is the grid sampler and has run every combination."""
    grid_sampler = getattr(study.sampler, "sampler", study.sampler)  # TrialSeededSampler's
    return isinstance(grid_sampler, optuna.samplers.GridSampler) and grid_sampler.is_exhausted(
        study
    )


#: Spec keys that may change when a study is resumed; any other change is refused.
RESUMABLE_KEYS = {"study.name", "study.n_trials"}


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        flat.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return flat


def spec_changes(recorded: dict, current: dict) -> list[str]:
    """Keys whose values differ between two resolved specs, except :data:`RESUMABLE_KEYS`."""
    a, b = _flatten(recorded), _flatten(current)
    return sorted(
        k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS
    )


def create_or_resume(
    spec: StudySpec,
    storage: optuna.storages.RDBStorage,
    data: TrainingData,
    *,
    name: str,
    seed: int,
    artifact_dir: Path,
) -> optuna.Study:
    """Create the study ``name`` (recording its identity, the resolved spec, the data
    fingerprint and the artifact folder), or load it if it exists.

    Raises:
        StudyRefused: the study is sealed, or exists with a different data fingerprint or a
            spec that differs in anything but the study's name and ``n_trials``.
    """
    # Built first: a sampler that cannot be built (gp without PyTorch) leaves no study behind.
    sampler, pruner = make_sampler(spec, seed), make_pruner(spec)
    holdout.ensure_not_sealed(storage, name)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction=spec.direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    schema.check_format_version(study, name)
    holdout.assign_study_uuid(storage, study._study_id)
    recorded = schema.data_fingerprint(study)
    if recorded is None:
        schema.record_creation(
            study,
            spec=spec.resolved,
            artifact_dir=str(artifact_dir),
            n_train=data.y_train.size,
            n_validation=data.y_validation.size,
        )
        write_study_note(study, fingerprint=data.fingerprint)
        schema.set_data_fingerprint(study, data.fingerprint)  # last: the study is recorded
    else:
        # The spec first: a changed key (the folds, the split) is named. Parsed again so that
        # keys added to the spec format since (with their defaults) do not count as changes.
        recorded_spec = schema.recorded_spec(study) or {}  # a fingerprint comes with a spec
        changed = spec_changes(parse_recorded_spec(recorded_spec).resolved, spec.resolved)
        if changed:
            raise StudyRefused(
                f"study {name!r} was created with a different spec ({', '.join(changed)} changed); "
                "resume with the original spec or start a new study with --name"
            )
        if recorded != data.fingerprint:
            raise StudyRefused(
                f"study {name!r} was created with data fingerprint {recorded}, but the data and "
                f"split now give {data.fingerprint}; resume with the original data or start a new "
                "study with --name"
            )
    if schema.validation_labels(study) is None:  # new, or created before the labels were kept
        schema.set_validation_labels(study, data.y_validation, len(data.classes))
    if schema.test_size(study) is None:  # new, or created before the count was kept
        schema.set_test_size(study, data.n_test)
    return study


def total_trials(study: optuna.Study, default: int, total: int | None = None) -> int:
    """The study-wide total of complete and pruned trials: ``total`` if given (recorded on the
    study for later workers), else the recorded total, else ``default`` (the spec's
    ``study.n_trials``)."""
    if total is None:
        return schema.recorded_total(study) or default
    schema.set_recorded_total(study, total)
    return total


def nothing_to_run(study: optuna.Study, n_trials: int) -> str | None:
    """Why a run to the study-wide total ``n_trials`` would run no trial (the study already
    holds that many complete or pruned trials), or None."""
    counts = count_trials(study)
    finished = counts["COMPLETE"] + counts["PRUNED"]
    if finished < n_trials:
        return None
    return (
        f"nothing to run: study {study.study_name!r} already has {finished} finished trials, "
        f"at least the total of {n_trials} (--n-trials, else the recorded or spec total); "
        f"pass --n-trials larger than {finished} to run more"
    )


def count_trials(study: optuna.Study) -> dict[str, int]:
    """Number of trials in each state, e.g. ``{"COMPLETE": 38, "PRUNED": 2, ...}``."""
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def run(
    study: optuna.Study,
    spec: StudySpec,
    data: TrainingData,
    storage,
    artifact_store,
    *,
    n_trials: int,
    seed: int,
    timeout: float | None = None,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_stop: Callable[[str], None] | None = None,
) -> int:
    """Run trials until the study holds ``n_trials`` complete or pruned trials (a study-wide
    total, however many processes run it; see :mod:`tuner.budget`), ``timeout`` seconds pass,
    the grid is exhausted, ``study.stop_after_no_improvement`` stops it, or the study stops
    taking trials (checked before every trial, see :func:`tuner.holdout.admission`): it is
    sealed, or a ``finalize --wait`` waits for the running trials. ``on_stop`` is then called
    with the reason (``"study sealed"``, ``"finalize is waiting"``).

    A trial that another process finished while this one ran it (failed as stale when its
    heartbeat was late) is dropped and the run goes on. ``on_notice`` gets one line for each
    such trial and for a stop before the total is reached.

    Returns:
        The number of trials this call ran.
    """
    user_callbacks = list(callbacks or [])  # Optuna callbacks: they may call study.stop()
    callbacks = []
    patience = spec.resolved["study"]["stop_after_no_improvement"]
    if patience:
        callbacks.append(stop_after_no_improvement(patience, on_notice))
    if spec.sampler["name"] == "grid":
        callbacks.append(stop_when_grid_exhausted(spec, n_trials, on_notice))
    callbacks += user_callbacks
    callbacks.append(lambda _study, _trial: interrupt.check())  # a signal during the trial
    budgeted = BudgetedStudy(
        study, storage, n_trials, admission=lambda: holdout.admission(storage, study.study_name)
    )
    objective = _raising_database_errors(
        Objective(
            spec, data, artifact_store, seed=seed, pruning_epochs=pruning_epochs(study.pruner)
        )
    )
    if grid_exhausted(study):  # a resumed grid: another trial would repeat a combination
        if on_notice is not None:
            on_notice(
                f"nothing to run: every combination of the grid has been run "
                f"({grid_size(spec)} combinations)"
            )
        return 0
    before = len(study.get_trials(deepcopy=False))
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        try:
            budgeted.optimize(
                objective,
                timeout=None if deadline is None else deadline - time.monotonic(),
                callbacks=callbacks,
            )
            break
        except TrialsStopped as e:
            if on_stop is not None:
                on_stop(e.reason)
            break
        except BudgetExhausted:
            break
        except (UpdateFinishedTrialError, ValueError) as e:
            number = budgeted.last_trial_number
            if number is None or not _finished_elsewhere(e):
                raise
            state = study.get_trials(deepcopy=False)[number].state.name
            if on_notice is not None:
                on_notice(
                    f"trial {number} was marked {state} by another process while this one ran "
                    "it (its heartbeat was older than --grace-period); dropped it, going on"
                )
        except _DatabaseErrorInTrial as e:  # Optuna's tell failed the trial, in this process
            cause = storage_module.lost_connection(e)
            if cause is None:  # the database refused a write: a full disk, a read-only file
                raise TunerError(_refused_write_message(study, storage, e)) from None
            storage_module.wait_for_database(storage)  # raises TunerError if it stays away
            _notice_reconnected(cause, _retry(study, e.number), on_notice)
        except Exception as e:
            # Optuna's storage wraps a cut connection in StorageInternalError; when the tell
            # fails, its _run_trial raises an UnboundLocalError over it: the chain decides.
            cause = storage_module.lost_connection(e)
            if cause is None:
                if storage_module.refused_write(e) is None:
                    raise
                raise TunerError(_refused_write_message(study, storage, e)) from None
            storage_module.wait_for_database(storage)  # raises TunerError if it stays away
            message = _fail_and_retry(study, budgeted.last_trial_number)
            storage_module.start_heartbeats_of_orphans(storage, study._study_id)
            _notice_reconnected(cause, message, on_notice)
    return len(study.get_trials(deepcopy=False)) - before


class _DatabaseErrorInTrial(Exception):
    """The database failed a write while trial ``number``'s objective ran (a lost connection,
    a full disk). Optuna's ``_run_trial`` raises an objective's error only after its tell has
    marked the trial FAIL, so a process that catches this one failed the trial itself, and
    retries it."""

    def __init__(self, number: int) -> None:
        super().__init__(f"the database failed a write while trial {number} ran")
        self.number = number


def _raising_database_errors(objective: Objective) -> Callable[[optuna.Trial], float]:
    """``objective``, raising :class:`_DatabaseErrorInTrial` from a database error."""

    def wrapped(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except Exception as e:
            if storage_module.refused_write(e) is None:
                raise
            raise _DatabaseErrorInTrial(trial.number) from e

    return wrapped


def _fail_and_retry(study: optuna.Study, number: int | None) -> str:
    """After a lost database connection: fail trial ``number`` if it is still RUNNING (its
    result could not be told) and retry it (:func:`_retry`). Returns what was done, as words
    for the notice ("" for nothing).

    Only the process whose update moved the trial from RUNNING to FAIL retries it, as in
    Optuna's ``fail_stale_trials``: a trial that another process failed as stale meanwhile
    is retried by that process, and a finished one is never touched."""
    if number is None:
        return ""
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state != TrialState.RUNNING:
        return ""
    try:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:  # failed as stale, or finished, by another process
        return ""
    return _retry(study, number)


def _retry(study: optuna.Study, number: int) -> str:
    """Queue failed trial ``number`` again with the same parameters, with Optuna's heartbeat
    retry callback (at most :data:`tuner.storage.MAX_RETRY` times in a retry series), and
    return the words for the notice."""
    trial = study.get_trials(deepcopy=False)[number]
    RetryHeartbeatStaleTrialCallback(max_retry=storage_module.MAX_RETRY)(study, trial)
    return f", trial {number} failed and queued again with the same parameters"


def _refused_write_message(
    study: optuna.Study, storage: optuna.storages.RDBStorage, error: Exception
) -> str:
    """One line for a database that refused a write (a full disk, a read-only file), after
    trying to queue again the trial this process failed because of it."""
    left = "a trial left running is failed and retried after --grace-period when the run resumes"
    if isinstance(error, _DatabaseErrorInTrial):
        try:
            _retry(study, error.number)
            left = f"trial {error.number} failed and is queued again with the same parameters"
        except Exception as again:
            if storage_module.refused_write(again) is None:
                raise
            left = f"trial {error.number} failed and could not be queued again"
    return (
        f"storage {mask_url(storage.url)!r} refused a write: "
        f"{storage_module.first_line(storage_module.refused_write(error) or error)}; the "
        f"finished trials are kept, {left}; free space or make the database writable, then "
        "run the same command again to resume"
    )


def _notice_reconnected(
    cause: BaseException | None, message: str, on_notice: Callable[[str], None] | None
) -> None:
    if on_notice is not None and cause is not None:
        on_notice(
            f"the database connection was lost ({storage_module.first_line(cause)}); "
            f"reconnected{message}, going on"
        )


def _finished_elsewhere(error: Exception) -> bool:
    """Whether ``error`` is Optuna's refusal to update or tell a trial that is already
    finished (``UpdateFinishedTrialError``, or ``ValueError: Cannot tell a FAIL trial.``)."""
    return isinstance(error, UpdateFinishedTrialError) or str(error).startswith("Cannot tell a ")


def recorded_or_new_forecast(study: optuna.Study, record: dict | None) -> dict | None:
    """The forecast of the best trial's test score: the one the completed locked ``record``
    holds (None if an earlier tuner finalized it), else made now
    (:func:`tuner.forecast.study_forecast`)."""
    return record.get("forecast") if record and record["completed"] else study_forecast(study)


def summary(study: optuna.Study, storage: optuna.storages.RDBStorage) -> dict:
    """The object ``tuner study show --json`` prints: ``name``, ``direction``, ``metric``,
    ``n_trials`` (count by state), ``total_trials`` (the study-wide total workers run to, see
    :func:`total_trials`), ``best`` (``number``, ``value``, ``params``) or None,
    ``forecast`` (of the best trial's test score, :func:`tuner.forecast.study_forecast`; once
    finalized, the one recorded before the test split was opened, None if that record has
    none), ``final`` (the locked test record) or None, ``sealed``, ``data_fingerprint`` and ``spec``."""
    spec_dict = schema.recorded_spec(study)
    try:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": b.params}
    except ValueError:
        best = None
    record = holdout.get_record(storage, study.study_name)
    return {
        "name": study.study_name,
        "direction": study.direction.name.lower(),
        "metric": spec_dict["study"]["metric"] if spec_dict else None,
        "n_trials": count_trials(study),
        "total_trials": (
            total_trials(study, spec_dict["study"]["n_trials"])
            if spec_dict
            else schema.recorded_total(study)
        ),
        "best": best,
        "forecast": recorded_or_new_forecast(study, record),
        "final": record if record and record["completed"] else None,
        "sealed": record is not None,
        "data_fingerprint": schema.data_fingerprint(study),
        "spec": spec_dict,
    }


def overview(storage: optuna.storages.RDBStorage) -> list[dict]:
    """One row per study in the storage: ``name``, the count of trials in each state,
    ``best`` value (or None) and ``sealed``."""
    rows = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        counts = count_trials(study)
        try:
            best = study.best_value
        except ValueError:
            best = None
        rows.append(
            {
                "name": frozen.study_name,
                **{s.lower(): n for s, n in counts.items()},
                "best": best,
                "sealed": holdout.is_sealed(storage, frozen.study_name),
            }
        )
    return rows


def load(storage: optuna.storages.RDBStorage, name: str) -> optuna.Study:
    """Load an existing study.

    Raises:
        StudyRefused: no study of that name exists (the known names are listed).
    """
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise StudyRefused(f"no study named {name!r} in this storage; known studies: {known}")
    study = optuna.load_study(study_name=name, storage=storage)
    schema.check_format_version(study, name)
    return study


def _as_spec(spec: str | os.PathLike | dict | StudySpec) -> StudySpec:
    """A parsed spec from a path of a TOML file, a dict shaped like the TOML (relative paths
    start at the working directory) or a parsed spec."""
    if isinstance(spec, StudySpec):
        return spec
    if isinstance(spec, dict):
        return parse_spec_dict(spec, base_dir=Path.cwd())
    if isinstance(spec, str | os.PathLike):
        return load_spec(Path(spec))
    raise SpecError(
        f"spec: must be the path of a .toml spec, a dict shaped like the TOML or a StudySpec, "
        f"got {type(spec).__name__}"
    )


def _folder_or_none(folder: str | os.PathLike | None) -> str | None:
    return None if folder is None else os.fspath(folder)


def _check_seed(seed: int | None) -> int | None:
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED
    ):
        raise TunerError(f"seed: must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return seed


def _check_budget(n_trials: int | None, timeout: float | None) -> None:
    if n_trials is not None and (
        not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1
    ):
        raise TunerError(f"n_trials: must be an integer >= 1, got {n_trials!r}")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise TunerError(f"timeout: must be a finite number of seconds > 0, got {timeout!r}")


class Study:
    """A tuner study: what always travels together, the Optuna study, its spec, its training
    and validation data (never the test split), its storage and its artifact store.

    Made by :func:`create_study` or :func:`load_study`, not directly. The CLI's ``start``,
    ``worker``, ``show``, ``export`` and ``finalize`` are these methods.

    Attributes:
        optuna_study: the ``optuna.Study``, for anything else (its trials, plots, ...).
        storage: its ``optuna.storages.RDBStorage``.
        storage_url: the storage URL (it may hold a password: print it through
            :func:`tuner.storage.mask_url`).
        artifact_dir: the absolute folder of the artifact store (model weights, PNGs).
        created: whether :func:`create_study` created the study (False when it resumed one,
            and for :func:`load_study`).
    """

    def __init__(
        self,
        optuna_study: optuna.Study,
        *,
        storage: optuna.storages.RDBStorage,
        storage_url: str,
        artifact_dir: Path,
        seed: int | None,
        spec: StudySpec | None = None,
        data: TrainingData | None = None,
        start_total: int | None = None,
        created: bool = False,
    ) -> None:
        self.optuna_study, self.storage, self.storage_url = optuna_study, storage, storage_url
        self.artifact_dir, self.created = artifact_dir, created
        self._seed, self._spec, self._data = seed, spec, data
        # create_study's spec sets the study-wide total (like `start`); a loaded study keeps
        # the recorded one (like `worker`).
        self._start_total = start_total
        self._sampler_ready = spec is not None

    def __repr__(self) -> str:
        return f"<tuner.Study {self.name!r} in {mask_url(self.storage_url)}>"

    @property
    def name(self) -> str:
        return self.optuna_study.study_name

    @property
    def spec(self) -> StudySpec:
        """The study's spec: the one given to :func:`create_study`, else the recorded one.

        Raises:
            StudyRefused: the study was not created by tuner (no recorded spec).
        """
        if self._spec is None:
            resolved = schema.recorded_spec(self.optuna_study)
            if resolved is None:
                raise StudyRefused(
                    f"study {self.name!r} has no recorded spec: {schema.NOT_RECORDED} (`tuner study "
                    "start SPEC`, tuner.create_study(SPEC))"
                )
            self._spec = parse_recorded_spec(resolved)
        return self._spec

    @property
    def seed(self) -> int:
        """Seed of the sampler and of each trial's initialization and shuffling."""
        return self.spec.seed if self._seed is None else self._seed

    @property
    def data(self) -> TrainingData:
        """The training and validation splits (loaded on first use), never the test split.

        Raises:
            DataError: the data source cannot be loaded.
            StudyRefused: the data no longer gives the fingerprint recorded at creation.
        """
        if self._data is None:
            data = load_training_data(self.spec.data)
            recorded = schema.data_fingerprint(self.optuna_study)
            if data.fingerprint != recorded:
                raise StudyRefused(
                    f"study {self.name!r} was created with data fingerprint {recorded}, but its "
                    f"data source {self.spec.data.source!r} now gives {data.fingerprint}; restore "
                    "the original data"
                )
            self._data = data
        return self._data

    def artifact_store(self, *, create: bool = False):
        """Optuna's filesystem artifact store in :attr:`artifact_dir`.

        Raises:
            TunerError: the folder is a file, cannot be created, or (``create=False``) is missing.
        """
        return get_artifact_store(self.artifact_dir, create=create)

    def is_sealed(self) -> bool:
        """Whether the study's test split was claimed or evaluated (no more trials)."""
        return holdout.is_sealed(self.storage, self.name)

    def ensure_not_sealed(self) -> None:
        """Raise :class:`StudyRefused` if the study is sealed."""
        holdout.ensure_not_sealed(self.storage, self.name)

    def total_trials(self, n_trials: int | None = None) -> int:
        """The study-wide total of complete and pruned trials that :meth:`optimize` runs to:
        ``n_trials`` if given, else (for :func:`create_study`) the spec's ``study.n_trials``,
        both recorded on the study for workers that join it, else the recorded total."""
        _check_budget(n_trials, None)
        return total_trials(self.optuna_study, self.spec.n_trials, n_trials or self._start_total)

    def count_trials(self) -> dict[str, int]:
        """Number of trials in each state, e.g. ``{"COMPLETE": 38, "PRUNED": 2, ...}``."""
        return count_trials(self.optuna_study)

    def optimize(
        self,
        n_trials: int | None = None,
        timeout: float | None = None,
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
        *,
        on_notice: Callable[[str], None] | None = None,
        on_stop: Callable[[str], None] | None = None,
        blas_threads: int | None = 1,
    ) -> int:
        """Run trials until the study holds its study-wide total of complete and pruned trials
        (:meth:`total_trials`; however many processes run it), ``timeout`` seconds pass, or
        the study stops taking trials (checked before every trial: it is sealed by a finalize,
        or a ``finalize --wait`` waits for the running trials).

        A trial whose loss turns NaN or infinite is pruned (the reason in its user attribute
        ``diverged``). SIGINT (Ctrl-C) and SIGTERM stop the run (:mod:`tuner.interrupt`): the
        running trial is marked failed, finished trials stay, and :class:`KeyboardInterrupt`
        is raised; calling ``optimize`` again resumes.

        Args:
            n_trials: the study-wide total (recorded on the study); see :meth:`total_trials`.
            timeout: seconds after which no new trial starts.
            callbacks: Optuna callbacks ``f(optuna_study, frozen_trial)`` called after each
                trial; they may call ``optuna_study.stop()``.
            on_notice: gets one line when the run stops before the total (grid exhausted, no
                improvement) or drops a trial another process failed as stale.
            on_stop: gets the reason when the study stops taking trials (``"study sealed"``,
                ``"finalize is waiting"``).
            blas_threads: this process's BLAS and OpenMP threads while it trains
                (threadpoolctl), ``None`` to leave them as they are. 1 by default, as ``tuner
                study start`` and each of its workers train: the matrices of these networks
                are small, and on a busy machine two BLAS threads made the default study
                several times slower (benchmarks/bench_study.py). Thread counts change the
                rounding of matrix products, so only equal counts give equal trial values.

        Returns:
            The number of trials this call ran.

        Raises:
            StudyRefused: the study is sealed, or its data changed.
            TunerError: ``n_trials`` or ``timeout`` out of range.
        """
        _check_budget(n_trials, timeout)
        self.ensure_not_sealed()
        holdout.assign_study_uuid(self.storage, self.optuna_study._study_id)
        data = self.data
        if not self._sampler_ready:  # a loaded study runs as a worker of the study
            self.optuna_study.sampler = make_sampler(self.spec, self.seed)
            self.optuna_study.pruner = make_pruner(self.spec)
            self._sampler_ready = True
        total = self.total_trials(n_trials)
        # Signal handlers can only be set in the main thread; elsewhere the caller's stay.
        main = threading.current_thread() is threading.main_thread()
        with (
            interrupt.stop_on_signals() if main else contextlib.nullcontext(),
            threadpool_limits(limits=blas_threads),
        ):
            return run(
                self.optuna_study,
                self.spec,
                data,
                self.storage,
                self.artifact_store(create=True),
                n_trials=total,
                seed=self.seed,
                timeout=timeout,
                callbacks=callbacks,
                on_notice=on_notice,
                on_stop=on_stop,
            )

    def finalize(
        self,
        recover: bool = False,
        *,
        reuse_test: bool = False,
        wait: bool = False,
        on_wait: Callable[[list[int]], None] | None = None,
    ) -> dict:
        """Evaluate the best trial's saved model on the test split, once, and seal the study
        (see :func:`tuner.holdout.finalize` for ``reuse_test``, ``wait``, ``on_wait``, the
        record and the errors)."""
        return holdout.finalize(
            self.optuna_study,
            self.storage,
            self.artifact_store(create=False),
            recover=recover,
            reuse_test=reuse_test,
            wait=wait,
            on_wait=on_wait,
        )

    def stop_reason(self) -> str | None:
        """Why workers start no new trial: ``"study sealed"``, ``"finalize is waiting"``, or
        None (see :func:`tuner.holdout.stop_reason`)."""
        return holdout.stop_reason(self.storage, self.name)

    def nothing_to_run(self, n_trials: int | None = None) -> str | None:
        """Why :meth:`optimize` to the total ``n_trials`` (see :meth:`total_trials`) would run
        no trial, or None (see :func:`nothing_to_run`)."""
        _check_budget(n_trials, None)
        # Not total_trials(n_trials): that records the total, and nothing is run here.
        total = n_trials or self._start_total
        if total is None:
            total = total_trials(self.optuna_study, self.spec.n_trials)
        return nothing_to_run(self.optuna_study, total)

    def summary(self) -> dict:
        """What ``tuner study show --json`` prints (see :func:`summary`); it changes no trial."""
        return summary(self.optuna_study, self.storage)

    def forecast(self) -> dict | None:
        """The forecast of the best trial's test score, made without the test split
        (:func:`tuner.forecast.study_forecast`: ``value``, ``ci95``, ``method``, ``n_trials``,
        ...); once the study is finalized, the forecast recorded before the test split was
        opened (None if an earlier tuner finalized it)."""
        return recorded_or_new_forecast(
            self.optuna_study, holdout.get_record(self.storage, self.name)
        )

    def trials_dataframe(self, *, intermediate: bool = False):
        """The trials as a pandas DataFrame, as ``tuner study export`` writes them (see
        :func:`tuner.export.trials_table`)."""
        return trials_table(self.optuna_study, intermediate=intermediate)

    def best_model(self) -> MLP:
        """The best trial's model, with the very weights that were scored on validation
        (SHA-256 checked), for predictions on new data. It never opens the test split.

        Raises:
            StudyRefused: no completed trial, no saved weights, or weights missing or changed.
        """
        try:
            best = self.optuna_study.best_trial
        except ValueError:
            raise StudyRefused(
                f"study {self.name!r} has no completed trial; run trials with optimize()"
            ) from None
        saved = schema.weights(best)
        if saved is None:
            raise StudyRefused(f"study {self.name!r}: best trial {best.number} saved no weights")
        return holdout.load_weights(
            self.name, best.number, *saved, self.artifact_store(create=False)
        )


def create_study(
    spec: str | os.PathLike | dict | StudySpec,
    *,
    storage: str | None = None,
    name: str | None = None,
    seed: int | None = None,
    artifact_dir: str | os.PathLike | None = None,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int | None = GRACE_PERIOD_S,
) -> Study:
    """Create the study of ``spec`` (recording its resolved spec, data fingerprint, artifact
    folder and storage format version), or resume it if it exists; what ``tuner study start``
    does before its first trial.

    Args:
        spec: the path of a TOML spec, a dict shaped like the TOML, or a parsed spec.
        storage: a database URL; default ``$TUNER_STORAGE``, else ``sqlite:///tuner.db``.
        name: the study name; default the spec's ``study.name``.
        seed: seed of the sampler and the trials; default the spec's ``study.seed``.
        artifact_dir: folder of the model weights; default ``$TUNER_ARTIFACT_DIR``, else the
            folder the study recorded, else beside the SQLite file (``./tuner-artifacts``
            for other databases).
        heartbeat_interval, grace_period: seconds between a running trial's heartbeats, and
            without one after which it is failed and retried (None: no heartbeats).

    Raises:
        SpecError: the spec is invalid. DataError: its data cannot be loaded.
        StudyRefused: the study is sealed, or exists with other data or another spec, or was
            written by a newer tuner. TunerError: the storage or folder cannot be used.
    """
    spec = _as_spec(spec)
    name = spec.name if name is None else check_study_name(name, "name")
    _check_seed(seed)
    run_seed = spec.seed if seed is None else seed
    url = resolve_storage_url(storage)
    # What can be refused without the database (data, sampler, an explicit artifact folder,
    # the heartbeat options) is checked before the database, the folder or the study is made.
    data = load_training_data(spec.data)
    make_sampler(spec, run_seed)
    explicit = _folder_or_none(artifact_dir)
    if explicit or os.environ.get("TUNER_ARTIFACT_DIR"):
        get_artifact_store(storage_module.artifact_dir(url, explicit), create=True)
    if heartbeat_interval:
        check_heartbeat(heartbeat_interval, grace_period or GRACE_PERIOD_S)
    rdb = get_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    existed = schema.is_created(rdb, name)
    folder = storage_module.artifact_dir(url, explicit, schema.recorded_artifact_folder(rdb, name))
    get_artifact_store(folder, create=True)
    optuna_study = create_or_resume(spec, rdb, data, name=name, seed=run_seed, artifact_dir=folder)
    return Study(
        optuna_study,
        storage=rdb,
        storage_url=url,
        artifact_dir=folder,
        seed=run_seed,
        spec=spec,
        data=data,
        start_total=spec.n_trials,
        created=not existed,
    )


def load_study(
    name: str,
    *,
    storage: str | None = None,
    artifact_dir: str | os.PathLike | None = None,
    seed: int | None = None,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int | None = GRACE_PERIOD_S,
) -> Study:
    """Load the existing study ``name``, to read it or to join it as a worker (what
    ``tuner study worker`` does): its spec and data are read on first use.

    Args:
        name: the study's name.
        storage, artifact_dir, heartbeat_interval, grace_period: as for :func:`create_study`.
        seed: seed of the sampler and the trials; default the study's ``study.seed``.

    Raises:
        StudyRefused: no such study (the known names are listed), or it was written by a
            newer tuner. TunerError: the storage cannot be opened, or names a SQLite file that
            does not exist.
    """
    if heartbeat_interval:  # before the storage, as create_study
        check_heartbeat(heartbeat_interval, grace_period or GRACE_PERIOD_S)
    url = resolve_storage_url(storage)
    rdb = get_existing_storage(
        url, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    )
    optuna_study = load(rdb, name)
    folder = storage_module.artifact_dir(
        url, _folder_or_none(artifact_dir), schema.artifact_folder(optuna_study)
    )
    return Study(
        optuna_study,
        storage=rdb,
        storage_url=url,
        artifact_dir=folder,
        seed=_check_seed(seed),
    )


def list_studies(storage: str | None = None) -> list[dict]:
    """One row per study of the storage (see :func:`overview`).

    Raises:
        TunerError: the storage cannot be opened, or names a SQLite file that does not exist.
    """
    return overview(get_existing_storage(resolve_storage_url(storage)))


def inspect_data(spec: str | os.PathLike | dict | StudySpec, *, split_out: str | None = None):
    """The dataset of ``spec`` and its split, audited, without running anything (what
    ``tuner data inspect`` prints; see :func:`tuner.data.inspect.inspect_data`)."""
    return _inspect_data(_as_spec(spec).data, split_out=split_out)

"""Studies: sampler and pruner factories, create or resume, run trials, summarize."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import holdout
from tuner.budget import BudgetedStudy, BudgetExhausted
from tuner.dashboard import write_study_note
from tuner.data import TrainingData, load_training_data
from tuner.errors import StudyRefused, TunerError
from tuner.objective import Objective
from tuner.search import grid
from tuner.spec import StudySpec, parse_spec_dict

SPEC_ATTR = "spec"
FINGERPRINT_ATTR = "data_fingerprint"
ARTIFACT_DIR_ATTR = "artifact_dir"
#: The study-wide total set by the latest ``start`` (its ``--n-trials``, else its spec's
#: ``study.n_trials``) or ``worker --n-trials``; workers without ``--n-trials`` use it.
N_TRIALS_ATTR = "n_trials"


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The spec's Optuna sampler, seeded with ``seed``.

    Raises:
        TunerError: ``gp`` without PyTorch installed.
    """
    options = {k: v for k, v in spec.sampler.items() if k != "name"}
    name = spec.sampler["name"]
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **options)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        try:
            import torch  # noqa: F401  (Optuna's GP sampler runs on PyTorch)
        except ImportError:
            raise TunerError("sampler.name 'gp' needs PyTorch: pip install -e '.[gp]'") from None
        return optuna.samplers.GPSampler(seed=seed, **options)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **options)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False, **options)
    return optuna.samplers.GridSampler(grid(spec.search), seed=seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's Optuna pruner; intermediate values are validation scores per epoch, so
    resources are epochs (Hyperband's maximum: the largest number of epochs a trial trains)."""
    options = {k: v for k, v in spec.pruner.items() if k != "name"}
    name = spec.pruner["name"]
    if name == "median":
        return optuna.pruners.MedianPruner(**options)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(**options)
    if name == "hyperband":
        epochs = spec.search["epochs"]
        max_epochs = epochs.value if epochs.kind == "fixed" else max(epochs.choices or (epochs.high,))
        return optuna.pruners.HyperbandPruner(max_resource=max_epochs, **options)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    return optuna.pruners.NopPruner()


def stop_after_no_improvement(n: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback that stops the study once ``n`` trials have finished (complete or pruned,
    in any process) since the trial that set the best value."""

    def callback(study: optuna.Study, _trial: FrozenTrial) -> None:
        try:
            best = study.best_trial
        except ValueError:
            return
        finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                    if t.datetime_complete and t.datetime_complete > best.datetime_complete]
        if len(finished) >= n:
            study.stop()

    return callback


#: Spec keys that may change when a study is resumed; any other change is refused.
RESUMABLE_KEYS = {"study.name", "study.n_trials"}


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        flat.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return flat


def spec_changes(recorded: dict, current: dict) -> list[str]:
    """Keys whose values differ between two resolved specs, except :data:`RESUMABLE_KEYS`."""
    a, b = _flatten(recorded), _flatten(current)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)


def sampler_seed(seed: int, n_existing: int, worker: int = 0) -> int:
    """The sampler's seed for a run that starts with ``n_existing`` trials in the study.

    Mixing in the trial count keeps a resumed run from replaying the first run's suggestions.
    """
    return int(np.random.SeedSequence([seed, n_existing, worker]).generate_state(1)[0])


def recorded_attr(storage: optuna.storages.RDBStorage, name: str, key: str):
    """A user attribute of the study ``name``, or None if there is no such study or attribute."""
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name)).get(key)
    except KeyError:
        return None


def create_or_resume(spec: StudySpec, storage: optuna.storages.RDBStorage, data: TrainingData,
                     *, name: str, seed: int, artifact_dir: Path) -> optuna.Study:
    """Create the study ``name`` (recording the resolved spec, the data fingerprint and the
    artifact folder), or load it if it exists.

    Raises:
        StudyRefused: the study is sealed, or exists with a different data fingerprint or a
            spec that differs in anything but the study's name and ``n_trials``.
    """
    holdout.ensure_not_sealed(storage, name)
    study = optuna.create_study(storage=storage, study_name=name, direction=spec.direction,
                                pruner=make_pruner(spec), load_if_exists=True)
    recorded = study.user_attrs.get(FINGERPRINT_ATTR)
    if recorded is None:
        study.set_user_attr(SPEC_ATTR, spec.resolved)
        study.set_user_attr(FINGERPRINT_ATTR, data.fingerprint)
        study.set_user_attr(ARTIFACT_DIR_ATTR, str(artifact_dir))
        study.set_user_attr("n_train", int(data.y_train.size))
        study.set_user_attr("n_validation", int(data.y_validation.size))
        write_study_note(study)
    elif recorded != data.fingerprint:
        raise StudyRefused(
            f"study {name!r} was created with data fingerprint {recorded}, but the data and split "
            f"now give {data.fingerprint}; resume with the original data or start a new study with --name"
        )
    else:
        # Parsed again so that keys added to the spec format since (with their defaults) do
        # not count as changes.
        changed = spec_changes(parse_spec_dict(study.user_attrs[SPEC_ATTR]).resolved, spec.resolved)
        if changed:
            raise StudyRefused(
                f"study {name!r} was created with a different spec ({', '.join(changed)} changed); "
                "resume with the original spec or start a new study with --name"
            )
    study.sampler = make_sampler(spec, sampler_seed(seed, len(study.get_trials(deepcopy=False))))
    return study


def join(storage: optuna.storages.RDBStorage, name: str, *, seed: int | None = None,
         worker: int | None = None) -> tuple[optuna.Study, StudySpec, TrainingData]:
    """Load an existing study as a worker: its recorded spec, its training and validation data
    (fingerprint checked) and a sampler seeded apart from other workers (``worker``, an index,
    else the process id, mixed into the seed).

    Raises:
        StudyRefused: no such study, the study is sealed, or the data changed.
    """
    study = load(storage, name)
    holdout.ensure_not_sealed(storage, name)
    spec = parse_spec_dict(study.user_attrs[SPEC_ATTR])
    data = load_training_data(spec.data)
    recorded = study.user_attrs.get(FINGERPRINT_ATTR)
    if data.fingerprint != recorded:
        raise StudyRefused(
            f"study {name!r} was created with data fingerprint {recorded}, but its data source "
            f"{spec.data.source!r} now gives {data.fingerprint}; restore the original data"
        )
    seed = spec.seed if seed is None else seed
    worker = os.getpid() if worker is None else worker + 1
    study.sampler = make_sampler(spec, sampler_seed(seed, len(study.get_trials(deepcopy=False)), worker))
    study.pruner = make_pruner(spec)
    return study, spec, data


def total_trials(study: optuna.Study, default: int, total: int | None = None) -> int:
    """The study-wide total of complete and pruned trials: ``total`` if given (recorded on the
    study for later workers), else the recorded total, else ``default`` (the spec's
    ``study.n_trials``)."""
    if total is None:
        return study.user_attrs.get(N_TRIALS_ATTR) or default
    if study.user_attrs.get(N_TRIALS_ATTR) != total:
        study.set_user_attr(N_TRIALS_ATTR, total)
    return total


def count_trials(study: optuna.Study) -> dict[str, int]:
    """Number of trials in each state, e.g. ``{"COMPLETE": 38, "PRUNED": 2, ...}``."""
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def run(study: optuna.Study, spec: StudySpec, data: TrainingData, storage, artifact_store, *,
        n_trials: int, seed: int, timeout: float | None = None,
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> int:
    """Run trials until the study holds ``n_trials`` complete or pruned trials (a study-wide
    total, however many processes run it; see :mod:`tuner.budget`), ``timeout`` seconds pass,
    or the study is sealed by a finalize (checked after every trial).

    Returns:
        The number of trials this call ran.
    """

    def stop_if_sealed(study: optuna.Study, _trial: FrozenTrial) -> None:
        if holdout.is_sealed(storage, study.study_name):
            study.stop()

    callbacks = [stop_if_sealed]
    if spec.resolved["study"]["stop_after_no_improvement"]:
        callbacks.append(stop_after_no_improvement(spec.resolved["study"]["stop_after_no_improvement"]))
    if on_trial is not None:  # an Optuna callback: it may call study.stop()
        callbacks.append(on_trial)
    budgeted = BudgetedStudy(study, storage, n_trials)
    before = len(study.get_trials(deepcopy=False))
    try:
        budgeted.optimize(Objective(spec, data, artifact_store, seed=seed), timeout=timeout,
                          callbacks=callbacks)
    except BudgetExhausted:
        pass
    return len(study.get_trials(deepcopy=False)) - before


def summary(study: optuna.Study, storage: optuna.storages.RDBStorage) -> dict:
    """The object ``tuner study show --json`` prints: ``name``, ``direction``, ``metric``,
    ``n_trials`` (count by state), ``total_trials`` (the study-wide total workers run to, see
    :func:`total_trials`), ``best`` (``number``, ``value``, ``params``) or None,
    ``final`` (the locked test record) or None, ``sealed``, ``data_fingerprint`` and ``spec``."""
    spec_dict = study.user_attrs.get(SPEC_ATTR)
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
        "total_trials": total_trials(study, spec_dict["study"]["n_trials"] if spec_dict else None),
        "best": best,
        "final": record if record and record["completed"] else None,
        "sealed": record is not None,
        "data_fingerprint": study.user_attrs.get(FINGERPRINT_ATTR),
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
        rows.append({"name": frozen.study_name, **{s.lower(): n for s, n in counts.items()},
                     "best": best, "sealed": holdout.is_sealed(storage, frozen.study_name)})
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
    return optuna.load_study(study_name=name, storage=storage)

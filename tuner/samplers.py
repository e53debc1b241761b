"""Samplers and pruners: the spec's ``[sampler]`` and ``[pruner]`` tables as Optuna objects.

:data:`SAMPLERS` and :data:`PRUNERS` are the registries (name -> Optuna class), as
:data:`tuner.nn.OPTIMIZERS` is for optimizers; the spec's options and their defaults for each
name are :data:`tuner.spec.SAMPLERS` and :data:`tuner.spec.PRUNERS` (the same names). A name
that is not registered raises rather than falling back to another sampler.

Every sampler is seeded per trial: Optuna's samplers keep one random state per process. Two
processes that seed theirs alike (two ``tuner study start`` on one study, two hosts) then
suggest the same parameters, trial for trial. :class:`TrialSeededSampler` re-seeds the wrapped
sampler's random states from the study seed and the number of the trial being sampled, just
before the trial samples. A trial's number is unique in the study, whatever process creates
it, so no two trials draw from the same random state; and a lone run with the same seed draws
the same values again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.trial import FrozenTrial, TrialState

from tuner.errors import TunerError
from tuner.search import grid
from tuner.spec import StudySpec

#: Every sampler name of a spec's ``sampler.name`` and its Optuna class (all seeded).
SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
    "grid": optuna.samplers.GridSampler,
}
#: Every pruner name of a spec's ``pruner.name`` and its Optuna class.
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}


def _lookup(registry: dict[str, type], name: str, key: str) -> type:
    if name not in registry:
        raise TunerError(f"{key}: unknown name {name!r}; known: {', '.join(registry)}")
    return registry[name]


def make_sampler(spec: StudySpec, seed: int) -> TrialSeededSampler:
    """The spec's Optuna sampler (:data:`SAMPLERS`), re-seeded before each trial from ``seed``
    and the trial's number (:class:`TrialSeededSampler`): processes running one study draw
    distinct suggestions, and a lone run with the same seed draws the same ones.

    Raises:
        TunerError: an unknown sampler name (the known ones are listed); ``gp`` without
            PyTorch installed.
    """
    return TrialSeededSampler(_optuna_sampler(spec, seed), seed)


def _optuna_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    name = spec.sampler["name"]
    cls = _lookup(SAMPLERS, name, "sampler.name")
    options = {k: v for k, v in spec.sampler.items() if k != "name"}
    if cls is optuna.samplers.GPSampler:
        try:
            import torch  # noqa: F401  (Optuna's GP sampler runs on PyTorch)
        except ImportError:
            raise TunerError("sampler.name 'gp' needs PyTorch: pip install -e '.[gp]'") from None
    if cls is optuna.samplers.GridSampler:
        return cls(grid(spec.search), seed=seed)
    if cls in (optuna.samplers.CmaEsSampler, optuna.samplers.QMCSampler):
        options["warn_independent_sampling"] = False
    return cls(seed=seed, **options)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's Optuna pruner (:data:`PRUNERS`); intermediate values are validation scores
    per epoch, so resources are epochs (Hyperband's maximum: the largest number of epochs a
    trial trains).

    Raises:
        TunerError: an unknown pruner name (the known ones are listed).
    """
    cls = _lookup(PRUNERS, spec.pruner["name"], "pruner.name")
    options = {k: v for k, v in spec.pruner.items() if k != "name"}
    if cls is optuna.pruners.HyperbandPruner:
        epochs = spec.search["epochs"]
        options["max_resource"] = (
            epochs.value if epochs.kind == "fixed" else max(epochs.choices or (epochs.high,))
        )
    pruner = cls(**options)
    _PRUNING_EPOCHS[pruner] = _spec_pruning_epochs(spec)
    return pruner


#: The epochs at which each pruner :func:`make_pruner` built can prune.
_PRUNING_EPOCHS: weakref.WeakKeyDictionary[optuna.pruners.BasePruner, Callable[[int], bool]] = (
    weakref.WeakKeyDictionary()
)


def pruning_epochs(pruner: optuna.pruners.BasePruner) -> Callable[[int], bool]:
    """Whether ``pruner`` can prune a trial at an epoch (intermediate step, from 1): for a
    pruner :func:`make_pruner` built, the epochs below; for any other (set by hand on
    ``study.optuna_study``), every epoch.

    Each call of an Optuna pruner reads the study's trials or the running trial from
    storage (about 3.5 ms on SQLite, a quarter of a digits epoch; benchmarks/bench_study.py),
    so the objective asks it only where it can prune, and prunes exactly as if asked every
    epoch:

    - median and percentile: from ``n_warmup_steps`` on (they never prune below it);
    - successive halving: at its rungs, ``min_resource * reduction_factor ** (s + k)``
      (``s`` = ``min_early_stopping_rate``, k = 0, 1, ...; Jamieson & Talwalkar 2016), the
      only steps where it compares a trial or records its rung;
    - Hyperband: at the rungs of all its brackets (``s`` = 0, 1, ...: Li et al. 2018,
      Algorithm 1);
    - none: never.
    """
    return _PRUNING_EPOCHS.get(pruner, _every_epoch)


def _every_epoch(epoch: int) -> bool:
    return True


def _spec_pruning_epochs(spec: StudySpec) -> Callable[[int], bool]:
    options = spec.pruner
    name = options["name"]
    if name in ("median", "percentile"):
        warm_up = int(options["n_warmup_steps"])
        return lambda epoch: epoch >= warm_up
    if name in ("successive_halving", "hyperband"):
        resource, factor = int(options["min_resource"]), int(options["reduction_factor"])
        first_rung = int(options.get("min_early_stopping_rate", 0))

        def at_a_rung(epoch: int) -> bool:
            if epoch % resource:
                return False
            ratio, exponent = epoch // resource, 0
            while ratio % factor == 0:
                ratio, exponent = ratio // factor, exponent + 1
            return ratio == 1 and exponent >= first_rung

        return at_a_rung
    return lambda epoch: False


def trial_random_states(sampler: BaseSampler) -> list[LazyRandomState]:
    """The random states of ``sampler`` and of the samplers inside it (TPE's startup
    sampler, CMA-ES's independent sampler, ...), in a fixed order."""
    found: list[LazyRandomState] = []

    def walk(obj: object) -> None:
        for _name, value in sorted(vars(obj).items()):
            if isinstance(value, LazyRandomState):
                found.append(value)
            elif isinstance(value, BaseSampler):
                walk(value)

    walk(sampler)
    return found


class TrialSeededSampler(BaseSampler):
    """``sampler``, with its random states re-seeded from ``(seed, trial number)`` before each
    trial samples (Optuna calls :meth:`before_trial` when a trial is created, before any
    suggestion). Everything else is the wrapped sampler's."""

    def __init__(self, sampler: BaseSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed
        self._states = trial_random_states(sampler)

    def reseed(self, trial_number: int) -> None:
        """Seed every random state of the wrapped sampler for the trial ``trial_number``."""
        seeds = np.random.SeedSequence([self.seed, trial_number]).generate_state(len(self._states))
        for state, seed in zip(self._states, seeds, strict=True):
            state._rng = np.random.RandomState(int(seed))

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.reseed(trial.number)
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        # Optuna calls this for each thread of optimize(n_jobs > 1); seeds come per trial here.
        pass

"""The spec's search space turned into ``trial.suggest_*`` calls."""

from __future__ import annotations

from typing import Any

import optuna

from tuner.spec import Param


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    """One value per search-space entry: fixed values as given, others suggested by Optuna.

    Returns:
        ``{name: value}`` for every entry of ``space``.
    """
    values: dict[str, Any] = {}
    for name, p in space.items():
        if p.kind == "fixed":
            values[name] = p.value
        elif p.kind == "categorical":
            values[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.kind == "int":
            values[name] = trial.suggest_int(name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return values

"""The spec's search space turned into ``trial.suggest_*`` calls.

Conditional parameters: the optimizer's own options (``momentum`` for momentum and Nesterov,
``beta1`` and ``beta2`` for Adam and AdamW) are suggested only in trials that chose that
optimizer, and a per-layer width gives one parameter ``width_I`` per hidden layer of the
trial (whose depth may itself be searched). Optuna records only what a trial suggested.
"""

from __future__ import annotations

from typing import Any

import optuna

from tuner.spec import OPTIMIZER_PARAMS, Param


def _value(trial: optuna.trial.BaseTrial, p: Param, name: str) -> Any:
    if p.kind == "fixed":
        return p.value
    if p.kind == "categorical":
        return trial.suggest_categorical(name, list(p.choices))
    low, high = p.bounds()
    if p.kind == "int":
        return trial.suggest_int(name, int(low), int(high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, low, high, step=p.step, log=p.log)


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, Param]) -> dict[str, Any]:
    """One value per search-space entry: fixed values as given, others suggested by Optuna.

    Returns:
        ``{name: value}`` for every entry of ``space`` that applies to the trial (optimizer
        options only for their optimizer), plus ``widths``: the list of hidden-layer widths.
    """
    hp: dict[str, Any] = {}
    for name, p in space.items():
        if name in OPTIMIZER_PARAMS or name == "width":
            continue
        hp[name] = _value(trial, p, name)
    width = space["width"]
    if width.per_layer:
        hp["widths"] = [
            _value(trial, width, f"width_{i}") for i in range(1, hp["hidden_layers"] + 1)
        ]
    else:
        hp["width"] = _value(trial, width, "width")
        hp["widths"] = [hp["width"]] * hp["hidden_layers"]
    for name, optimizers in OPTIMIZER_PARAMS.items():
        if hp["optimizer"] in optimizers:
            hp[name] = _value(trial, space[name], name)
    return hp


def grid(space: dict[str, Param]) -> dict[str, list]:
    """The grid sampler's search space: every value of each non-fixed parameter (choices,
    or a range with its step). The spec parser has refused log ranges and float ranges
    without a step."""
    values: dict[str, list] = {}
    hidden_layers = space["hidden_layers"].value
    for name, p in space.items():
        if p.kind == "fixed":
            continue
        if p.kind == "categorical":
            options = list(p.choices)
        else:
            low, high = p.bounds()
            step = p.step or 1
            count = int(round((high - low) / step)) + 1
            options = [low + i * step for i in range(count) if low + i * step <= high + 1e-12]
        names = (
            [f"width_{i}" for i in range(1, hidden_layers + 1)]
            if (name == "width" and p.per_layer)
            else [name]
        )
        for n in names:
            values[n] = options
    return values

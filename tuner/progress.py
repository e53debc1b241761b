"""What `tuner study start` and `tuner study worker` print while trials run: a line per
finished trial, or one JSON object per finished trial (``--json-lines``), or nothing
(``--quiet``); and on a terminal a progress bar (trials done of the study's total, best
value, elapsed time and ETA, through tqdm) that follows the study in the database, so it
counts the trials of every worker."""

from __future__ import annotations

import json
import sys

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

MODES = ("lines", "json", "quiet")
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def format_params(params: dict) -> str:
    """``name=value`` pairs, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_seconds(trial: FrozenTrial) -> float | None:
    """Wall time of a finished trial in seconds."""
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def trial_line(trial: FrozenTrial) -> str:
    """One line: number, state, value, parameters, seconds, and why a trial diverged."""
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    note = f"  ({trial.user_attrs['diverged']})" if "diverged" in trial.user_attrs else ""
    return (f"trial {trial.number:>4}  {trial.state.name:<8}  value={value}  "
            f"{format_params(trial.params)}  {trial_seconds(trial) or 0:.2f}s{note}")


def trial_json(trial: FrozenTrial) -> str:
    """One JSON object: number, state, value, params, seconds, intermediate values, diverged."""
    return json.dumps({
        "number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
        "seconds": trial_seconds(trial),
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "diverged": trial.user_attrs.get("diverged"),
    })


class Progress:
    """Reports finished trials of ``study`` towards ``total`` in the chosen ``mode``.

    Call :meth:`update` after each trial (or periodically, when other processes run the
    trials): it reads the study's finished trials and reports those not yet reported.
    """

    def __init__(self, study: optuna.Study, total: int, mode: str = "lines") -> None:
        self.study, self.mode = study, mode
        self._seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        done = sum(t.state in DONE_STATES for t in study.get_trials(deepcopy=False))
        self.bar = tqdm(total=total, initial=min(done, total), unit="trial", dynamic_ncols=True,
                        disable=True if mode != "lines" else None, file=sys.stderr, leave=False)

    def update(self) -> None:
        if self.mode == "quiet":  # nothing to show: spare the database a full read per trial
            return
        trials = self.study.get_trials(deepcopy=False)
        for t in trials:
            if t.state.is_finished() and t.number not in self._seen:
                self._seen.add(t.number)
                if self.mode == "lines":
                    self.bar.write(trial_line(t), file=sys.stdout)
                elif self.mode == "json":
                    print(trial_json(t), flush=True)
        done = sum(t.state in DONE_STATES for t in trials)
        self.bar.n = min(done, self.bar.total)
        values = [t.value for t in trials if t.state == TrialState.COMPLETE]
        if values:
            best = max(values) if self.study.direction.name == "MAXIMIZE" else min(values)
            self.bar.set_postfix_str(f"best {best:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

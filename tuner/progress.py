"""What `tuner study start` and `tuner study worker` print while trials run: a line per
finished trial, or one JSON object per finished trial (``--json-lines``), or nothing
(``--quiet``); and on a terminal a progress bar (trials done of the study's total, best
value, elapsed time and ETA, through tqdm) that follows the study in the database, so it
counts the trials of every worker."""

from __future__ import annotations

import json
import sys

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from tuner import schema
from tuner.storage import lost_connection

MODES = ("lines", "json", "quiet")
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def format_params(params: dict) -> str:
    """``name=value`` pairs, floats to 4 significant digits."""
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def trial_seconds(trial: FrozenTrial) -> float | None:
    """Wall time of a finished trial in seconds."""
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def trial_line(trial: FrozenTrial) -> str:
    """One line: number, state, value, parameters, seconds, and why a trial diverged."""
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    reason = schema.diverged(trial)
    note = f"  ({reason})" if reason is not None else ""
    return (
        f"trial {trial.number:>4}  {trial.state.name:<8}  value={value}  "
        f"{format_params(trial.params)}  {trial_seconds(trial) or 0:.2f}s{note}"
    )


def trial_json(trial: FrozenTrial) -> str:
    """One JSON object: number, state, value, params, seconds, intermediate values, diverged."""
    return json.dumps(
        {
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "params": trial.params,
            "seconds": trial_seconds(trial),
            "intermediate_values": {
                str(k): v for k, v in sorted(trial.intermediate_values.items())
            },
            "diverged": schema.diverged(trial),
        }
    )


class Progress:
    """Reports finished trials of ``study`` towards ``total`` in the chosen ``mode``.

    Call :meth:`update` with the trial this process just ran: it reports that trial
    (prefixed by ``label``, such as ``"worker 2"``) and moves the bar to the study-wide count,
    which includes the trials of other processes. Called without a trial (periodically, by the
    parent of workers that print nothing) it reports every finished trial not yet reported.
    """

    def __init__(
        self, study: optuna.Study, total: int, mode: str = "lines", *, label: str | None = None
    ) -> None:
        self.study, self.mode, self.label, self.total = study, mode, label, total
        self._seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        done = sum(t.state in DONE_STATES for t in study.get_trials(deepcopy=False))
        self.bar = tqdm(
            total=total,
            initial=min(done, total),
            unit="trial",
            dynamic_ncols=True,
            disable=True if mode != "lines" else None,
            file=sys.stderr,
            leave=False,
        )

    def write(self, line: str, *, err: bool = False) -> None:
        """Print a line above the bar, on stdout (or stderr)."""
        self.bar.write(line, file=sys.stderr if err else sys.stdout)

    def update(self, trial: FrozenTrial | None = None) -> None:
        """Print the trials finished since the last call (``trial``, else every finished
        trial not yet printed) and redraw the bar. A database that cannot be read (its
        connection lost, the server restarting) skips this update: the next one catches up."""
        if self.mode == "quiet":  # nothing to show: spare the database a full read per trial
            return
        try:
            trials = self.study.get_trials(deepcopy=False)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
            if lost_connection(e) is None:
                raise
            return
        if trial is not None:
            new = [trial] if trial.number not in self._seen else []
        else:
            new = [t for t in trials if t.state.is_finished() and t.number not in self._seen]
        for t in new:
            self._seen.add(t.number)
            if self.mode == "lines":
                prefix = f"{self.label}  " if self.label else ""
                self.write(prefix + trial_line(t))
            elif self.mode == "json":
                line = json.loads(trial_json(t))
                print(
                    json.dumps({"worker": self.label, **line} if self.label else line), flush=True
                )
        done = sum(t.state in DONE_STATES for t in trials)
        self.bar.n = min(done, self.total)
        values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if values:
            best = max(values) if self.study.direction.name == "MAXIMIZE" else min(values)
            self.bar.set_postfix_str(f"best {best:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

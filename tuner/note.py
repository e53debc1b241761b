"""The study's note: the Markdown optuna-dashboard shows on a study's page (dataset, split
sizes, fingerprint, resolved spec and, once finalized, the locked test result)."""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import optuna

from tuner import schema
from tuner.forecast import describe_forecast


def evaluations_note(n: int, interval: list[float] | tuple[float, float]) -> str:
    """ "test split evaluated N times", with the interval widened for N looks when N > 1."""
    times = "1 time" if n == 1 else f"{n} times"
    if n == 1:
        return f"test split evaluated {times} in this storage"
    return (
        f"test split evaluated {times} in this storage (by this and other studies on the same "
        f"test rows): Bonferroni-widened 95% CI for {n} looks {interval[0]:.4f}-{interval[1]:.4f}"
    )


def other_metrics(record: dict) -> str:
    """ "balanced accuracy 0.9612, macro-F1 0.9598, log loss 0.1402" of a completed locked
    ``record``: those of them it holds (records of older versions lack balanced accuracy)."""
    m = record["metrics"]
    labels = {
        "balanced_accuracy": "balanced accuracy",
        "macro_f1": "macro-F1",
        "log_loss": "log loss",
    }
    return ", ".join(f"{label} {m[key]:.4f}" for key, label in labels.items() if key in m)


def validation_gap(record: dict) -> str:
    """ "validation accuracy 0.9722, test 0.9611, gap (validation - test) +0.0111": the
    selected trial's validation value of the study's metric, the same metric on test and the
    optimism of the one over the other."""
    metric = record.get("metric", "accuracy")  # records of older versions: accuracy studies
    return (
        f"validation {metric.replace('_', ' ')} {record['validation_value']:.4f}, test "
        f"{record['metrics'][metric]:.4f}, gap (validation - test) {record['gap']:+.4f}"
    )


def forecast_beside_test(record: dict) -> str:
    """ "forecast made without the test split: 0.9650 (95% interval 0.9401-0.9861; BBC-CV over
    15 complete trials); test accuracy 0.9833, inside the interval" of a completed locked
    ``record`` (finalize makes the forecast before it reads a test row)."""
    forecast = record.get("forecast")
    line = f"forecast made without the test split: {describe_forecast(forecast)}"
    if forecast and forecast["value"] is not None:
        metric = record.get("metric", "accuracy")
        test = record["metrics"][metric]
        low, high = forecast["ci95"]
        where = "inside" if low <= test <= high else "outside"
        line += f"; test {metric.replace('_', ' ')} {test:.4f}, {where} the interval"
    return line


def study_note(
    study: optuna.Study, record: dict | None = None, *, fingerprint: str | None = None
) -> str:
    """The study's note: dataset, split sizes, data fingerprint (``fingerprint``, else the
    recorded one), resolved spec and, once finalized, the locked test ``record`` (from
    :func:`tuner.holdout.finalize`) with its interval and the validation-test gap."""
    spec = schema.recorded_spec(study) or {}
    data = spec.get("data", {})
    lines = [
        f"# {study.study_name}",
        "",
        f"- dataset: `{data.get('source')}`, split {data.get('split')} (seed {data.get('seed')}), "
        f"scaling {data.get('scaling')}",
        f"- {schema.describe_rows(study)}; the test split is held out for the one locked evaluation",
        f"- data fingerprint (SHA-256): `{fingerprint or schema.data_fingerprint(study)}`",
        "",
    ]
    if record and record["completed"]:
        m = record["metrics"]
        lines += [
            "## Locked test evaluation",
            "",
            f"- **test accuracy {m['accuracy']:.4f}** (95% Wilson interval {m['accuracy_ci95'][0]:.4f} to "
            f"{m['accuracy_ci95'][1]:.4f}, n = {record['n_test']}), {other_metrics(record)}",
            f"- trial {record['trial_number']}, {validation_gap(record)}",
            f"- {forecast_beside_test(record)}",
            f"- weights SHA-256 `{record['weights_sha256']}`, recorded {record['completed_at']}",
        ]
        if record.get("test_evaluations"):
            lines.append(
                "- "
                + evaluations_note(record["test_evaluations"], record["accuracy_ci_simultaneous"])
            )
        lines.append("")
    lines += [
        "## Trials",
        "",
        f"Each finished trial has the user attributes `{schema.TRAINING_LOSS_ATTR}` and "
        f"`{schema.validation_curve_attr(schema.study_metric(study))}` (one value per epoch) and two PNG artifacts: its "
        "learning curve and its activation histograms at initialization. `tuner study report` "
        "draws them for the whole study.",
        "",
        "## Spec",
        "",
        "```json",
        json.dumps(spec, indent=2),
        "```",
    ]
    return "\n".join(lines)


@functools.cache
def _save_note() -> Callable[[optuna.Study, str], None]:
    """optuna-dashboard's ``save_note``, loaded from its module file ``_note.py``.

    Importing the ``optuna_dashboard`` package imports its app, which imports
    ``optuna.importance`` and with it scikit-learn's ensembles: 2.2 s for every ``start`` and
    ``finalize``, to write one attribute. ``_note.py`` itself imports only optuna; if a later
    optuna-dashboard changes that, the package is imported as usual.
    """
    package = importlib.util.find_spec("optuna_dashboard")
    if package is not None and package.origin is not None:
        spec = importlib.util.spec_from_file_location(
            "tuner._optuna_dashboard_note", Path(package.origin).with_name("_note.py")
        )
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
                return module.save_note
            except (ImportError, OSError, AttributeError):
                pass
    import optuna_dashboard

    return optuna_dashboard.save_note


def write_study_note(
    study: optuna.Study, record: dict | None = None, *, fingerprint: str | None = None
) -> None:
    """Save :func:`study_note` as the study's dashboard note (replacing the previous one)."""
    _save_note()(study, study_note(study, record, fingerprint=fingerprint))

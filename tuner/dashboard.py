"""optuna-dashboard integration: the study's note (Markdown shown on its dashboard page)."""

from __future__ import annotations

import json

import optuna
import optuna_dashboard

def study_note(study: optuna.Study, record: dict | None = None) -> str:
    """The study's note: dataset, split sizes, fingerprint, resolved spec and, once
    finalized, the locked test ``record`` (from :func:`tuner.holdout.finalize`) with its
    interval and the validation-test gap."""
    attrs = study.user_attrs
    spec = attrs.get("spec", {})
    data = spec.get("data", {})
    lines = [
        f"# {study.study_name}",
        "",
        f"- dataset: `{data.get('source')}`, split {data.get('split')} (seed {data.get('seed')}), "
        f"scaling {data.get('scaling')}",
        f"- rows: {attrs.get('n_train', '?')} training, {attrs.get('n_validation', '?')} validation; "
        "the test split is held out for the one locked evaluation",
        f"- data fingerprint (SHA-256): `{attrs.get('data_fingerprint')}`",
        "",
    ]
    if record and record["completed"]:
        m = record["metrics"]
        lines += [
            "## Locked test evaluation",
            "",
            f"- **test accuracy {m['accuracy']:.4f}** (95% Wilson interval {m['accuracy_ci95'][0]:.4f} to "
            f"{m['accuracy_ci95'][1]:.4f}, n = {record['n_test']}), macro-F1 {m['macro_f1']:.4f}, "
            f"log loss {m['log_loss']:.4f}",
            f"- trial {record['trial_number']}, validation {record['validation_value']:.4f}, "
            f"gap (validation - test) {record['gap']:+.4f}",
            f"- weights SHA-256 `{record['weights_sha256']}`, recorded {record['completed_at']}",
            "",
        ]
    lines += ["## Spec", "", "```json", json.dumps(spec, indent=2), "```"]
    return "\n".join(lines)


def write_study_note(study: optuna.Study, record: dict | None = None) -> None:
    """Save :func:`study_note` as the study's dashboard note (replacing the previous one)."""
    optuna_dashboard.save_note(study, study_note(study, record))

"""The locked test evaluation: once per study, recorded in the database, the study sealed.

A row in our own table ``tuner_holdout`` (in the study's database, unique per study name) is
the lock. :func:`finalize` first inserts the row (the claim); only the process whose insert
succeeded opens the test split, evaluates the best trial's saved weights on it and completes
the row. Every other caller gets :class:`StudyRefused` with the claim or the record. A study
name with a row is sealed: no more trials, no second evaluation.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

import tuner
from tuner.data import load_holdout_data
from tuner.errors import StudyRefused
from tuner.nn import MLP
from tuner.nn.loss import log_softmax
from tuner.objective import WEIGHTS_ARTIFACT_ATTR, WEIGHTS_SHA256_ATTR, sha256_file
from tuner.spec import parse_spec_dict

metadata = sa.MetaData()
holdout_table = sa.Table(
    "tuner_holdout",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_name", sa.String(512), nullable=False, unique=True),
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("trial_number", sa.Integer),
    sa.Column("validation_value", sa.Float),
    sa.Column("test_accuracy", sa.Float),
    sa.Column("weights_sha256", sa.String(64)),
    sa.Column("data_fingerprint", sa.String(64)),
    sa.Column("result_json", sa.Text),
)

#: Study system attribute that mirrors the completed record.
RECORD_ATTR = "tuner:holdout"
#: Two-sided 95% normal quantile, for the Wilson interval.
Z_95 = 1.959963984540054


def _engine(storage: optuna.storages.RDBStorage) -> sa.Engine:
    metadata.create_all(storage.engine, checkfirst=True)
    return storage.engine


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()


def get_record(storage: optuna.storages.RDBStorage, study_name: str) -> dict | None:
    """The claim or record of ``study_name``, or None if its test split was never opened.

    A dict with ``claimed_at``, ``host``, ``pid``, ``completed`` (bool) and, once completed,
    everything :func:`finalize` returns.
    """
    with _engine(storage).connect() as conn:
        row = conn.execute(
            sa.select(holdout_table).where(holdout_table.c.study_name == study_name)
        ).mappings().first()
    if row is None:
        return None
    record = {"study": study_name, "claimed_at": _iso(row["claimed_at"]), "host": row["host"],
              "pid": row["pid"], "completed": row["completed_at"] is not None}
    if row["result_json"]:
        record.update(json.loads(row["result_json"]))
    return record


def describe(record: dict) -> str:
    """One line: the recorded test result, or the pending claim."""
    if record["completed"]:
        m = record["metrics"]
        return (f"test accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci95'][0]:.4f}-"
                f"{m['accuracy_ci95'][1]:.4f}, n={record['n_test']}) of trial "
                f"{record['trial_number']}, recorded at {record['completed_at']}")
    return (f"claimed at {record['claimed_at']} by pid {record['pid']} on {record['host']}, "
            "no result recorded")


def ensure_not_sealed(storage: optuna.storages.RDBStorage, study_name: str) -> None:
    """Raise :class:`StudyRefused` if ``study_name``'s test split was opened."""
    record = get_record(storage, study_name)
    if record is not None:
        raise StudyRefused(
            f"study {study_name!r} is sealed: finalize evaluated its test split "
            f"({describe(record)}); start a new study with another --name"
        )


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai & DasGupta
    2001, eq. 4)."""
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def classification_metrics(logits: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    """Accuracy with its 95% Wilson interval, macro-F1, log loss (nats) and the confusion
    matrix (rows true class, columns predicted) of ``logits`` ``(n, classes)`` vs ``y`` ``(n,)``."""
    pred = logits.argmax(axis=1)
    n = y.size
    correct = int(np.sum(pred == y))
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    denom = confusion.sum(axis=0) + confusion.sum(axis=1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    log_p = log_softmax(logits.astype(np.float64))
    return {
        "accuracy": correct / n,
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "macro_f1": float(f1.mean()),
        "log_loss": float(-log_p[np.arange(n), y].mean()),
        "confusion_matrix": confusion.tolist(),
    }


def finalize(study: optuna.Study, storage: optuna.storages.RDBStorage, artifact_store) -> dict:
    """Evaluate the best trial's saved model on the test split, once, and record it.

    Returns:
        The record: ``metrics`` (accuracy, accuracy_ci95, macro_f1, log_loss,
        confusion_matrix), ``n_test``, ``trial_number``, ``validation_value``,
        ``weights_sha256``, ``data_fingerprint``, ``versions``, ``claimed_at``,
        ``completed_at``, ``host``, ``pid``.

    Raises:
        StudyRefused: the study was already finalized or claimed, has no completed trial,
            its best trial's weights are missing or changed, or its data changed.
    """
    name = study.study_name
    ensure_not_sealed(storage, name)
    try:
        best = study.best_trial
    except ValueError:
        raise StudyRefused(
            f"study {name!r} has no completed trial; run trials with `tuner study start SPEC --name {name} "
            "--n-trials N` (N above the trials it already has)") from None
    artifact_id = best.user_attrs.get(WEIGHTS_ARTIFACT_ATTR)
    expected_sha = best.user_attrs.get(WEIGHTS_SHA256_ATTR)
    if not artifact_id or not expected_sha:
        raise StudyRefused(f"study {name!r}: best trial {best.number} has no saved weights; it cannot be evaluated")
    spec = parse_spec_dict(study.user_attrs["spec"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.npz"
        try:
            download_artifact(artifact_store=artifact_store, artifact_id=artifact_id, file_path=str(path))
        except (FileNotFoundError, ArtifactNotFound):
            raise StudyRefused(
                f"study {name!r}: weights of trial {best.number} (artifact {artifact_id}) are not in "
                "the artifact store; pass the store's folder with --artifact-dir or TUNER_ARTIFACT_DIR"
            ) from None
        actual_sha = sha256_file(path)
        if actual_sha != expected_sha:
            raise StudyRefused(
                f"study {name!r}: weights of trial {best.number} changed since they were scored "
                f"(SHA-256 {actual_sha[:12]}..., recorded {expected_sha[:12]}...); restore the original "
                "artifact file or start a new study: changed weights are never evaluated"
            )
        model = MLP.load(path)

    claimed_at = datetime.now(timezone.utc)
    host, pid = socket.gethostname(), os.getpid()
    engine = _engine(storage)
    try:
        with engine.begin() as conn:
            conn.execute(holdout_table.insert().values(
                study_name=name, claimed_at=claimed_at, host=host, pid=pid))
    except sa.exc.IntegrityError:
        ensure_not_sealed(storage, name)
        raise  # the row vanished between the insert and the read: an unexpected fault

    # Only the process whose claim was inserted reaches this line and opens the test split.
    holdout = load_holdout_data(spec.data)
    recorded_fp = study.user_attrs.get("data_fingerprint")
    if holdout.fingerprint != recorded_fp:
        with engine.begin() as conn:  # nothing was evaluated: release the claim
            conn.execute(holdout_table.delete().where(holdout_table.c.study_name == name))
        raise StudyRefused(
            f"study {name!r}: data changed since the study was created (fingerprint "
            f"{holdout.fingerprint[:12]}..., recorded {recorded_fp[:12]}...); restore the original data: "
            "the test split is only evaluated on the data the study was tuned on"
        )
    logits = model.forward(holdout.X_test, train=False)
    completed_at = datetime.now(timezone.utc)
    result = {
        "metrics": classification_metrics(logits, holdout.y_test, len(holdout.classes)),
        "n_test": int(holdout.y_test.size),
        "trial_number": best.number,
        "validation_value": best.value,
        "weights_sha256": actual_sha,
        "data_fingerprint": holdout.fingerprint,
        "versions": {"tuner": tuner.__version__, "numpy": np.__version__, "optuna": optuna.__version__},
        "completed_at": completed_at.isoformat(),
    }
    with engine.begin() as conn:
        conn.execute(holdout_table.update().where(holdout_table.c.study_name == name).values(
            completed_at=completed_at, trial_number=best.number, validation_value=best.value,
            test_accuracy=result["metrics"]["accuracy"], weights_sha256=actual_sha,
            data_fingerprint=holdout.fingerprint, result_json=json.dumps(result)))
    record = get_record(storage, name)
    storage.set_study_system_attr(storage.get_study_id_from_name(name), RECORD_ATTR, json.dumps(record))
    return record

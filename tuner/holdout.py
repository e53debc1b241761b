"""The locked test evaluation: once per study, recorded in the database, the study sealed.

A row in our own table ``tuner_holdout`` (in the study's database, unique per study name) is
the lock. :func:`finalize` first inserts the row, the claim, naming the trial, the SHA-256
of its weights and the data fingerprint it will use; only the process whose insert
succeeded opens the test split. It then evaluates and completes the row. Every other caller
gets :class:`StudyRefused` with the claim or the record. A study name with a row is sealed:
no more trials, no second evaluation.

Crash safety: a claim left without a result (the finalizing process died) is completed by
:func:`finalize` with ``recover=True``, which evaluates the claimed weights (SHA-256 verified)
on the claimed split (fingerprint verified). Recoveries take the claim over with a
compare-and-swap on ``recovery_count``, so that of several concurrent recoveries, or a
recovery and a finalizing process that was only slow, exactly one completes the row.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

import tuner
from tuner.dashboard import write_study_note
from tuner.data import load_holdout_data
from tuner.errors import StudyRefused
from tuner.nn import MLP
from tuner.nn.loss import log_softmax
from tuner.objective import WEIGHTS_ARTIFACT_ATTR, WEIGHTS_SHA256_ATTR, sha256_file
from tuner.spec import parse_spec_dict
from tuner.storage import durable_begin

metadata = sa.MetaData()
holdout_table = sa.Table(
    "tuner_holdout",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_name", sa.String(512), nullable=False, unique=True),
    # The claim: who, when, and exactly what will be evaluated.
    sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("artifact_id", sa.String(64), nullable=False),
    sa.Column("weights_sha256", sa.String(64), nullable=False),
    sa.Column("data_fingerprint", sa.String(64), nullable=False),
    sa.Column("recovery_count", sa.Integer, nullable=False, default=0),
    # The result.
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("validation_value", sa.Float),
    sa.Column("test_accuracy", sa.Float),
    sa.Column("result_json", sa.Text),
)

#: Study system attribute that mirrors the completed record.
RECORD_ATTR = "tuner:holdout"
#: Two-sided 95% normal quantile, for the Wilson interval.
Z_95 = 1.959963984540054
#: Fault injection for the crash-safety tests: seconds to sleep between the claim and opening
#: the test split, so that a test can SIGKILL the process there.
PAUSE_AFTER_CLAIM_ENV = "TUNER_FAULT_PAUSE_AFTER_CLAIM_S"


_tables_created: set[int] = set()


def _engine(storage: optuna.storages.RDBStorage) -> sa.Engine:
    # Once per engine: workers ask whether the study is sealed after every trial.
    if id(storage.engine) not in _tables_created:
        metadata.create_all(storage.engine, checkfirst=True)
        _tables_created.add(id(storage.engine))
    return storage.engine


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).isoformat()


def get_record(storage: optuna.storages.RDBStorage, study_name: str) -> dict | None:
    """The claim or record of ``study_name``, or None if its test split was never opened.

    A dict with ``study``, ``claimed_at``, ``host``, ``pid``, ``trial_number``,
    ``weights_sha256``, ``data_fingerprint``, ``recovery_count``, ``completed`` (bool) and,
    once completed, everything :func:`finalize` returns.
    """
    with _engine(storage).connect() as conn:
        row = conn.execute(
            sa.select(holdout_table).where(holdout_table.c.study_name == study_name)
        ).mappings().first()
    if row is None:
        return None
    record = {"study": study_name, "claimed_at": _iso(row["claimed_at"]), "host": row["host"],
              "pid": row["pid"], "trial_number": row["trial_number"], "artifact_id": row["artifact_id"],
              "weights_sha256": row["weights_sha256"], "data_fingerprint": row["data_fingerprint"],
              "recovery_count": row["recovery_count"], "completed": row["completed_at"] is not None}
    if row["result_json"]:
        record.update(json.loads(row["result_json"]))
    return record


def describe(record: dict) -> str:
    """One line: the recorded test result, or the pending claim."""
    if record["completed"]:
        m = record["metrics"]
        return (f"test accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci95'][0]:.4f}-"
                f"{m['accuracy_ci95'][1]:.4f}, n={record['n_test']}) of trial "
                f"{record['trial_number']}, validation {record['validation_value']:.4f}, "
                f"recorded at {record['completed_at']}")
    return (f"claimed at {record['claimed_at']} by pid {record['pid']} on {record['host']} for trial "
            f"{record['trial_number']}, no result recorded")


def _refusal(record: dict) -> StudyRefused:
    name = record["study"]
    if record["completed"]:
        return StudyRefused(f"study {name!r} is sealed: finalize evaluated its test split "
                            f"({describe(record)}); start a new study with another --name")
    return StudyRefused(f"study {name!r} is sealed: its test split was {describe(record)}; if that "
                        f"process died, complete it with `tuner study finalize {name} --recover`")


def ensure_not_sealed(storage: optuna.storages.RDBStorage, study_name: str) -> None:
    """Raise :class:`StudyRefused` if ``study_name``'s test split was claimed or evaluated."""
    record = get_record(storage, study_name)
    if record is not None:
        raise _refusal(record)


def is_sealed(storage: optuna.storages.RDBStorage, study_name: str) -> bool:
    """Whether ``study_name``'s test split was claimed or evaluated."""
    return get_record(storage, study_name) is not None


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


def _load_weights(name: str, trial_number: int, artifact_id: str, expected_sha: str, artifact_store) -> MLP:
    """The trial's saved model, after checking its SHA-256 against the recorded one."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.npz"
        try:
            download_artifact(artifact_store=artifact_store, artifact_id=artifact_id, file_path=str(path))
        except (FileNotFoundError, ArtifactNotFound):
            raise StudyRefused(
                f"study {name!r}: weights of trial {trial_number} (artifact {artifact_id}) are not in "
                "the artifact store; pass the store's folder with --artifact-dir or TUNER_ARTIFACT_DIR"
            ) from None
        actual_sha = sha256_file(path)
        if actual_sha != expected_sha:
            raise StudyRefused(
                f"study {name!r}: weights of trial {trial_number} changed since they were scored "
                f"(SHA-256 {actual_sha[:12]}..., recorded {expected_sha[:12]}...); restore the original "
                "artifact file or start a new study: changed weights are never evaluated"
            )
        return MLP.load(path)


def _process_alive_here(record: dict) -> bool:
    if record["host"] != socket.gethostname():
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(engine: sa.Engine, name: str, best: optuna.trial.FrozenTrial, fingerprint: str,
           storage) -> int:
    """Insert the claim row; the caller owns the claim with ``recovery_count == 0``."""
    try:
        with durable_begin(engine) as conn:
            conn.execute(holdout_table.insert().values(
                study_name=name, claimed_at=datetime.now(timezone.utc), host=socket.gethostname(),
                pid=os.getpid(), trial_number=best.number, artifact_id=best.user_attrs[WEIGHTS_ARTIFACT_ATTR],
                weights_sha256=best.user_attrs[WEIGHTS_SHA256_ATTR], data_fingerprint=fingerprint,
                recovery_count=0))
    except sa.exc.IntegrityError:
        ensure_not_sealed(storage, name)
        raise  # the row vanished between the insert and the read: an unexpected fault
    return 0


def _take_over(engine: sa.Engine, record: dict) -> int:
    """Compare-and-swap the pending claim to this process; returns the new token."""
    token = record["recovery_count"] + 1
    with durable_begin(engine) as conn:
        taken = conn.execute(holdout_table.update().where(
            holdout_table.c.study_name == record["study"], holdout_table.c.completed_at.is_(None),
            holdout_table.c.recovery_count == record["recovery_count"],
        ).values(recovery_count=token, host=socket.gethostname(), pid=os.getpid())).rowcount
    if taken != 1:
        raise StudyRefused(f"study {record['study']!r}: another process recovered the claim first; "
                           f"see `tuner study show {record['study']}`")
    return token


def finalize(study: optuna.Study, storage: optuna.storages.RDBStorage, artifact_store, *,
             recover: bool = False) -> dict:
    """Evaluate the best trial's saved model on the test split, once, and record it.

    Args:
        recover: complete a claim whose process died, with the claimed weights and split,
            instead of making a new claim.

    Returns:
        The record: ``metrics`` (accuracy, accuracy_ci95, macro_f1, log_loss,
        confusion_matrix), ``n_test``, ``trial_number``, ``validation_value``, ``gap``
        (validation minus test accuracy), ``weights_sha256``, ``data_fingerprint``,
        ``versions``, ``claimed_at``, ``completed_at``, ``host``, ``pid``.

    Raises:
        StudyRefused: already finalized or claimed (without ``recover``); nothing to recover
            or the claiming process still runs on this host (with ``recover``); no completed
            trial; weights missing or changed; data changed.
    """
    name = study.study_name
    engine = _engine(storage)
    record = get_record(storage, name)
    recorded_fp = study.user_attrs.get("data_fingerprint")
    if recover:
        if record is None:
            raise StudyRefused(f"study {name!r} has no claim to recover; run `tuner study finalize {name}`")
        if record["completed"]:
            raise _refusal(record)
        if _process_alive_here(record):
            raise StudyRefused(f"study {name!r}: the claiming process {record['pid']} is still running on "
                               "this host; wait for it to finish")
        trial_number, expected_fp = record["trial_number"], record["data_fingerprint"]
        model = _load_weights(name, trial_number, record["artifact_id"], record["weights_sha256"], artifact_store)
        token = _take_over(engine, record)
    else:
        if record is not None:
            raise _refusal(record)
        try:
            best = study.best_trial
        except ValueError:
            raise StudyRefused(
                f"study {name!r} has no completed trial; run trials with `tuner study start SPEC --name "
                f"{name} --n-trials N` (N above the trials it already has)") from None
        if not best.user_attrs.get(WEIGHTS_ARTIFACT_ATTR) or not best.user_attrs.get(WEIGHTS_SHA256_ATTR):
            raise StudyRefused(f"study {name!r}: best trial {best.number} has no saved weights; it cannot be evaluated")
        trial_number, expected_fp = best.number, recorded_fp
        model = _load_weights(name, best.number, best.user_attrs[WEIGHTS_ARTIFACT_ATTR],
                              best.user_attrs[WEIGHTS_SHA256_ATTR], artifact_store)
        token = _claim(engine, name, best, recorded_fp, storage)

    pause = float(os.environ.get(PAUSE_AFTER_CLAIM_ENV, "0") or 0)
    if pause > 0:
        time.sleep(pause)
    # Only the process that holds the claim reaches this line and opens the test split.
    spec = parse_spec_dict(study.user_attrs["spec"])
    holdout = load_holdout_data(spec.data)
    if holdout.fingerprint != expected_fp:
        if not recover:  # nothing was evaluated: release the claim so the data can be restored
            with durable_begin(engine) as conn:
                conn.execute(holdout_table.delete().where(
                    holdout_table.c.study_name == name, holdout_table.c.recovery_count == token,
                    holdout_table.c.completed_at.is_(None)))
        raise StudyRefused(
            f"study {name!r}: data changed since the study was created (fingerprint "
            f"{holdout.fingerprint[:12]}..., recorded {expected_fp[:12]}...); restore the original data: "
            "the test split is only evaluated on the data the study was tuned on"
        )
    validation_value = next(t.value for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    logits = model.forward(holdout.X_test, train=False)
    metrics = classification_metrics(logits, holdout.y_test, len(holdout.classes))
    completed_at = datetime.now(timezone.utc)
    result = {
        "metrics": metrics,
        "n_test": int(holdout.y_test.size),
        "validation_value": validation_value,
        "gap": validation_value - metrics["accuracy"],
        "versions": {"tuner": tuner.__version__, "numpy": np.__version__, "optuna": optuna.__version__},
        "completed_at": completed_at.isoformat(),
    }
    with durable_begin(engine) as conn:
        done = conn.execute(holdout_table.update().where(
            holdout_table.c.study_name == name, holdout_table.c.completed_at.is_(None),
            holdout_table.c.recovery_count == token,
        ).values(completed_at=completed_at, validation_value=validation_value,
                 test_accuracy=metrics["accuracy"], result_json=json.dumps(result))).rowcount
    if done != 1:
        raise StudyRefused(f"study {name!r}: the claim was recovered by another process while this one "
                           f"evaluated; that process records the result (see `tuner study show {name}`)")
    record = get_record(storage, name)
    storage.set_study_system_attr(storage.get_study_id_from_name(name), RECORD_ATTR, json.dumps(record))
    write_study_note(study, record)
    return record

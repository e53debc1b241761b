"""What tuner stores in a study's database, and the one module that spells it.

A tuner study is an Optuna study with these attributes, plus a row in our own table
``tuner_holdout_v2`` once its test split is claimed (``tuner_holdout``, the table of earlier
versions, is only read):

- study user attributes: the resolved spec, the data fingerprint, the artifact folder, the
  study-wide total of trials, the training and validation split sizes and the storage format
  version;
- study system and user attributes: the study's identity (a UUID), the mark of its test
  split's claim, release or completed record, and a waiting finalize's mark;
- study user attribute: the validation split's labels (:func:`set_validation_labels`);
- trial user attributes: per-epoch training loss and validation accuracy, the validation
  predictions of the trial's last epoch (:func:`set_validation_predictions`), why a trial
  diverged, and the artifact id and SHA-256 of its saved weights.

Every other module reads and writes them through the accessors below. The key strings are
those of every database written so far; they never change. :data:`FORMAT_VERSION` counts
changes of meaning instead: a study records the version that created it, a study without one
is version 1, and a study of a newer version is refused (:func:`check_format_version`).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa

from tuner.errors import StudyRefused

#: The storage format this tuner writes and reads; a study records it at creation.
FORMAT_VERSION = 1

# Study user attributes.
SPEC_ATTR = "spec"
FINGERPRINT_ATTR = "data_fingerprint"
ARTIFACT_DIR_ATTR = "artifact_dir"
#: The study-wide total set by the latest ``start`` (its ``--n-trials``, else its spec's
#: ``study.n_trials``) or ``worker --n-trials``; workers without ``--n-trials`` use it.
N_TRIALS_ATTR = "n_trials"
N_TRAIN_ATTR = "n_train"
N_VALIDATION_ATTR = "n_validation"
#: The number of test rows (a count only, for the forecast's prediction interval).
N_TEST_ATTR = "test_split_rows"
FORMAT_VERSION_ATTR = "format_version"
#: The validation split's class indices, in the split's row order (:func:`set_validation_labels`).
VALIDATION_LABELS_ATTR = "validation_labels"
# Trial user attributes.
WEIGHTS_ARTIFACT_ATTR = "weights_artifact_id"
WEIGHTS_SHA256_ATTR = "weights_sha256"
#: Per-epoch mean training loss (nats) and validation accuracy, epoch ``i + 1`` at index
#: ``i``; shorter than ``model.epochs`` for pruned trials.
TRAINING_LOSS_ATTR = "training_loss"
VALIDATION_ACCURACY_ATTR = "validation_accuracy"  # validation_curve_attr("accuracy")
#: The predicted class of each validation row at the trial's last epoch, and the log-probability
#: of the true class when the study's metric is ``log_loss`` (:func:`set_validation_predictions`).
VALIDATION_PREDICTIONS_ATTR = "validation_predictions"
#: Why a trial's training diverged (NaN or infinite loss); the trial is pruned.
DIVERGED_ATTR = "diverged"
#: Why a trial failed when tuner knows (the artifact store full or unwritable); the trial is FAIL.
FAIL_REASON_ATTR = "fail_reason"


def _claim_and_result_columns() -> list[sa.Column]:
    """The columns both holdout tables share (new objects for each table)."""
    return [
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
    ]


metadata = sa.MetaData()
holdout_table = sa.Table(
    "tuner_holdout_v2",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # Whose test split: the study's identity, and its name at the claim (for messages).
    sa.Column("study_uuid", sa.String(36), nullable=False, unique=True),
    sa.Column("study_name", sa.String(512), nullable=False),
    # Which test rows, and the how-manieth look at them in this storage (1 = the first).
    sa.Column("test_fingerprint", sa.String(64)),  # NULL only for rows moved from v1
    sa.Column("look_number", sa.Integer, nullable=False),
    sa.Column("legacy_id", sa.Integer, unique=True),  # the v1 row this one was moved from
    *_claim_and_result_columns(),
    sa.UniqueConstraint("test_fingerprint", "look_number", name="uq_tuner_holdout_v2_look"),
)

#: The lock as tuner wrote it before ``tuner_holdout_v2`` (unique per study name). Its own
#: metadata: it is never created, only read where it exists.
legacy_metadata = sa.MetaData()
legacy_table = sa.Table(
    "tuner_holdout",
    legacy_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_name", sa.String(512), nullable=False, unique=True),
    *_claim_and_result_columns(),
)

#: Study system and user attribute that mirrors the claim, its release or the completed record.
RECORD_ATTR = "tuner:holdout"
#: Study system and user attribute: the study's identity, a UUID set once at creation.
STUDY_UUID_ATTR = "tuner:study_uuid"
#: Study system attribute set by a finalize that waits for running trials: workers start no
#: new trial while it is fresh.
WAITING_ATTR = "tuner:finalize_waiting"


# --- Study attributes. ``study`` is an ``optuna.Study`` or a ``FrozenStudy``.


def recorded_spec(study) -> dict[str, Any] | None:
    """The resolved spec the study was created with (a dict shaped like the TOML), or None
    for a study that tuner did not create."""
    return study.user_attrs.get(SPEC_ATTR)


def data_fingerprint(study) -> str | None:
    """The SHA-256 fingerprint (hex) of the data and split recorded at creation, or None."""
    return study.user_attrs.get(FINGERPRINT_ATTR)


def artifact_folder(study) -> str | None:
    """The artifact folder recorded at creation, or None."""
    return study.user_attrs.get(ARTIFACT_DIR_ATTR)


def rows_text(n_train: int | str, n_validation: int | str, folds: int | None) -> str:
    """``"1078 training, 359 validation rows"``, or with ``folds`` ``"1438 rows in 5 folds"``."""
    if folds:
        return f"{n_train} rows in {folds} folds"
    return f"{n_train} training, {n_validation} validation rows"


def describe_rows(study) -> str:
    """:func:`rows_text` of the rows recorded at creation (``?`` for a count not recorded)."""
    n_train, n_validation = (
        study.user_attrs.get(k, "?") for k in (N_TRAIN_ATTR, N_VALIDATION_ATTR)
    )
    return rows_text(
        n_train, n_validation, (recorded_spec(study) or {}).get("data", {}).get("folds")
    )


def recorded_total(study) -> int | None:
    """The study-wide total of trials recorded by the latest ``start`` or ``worker
    --n-trials``, or None."""
    return study.user_attrs.get(N_TRIALS_ATTR)


def set_recorded_total(study: optuna.Study, total: int) -> None:
    """Record the study-wide total of trials (a write only if it changed)."""
    if study.user_attrs.get(N_TRIALS_ATTR) != total:
        study.set_user_attr(N_TRIALS_ATTR, total)


def format_version(study) -> int:
    """The storage format version the study was created with; 1 for studies made before
    versions were recorded."""
    return study.user_attrs.get(FORMAT_VERSION_ATTR, 1)


def check_format_version(study, name: str) -> None:
    """Raise :class:`StudyRefused` if the study ``name`` was written by a newer format."""
    version = format_version(study)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StudyRefused(
            f"study {name!r} was written by tuner storage format {version!r}, newer than this "
            f"tuner's format {FORMAT_VERSION}; upgrade tuner to open it"
        )


#: Why a study may lack its recorded spec (:func:`recorded_spec` None), and the remedy.
NOT_RECORDED = (
    "its creation was cut short, or it was not created by tuner; starting it again with its "
    "spec records it"
)


def record_creation(
    study: optuna.Study,
    *,
    spec: dict[str, Any],
    artifact_dir: str,
    n_train: int,
    n_validation: int,
) -> None:
    """Record what a new study is: its resolved spec, artifact folder, split sizes and
    :data:`FORMAT_VERSION`; everything but its data fingerprint, which
    :func:`set_data_fingerprint` writes last."""
    study.set_user_attr(FORMAT_VERSION_ATTR, FORMAT_VERSION)
    study.set_user_attr(SPEC_ATTR, spec)
    study.set_user_attr(ARTIFACT_DIR_ATTR, artifact_dir)
    study.set_user_attr(N_TRAIN_ATTR, int(n_train))
    study.set_user_attr(N_VALIDATION_ATTR, int(n_validation))


def set_data_fingerprint(study: optuna.Study, fingerprint: str) -> None:
    """Record the data fingerprint, the last write of a study's creation: it marks the study
    as recorded (:func:`data_fingerprint`), so that a creation cut short before it (Ctrl-C, a
    lost connection) is recorded again, whole, when the study is resumed."""
    study.set_user_attr(FINGERPRINT_ATTR, fingerprint)


def set_test_size(study: optuna.Study, n_test: int) -> None:
    """Record the number of test rows (set at creation, and on resume for studies created
    before it was kept)."""
    study.set_user_attr(N_TEST_ATTR, int(n_test))


def test_size(study) -> int | None:
    """The number of test rows recorded for the study, or None."""
    return study.user_attrs.get(N_TEST_ATTR)


def encode_array(a: np.ndarray) -> dict[str, str]:
    """A 1-D array as JSON: ``{"dtype": numpy's dtype string with its byte order, "base64": the
    bytes}``; ``4/3`` characters per byte."""
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(encoded: dict[str, str]) -> np.ndarray:
    """The array :func:`encode_array` encoded."""
    return np.frombuffer(base64.b64decode(encoded["base64"]), dtype=np.dtype(encoded["dtype"]))


def class_dtype(n_classes: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``n_classes`` class indices."""
    return np.dtype(
        np.uint8 if n_classes <= 256 else np.uint16 if n_classes <= 65536 else np.uint32
    )


def set_validation_labels(study: optuna.Study, y: np.ndarray, n_classes: int) -> None:
    """Record the validation split's labels ``y`` ``(n_validation,)`` (class indices) and the
    number of classes, the labels as :func:`class_dtype` integers (in the database ``4/3``
    bytes per row up to 256 classes). The forecast (:mod:`tuner.forecast`) scores the
    trials' stored predictions against them without loading the data."""
    encoded = encode_array(y.astype(class_dtype(n_classes)))
    study.set_user_attr(VALIDATION_LABELS_ATTR, {**encoded, "n_classes": int(n_classes)})


def validation_labels(study) -> tuple[np.ndarray, int] | None:
    """The (validation labels int64 ``(n_validation,)``, number of classes) that
    :func:`set_validation_labels` recorded, or None."""
    stored = study.user_attrs.get(VALIDATION_LABELS_ATTR)
    if stored is None:
        return None
    return decode_array(stored).astype(np.int64), int(stored["n_classes"])


def _stored_attrs(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:
        return {}


def is_created(storage: optuna.storages.BaseStorage, name: str) -> bool:
    """Whether the storage holds a tuner study ``name`` (one with a recorded fingerprint)."""
    return _stored_attrs(storage, name).get(FINGERPRINT_ATTR) is not None


def recorded_artifact_folder(storage: optuna.storages.BaseStorage, name: str) -> str | None:
    """The artifact folder recorded by the study ``name``, or None (no such study or folder)."""
    return _stored_attrs(storage, name).get(ARTIFACT_DIR_ATTR)


# --- The test split's seal: the study's identity and the mark of its claim.


def study_attrs(storage: optuna.storages.BaseStorage, study_id: int) -> tuple[dict, dict]:
    """The study's (system, user) attributes, read once for :func:`study_uuid` and
    :func:`holdout_mark` when a caller needs both (a worker, before every trial)."""
    return storage.get_study_system_attrs(study_id), storage.get_study_user_attrs(study_id)


def study_uuid(
    storage: optuna.storages.BaseStorage, study_id: int, attrs: tuple[dict, dict] | None = None
) -> str | None:
    """The study's identity (:data:`STUDY_UUID_ATTR`), or None for a study made before it
    existed. The system attribute wins; the user attribute is what a rename through
    optuna-dashboard (which copies user attributes only) carries over. ``attrs``: the
    study's attributes as :func:`study_attrs` read them, else they are read here."""
    if attrs is not None:
        return attrs[0].get(STUDY_UUID_ATTR) or attrs[1].get(STUDY_UUID_ATTR)
    return system_study_uuid(storage, study_id) or (
        storage.get_study_user_attrs(study_id).get(STUDY_UUID_ATTR)
    )


def system_study_uuid(storage: optuna.storages.BaseStorage, study_id: int) -> str | None:
    """The identity in the study's system attributes only (a rename does not carry it)."""
    return storage.get_study_system_attrs(study_id).get(STUDY_UUID_ATTR)


def set_study_uuid(
    storage: optuna.storages.BaseStorage, study_id: int, value: str, *, user: bool
) -> None:
    """Record the study's identity as a user attribute (``user``) or a system attribute."""
    if user:
        storage.set_study_user_attr(study_id, STUDY_UUID_ATTR, value)
    else:
        storage.set_study_system_attr(study_id, STUDY_UUID_ATTR, value)


def holdout_mark(
    storage: optuna.storages.BaseStorage, study_id: int, attrs: tuple[dict, dict] | None = None
) -> dict | None:
    """The claim or record mirrored on the study (:data:`RECORD_ATTR`: system attribute, else
    the user attribute that a rename through optuna-dashboard carries over), unless it was
    released. ``attrs``: as for :func:`study_uuid`."""
    system, user = attrs if attrs is not None else study_attrs(storage, study_id)
    for stored in (system, user):
        mark = stored.get(RECORD_ATTR)
        if isinstance(mark, str):  # tuner before v2 stored the record as a JSON string
            mark = json.loads(mark)
        if isinstance(mark, dict) and mark.get("status") != "released":
            return mark
    return None


def set_holdout_mark(storage: optuna.storages.BaseStorage, study_id: int, mark: dict) -> None:
    """Mirror the claim, its release or the completed record on the study (both kinds of
    attribute)."""
    storage.set_study_system_attr(study_id, RECORD_ATTR, mark)
    storage.set_study_user_attr(study_id, RECORD_ATTR, mark)


# --- Trial attributes. ``trial`` is an ``optuna.Trial`` (to set) or a ``FrozenTrial``.


def validation_curve_attr(metric: str) -> str:
    """The trial user attribute of the per-epoch validation values of ``metric``:
    ``validation_accuracy``, ``validation_log_loss``, ..."""
    return f"validation_{metric}"


def study_metric(study) -> str:
    """The study's ``study.metric`` as recorded at creation (``accuracy`` if none is)."""
    return (recorded_spec(study) or {}).get("study", {}).get("metric", "accuracy")


def set_learning_curves(
    trial: optuna.Trial, losses: list[float], scores: list[float], metric: str = "accuracy"
) -> None:
    """Record the per-epoch training loss and validation ``metric`` (6 significant digits)."""
    trial.set_user_attr(TRAINING_LOSS_ATTR, [float(f"{x:.6g}") for x in losses])
    trial.set_user_attr(validation_curve_attr(metric), [float(f"{x:.6g}") for x in scores])


def learning_curves(trial, metric: str = "accuracy") -> tuple[list[float], list[float]] | None:
    """The per-epoch (training losses, validation values of ``metric``), or None if not
    recorded."""
    losses = trial.user_attrs.get(TRAINING_LOSS_ATTR)
    if not losses:
        return None
    return losses, trial.user_attrs.get(validation_curve_attr(metric), [])


def set_validation_predictions(
    trial: optuna.Trial, predicted: np.ndarray, n_classes: int, log_p_true: np.ndarray | None
) -> None:
    """Record a trial's validation predictions at its last epoch: the predicted class of each
    row, ``predicted`` ``(n_validation,)``, as :func:`class_dtype` integers, and, if given, the
    log-probability of each row's true class ``log_p_true`` ``(n_validation,)`` (nats, stored
    as float32). Stored size: ``4/3`` bytes per validation row for the classes (up to 256
    classes) and ``16/3`` more for the log-probabilities, plus 45 bytes: 525 bytes for
    digits' 359 validation rows."""
    stored = {"predicted": encode_array(predicted.astype(class_dtype(n_classes)))}
    if log_p_true is not None:
        stored["log_p_true"] = encode_array(log_p_true.astype(np.float32))
    trial.set_user_attr(VALIDATION_PREDICTIONS_ATTR, stored)


def validation_predictions(trial) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The (predicted classes int64 ``(n_validation,)``, true-class log-probabilities float64
    ``(n_validation,)`` or None) :func:`set_validation_predictions` recorded, or None."""
    stored = trial.user_attrs.get(VALIDATION_PREDICTIONS_ATTR)
    if stored is None:
        return None
    log_p = stored.get("log_p_true")
    return (
        decode_array(stored["predicted"]).astype(np.int64),
        None if log_p is None else decode_array(log_p).astype(np.float64),
    )


def set_diverged(trial: optuna.Trial, reason: str) -> None:
    """Record why the trial's training diverged."""
    trial.set_user_attr(DIVERGED_ATTR, reason)


def set_fail_reason(trial: optuna.Trial, reason: str) -> None:
    """Record why the trial failed (one line)."""
    trial.set_user_attr(FAIL_REASON_ATTR, reason)


def fail_reason(trial) -> str | None:
    """Why the trial failed, as recorded by :func:`set_fail_reason`, or None."""
    return trial.user_attrs.get(FAIL_REASON_ATTR)


def diverged(trial) -> str | None:
    """Why the trial's training diverged, or None."""
    return trial.user_attrs.get(DIVERGED_ATTR)


def set_weights(trial: optuna.Trial, artifact_id: str, sha256: str) -> None:
    """Record the artifact id and SHA-256 (hex) of the trial's saved weights."""
    trial.set_user_attr(WEIGHTS_ARTIFACT_ATTR, artifact_id)
    trial.set_user_attr(WEIGHTS_SHA256_ATTR, sha256)


def weights(trial) -> tuple[str, str] | None:
    """The (artifact id, SHA-256) of the trial's saved weights, or None if it saved none."""
    artifact_id = trial.user_attrs.get(WEIGHTS_ARTIFACT_ATTR)
    sha256 = trial.user_attrs.get(WEIGHTS_SHA256_ATTR)
    return (artifact_id, sha256) if artifact_id and sha256 else None

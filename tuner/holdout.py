"""The locked test evaluation: once per study, recorded in the database, the study sealed.

A row in our own table ``tuner_holdout_v2`` (in the study's database) is the lock. It is
unique per study *identity*, a UUID recorded on the study at creation (system and user
attribute :data:`tuner.schema.STUDY_UUID_ATTR`), not per name: a rename (which optuna-dashboard and
Optuna's API do by copying the study, attributes and trials, to a new name) or
``optuna.copy_study`` keeps the UUID and so the seal. The name at the claim stays sealed too,
so a study deleted and created again under it is refused; under another name it is a new
study. The row is also unique per look at a test split: ``(test_fingerprint,
look_number)``, where the test fingerprint is the SHA-256 of the test rows themselves. A
second study whose test rows were already evaluated in this storage (a recreated or other
study on the same source, split and seed) needs ``reuse_test=True``, and every record then
reports how many times those rows were evaluated, with the interval widened for that many
looks (Bonferroni), in the spirit of Dwork et al. 2015, "The reusable holdout: Preserving
validity in adaptive data analysis", Science 349:636.

:func:`finalize` first stops new trials and refuses while trials run (so that the trial it
evaluates stays the study's best), loads everything that can fail (weights with their
SHA-256, spec, data, fingerprints), then inserts the row, the claim, naming the trial, the
SHA-256 of its weights and the fingerprints. Only the process whose insert succeeded reads
the test rows. It then evaluates and completes the row. A claim whose process fails before
the first test row is read is deleted again (the release is recorded on the study). Every
other caller gets :class:`StudyRefused` with the claim or the record. A sealed study takes no
more trials and no second evaluation. The claim and the record are mirrored onto the study
(system and user attribute :data:`tuner.schema.RECORD_ATTR`), so a copy into another storage
stays sealed.

Crash safety: a claim left without a result (the finalizing process died) is completed by
:func:`finalize` with ``recover=True``, which evaluates the claimed weights (SHA-256 verified)
on the claimed split (fingerprint verified). Recoveries take the claim over with a
compare-and-swap on ``recovery_count``, so that of several concurrent recoveries, or a
recovery and a finalizing process that was only slow, exactly one completes the row.

Databases written before the v2 table keep their table ``tuner_holdout`` (one row per study
name, :data:`legacy_table`): it is read, never written or altered; its rows keep their
studies sealed and count as looks at their data. A pending legacy claim is moved into v2
when it is recovered.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.artifacts import download_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from tuner import interrupt, schema
from tuner._version import __version__
from tuner.budget import study_lock
from tuner.data import HoldoutData, load_holdout_data
from tuner.errors import StudyRefused
from tuner.forecast import study_forecast
from tuner.metrics import Z_95, classification_metrics, wilson_interval
from tuner.nn import MLP
from tuner.note import evaluations_note, validation_gap, write_study_note
from tuner.objective import sha256_file
from tuner.schema import WAITING_ATTR, holdout_table, legacy_table, metadata, study_uuid
from tuner.spec import parse_recorded_spec
from tuner.storage import durable_begin, fail_stale_trials, first_line, schema_lock

#: Seconds after which a waiting finalize's mark counts as left by a dead process.
WAITING_STALE_S = 60
#: Seconds between a waiting finalize's looks at the running trials.
WAIT_POLL_S = 1.0
#: Family-wise error rate of the reported intervals.
ALPHA = 0.05
#: Fault injection for the crash-safety tests: seconds to sleep between the claim and opening
#: the test split, so that a test can SIGKILL the process there.
PAUSE_AFTER_CLAIM_ENV = "TUNER_FAULT_PAUSE_AFTER_CLAIM_S"


_tables_created: set[int] = set()
_legacy_present: dict[int, bool] = {}


def _engine(storage: optuna.storages.RDBStorage) -> sa.Engine:
    # Once per engine: workers ask whether the study is sealed before every trial.
    engine = storage.engine
    if id(engine) not in _tables_created:
        with schema_lock(engine.url.render_as_string(hide_password=False)):
            metadata.create_all(engine, checkfirst=True)
        _tables_created.add(id(engine))
        _legacy_present[id(engine)] = sa.inspect(engine).has_table(legacy_table.name)
    return engine


def _has_legacy(engine: sa.Engine) -> bool:
    return _legacy_present.get(id(engine), False)


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()


def _study_id(storage: optuna.storages.RDBStorage, study_name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:
        return None


def assign_study_uuid(storage: optuna.storages.RDBStorage, study_id: int) -> str:
    """The study's identity, recorded first (a new random UUID) if it has none; safe against
    concurrent callers (under the study-wide lock)."""
    current = study_uuid(storage, study_id)
    if current is None:
        with study_lock(storage, storage.get_study_name_from_id(study_id)):
            current = study_uuid(storage, study_id)
            if current is None:
                current = str(uuid.uuid4())
                schema.set_study_uuid(storage, study_id, current, user=True)
    if schema.system_study_uuid(storage, study_id) != current:
        schema.set_study_uuid(storage, study_id, current, user=False)
    return current


def _from_row(row, *, legacy: bool = False) -> dict:
    record = {
        "study": row["study_name"],
        "study_uuid": None if legacy else row["study_uuid"],
        "claimed_at": _iso(row["claimed_at"]),
        "host": row["host"],
        "pid": row["pid"],
        "trial_number": row["trial_number"],
        "artifact_id": row["artifact_id"],
        "weights_sha256": row["weights_sha256"],
        "data_fingerprint": row["data_fingerprint"],
        "test_fingerprint": None if legacy else row["test_fingerprint"],
        "recovery_count": row["recovery_count"],
        "completed": row["completed_at"] is not None,
        "legacy_id": row["id"] if legacy else row["legacy_id"],
    }
    if row["result_json"]:
        record.update(json.loads(row["result_json"]))
    return record


def _select_one(engine: sa.Engine, query: sa.Select) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return None if row is None else dict(row)


def _select_written(engine: sa.Engine, query: sa.Select) -> dict:
    """The row ``query`` selects, which this process has just seen or written."""
    row = _select_one(engine, query)
    if row is None:
        raise StudyRefused(f"a test-split claim vanished while finalize ran ({query}); try again")
    return row


def _written_record(storage: optuna.storages.RDBStorage, name: str) -> dict:
    """The claim or result this process has just written for the study ``name``."""
    record = get_record(storage, name)
    if record is None:
        raise StudyRefused(
            f"study {name!r}: its test-split claim vanished while finalize ran; "
            f"see `tuner study show {name}`"
        )
    return record


def _legacy_row(engine: sa.Engine, study_name: str):
    if not _has_legacy(engine):
        return None
    return _select_one(
        engine, sa.select(legacy_table).where(legacy_table.c.study_name == study_name)
    )


def _seal(
    storage: optuna.storages.RDBStorage,
    study_id: int | None,
    study_name: str,
    attrs: tuple[dict, dict] | None = None,
):
    """The claim or record that seals the study, or None: its own row (by identity), a row
    of its name (v2 or legacy), or (for a copy from another storage) the mirror on the study.
    ``attrs``: the study's attributes (:func:`tuner.schema.study_attrs`), else read here."""
    engine = _engine(storage)
    if study_id is not None and attrs is None:
        attrs = schema.study_attrs(storage, study_id)
    identity = study_uuid(storage, study_id, attrs) if study_id is not None else None
    # A name once sealed stays sealed: after a rename by copy-and-delete, or a delete, a new
    # study of that name would otherwise pass for the one whose test result was seen. Its own
    # row (by identity) comes first, then the first row of its name: one query for both.
    of_study = holdout_table.c.study_name == study_name
    if identity is not None:
        of_study = of_study | (holdout_table.c.study_uuid == identity)
    query = sa.select(holdout_table).where(of_study).order_by(holdout_table.c.id)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    row = next((r for r in rows if identity is not None and r["study_uuid"] == identity), None)
    row = row or next((r for r in rows if r["study_name"] == study_name), None)
    if row is not None:
        return _with_looks(engine, _from_row(row))
    row = _legacy_row(engine, study_name)
    if row is not None:
        return _with_looks(engine, _from_row(row, legacy=True))
    if study_id is not None:
        mark = schema.holdout_mark(storage, study_id, attrs)
        if mark is not None:
            return {**mark, "copied": True}
    return None


def get_record(storage: optuna.storages.RDBStorage, study_name: str) -> dict | None:
    """The claim or record that seals the study ``study_name``, or None if its test split was
    never opened.

    A dict with ``study`` (the name at the claim), ``study_uuid``, ``claimed_at``, ``host``,
    ``pid``, ``trial_number``, ``weights_sha256``, ``data_fingerprint``, ``test_fingerprint``,
    ``recovery_count``, ``completed`` (bool) and, once completed, everything :func:`finalize`
    returns, with ``test_evaluations`` (looks at these test rows in this storage so far) and
    ``accuracy_ci_simultaneous`` (see :func:`simultaneous_interval`). A record copied with
    the study from another storage has ``copied`` True.
    """
    return _seal(storage, _study_id(storage, study_name), study_name)


def _looks(engine: sa.Engine, test_fp: str | None, data_fp: str) -> list[dict]:
    t = holdout_table
    same = sa.and_(t.c.test_fingerprint.is_(None), t.c.data_fingerprint == data_fp)
    if test_fp is not None:
        same = sa.or_(t.c.test_fingerprint == test_fp, same)
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(t.c.study_name, t.c.claimed_at).where(same)))
        if _has_legacy(engine):
            moved = sa.select(t.c.legacy_id).where(t.c.legacy_id.is_not(None))
            lt = legacy_table
            rows += conn.execute(
                sa.select(lt.c.study_name, lt.c.claimed_at).where(
                    lt.c.data_fingerprint == data_fp, lt.c.id.not_in(moved)
                )
            )
    return sorted(
        ({"study": name, "claimed_at": _iso(claimed)} for name, claimed in rows),
        key=lambda r: r["claimed_at"] or "",
    )


def looks(storage: optuna.storages.RDBStorage, test_fp: str | None, data_fp: str) -> list[dict]:
    """The claims and records in this storage on the same test rows, oldest first: each a
    dict with ``study`` (its name at the claim) and ``claimed_at``. Rows match on ``test_fp``
    (the test rows' SHA-256), and rows made before test fingerprints existed on ``data_fp``."""
    return _looks(_engine(storage), test_fp, data_fp)


def _with_looks(engine: sa.Engine, record: dict) -> dict:
    if record["completed"]:
        n = max(1, len(_looks(engine, record["test_fingerprint"], record["data_fingerprint"])))
        m = record["metrics"]
        correct = m.get("n_correct", round(m["accuracy"] * record["n_test"]))
        record["test_evaluations"] = n
        record["accuracy_ci_simultaneous"] = list(
            simultaneous_interval(correct, record["n_test"], n)
        )
    return record


def describe(record: dict) -> str:
    """One line: the recorded test result, or the pending claim."""
    if record["completed"]:
        m = record["metrics"]
        line = (
            f"test accuracy {m['accuracy']:.4f} (95% CI {m['accuracy_ci95'][0]:.4f}-"
            f"{m['accuracy_ci95'][1]:.4f}, n={record['n_test']}) of trial "
            f"{record['trial_number']}, {validation_gap(record)}, recorded at "
            f"{record['completed_at']}"
        )
        n = record.get("test_evaluations")
        if n:
            line += f"; {evaluations_note(n, record['accuracy_ci_simultaneous'])}"
        if record.get("copied"):
            line += "; record copied with the study from another storage"
        return line
    return (
        f"claimed at {record['claimed_at']} by pid {record['pid']} on {record['host']} for trial "
        f"{record['trial_number']}, no result recorded"
    )


def _refusal(record: dict, name: str) -> StudyRefused:
    """The refusal for the study now called ``name``, sealed by ``record``."""
    shown = f"study {name!r}"
    if record["study"] != name:
        shown += f" (finalized as {record['study']!r})"
    if record["completed"] or record.get("copied"):
        return StudyRefused(
            f"{shown} is sealed: finalize evaluated its test split ({describe(record)}); "
            "its test rows have been seen: a new study on the same data can only be finalized "
            "with --reuse-test, which counts the extra look in every record"
        )
    return StudyRefused(
        f"{shown} is sealed: its test split was {describe(record)}; if that "
        f"process died, complete it with `tuner study finalize {name} --recover`"
    )


def ensure_not_sealed(storage: optuna.storages.RDBStorage, study_name: str) -> None:
    """Raise :class:`StudyRefused` if the study ``study_name`` (whatever it was called when
    finalized) had its test split claimed or evaluated."""
    record = get_record(storage, study_name)
    if record is not None:
        raise _refusal(record, study_name)


def is_sealed(storage: optuna.storages.RDBStorage, study_name: str) -> bool:
    """Whether the study ``study_name``'s test split was claimed or evaluated."""
    return get_record(storage, study_name) is not None


def simultaneous_interval(successes: int, n: int, looks: int) -> tuple[float, float]:
    """Wilson interval at level ``1 - ALPHA / looks`` (Bonferroni): intervals that hold
    together, with 95% probability, over ``looks`` evaluations of the same test rows. Reusing a
    holdout this way is the naive baseline of Dwork et al. 2015, "The reusable holdout"
    (Science 349:636); one look gives the plain 95% interval."""
    z = statistics.NormalDist().inv_cdf(1 - ALPHA / (2 * looks)) if looks > 1 else Z_95
    return wilson_interval(successes, n, z)


def load_weights(
    name: str, trial_number: int, artifact_id: str, expected_sha: str, artifact_store
) -> MLP:
    """The trial's saved model, after checking its SHA-256 against the recorded one."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.npz"
        try:
            download_artifact(
                artifact_store=artifact_store, artifact_id=artifact_id, file_path=str(path)
            )
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


def _reuse_refusal(name: str, prior: list[dict]) -> StudyRefused:
    first = prior[0]
    times = "once" if len(prior) == 1 else f"{len(prior)} times"
    return StudyRefused(
        f"study {name!r}: its test rows (same source, split and seed) were already evaluated "
        f"{times} in this storage (first by study {first['study']!r} at {first['claimed_at']}); "
        "another look makes the test score optimistic; to evaluate them again anyway, counted "
        f"and reported with a widened interval, run `tuner study finalize {name} --reuse-test`"
    )


def _claim(
    storage: optuna.storages.RDBStorage,
    study: optuna.Study,
    identity: str,
    best: optuna.trial.FrozenTrial,
    weights: tuple[str, str],
    holdout: HoldoutData,
    *,
    reuse_test: bool,
) -> int:
    """Insert the claim row of ``best`` and its ``weights`` (artifact id, SHA-256) (the caller
    then owns it with ``recovery_count == 0``); returns its look number. The unique ``(test_fingerprint, look_number)`` makes concurrent claims
    on the same test rows, from any studies, take numbers one at a time."""
    engine, t = _engine(storage), holdout_table
    for _ in range(100):
        ensure_not_sealed(storage, study.study_name)  # a concurrent finalize of this study
        prior = _looks(engine, holdout.test_fingerprint, holdout.fingerprint)
        if prior and not reuse_test:
            # The look found may be this study's own, claimed by a concurrent finalize since
            # the check above: that refusal is "sealed", not "already evaluated".
            ensure_not_sealed(storage, study.study_name)
            raise _reuse_refusal(study.study_name, prior)
        with engine.connect() as conn:
            last = conn.execute(
                sa.select(sa.func.max(t.c.look_number)).where(
                    t.c.test_fingerprint == holdout.test_fingerprint
                )
            ).scalar()
        look_number = (last or 0) + 1
        if look_number > 1 and not reuse_test:
            # Another study's claim on these test rows committed between the check above and
            # this read (two finalize processes at once on PostgreSQL): the next round refuses.
            continue
        try:
            with durable_begin(engine) as conn:
                conn.execute(
                    t.insert().values(
                        study_uuid=identity,
                        study_name=study.study_name,
                        test_fingerprint=holdout.test_fingerprint,
                        look_number=look_number,
                        claimed_at=datetime.now(UTC),
                        host=socket.gethostname(),
                        pid=os.getpid(),
                        trial_number=best.number,
                        artifact_id=weights[0],
                        weights_sha256=weights[1],
                        data_fingerprint=holdout.fingerprint,
                        recovery_count=0,
                    )
                )
            return look_number
        except sa.exc.IntegrityError:
            pass  # this study's claim, or another's with this look number, came first: look again
    raise StudyRefused(
        f"study {study.study_name!r}: could not claim its test split (other claims kept "
        "taking the look number); try again"
    )


def _release(
    storage: optuna.storages.RDBStorage, study_id: int, identity: str, token: int, reason: str
) -> None:
    """Delete a claim whose process read no test row, and record why on the study."""
    with durable_begin(_engine(storage)) as conn:
        conn.execute(
            holdout_table.delete().where(
                holdout_table.c.study_uuid == identity,
                holdout_table.c.recovery_count == token,
                holdout_table.c.completed_at.is_(None),
            )
        )
    schema.set_holdout_mark(
        storage,
        study_id,
        {
            "status": "released",
            "reason": reason,
            "released_at": datetime.now(UTC).isoformat(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        },
    )


def _take_over(engine: sa.Engine, record: dict) -> int:
    """Compare-and-swap the pending claim to this process; returns the new token."""
    token = record["recovery_count"] + 1
    with durable_begin(engine) as conn:
        taken = conn.execute(
            holdout_table.update()
            .where(
                holdout_table.c.study_uuid == record["study_uuid"],
                holdout_table.c.completed_at.is_(None),
                holdout_table.c.recovery_count == record["recovery_count"],
            )
            .values(recovery_count=token, host=socket.gethostname(), pid=os.getpid())
        ).rowcount
    if taken != 1:
        raise StudyRefused(
            f"study {record['study']!r}: another process recovered the claim first; "
            f"see `tuner study show {record['study']}`"
        )
    return token


def _move_legacy_claim(engine: sa.Engine, record: dict, identity: str) -> dict:
    """The v2 row of a pending legacy claim, inserted first (once, whoever comes first)."""
    row = _select_written(
        engine, sa.select(legacy_table).where(legacy_table.c.id == record["legacy_id"])
    )
    try:
        with durable_begin(engine) as conn:
            conn.execute(
                holdout_table.insert().values(
                    study_uuid=identity,
                    study_name=row["study_name"],
                    test_fingerprint=None,
                    look_number=0,
                    legacy_id=row["id"],
                    **{
                        c: row[c]
                        for c in (
                            "claimed_at",
                            "host",
                            "pid",
                            "trial_number",
                            "artifact_id",
                            "weights_sha256",
                            "data_fingerprint",
                            "recovery_count",
                        )
                    },
                )
            )
    except sa.exc.IntegrityError:
        pass  # another recovery moved it
    moved = _select_written(
        engine, sa.select(holdout_table).where(holdout_table.c.legacy_id == row["id"])
    )
    return _from_row(moved)


def admission(storage: optuna.storages.RDBStorage, study_name: str) -> tuple[str, str] | None:
    """Whether a worker may create a trial of ``study_name`` now: None (yes), ``("stop",
    reason)`` (the study is sealed, or a ``finalize --wait`` stops new trials) or ``("wait",
    reason)`` (a finalize is checking for running trials: look again shortly). Workers call it
    under the study-wide lock that :func:`finalize` takes to set its mark."""
    study_id = _study_id(storage, study_name)
    attrs = schema.study_attrs(storage, study_id) if study_id is not None else None
    if _seal(storage, study_id, study_name, attrs) is not None:
        return ("stop", "study sealed")
    mark = attrs[0].get(WAITING_ATTR) if attrs is not None else None
    if mark and time.time() - mark.get("at", 0) < WAITING_STALE_S:
        return ("stop", "finalize is waiting") if mark.get("wait") else ("wait", "finalize")
    return None


def stop_reason(storage: optuna.storages.RDBStorage, study_name: str) -> str | None:
    """Why workers start no new trial of ``study_name``: ``"study sealed"``, ``"finalize is
    waiting"`` (a ``finalize --wait`` lets the running trials finish), or None."""
    verdict = admission(storage, study_name)
    return verdict[1] if verdict and verdict[0] == "stop" else None


@contextlib.contextmanager
def _no_new_trials(
    storage: optuna.storages.RDBStorage,
    study: optuna.Study,
    *,
    wait: bool,
    on_wait: Callable[[list[int]], None] | None,
) -> Iterator[None]:
    """Keep workers from creating trials while the block runs, once no trial is running.

    Sets :data:`WAITING_ATTR` under the study-wide lock (so a trial is either created before,
    and seen running here, or not at all), then refuses while trials run, or with ``wait``
    lets them finish (calling ``on_wait`` with their numbers when they change). Stale trials
    of killed workers are failed as workers would (when the storage has heartbeats).
    """
    study_id = study._study_id

    def mark() -> None:
        storage.set_study_system_attr(
            study_id,
            WAITING_ATTR,
            {"host": socket.gethostname(), "pid": os.getpid(), "at": time.time(), "wait": wait},
        )

    with study_lock(storage, study.study_name):
        mark()
    try:
        shown = None
        while True:
            if storage.get_heartbeat_interval() is not None:
                fail_stale_trials(study)
            running = sorted(
                t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            )
            if not running:
                break
            if not wait:
                numbers = ", ".join(map(str, running))
                raise StudyRefused(
                    f"study {study.study_name!r} has {len(running)} running trial"
                    f"{'s' if len(running) > 1 else ''} ({numbers}), which may still become its "
                    "best; wait for them to finish, or run `tuner study finalize "
                    f"{study.study_name} --wait` to stop new trials, let the running ones finish, "
                    "then evaluate the best"
                )
            if running != shown and on_wait is not None:
                on_wait(running)
                shown = running
            time.sleep(WAIT_POLL_S)
            mark()
        yield
    finally:
        storage.set_study_system_attr(study_id, WAITING_ATTR, None)


def _prepare(
    study: optuna.Study,
    artifact_store: ArtifactStore,
    trial_number: int,
    artifact_id: str,
    sha: str,
    expected_fp: str | None,
) -> tuple[MLP, HoldoutData, float | None, str, dict]:
    """Everything finalize needs before it reads a test row: weights (SHA-256 checked), spec,
    data (fingerprint checked), the trial's validation value, the study's metric and the
    forecast of the test score (:func:`tuner.forecast.study_forecast`, made here, before the
    test split is opened). Raises before any claim."""
    name = study.study_name
    recorded = schema.recorded_spec(study)
    if recorded is None or expected_fp is None:
        raise StudyRefused(
            f"study {name!r} has no recorded spec or data fingerprint ({schema.NOT_RECORDED}), "
            "so it has no test split to evaluate"
        )
    model = load_weights(name, trial_number, artifact_id, sha, artifact_store)
    spec = parse_recorded_spec(recorded)
    holdout = load_holdout_data(spec.data)
    if holdout.fingerprint != expected_fp:
        raise StudyRefused(
            f"study {name!r}: data changed since the study was created (fingerprint "
            f"{holdout.fingerprint[:12]}..., recorded {expected_fp[:12]}...); restore the original data: "
            "the test split is only evaluated on the data the study was tuned on"
        )
    validation_value = next(
        t.value for t in study.get_trials(deepcopy=False) if t.number == trial_number
    )
    return model, holdout, validation_value, spec.metric, study_forecast(study)


def _best_with_weights(
    study: optuna.Study,
) -> tuple[optuna.trial.FrozenTrial, tuple[str, str]]:
    """The best trial and its saved weights' (artifact id, SHA-256)."""
    name = study.study_name
    try:
        best = study.best_trial
    except ValueError:
        raise StudyRefused(
            f"study {name!r} has no completed trial; run trials with `tuner study start SPEC --name "
            f"{name} --n-trials N` (N above the trials it already has)"
        ) from None
    weights = schema.weights(best)
    if weights is None:
        raise StudyRefused(
            f"study {name!r}: best trial {best.number} has no saved weights; it cannot be evaluated"
        )
    return best, weights


def finalize(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    artifact_store,
    *,
    recover: bool = False,
    reuse_test: bool = False,
    wait: bool = False,
    on_wait: Callable[[list[int]], None] | None = None,
) -> dict:
    """Evaluate the best trial's saved model on the test split, once, and record it.

    Args:
        recover: complete a claim whose process died, with the claimed weights and split,
            instead of making a new claim.
        reuse_test: evaluate even if these test rows were already evaluated in this storage
            (by another study on the same source, split and seed); the look is counted.
        wait: stop new trials and let running ones finish instead of refusing while trials
            run; ``on_wait`` is called with the running trials' numbers when they change.

    Returns:
        The record: ``metrics`` (accuracy, n_correct, accuracy_ci95, balanced_accuracy,
        macro_f1, log_loss, confusion_matrix: :func:`tuner.metrics.classification_metrics`),
        ``n_test``, ``trial_number``, ``validation_value`` (of the study's ``metric``),
        ``metric``, ``gap`` (validation minus test, of that metric), ``forecast`` (made before
        the test split was opened: :func:`tuner.forecast.study_forecast`), ``weights_sha256``, ``data_fingerprint``,
        ``test_fingerprint``, ``look_number``, ``test_evaluations``,
        ``accuracy_ci_simultaneous``, ``versions``, ``claimed_at``, ``completed_at``,
        ``host``, ``pid``.

    Raises:
        StudyRefused: already finalized or claimed (without ``recover``); nothing to recover
            or the claiming process still runs on this host (with ``recover``); trials running
            (without ``wait``); no completed trial; weights missing or changed; data changed;
            the test rows already evaluated (without ``reuse_test``).
        DataError: the data cannot be loaded (nothing is claimed).
    """
    name = study.study_name
    study_id = study._study_id
    engine = _engine(storage)
    identity = assign_study_uuid(storage, study_id)
    record = get_record(storage, name)
    if recover:
        if record is None:
            raise StudyRefused(
                f"study {name!r} has no claim to recover; run `tuner study finalize {name}`"
            )
        if record["completed"] or record.get("copied"):
            raise _refusal(record, name)
        if _process_alive_here(record):
            raise StudyRefused(
                f"study {name!r}: the claiming process {record['pid']} is still running on "
                "this host; wait for it to finish"
            )
        trial_number = record["trial_number"]
        model, holdout, validation_value, metric, forecast = _prepare(
            study,
            artifact_store,
            trial_number,
            record["artifact_id"],
            record["weights_sha256"],
            record["data_fingerprint"],
        )
        if record["study_uuid"] is None:  # a claim of the legacy table
            record = _move_legacy_claim(engine, record, identity)
        token = _take_over(engine, record)
        identity = record["study_uuid"]
        if record["test_fingerprint"] is None:
            with durable_begin(engine) as conn:
                conn.execute(
                    holdout_table.update()
                    .where(holdout_table.c.study_uuid == identity)
                    .values(test_fingerprint=holdout.test_fingerprint)
                )
        look_number = record.get("look_number")
    else:
        if record is not None:
            raise _refusal(record, name)
        # Ctrl-C or SIGTERM from the claim's commit until the try below, which releases the
        # claim, would leave the study claimed with no test row read: held back until then.
        held = interrupt.HeldSignals()
        try:
            with _no_new_trials(storage, study, wait=wait, on_wait=on_wait):
                best, weights = _best_with_weights(study)
                trial_number = best.number
                model, holdout, validation_value, metric, forecast = _prepare(
                    study, artifact_store, best.number, *weights, schema.data_fingerprint(study)
                )
                held.hold()
                look_number = _claim(
                    storage, study, identity, best, weights, holdout, reuse_test=reuse_test
                )
        except BaseException:
            held.release(deliver=False)
            raise
        token = 0
        try:
            # Still held: a signal raised in the middle of this write left the connection
            # unusable for the release below ("can't change 'autocommit' now", seen in CI).
            schema.set_holdout_mark(
                storage, study_id, {**_written_record(storage, name), "status": "claimed"}
            )
            held.release()  # a signal held meanwhile is raised here, and releases the claim
            pause = float(os.environ.get(PAUSE_AFTER_CLAIM_ENV, "0") or 0)
            if pause > 0:
                time.sleep(pause)
        except BaseException as e:  # no test row read yet: the claim is released
            held.release(deliver=False)
            _release(storage, study_id, identity, token, first_line(e))
            raise

    # Only the process that holds the claim reaches this line and reads the test rows.
    logits = model.forward(holdout.X_test, train=False)
    metrics = classification_metrics(logits, holdout.y_test, len(holdout.classes))
    completed_at = datetime.now(UTC)
    result = {
        "metrics": metrics,
        "n_test": int(holdout.y_test.size),
        "validation_value": validation_value,
        "metric": metric,
        "gap": validation_value - metrics[metric],
        "forecast": forecast,
        "test_fingerprint": holdout.test_fingerprint,
        "look_number": look_number,
        "versions": {
            "tuner": __version__,
            "numpy": np.__version__,
            "optuna": optuna.__version__,
        },
        "completed_at": completed_at.isoformat(),
    }
    with durable_begin(engine) as conn:
        done = conn.execute(
            holdout_table.update()
            .where(
                holdout_table.c.study_uuid == identity,
                holdout_table.c.completed_at.is_(None),
                holdout_table.c.recovery_count == token,
            )
            .values(
                completed_at=completed_at,
                validation_value=validation_value,
                test_accuracy=metrics["accuracy"],
                result_json=json.dumps(result),
            )
        ).rowcount
    if done != 1:
        raise StudyRefused(
            f"study {name!r}: the claim was recovered by another process while this one "
            f"evaluated; that process records the result (see `tuner study show {name}`)"
        )
    record = _written_record(storage, name)
    schema.set_holdout_mark(storage, study_id, {**record, "status": "completed"})
    write_study_note(study, record)
    return record

"""The one storage factory: study storage URL, Optuna's RDB storage and the artifact store.

The URL comes from ``--storage``, else the environment variable ``TUNER_STORAGE``, else
``sqlite:///tuner.db`` in the working directory. PostgreSQL URLs
(``postgresql+psycopg://user@host:5432/db``) let studies span machines.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RetryHeartbeatStaleTrialCallback

from tuner.errors import TunerError

DEFAULT_STORAGE = "sqlite:///tuner.db"
#: Seconds a SQLite writer waits for a lock before failing ("database is locked").
SQLITE_BUSY_TIMEOUT_S = 60


def resolve_storage_url(url: str | None) -> str:
    """``url``, else ``$TUNER_STORAGE``, else :data:`DEFAULT_STORAGE`."""
    return url or os.environ.get("TUNER_STORAGE") or DEFAULT_STORAGE


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for output and logs."""
    try:
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def _parse(url: str) -> sqlalchemy.URL:
    try:
        return sqlalchemy.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise TunerError(
            f"storage URL {url!r} is not a database URL; use e.g. sqlite:///tuner.db or "
            "postgresql+psycopg://user@host:5432/db"
        ) from None


def _sqlite_path(parsed: sqlalchemy.URL) -> Path | None:
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


#: Heartbeat defaults (seconds): a worker's RUNNING trial is failed and retried once its
#: heartbeat is older than the grace period.
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30
#: How often a trial of a killed worker is retried.
MAX_RETRY = 3


def _serialize_sqlite_writes(engine: sqlalchemy.Engine) -> None:
    """Begin every SQLite transaction with BEGIN IMMEDIATE, and sync the WAL at checkpoints
    rather than at every commit.

    With pysqlite's deferred transactions a reader that later writes can fail at once with
    "database is locked" (a WAL snapshot conflict ignores the busy timeout); taking the write
    lock at BEGIN makes concurrent workers wait their turn instead (the recipe of SQLAlchemy's
    SQLite dialect documentation, "Serializable isolation / Savepoints / Transactional DDL").

    ``synchronous=NORMAL`` is SQLite's setting for WAL databases ("PRAGMA synchronous" in its
    documentation): the database cannot be corrupted and a killed process loses nothing it
    committed; only a power loss or an operating-system crash may roll back the latest
    commits (a trial's last reported epochs). The fsync at every commit, made while holding
    the write lock, was what kept two local workers from running in parallel (one report per
    epoch). The locked test evaluation's records are synced at once: :func:`durable_begin`.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_pysqlite_begin(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners existed


@functools.lru_cache(maxsize=None)
def get_storage(url: str, *, heartbeat_interval: int | None = None,
                grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``, one per process (its engine is shared by our tables
    and disposed at exit).

    SQLite files get the WAL journal, a busy timeout and BEGIN IMMEDIATE transactions so that
    a few local processes can write to one file; other databases get ``pool_pre_ping``. With
    ``heartbeat_interval`` (seconds), running trials send heartbeats, and a trial whose
    heartbeat is older than ``grace_period`` seconds is failed and retried up to
    :data:`MAX_RETRY` times.

    Raises:
        TunerError: the URL is malformed, its driver missing, or the database cannot be opened.
    """
    parsed = _parse(url)
    path = _sqlite_path(parsed)
    if path is not None and not path.parent.is_dir():
        raise TunerError(f"storage {url!r}: folder {str(path.parent)!r} does not exist; create it or pick another path")
    try:
        if path is not None:
            # WAL lets readers run beside one writer; the setting is kept in the file.
            with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
        with warnings.catch_warnings():  # heartbeats are experimental in Optuna; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat = {}
            if heartbeat_interval:
                heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period or GRACE_PERIOD_S,
                             "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)}
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
    except ImportError:
        raise TunerError(
            f"storage {mask_url(url)!r}: the database driver is not installed; for PostgreSQL run "
            "pip install -e '.[postgres]' (psycopg)"
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as e:
        raise TunerError(f"storage {mask_url(url)!r} cannot be opened: {first_line(e)}") from None
    if path is not None:
        _serialize_sqlite_writes(storage.engine)
    atexit.register(storage.engine.dispose)
    return storage


def get_existing_storage(url: str, **options) -> optuna.storages.RDBStorage:
    """:func:`get_storage` for commands that read or join studies: a SQLite file that does not
    exist is refused rather than created empty (a mistyped path would leave a stray database).

    Raises:
        TunerError: as :func:`get_storage`, or ``url`` names a SQLite file that does not exist.
    """
    path = _sqlite_path(_parse(url))
    if path is not None and not path.is_file():
        raise TunerError(f"storage {url!r}: no database file {str(path)!r}; run `tuner study start SPEC` "
                         "first or pass the study's --storage")
    return get_storage(url, **options)


@contextlib.contextmanager
def durable_begin(engine: sqlalchemy.Engine) -> Iterator[sqlalchemy.Connection]:
    """Like ``engine.begin()``, but the commit is on disk when the block ends, on SQLite too
    (``synchronous=FULL`` for this transaction): for records that must survive a power loss,
    such as the claim of the locked test evaluation."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection if engine.dialect.name == "sqlite" else None
        if raw is not None:  # outside a transaction: SQLite refuses the change inside one
            raw.execute("PRAGMA synchronous=FULL")
        try:
            with conn.begin():
                yield conn
        finally:
            if raw is not None:
                raw.execute("PRAGMA synchronous=NORMAL")


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names a SQLite database."""
    return _parse(url).get_backend_name() == "sqlite"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (database errors run to many lines)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def artifact_dir(url: str, override: str | None = None, recorded: str | None = None) -> Path:
    """Folder of the artifact store (model weights): ``override`` (``--artifact-dir``), else
    ``$TUNER_ARTIFACT_DIR``, else ``recorded`` (the folder the study was created with), else
    ``<db file>-artifacts`` beside a SQLite file, else ``./tuner-artifacts``. Absolute."""
    chosen = override or os.environ.get("TUNER_ARTIFACT_DIR") or recorded
    if chosen:
        return Path(chosen).expanduser().resolve()
    path = _sqlite_path(_parse(url))
    if path is not None:
        return path.with_name(path.name + "-artifacts").resolve()
    return Path("tuner-artifacts").resolve()


def get_artifact_store(folder: Path, *, create: bool) -> FileSystemArtifactStore:
    """Optuna's filesystem artifact store in ``folder``.

    Raises:
        TunerError: ``folder`` is a file, cannot be created, or (``create=False``) is missing.
    """
    if folder.exists() and not folder.is_dir():
        raise TunerError(f"artifact folder {str(folder)!r} is a file; pass a folder with --artifact-dir")
    if not folder.exists():
        if not create:
            raise TunerError(f"artifact folder {str(folder)!r} does not exist; pass the folder that holds "
                             "the study's weights with --artifact-dir or TUNER_ARTIFACT_DIR")
        try:
            folder.mkdir(parents=True)
        except OSError as e:
            raise TunerError(f"artifact folder {str(folder)!r} cannot be created: {e.strerror}; "
                             "pass another folder with --artifact-dir") from None
    return FileSystemArtifactStore(folder)

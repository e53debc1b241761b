"""The one storage factory: study storage URL, Optuna's RDB storage and the artifact store.

The URL comes from ``--storage``, else the environment variable ``TUNER_STORAGE``, else
``sqlite:///tuner.db`` in the working directory. PostgreSQL URLs
(``postgresql+psycopg://user@host:5432/db``) let studies span machines.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
#: The grace period must be at least this many heartbeat intervals (Optuna's own default is
#: two): then a live trial is failed only after missing a whole heartbeat, not for a late one.
MIN_GRACE_INTERVALS = 2


def check_heartbeat(heartbeat_interval: int, grace_period: int) -> None:
    """Refuse a grace period that would fail live trials.

    Raises:
        TunerError: ``grace_period`` < :data:`MIN_GRACE_INTERVALS` x ``heartbeat_interval``.
    """
    least = MIN_GRACE_INTERVALS * heartbeat_interval
    if grace_period < least:
        raise TunerError(
            f"--grace-period {grace_period} must be at least {MIN_GRACE_INTERVALS} x "
            f"--heartbeat-interval {heartbeat_interval} = {least} seconds, or running trials whose "
            "heartbeat is a little late are failed as stale; raise --grace-period or lower "
            "--heartbeat-interval"
        )


#: Key of the PostgreSQL advisory lock held while a process creates or checks the schema.
SCHEMA_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tuner:schema").digest()[:8], "big", signed=True)


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold, while the block runs, a lock that every process creating tables in the database
    of ``url`` takes: ``pg_advisory_lock`` on PostgreSQL, an ``flock`` on the file beside a
    SQLite database (the one of :func:`tuner.budget.study_lock`).

    ``CREATE TABLE`` is not safe under concurrency: processes that find the tables missing all
    create them, and all but one fail (PostgreSQL: ``duplicate key value violates unique
    constraint "pg_type_typname_nsp_index"``; SQLite: ``table studies already exists``).
    Under this lock the first process creates the tables and the others find them.
    """
    parsed = _parse(url)
    path = _sqlite_path(parsed)
    if path is not None:
        with open(f"{path}.trials.lock", "a") as f:  # released when the process dies
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif parsed.get_backend_name() == "postgresql":
        engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:  # a session lock: released when the session ends
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(
                        sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY}
                    )
        finally:
            engine.dispose()
    else:
        yield


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


#: How often the schema is looked at again when a process outside :func:`schema_lock` (an
#: Optuna script, optuna-dashboard) created the same tables at the same moment.
SCHEMA_RACE_RETRIES = 5


def _lost_schema_race(e: sqlalchemy.exc.SQLAlchemyError) -> bool:
    """Whether ``e`` is what ``CREATE TABLE`` or the first version row gives when another
    process created them between Optuna's check and its own statement."""
    text = str(getattr(e, "orig", e)).lower()
    return isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in text


#: The one server encoding tuner accepts: Optuna stores parameters and attributes as JSON
#: text, and under another encoding the driver returns bytes (SQL_ASCII) or refuses characters.
POSTGRES_ENCODING = "UTF8"


def _postgres_connect_args(parsed: sqlalchemy.URL) -> dict[str, str]:
    """Connection options of a PostgreSQL engine: an ``application_name`` of ``tuner:PID``
    unless the URL or ``$PGAPPNAME`` names one, so that an administrator (or a test) can tell
    each process's sessions apart in ``pg_stat_activity``."""
    if "application_name" in parsed.query or os.environ.get("PGAPPNAME"):
        return {}
    return {"application_name": f"tuner:{os.getpid()}"}


def check_postgres_encoding(parsed: sqlalchemy.URL) -> None:
    """Refuse a PostgreSQL database whose server encoding is not UTF8.

    The probe connects with ``client_encoding=utf8``: on a SQL_ASCII database the driver
    otherwise returns bytes, and SQLAlchemy's first query (the server version) fails with a
    ``TypeError`` before any of ours could run.

    Raises:
        TunerError: the database's encoding is not :data:`POSTGRES_ENCODING`.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
    """
    engine = sqlalchemy.create_engine(
        parsed, poolclass=sqlalchemy.pool.NullPool, connect_args={"client_encoding": "utf8"}
    )
    try:
        with engine.connect() as conn:
            encoding = conn.execute(sqlalchemy.text("SHOW server_encoding")).scalar()
    finally:
        engine.dispose()
    if encoding != POSTGRES_ENCODING:
        name = parsed.database or "?"
        raise TunerError(
            f"storage {parsed.render_as_string(hide_password=True)!r}: database {name!r} has "
            f"encoding {encoding}, tuner needs {POSTGRES_ENCODING}; nothing was written to it; "
            f"create the database with CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE "
            "template0 and pass its URL"
        )


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose heartbeats survive a lost connection.

    Optuna records heartbeats in a thread that ends, printing a traceback, at the first
    database error (a connection cut, the server restarting). Here a failed heartbeat is
    skipped and the next one, ``heartbeat_interval`` seconds later, takes a new connection
    (``pool_pre_ping``); the trial is failed as stale only if heartbeats stay missing for
    the whole grace period.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
            pass


#: Seconds a worker waits for the database to come back after a lost connection (a server
#: restart or failover takes a few), before it stops with one line.
RECONNECT_TIMEOUT_S = 60
#: Seconds between attempts to reach the database again.
RECONNECT_POLL_S = 1.0


def lost_connection(error: BaseException) -> BaseException | None:
    """The error in ``error``'s cause chain that says a database connection was cut or could
    not be made (SQLAlchemy's ``OperationalError``, a ``DBAPIError`` that invalidated its
    connection, or the ``PendingRollbackError`` of a session left on a cut connection), else
    None; always None for SQLite, whose errors are about the file. Optuna's storage wraps them in ``StorageInternalError``, whose own message blames
    "invalid data"."""
    seen: BaseException | None = error
    pending = None
    while seen is not None:
        if isinstance(getattr(seen, "orig", None), sqlite3.Error):
            return None  # a local file has no connection to lose ("database is locked", full)
        if isinstance(seen, sqlalchemy.exc.OperationalError):
            return seen  # the driver's own words: "terminating connection due to ..."
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return seen
        if isinstance(seen, sqlalchemy.exc.PendingRollbackError):
            pending = pending or seen
        seen = seen.__cause__ or seen.__context__
    return pending


def refused_write(error: BaseException) -> BaseException | None:
    """The database's own error in ``error``'s cause chain (a ``DBAPIError``, or the sqlite3
    error under it: "database or disk is full", "attempt to write a readonly database",
    "database is locked"), else None. Optuna raises them wrapped in ``StorageInternalError``,
    or, when its tell fails, under an ``AssertionError`` of its own."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError | sqlite3.Error):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's ``fail_stale_trials`` (running trials whose heartbeat is older than the grace
    period are failed, and retried by the storage's callback), without the warning that
    heartbeats are experimental in Optuna: we rely on them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def start_heartbeats_of_orphans(storage: optuna.storages.RDBStorage, study_id: int) -> int:
    """Record a first heartbeat for every RUNNING trial of the study that has none, and return
    how many there were.

    A connection cut inside ``study.ask``, or a worker killed there, can leave a trial
    RUNNING that no process runs:
    its row was created (or a WAITING retry taken) but the worker never learnt its number, nor
    started its heartbeat. Optuna fails as stale only trials whose heartbeat is old, so such a
    trial would hold a slot of the budget for ever; with a heartbeat it is failed and retried
    after the grace period. A trial that another worker has just started gets its own
    heartbeats anyway (Optuna updates the row). Without heartbeats, does nothing.
    """
    if storage.get_heartbeat_interval() is None:
        return 0
    query = sqlalchemy.text(
        "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL"
    )
    with storage.engine.connect() as conn:
        orphans = [row[0] for row in conn.execute(query, {"study_id": study_id})]
    for trial_id in orphans:
        optuna.storages.RDBStorage.record_heartbeat(storage, trial_id)
    return len(orphans)


def wait_for_database(
    storage: optuna.storages.RDBStorage, *, timeout: float = RECONNECT_TIMEOUT_S
) -> None:
    """Return once the storage's database answers a query again, trying every
    :data:`RECONNECT_POLL_S` seconds for at most ``timeout`` seconds. Dead pooled connections
    are replaced on the way (``pool_pre_ping``).

    Raises:
        TunerError: the database did not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with storage.engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            storage.scoped_session.remove()  # a session left on a cut connection
            return
        except sqlalchemy.exc.SQLAlchemyError as e:
            if time.monotonic() >= deadline:
                raise TunerError(
                    f"storage {storage.engine.url.render_as_string(hide_password=True)!r}: the database connection was "
                    f"lost and not back within {timeout:g} s ({first_line(e)}); finished trials "
                    "are kept; once the database is up, run the same command again to resume"
                ) from None
            time.sleep(RECONNECT_POLL_S)


@functools.cache
def optuna_schema_revision() -> str | None:
    """The alembic revision of the schema this Optuna writes (the head of its migration scripts
    ``optuna/storages/_rdb/alembic/versions/*.py``, read as text), or None if those scripts do
    not give exactly one head.

    Optuna finds it with alembic, which imports every script: 0.4 s of every command's start.
    """
    folder = Path(optuna.storages._rdb.__file__).parent / "alembic" / "versions"
    revisions, parents = set(), set()
    for script in folder.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revision = re.search(r'^revision = "([^"]+)"$', text, re.M)
        parent = re.search(r'^down_revision = (?:"([^"]+)"|None)$', text, re.M)
        if revision is None or parent is None:
            return None
        revisions.add(revision[1])
        if parent[1]:
            parents.add(parent[1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _schema_revision(url: str, engine_kwargs: dict) -> str | None:
    """The alembic revision the database at ``url`` records (its ``alembic_version`` row), or
    None if it records none or one cannot tell (no such table, no database yet, several rows)."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).all()
    except sqlalchemy.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return rows[0][0] if len(rows) == 1 else None


def _open_rdb_storage(url: str, engine_kwargs: dict, heartbeat: dict) -> optuna.storages.RDBStorage:
    """``optuna.storages.RDBStorage(url, ...)``, looked at again when the schema was being
    created by a process that does not take :func:`schema_lock`.

    Optuna creates missing tables with ``metadata.create_all`` (check, then ``CREATE TABLE``)
    and then inserts its version row; a process that is not tuner (a user's Optuna script,
    optuna-dashboard, a test polling the file) can do the same between our check and our
    statement, and ours then fails with ``table ... already exists`` or a duplicate key. The
    next attempt finds the tables and the row, and opens the storage.

    A database already at this Optuna's schema (:func:`optuna_schema_revision`) is opened
    without Optuna's table creation and alembic check, which import every migration script:
    0.4 s of each command.

    Raises:
        TunerError: the tables are of another Optuna's schema.
        sqlalchemy.exc.SQLAlchemyError: any other error, or the race lost
            :data:`SCHEMA_RACE_RETRIES` times.
    """
    revision = _schema_revision(url, engine_kwargs)
    if revision is not None and revision == optuna_schema_revision():
        # Optuna's tables are there, at this Optuna's schema: nothing to create or check.
        return _RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            skip_compatibility_check=True,
            skip_table_creation=True,
            **heartbeat,
        )
    attempt = 1
    while True:
        try:
            return _RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except RuntimeError as e:  # Optuna's schema check: the tables are of another Optuna
            if revision is None:
                raise
            masked = mask_url(url)
            raise TunerError(
                f"storage {masked!r}: its tables have Optuna schema revision {revision}, but "
                f"Optuna {optuna.__version__} uses {optuna_schema_revision()}; back the "
                f"database up and run `optuna storage upgrade --storage {masked}`, or use "
                "the Optuna that wrote it"
            ) from e
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt == SCHEMA_RACE_RETRIES or not _lost_schema_race(e):
                raise
            time.sleep(0.1 * attempt)
            attempt += 1


@functools.cache
def get_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``, one per process (its engine is shared by our tables
    and disposed at exit).

    SQLite files get the WAL journal, a busy timeout and BEGIN IMMEDIATE transactions so that
    a few local processes can write to one file; other databases get ``pool_pre_ping``. With
    ``heartbeat_interval`` (seconds), running trials send heartbeats, and a trial whose
    heartbeat is older than ``grace_period`` seconds is failed and retried up to
    :data:`MAX_RETRY` times.

    Raises:
        TunerError: the URL is malformed, its driver missing, or the database cannot be opened;
            or the grace period is too short for the heartbeat interval (:func:`check_heartbeat`);
            or a PostgreSQL database is not UTF8 (:func:`check_postgres_encoding`).
    """
    if heartbeat_interval:
        check_heartbeat(heartbeat_interval, grace_period or GRACE_PERIOD_S)
    parsed = _parse(url)
    path = _sqlite_path(parsed)
    if path is not None and not path.parent.is_dir():
        raise TunerError(
            f"storage {url!r}: folder {str(path.parent)!r} does not exist; create it or pick another path"
        )
    engine_kwargs: dict[str, Any]
    try:
        if path is not None:
            # WAL lets readers run beside one writer; the setting is kept in the file.
            with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        else:
            engine_kwargs = {"pool_pre_ping": True}
            if parsed.get_backend_name() == "postgresql":
                check_postgres_encoding(parsed)
                engine_kwargs["connect_args"] = _postgres_connect_args(parsed)
        with warnings.catch_warnings():  # heartbeats are experimental in Optuna; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat = {}
            if heartbeat_interval:
                heartbeat = {
                    "heartbeat_interval": heartbeat_interval,
                    "grace_period": grace_period or GRACE_PERIOD_S,
                    "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRY
                    ),
                }
            with schema_lock(url):  # Optuna creates its tables here when they are missing
                storage = _open_rdb_storage(url, engine_kwargs, heartbeat)
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
    _opened.append(storage)
    return storage


#: The storages :func:`get_storage` opened in this process.
_opened: list[optuna.storages.RDBStorage] = []


def close_storages() -> None:
    """Dispose of the connections of every storage :func:`get_storage` opened in this process
    and forget them, so that the next call opens the database afresh (its cached trials and
    pooled connections gone), as a new process would."""
    while _opened:
        _opened.pop().engine.dispose()
    get_storage.cache_clear()


def get_existing_storage(url: str, **options) -> optuna.storages.RDBStorage:
    """:func:`get_storage` for commands that read or join studies: a SQLite file that does not
    exist is refused rather than created empty (a mistyped path would leave a stray database).

    Raises:
        TunerError: as :func:`get_storage`, or ``url`` names a SQLite file that does not exist.
    """
    path = _sqlite_path(_parse(url))
    if path is not None and not path.is_file():
        raise TunerError(
            f"storage {url!r}: no database file {str(path)!r}; run `tuner study start SPEC` "
            "first or pass the study's --storage"
        )
    if path is not None:
        problem = _not_optuna_sqlite(path)
        if problem:
            raise TunerError(
                f"storage {url!r}: {str(path)!r} {problem}, not an Optuna study database; "
                "nothing was written to it; pass the --storage of your studies"
            )
    return get_storage(url, **options)


#: The first 16 bytes of every SQLite 3 database file ("Database File Format", sqlite.org).
SQLITE_MAGIC = b"SQLite format 3\x00"
#: Tables every Optuna RDB storage has.
OPTUNA_TABLES = {"studies", "trials", "version_info"}


def _not_optuna_sqlite(path: Path) -> str | None:
    """What the existing file ``path`` is, if not an Optuna database, else None. Reads only:
    the header, then the table names through a read-only connection."""
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_MAGIC))
    if not header:
        return "is an empty file (0 bytes)"
    if header != SQLITE_MAGIC:
        return "is not a SQLite database"
    # Read-only first; a WAL database whose last writer was killed needs its index rebuilt,
    # which a read-only connection cannot do: then a normal connection reads the names (the
    # rebuild touches only the -shm file).
    error = None
    for connect in (
        lambda: sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True),
        lambda: sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S),
    ):
        try:
            with contextlib.closing(connect()) as conn:
                query = "SELECT name FROM sqlite_master WHERE type='table'"
                tables = {r[0] for r in conn.execute(query)}
            break
        except sqlite3.Error as e:
            error = e
    else:
        return f"is a SQLite file that cannot be read ({error})"
    missing = OPTUNA_TABLES - tables
    if missing:
        held = ", ".join(sorted(tables)[:5]) or "no tables"
        more = f" and {len(tables) - 5} more" if len(tables) > 5 else ""
        return f"is a SQLite database without Optuna's tables (it holds {held}{more})"
    return None


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
        raise TunerError(
            f"artifact folder {str(folder)!r} is a file; pass a folder with --artifact-dir"
        )
    if not folder.exists():
        if not create:
            raise TunerError(
                f"artifact folder {str(folder)!r} does not exist; pass the folder that holds "
                "the study's weights with --artifact-dir or TUNER_ARTIFACT_DIR"
            )
        try:
            folder.mkdir(parents=True)
        except OSError as e:
            raise TunerError(
                f"artifact folder {str(folder)!r} cannot be created: {e.strerror}; "
                "pass another folder with --artifact-dir"
            ) from None
    return FileSystemArtifactStore(folder)

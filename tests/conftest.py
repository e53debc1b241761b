"""Shared fixtures: study storages (SQLite file, and PostgreSQL when configured), tiny specs,
a runner for the real ``tuner`` command in a subprocess, and the test tiers.

Tiers: every test is marked from what it does, found by following the code it runs (its
function, its fixtures, and the test helpers they call): ``slow`` if it starts a process (the
``tuner`` CLI, workers, chromium, docker), ``postgres`` if it uses the PostgreSQL server,
``browser`` if it runs chromium; ``docker`` marks the checks of the Docker job's files
(tests/test_docker.py; the containers themselves run in docker/ci.sh). The fast tier
is ``pytest -m "not slow"``: in-process tests only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]

TINY_SPEC = """\
[study]
name = "{name}"
n_trials = {n_trials}
seed = 0
trial_plots = {trial_plots}
metric = "{metric}"

[data]
source = "{source}"
{data_extra}

[model]
hidden_layers = 2
epochs = {epochs}

[search]
learning_rate = {{ low = 1e-3, high = 0.3, log = true }}
weight_decay  = {{ low = 1e-8, high = 1e-3, log = true }}
batch_size    = {{ choices = [32, 64] }}
width         = {{ low = 16, high = 64, log = true }}
initializer   = {{ choices = ["he", "xavier", "normal:0.01"] }}

[sampler]
name = "tpe"
n_startup_trials = 3

[pruner]
{pruner}
"""
#: The tiny spec's pruner table: median pruning after 2 complete trials and 2 epochs.
MEDIAN_PRUNER = 'name = "median"\nn_startup_trials = 2\nn_warmup_steps = 2'


def write_spec(
    folder: Path,
    *,
    name: str = "tiny",
    n_trials: int = 4,
    epochs: int = 4,
    source: str = "sklearn:digits",
    data_extra: str = "",
    trial_plots: bool = False,
    metric: str = "accuracy",
    pruner: str = MEDIAN_PRUNER,
) -> Path:
    """Write a small, fast study spec and return its path; ``data_extra`` holds more lines of
    its ``[data]`` table, e.g. ``'target = "label"'``. Per-trial PNGs are off unless
    ``trial_plots``: drawing them cost more than training these tiny trials (the dashboard
    tests and the default-study test draw them). ``pruner`` is the body of the ``[pruner]``
    table, e.g. ``'name = "none"'`` for trials that run every epoch."""
    path = folder / f"{name}.toml"
    path.write_text(
        TINY_SPEC.format(
            name=name,
            n_trials=n_trials,
            epochs=epochs,
            source=source,
            data_extra=data_extra,
            metric=metric,
            pruner=pruner,
            trial_plots=str(trial_plots).lower(),
        )
    )
    return path


def _tuner_env(env: dict | None) -> dict:
    """This process's environment without TUNER_* settings, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    full_env.update(env or {})
    return full_env


def run_tuner(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``tuner ARGS`` as a real process (``python -m tuner``), capturing text output."""
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=_tuner_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def invoke_tuner(*args: str, cwd: Path, env: dict | None = None) -> types.SimpleNamespace:
    """Run ``tuner ARGS`` in this process (:func:`tuner.cli.main`, which turns errors into exit
    codes as the command does), in ``cwd`` and the environment of :func:`run_tuner`; for the
    many cases of one kind of bad input, where a process each spent its time importing. Gives
    ``returncode``, ``stdout`` and ``stderr`` as :func:`run_tuner` does; an exception that
    escapes ``main`` is printed as a process would print it, exit code 1. The storages the
    command opens are closed after it (:func:`tuner.storage.close_storages`), so that it sees
    what the test changed in a database since, as a process would."""
    import contextlib
    import io
    import traceback

    from tuner.cli import main
    from tuner.storage import close_storages

    out, err, saved_env, saved_cwd = io.StringIO(), io.StringIO(), dict(os.environ), os.getcwd()
    run_env = _tuner_env(env)
    os.environ.clear()
    os.environ.update(run_env)
    code = 0
    close_storages()  # each command opens its databases afresh, as a process does
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        close_storages()
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def popen_tuner(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``tuner ARGS`` as a real process with text pipes; stop it with :func:`stop_process`."""
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=_tuner_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_process(proc: subprocess.Popen | None, *, terminate: bool = True) -> None:
    """Leave no process running: SIGTERM (or, with ``terminate=False``, SIGKILL at once), then
    SIGKILL after 10 s; the pipes are drained."""
    if proc is None or proc.poll() is not None:
        return
    if terminate:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.communicate()


#: Names whose use marks a test (see the module docstring): a process is started by the
#: ``subprocess`` module (our ``run_tuner``, ``popen_tuner`` and every helper use it).
_TIER_NAMES = {
    "slow": {"subprocess", "multiprocessing", "fork"},
    "postgres": {"_postgres_url", "_postgres_admin", "TUNER_TEST_POSTGRES_URL"},
    "browser": {"_chromium"},
}


def _names_used(code: types.CodeType, module: dict, seen: set) -> set[str]:
    """Global names, attribute names and string constants ``code`` uses, followed into nested
    functions and into the functions of the tests and conftest that it calls."""
    if code in seen:
        return set()
    seen.add(code)
    names = set(code.co_names) | {c for c in code.co_consts if isinstance(c, str)}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const, module, seen)
    for name in code.co_names:
        target = module.get(name)
        target = getattr(target, "__wrapped__", target)
        if isinstance(target, types.FunctionType) and target.__module__.split(".")[-1].startswith(
            ("test_", "conftest")
        ):
            names |= _names_used(target.__code__, target.__globals__, seen)
    return names


def pytest_collection_modifyitems(config, items):
    for item in items:
        functions = [item.function] + [
            getattr(d.func, "__wrapped__", d.func)
            for defs in item._fixtureinfo.name2fixturedefs.values()
            for d in defs
            if d.func.__module__.split(".")[-1].startswith(("test_", "conftest"))
        ]
        seen: set = set()
        used = set().union(*(_names_used(f.__code__, f.__globals__, seen) for f in functions))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("storage_url") == "postgresql":
            used.add("_postgres_url")
        for marker, names in _TIER_NAMES.items():
            if used & names:
                item.add_marker(marker)
        if item.module.__name__ == "test_docker":
            item.add_marker("docker")
        if used & _TIER_NAMES["browser"]:
            item.add_marker("slow")


_schemas: dict[str, str] = {}


def _postgres_url() -> str | None:
    """``TUNER_TEST_POSTGRES_URL`` with ``search_path`` set to a schema of this test process
    (created on first use, dropped at the end of the session).

    Test evaluations are counted per storage and test rows, and the tests' studies share the
    digits data: tests running at the same time in two pytest-xdist processes would see each
    other's looks in one schema. Within a process each test deletes its own rows.
    """
    url = os.environ.get("TUNER_TEST_POSTGRES_URL")
    if not url and os.environ.get("TUNER_REQUIRE_POSTGRES") == "1":
        pytest.fail("TUNER_REQUIRE_POSTGRES=1 but TUNER_TEST_POSTGRES_URL is not set")
    if not url:
        return None
    if url not in _schemas:
        schema = f"tuner_test_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        engine.dispose()
        sep = "&" if "?" in url else "?"
        _schemas[url] = f"{url}{sep}options=-csearch_path%3D{schema}"
    return _schemas[url]


def pytest_sessionfinish(session, exitstatus):
    for url, isolated in _schemas.items():
        schema = isolated.rsplit("%3D", 1)[1]
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path) -> str:
    """A study storage URL: a fresh SQLite file, or the PostgreSQL server of
    ``TUNER_TEST_POSTGRES_URL`` (skipped without it unless ``TUNER_REQUIRE_POSTGRES=1``).

    Tests on PostgreSQL use study names unique to the test (see ``study_name``) and delete
    their studies and holdout rows afterwards.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    url = _postgres_url()
    if not url:
        pytest.skip(
            "PostgreSQL tests need TUNER_TEST_POSTGRES_URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test"
        )
    yield url
    _drop_studies(url, request.node.study_names)


def _drop_studies(url: str, names: list[str]) -> None:
    import optuna

    from tuner.schema import holdout_table, legacy_table

    storage = optuna.storages.RDBStorage(url)
    # Studies a test renamed or copied too: their names start with the test's names.
    for study in storage.get_all_studies():
        if any(study.study_name.startswith(name) for name in names):
            try:
                optuna.delete_study(study_name=study.study_name, storage=storage)
            except KeyError:
                pass
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in (holdout_table, legacy_table):
            if sa.inspect(conn).has_table(table.name):
                conn.execute(
                    table.delete().where(
                        sa.or_(*(table.c.study_name.startswith(n, autoescape=True) for n in names))
                    )
                )
    engine.dispose()
    storage.engine.dispose()


@pytest.fixture
def study_name(request) -> str:
    """A study name unique to this test run; registered for clean-up on PostgreSQL."""
    name = f"t-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
    request.node.study_names.append(name)
    return name


@pytest.fixture(autouse=True)
def _study_names(request):
    request.node.study_names = []


def write_mnist(
    folder, *, n_train_per_class=6, n_test_per_class=2, compress=False, dtype=np.uint8, seed=0
):
    """A 4x4-pixel MNIST folder: 10 classes, train rows then t10k rows; returns (X, y) as written."""
    from tuner.data.idx import write_idx

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    arrays = {}
    for part, per_class in (("train", n_train_per_class), ("t10k", n_test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        images = rng.integers(0, 256, size=(labels.size, 4, 4)).astype(dtype)
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        arrays[part] = (images.reshape(labels.size, 16), labels)
    X = np.concatenate([arrays["train"][0], arrays["t10k"][0]])
    y = np.concatenate([arrays["train"][1], arrays["t10k"][1]])
    return X, y


def people_table(n=60, seed=0):
    """A small table: numbers, a text column, string labels (two classes, 3:1 apart from rounding)."""
    import pandas as pd  # only the data tests need it

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n),
            "income": rng.normal(50_000, 10_000, n).round(2),
            "city": rng.choice(["oslo", "bergen", "tromso"], n),
            "label": np.where(np.arange(n) % 4 == 0, "churn", "stay"),
        }
    )


def write_tiny_trials_spec(folder: Path, n_trials: int) -> Path:
    """A spec of nearly free trials (one epoch, width 4 to 8, random sampling, no pruning):
    the database is the load."""
    spec = write_spec(folder, n_trials=n_trials, epochs=1, pruner='name = "none"')
    spec.write_text(
        spec.read_text()
        .replace("low = 16, high = 64", "low = 4, high = 8")
        .replace("choices = [32, 64]", "choices = [512]")
        .replace('name = "tpe"', 'name = "random"')
        .replace("n_startup_trials = 3\n", "", 1)
    )
    return spec

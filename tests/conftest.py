"""Shared fixtures: study storages (SQLite file, and PostgreSQL when configured), tiny specs,
and a runner for the real ``tuner`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]

TINY_SPEC = """\
[study]
name = "{name}"
n_trials = {n_trials}
seed = 0
trial_plots = {trial_plots}

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
name = "median"
n_startup_trials = 2
n_warmup_steps = 2
"""


def write_spec(folder: Path, *, name: str = "tiny", n_trials: int = 4, epochs: int = 4,
               source: str = "sklearn:digits", data_extra: str = "", trial_plots: bool = False) -> Path:
    """Write a small, fast study spec and return its path; ``data_extra`` holds more lines of
    its ``[data]`` table, e.g. ``'target = "label"'``. Per-trial PNGs are off unless
    ``trial_plots``: drawing them cost more than training these tiny trials (the dashboard
    tests and the default-study test draw them)."""
    path = folder / f"{name}.toml"
    path.write_text(TINY_SPEC.format(name=name, n_trials=n_trials, epochs=epochs, source=source,
                                     data_extra=data_extra, trial_plots=str(trial_plots).lower()))
    return path


def _tuner_env(env: dict | None) -> dict:
    """This process's environment without TUNER_* settings, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    full_env.update(env or {})
    return full_env


def run_tuner(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tuner ARGS`` as a real process (``python -m tuner``), capturing text output."""
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, env=_tuner_env(env),
                          capture_output=True, text=True, timeout=timeout)


def popen_tuner(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start ``tuner ARGS`` as a real process with text pipes; stop it with :func:`stop_process`."""
    return subprocess.Popen([sys.executable, "-m", "tuner", *args], cwd=cwd, env=_tuner_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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


def _postgres_url() -> str | None:
    url = os.environ.get("TUNER_TEST_POSTGRES_URL")
    if not url and os.environ.get("TUNER_REQUIRE_POSTGRES") == "1":
        pytest.fail("TUNER_REQUIRE_POSTGRES=1 but TUNER_TEST_POSTGRES_URL is not set")
    return url


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
        pytest.skip("PostgreSQL tests need TUNER_TEST_POSTGRES_URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test")
    yield url
    _drop_studies(url, request.node.study_names)


def _drop_studies(url: str, names: list[str]) -> None:
    import optuna

    from tuner.holdout import holdout_table

    storage = optuna.storages.RDBStorage(url)
    for name in names:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if sa.inspect(conn).has_table("tuner_holdout"):
            conn.execute(holdout_table.delete().where(holdout_table.c.study_name.in_(names)))
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

"""Trials per minute of the digits study with 1 and 2 worker processes, on SQLite and on
PostgreSQL, measured side by side in one run. Prints one JSON object per storage:

    storage, trials, trials_per_min_1_worker, trials_per_min_2_workers, ratio (2 / 1), cores

To compare like with like, the study is studies/digits.toml with the random sampler and no
pruner (every trial trains all its epochs) and the same seed for both runs. Throughput is
taken from the database: trials / (last completion - first start).

Usage: ``python benchmarks/bench_workers.py [--trials 30] [--postgres URL]``; PostgreSQL is
measured when ``--postgres`` or ``TUNER_TEST_POSTGRES_URL`` is given; its studies are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import uuid
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]


def _spec(folder: Path) -> Path:
    text = (REPO / "studies" / "digits.toml").read_text()
    raw = tomllib.loads(text)
    assert raw["sampler"]["name"] == "tpe" and raw["pruner"]["name"] == "median"
    text = text.replace('[sampler]\nname = "tpe"', '[sampler]\nname = "random"').replace(
        '[pruner]\nname = "median"', '[pruner]\nname = "none"')
    path = folder / "bench_digits.toml"
    path.write_text(text)
    return path


def _trials_per_minute(url: str, spec: Path, workers: int, trials: int, folder: Path) -> float:
    name = f"bench-{workers}-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    subprocess.run([sys.executable, "-m", "tuner", "study", "start", str(spec), "--storage", url, "--name", name,
                    "--n-trials", str(trials), "--workers", str(workers), "--artifact-dir", str(folder / "artifacts")],
                   check=True, env=env, stdout=subprocess.DEVNULL, cwd=folder)
    study = optuna.load_study(study_name=name, storage=url)
    done = [t for t in study.get_trials() if t.state.is_finished()]
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    if not url.startswith("sqlite"):
        optuna.delete_study(study_name=name, storage=url)
    return len(done) / (span.total_seconds() / 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--postgres", default=os.environ.get("TUNER_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = _spec(folder)
        storages = {"sqlite": f"sqlite:///{folder / 'bench.db'}"}
        if args.postgres:
            storages["postgresql"] = args.postgres
        for label, url in storages.items():
            one = _trials_per_minute(url, spec, 1, args.trials, folder)
            two = _trials_per_minute(url, spec, 2, args.trials, folder)
            print(json.dumps({"storage": label, "trials": args.trials,
                              "trials_per_min_1_worker": round(one, 1), "trials_per_min_2_workers": round(two, 1),
                              "ratio": round(two / one, 3), "cores": os.cpu_count()}), flush=True)


if __name__ == "__main__":
    main()

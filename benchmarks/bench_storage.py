"""Per-trial overhead as a study grows to thousands of trials, tuner beside plain Optuna.

Each run is a study of ``--trials`` nearly free trials (one epoch of a 2-layer BN-MLP of
width 4 to 8 on scikit-learn's digits, batch 512, no pruning) with TPE, on SQLite (a fresh
file) or PostgreSQL (``--postgres-url``, default ``$TUNER_TEST_POSTGRES_URL``; a study name
of its own, deleted afterwards), with 1 or 4 worker processes:

- ``tuner``: ``tuner.create_study(spec)``, then each worker ``tuner.load_study(...)
  .optimize(n_trials=TRIALS)`` (the study-wide budget; heartbeats on, as ``start``);
- ``optuna``: ``optuna.create_study(sampler=TPESampler(seed))`` on the same kind of storage,
  each worker ``optimize(objective, n_trials=TRIALS / workers)`` with an objective that
  suggests the same five hyperparameters and trains the same model with the same ``fit()``.

Every worker times each of its trials from the end of the one before (so the stale-trial
check, ask, sampling, storage writes, tell and callbacks count) and the ``fit()`` call
inside it. A trial's overhead is its time minus its ``fit()`` seconds. Prints one JSON line
per run: the median overhead in milliseconds of the 100 trials up to the 5%, 50% and 100%
marks of ``--trials`` (trials 1-100, 901-1,000 and 1,901-2,000 by default), ``growth`` = the
last window's over the first, and for tuner ``vs_optuna``: its overhead over Optuna's in each
window of the same storage and workers, measured in the same invocation (runs interleaved).

Usage: ``python benchmarks/bench_storage.py [--trials 2000] [--storages sqlite,postgresql]
[--workers 1,4] [--tools tuner,optuna]``. About 1 to 5 minutes per run on two cores.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one BLAS thread in every process, as `start`

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

SEARCH = {
    "learning_rate": {"low": 1e-3, "high": 0.3, "log": True},
    "weight_decay": {"low": 1e-8, "high": 1e-3, "log": True},
    "batch_size": {"choices": [512]},
    "width": {"low": 4, "high": 8, "log": True},
    "initializer": {"choices": ["he", "xavier", "normal:0.01"]},
}


def spec(trials: int) -> dict:
    return {
        "study": {"name": "bench_storage", "n_trials": trials, "seed": 0, "trial_plots": False},
        "data": {"source": "sklearn:digits"},
        "model": {"hidden_layers": 2, "epochs": 1},
        "search": SEARCH,
        "sampler": {"name": "tpe"},
        "pruner": {"name": "none"},
    }


def _timed_fit(seconds: list[float]):
    """tuner's ``fit``, adding each call's seconds to ``seconds[0]``, less those of its
    per-epoch callback (validation scoring, ``trial.report``: overhead, not training)."""
    from tuner.nn.training import fit

    def timed(*args, on_epoch=None, **kwargs):
        def epoch(*a):
            t = time.perf_counter()
            try:
                return on_epoch(*a)
            finally:
                seconds[0] -= time.perf_counter() - t

        t0 = time.perf_counter()
        try:
            return fit(*args, on_epoch=epoch if on_epoch else None, **kwargs)
        finally:
            seconds[0] += time.perf_counter() - t0

    return timed


def _worker(tool: str, url: str, name: str, trials: int, workers: int, index: int, out: str):
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    fit_s = [0.0]
    rows: list[tuple[int, float, float]] = []
    last = [time.perf_counter()]

    def on_trial(_study, trial) -> None:
        now = time.perf_counter()
        rows.append((trial.number, now - last[0], fit_s[0]))
        last[0], fit_s[0] = now, 0.0

    if tool == "tuner":
        import tuner
        import tuner.objective

        tuner.objective.fit = _timed_fit(fit_s)
        study = tuner.load_study(name, storage=url, artifact_dir=str(Path(out).parent / "art"))
        last[0] = time.perf_counter()
        study.optimize(n_trials=trials, callbacks=[on_trial])
    else:
        from tuner.data import load_training_data
        from tuner.metrics import metric_value
        from tuner.objective import build_model, build_optimizer
        from tuner.search import suggest
        from tuner.spec import parse_spec_dict

        parsed = parse_spec_dict(spec(trials))
        data = load_training_data(parsed.data)
        fit = _timed_fit(fit_s)

        def objective(trial: optuna.Trial) -> float:
            hp = suggest(trial, parsed.search)
            model = build_model(parsed, hp, data.n_features, len(data.classes), trial.number)
            fit(
                model,
                data.X_train,
                data.y_train,
                epochs=1,
                batch_size=hp["batch_size"],
                optimizer=build_optimizer(hp, model),
                seed=trial.number,
            )
            logits = model.forward(data.X_validation, train=False)
            return metric_value("accuracy", logits, data.y_validation, len(data.classes))

        study = optuna.load_study(
            study_name=name, storage=url, sampler=optuna.samplers.TPESampler(seed=index)
        )
        last[0] = time.perf_counter()
        share = trials // workers + (index < trials % workers)
        study.optimize(objective, n_trials=share, callbacks=[on_trial])
    Path(out).write_text(json.dumps(rows))


def run(tool: str, storage: str, workers: int, trials: int, pg_url: str | None) -> dict:
    import optuna

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as folder:
        name = f"bench_storage_{tool}_{uuid.uuid4().hex[:8]}"
        url = f"sqlite:///{folder}/s.db" if storage == "sqlite" else pg_url
        assert url is not None
        if tool == "tuner":
            import tuner

            tuner.create_study(spec(trials), storage=url, name=name, artifact_dir=f"{folder}/art")
        else:
            optuna.create_study(study_name=name, storage=url, direction="maximize")
        ctx = multiprocessing.get_context("spawn")
        outs = [f"{folder}/w{i}.json" for i in range(workers)]
        t0 = time.perf_counter()
        procs = [
            ctx.Process(target=_worker, args=(tool, url, name, trials, workers, i, outs[i]))
            for i in range(workers)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        wall = time.perf_counter() - t0
        codes = [p.exitcode for p in procs]
        rows = [r for out in outs if Path(out).exists() for r in json.loads(Path(out).read_text())]
        study = optuna.load_study(study_name=name, storage=url)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        if storage != "sqlite":
            optuna.delete_study(study_name=name, storage=url)
    windows = {}
    for at in (max(trials // 20, 1), trials // 2, trials):
        around = [
            (cycle - fit) * 1000 for number, cycle, fit in rows if at - 100 < number + 1 <= at
        ]
        windows[str(at)] = round(statistics.median(around), 2) if around else None
    first, last = windows[str(max(trials // 20, 1))], windows[str(trials)]
    return {
        "tool": tool,
        "storage": storage,
        "workers": workers,
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "exit_codes": codes,
        "wall_s": round(wall, 1),
        "overhead_ms_at": windows,
        "growth": round(last / first, 2) if first and last else None,
        "fit_ms_median": round(statistics.median(f * 1000 for _n, _c, f in rows), 2),
        "load": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--storages", default="sqlite,postgresql")
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--tools", default="tuner,optuna")
    parser.add_argument("--postgres-url", default=os.environ.get("TUNER_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    results = []
    for storage in args.storages.split(","):
        if storage == "postgresql" and not args.postgres_url:
            print(json.dumps({"storage": storage, "skipped": "no --postgres-url"}))
            continue
        for workers in map(int, args.workers.split(",")):
            for tool in args.tools.split(","):
                result = run(tool, storage, workers, args.trials, args.postgres_url)
                results.append(result)
                print(json.dumps(result), flush=True)
    for r in results:
        if r["tool"] != "tuner":
            continue
        base = next(
            (
                o
                for o in results
                if o["tool"] == "optuna"
                and (o["storage"], o["workers"]) == (r["storage"], r["workers"])
            ),
            None,
        )
        if base is None:
            continue
        ratios = {
            at: round(v / base["overhead_ms_at"][at], 2)
            if v and base["overhead_ms_at"].get(at)
            else None
            for at, v in r["overhead_ms_at"].items()
        }
        summary = {"storage": r["storage"], "workers": r["workers"], "vs_optuna": ratios}
        summary |= {"tuner_growth": r["growth"], "optuna_growth": base["growth"]}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

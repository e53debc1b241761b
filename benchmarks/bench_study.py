"""Where a trial's time goes in the default digits study, and which worker and BLAS-thread
setting runs the study fastest. Prints JSON, one object per line.

``overhead`` (the default part): runs studies/digits.toml (40 trials, trial plots on, TPE and
median pruning; ``--spec`` another, such as studies/mnist5k.toml) in this process on a fresh
SQLite file with one BLAS thread (as ``start``), timing every trial from the end of the one before (so ask, sampling, storage writes and tell
are counted) and, inside it:
``training`` (the mini-batch steps of every epoch, in ``tuner.nn.train_epochs``, and the
refit of a cross-validated trial), ``validation`` (scoring the validation split each epoch:
the forward pass and the metric), ``report`` (trial.report: a storage write per
epoch), ``should_prune`` (the pruner, which reads the study's trials), ``sampling``
(suggest), ``init_statistics`` (the activation histograms' data), ``plots`` (drawing the two
PNGs), ``uploads`` (artifact uploads of PNGs and weights), ``weights`` (saving the model, its
SHA-256 and its upload, which ``uploads`` counts too). One line per trial with each part's
seconds and ``outside_fit_share`` = 1 - training / trial seconds; then a summary line with
the median and maximum of that share over trials and each part's total.

``blas``: wall time of the whole default study with 1 and 2 worker processes and 1 and 2
BLAS threads each (``tuner study create`` then K ``tuner study worker`` processes with
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS set), the four settings
interleaved, ``--repeats`` times, one line per run; then per setting the median, with
``reproducible``: whether the repeats of a setting recorded the very same trials
(parameters, states, values). A run is stopped after ``--max-seconds``.

Usage: ``python benchmarks/bench_study.py [--part overhead|blas|both] [--spec S] [--repeats 3]``.
The load average is printed with each result: on a shared machine, compare settings only
within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "studies" / "digits.toml"
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def overhead(folder: Path, spec: Path) -> None:
    import optuna

    import tuner
    import tuner.objective as objective

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parts: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    train_epochs = objective.train_epochs

    def timed_train_epochs(*args, **kwargs):
        # The mini-batch steps of each epoch, in each model's generator (K with data.folds).
        epochs = train_epochs(*args, **kwargs)
        while True:
            t0 = time.perf_counter()
            try:
                loss = next(epochs)
            except StopIteration:
                return
            finally:
                parts["_training"] = parts.get("_training", 0.0) + time.perf_counter() - t0
            yield loss

    fit = objective.fit

    def timed_fit(*args, **kwargs):  # the refit of a best-so-far cross-validated trial
        t0 = time.perf_counter()
        try:
            return fit(*args, **kwargs)
        finally:
            parts["_training"] = parts.get("_training", 0.0) + time.perf_counter() - t0

    forward = objective.MLP.forward

    def timed_forward(self, X, *, train):
        if train:
            return forward(self, X, train=train)
        t0 = time.perf_counter()  # scoring the validation split
        try:
            return forward(self, X, train=train)
        finally:
            parts["validation"] = parts.get("validation", 0.0) + time.perf_counter() - t0

    objective.train_epochs = timed_train_epochs
    objective.fit = timed_fit
    objective.MLP.forward = timed_forward
    objective.metric_value = timed("validation", objective.metric_value)
    objective.suggest = timed("sampling", objective.suggest)
    objective.activation_statistics = timed("init_statistics", objective.activation_statistics)
    objective.upload_artifact = timed("uploads", objective.upload_artifact)
    for name in ("draw_learning_curves", "draw_activation_histograms"):
        setattr(objective, name, timed("plots", getattr(objective, name)))
    objective.Objective._save_weights = timed("weights", objective.Objective._save_weights)
    trial_report = optuna.Trial.report
    optuna.Trial.report = timed("report", trial_report)
    optuna.Trial.should_prune = timed("should_prune", optuna.Trial.should_prune)

    study = tuner.create_study(
        spec, storage=f"sqlite:///{folder / 'overhead.db'}", artifact_dir=folder / "artifacts"
    )
    rows = []
    last = [time.perf_counter()]

    def on_trial(_study, trial) -> None:
        now = time.perf_counter()
        seconds, last[0] = now - last[0], now
        p = dict(parts)
        parts.clear()
        training = p.pop("_training", 0.0)
        row = {
            "trial": trial.number,
            "state": trial.state.name,
            "epochs": len(trial.intermediate_values),
            "width": trial.params.get("width"),
            "batch_size": trial.params.get("batch_size"),
            "seconds": round(seconds, 4),
            "training": round(training, 4),
            **{k: round(v, 4) for k, v in sorted(p.items())},
            "outside_fit_share": round(1 - training / seconds, 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    t0 = time.perf_counter()
    study.optimize(callbacks=[on_trial])  # one BLAS thread, as `tuner study start`
    wall = time.perf_counter() - t0
    shares = [r["outside_fit_share"] for r in rows]
    keys = sorted({k for r in rows for k in r} - {"trial", "state", "epochs", "width"})
    keys = [k for k in keys if k not in ("batch_size", "outside_fit_share")]
    print(
        json.dumps(
            {
                "summary": "overhead",
                "spec": spec.name,
                "trials": len(rows),
                "wall_seconds": round(wall, 2),
                "outside_fit_share_median": round(statistics.median(shares), 4),
                "outside_fit_share_max": round(max(shares), 4),
                "outside_fit_share_total": round(
                    1 - sum(r["training"] for r in rows) / sum(r["seconds"] for r in rows), 4
                ),
                "trials_over_10_percent": sum(s > 0.10 for s in shares),
                "totals_seconds": {k: round(sum(r.get(k, 0.0) for r in rows), 3) for k in keys},
                "load_average": _load(),
            }
        ),
        flush=True,
    )


def _tuner(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args], env=env, capture_output=True, text=True, check=True
    )


def _study_run(folder: Path, workers: int, threads: int, max_seconds: float) -> dict:
    """One run of the default study with ``workers`` processes of ``threads`` BLAS threads:
    seconds, trials finished, whether it was stopped at ``max_seconds``, and its trials."""
    import optuna

    db = folder / f"{uuid.uuid4().hex[:8]}.db"
    url = f"sqlite:///{db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    env.update({k: str(threads) for k in THREAD_ENV})
    t0 = time.perf_counter()
    _tuner("study", "create", str(SPEC), "--storage", url, env=env)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tuner", "study", "worker", "digits", "--storage", url]
            + ["--worker-index", str(i), "--quiet"],
            env=env,
        )
        for i in range(workers)
    ]
    stopped = False
    for p in procs:
        try:
            p.wait(timeout=max(max_seconds - (time.perf_counter() - t0), 0.1))
        except subprocess.TimeoutExpired:
            stopped = True
    seconds = time.perf_counter() - t0
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    trials = optuna.load_study(study_name="digits", storage=url).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
    record = sorted((t.number, t.state.name, t.value, sorted(t.params.items())) for t in trials)
    return {
        "seconds": seconds,
        "trials": len(finished),
        "stopped": stopped,
        "record": record,
    }


def blas(folder: Path, repeats: int, settings: list[tuple[int, int]], max_seconds: float) -> None:
    runs: dict[tuple[int, int], list[dict]] = {s: [] for s in settings}
    for r in range(repeats):
        for w, t in settings:
            load = _load()
            run = _study_run(folder, w, t, max_seconds)
            runs[(w, t)].append(run)
            print(
                json.dumps(
                    {
                        "run": r,
                        "workers": w,
                        "blas_threads": t,
                        "seconds": round(run["seconds"], 2),
                        "trials_finished": run["trials"],
                        "stopped_at_max_seconds": run["stopped"],
                        "load_average": load,
                    }
                ),
                flush=True,
            )
    for (w, t), done in runs.items():
        complete = [r for r in done if not r["stopped"]]
        print(
            json.dumps(
                {
                    "workers": w,
                    "blas_threads": t,
                    "seconds_median": round(statistics.median(r["seconds"] for r in complete), 2)
                    if complete
                    else None,
                    "runs_stopped_at_max_seconds": len(done) - len(complete),
                    "reproducible": len(complete) > 1
                    and all(r["record"] == complete[0]["record"] for r in complete),
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("overhead", "blas", "both"), default="overhead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--spec",
        type=Path,
        default=SPEC,
        help="the study of the overhead part (studies/mnist5k.toml for the MNIST subset)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["1x1", "1x2", "2x1", "2x2"],
        help="WORKERSxBLAS_THREADS settings of the blas part",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="stop a blas run after this long (a run stopped counts as slower than it)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("overhead", "both"):
            overhead(Path(tmp), args.spec)
        if args.part in ("blas", "both"):
            settings = [tuple(int(v) for v in s.split("x")) for s in args.settings]
            blas(Path(tmp), args.repeats, settings, args.max_seconds)


if __name__ == "__main__":
    main()

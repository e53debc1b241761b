"""The command line: parses arguments and calls the modules that do the work.

Exit codes: 0 success; 2 bad input or a refused action (one line on stderr); 1 an unexpected
fault.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
import warnings

import click
import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError

from tuner import dashboard as dashboard_module
from tuner import export as export_module
from tuner import holdout
from tuner import study as studies
from tuner.data import inspect as data_inspect
from tuner.data import load_training_data
from tuner.errors import TunerError
from tuner.progress import Progress, format_params
from tuner import storage as storage_module
from tuner import workers as run_workers_module
from tuner.spec import MAX_SEED, check_study_name, load_spec
from tuner.storage import (GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, first_line, get_artifact_store, get_storage,
                           resolve_storage_url)

storage_option = click.option(
    "--storage", "storage_url", metavar="URL", default=None,
    help="Database URL; default $TUNER_STORAGE, else sqlite:///tuner.db.")
artifact_option = click.option(
    "--artifact-dir", metavar="DIR", default=None,
    help="Folder of saved model weights; default $TUNER_ARTIFACT_DIR, else the study's folder, else beside the SQLite file.")




def heartbeat_options(command):
    """``--heartbeat-interval`` and ``--grace-period`` for commands that run trials."""
    command = click.option(
        "--grace-period", type=click.IntRange(min=1), default=GRACE_PERIOD_S, show_default=True,
        help="Seconds without a heartbeat after which a running trial is failed and retried.")(command)
    return click.option(
        "--heartbeat-interval", type=click.IntRange(min=1), default=HEARTBEAT_INTERVAL_S, show_default=True,
        help="Seconds between a running trial's heartbeats.")(command)


def output_options(command):
    """``--quiet`` and ``--json-lines`` for commands that run trials."""
    command = click.option("--json-lines", is_flag=True,
                           help="Print one JSON object per finished trial, and nothing else, on stdout.")(command)
    return click.option("--quiet", is_flag=True, help="Print no trial lines and no progress bar.")(command)


@click.group()
@click.version_option(package_name="tuner")
def cli() -> None:
    """tuner: hyperparameter tuning of NumPy BN-MLPs with a locked test evaluation."""
    # tuner prints its own line per trial, failed ones included; Optuna's warnings would add a
    # traceback for every trial stopped by Ctrl-C or SIGTERM.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # Heartbeats, their retry callback and artifacts are experimental in Optuna; we rely on them.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@cli.group()
def study() -> None:
    """Create, run, inspect and finalize studies."""


def _check_name(ctx, param, value):
    if value is not None:
        try:
            check_study_name(value, "--name")
        except TunerError as e:
            raise click.BadParameter(str(e).split(": ", 1)[1]) from None
    return value


def _check_finite(ctx, param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number of seconds, got {value}")
    return value


@study.command()
@click.argument("spec_path", metavar="SPEC")
@storage_option
@artifact_option
@click.option("--name", default=None, callback=_check_name, help="Study name; default the spec's study.name.")
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Study-wide total of complete and pruned trials; default the spec's study.n_trials. "
                   "Recorded on the study for workers that join it.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, callback=_check_finite,
              help="Stop starting new trials after this many seconds.")
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=None,
              help="Seed of the sampler and of each trial's initialization; default the spec's study.seed.")
@click.option("--workers", type=click.IntRange(min=1), default=1,
              help="Worker processes on this host, each with one BLAS thread (SQLite: at most 4).")
@heartbeat_options
@output_options
def start(spec_path, storage_url, artifact_dir, name, n_trials, timeout, seed, workers,
          heartbeat_interval, grace_period, quiet, json_lines) -> None:
    """Create the study of SPEC (or resume it) and run its trials."""
    spec = load_spec(spec_path)
    url = resolve_storage_url(storage_url)
    run_workers_module.check_worker_count(workers, storage_module.is_sqlite(url))
    storage = get_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    name = name or spec.name
    seed = spec.seed if seed is None else seed
    study, data, folder, artifact_store = _create_or_resume(spec, url, storage, artifact_dir, name=name, seed=seed)
    n_trials = studies.total_trials(study, spec.n_trials, n_trials or spec.n_trials)
    mode = _mode(quiet, json_lines)
    if mode == "lines":
        click.echo(f"study {name!r}: {len(data.y_train)} training and {len(data.y_validation)} "
                   f"validation rows, {n_trials} trials in total")
    if workers == 1:
        _run_and_report(study, spec, data, storage, artifact_store, mode, n_trials=n_trials, seed=seed,
                        timeout=timeout)
        return
    # The URL goes through the environment, not argv, so no password shows in process lists.
    worker_args = ["--artifact-dir", str(folder), "--n-trials", str(n_trials),
                   "--seed", str(seed), "--heartbeat-interval", str(heartbeat_interval),
                   "--grace-period", str(grace_period), "--quiet"] + (["--timeout", str(timeout)] if timeout else [])
    progress = Progress(study, n_trials, mode)
    try:
        code = run_workers_module.run_workers(name, workers, worker_args, env={"TUNER_STORAGE": url},
                                              poll=progress.update)
    finally:
        progress.update()
        progress.close()
    if mode == "lines":
        click.echo(f"{workers} workers done: {_format_counts(studies.count_trials(study))}")
        _echo_best(study, spec)
    if code == INTERRUPTED:
        _interrupted(study)
    if code:
        sys.exit(code)


def _create_or_resume(spec, url, storage, artifact_dir, *, name, seed):
    """The study ``name`` of ``spec``, created or resumed, with its training data, artifact
    folder and artifact store (``--artifact-dir``, else the folder the study recorded)."""
    folder = storage_module.artifact_dir(url, artifact_dir, studies.recorded_attr(storage, name, studies.ARTIFACT_DIR_ATTR))
    artifact_store = get_artifact_store(folder, create=True)
    data = load_training_data(spec.data)
    study = studies.create_or_resume(spec, storage, data, name=name, seed=seed, artifact_dir=folder)
    return study, data, folder, artifact_store


@study.command()
@click.argument("spec_path", metavar="SPEC")
@storage_option
@artifact_option
@click.option("--name", default=None, callback=_check_name, help="Study name; default the spec's study.name.")
def create(spec_path, storage_url, artifact_dir, name) -> None:
    """Create the study of SPEC (and the database schema) without running trials.

    Workers then join it with `tuner study worker NAME`. Running it again with the same spec
    and data changes nothing and exits 0; a sealed study, other data or another spec exit 2.
    """
    spec = load_spec(spec_path)
    url = resolve_storage_url(storage_url)
    storage = get_storage(url)
    name = name or spec.name
    existed = studies.recorded_attr(storage, name, studies.FINGERPRINT_ATTR) is not None
    study, data, folder, _store = _create_or_resume(spec, url, storage, artifact_dir, name=name, seed=spec.seed)
    if existed:
        click.echo(f"study {name!r} exists with this spec and data ({_format_counts(studies.count_trials(study))}); "
                   "nothing to do")
        return
    click.echo(f"study {name!r} created in {storage_module.mask_url(url)}: {len(data.y_train)} training and "
               f"{len(data.y_validation)} validation rows, {spec.n_trials} trials to run, artifacts in {folder}; "
               f"run them with `tuner study worker {name}`")


def _run_and_report(study, spec, data, storage, artifact_store, mode, **options) -> None:
    t0 = time.perf_counter()
    progress = Progress(study, options["n_trials"], mode)
    # SIGINT (Ctrl-C) and SIGTERM (a scheduler, `kill`) stop the run: the running trial is
    # marked failed by Optuna, finished trials stay, and `start` resumes later. Both handlers
    # are set here because a process started in the background of a script inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt.
    previous = {s: signal.signal(s, _raise_keyboard_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        studies.run(study, spec, data, storage, artifact_store, on_trial=lambda _study, _trial: progress.update(), **options)
    except KeyboardInterrupt:
        progress.close()
        _interrupted(study)
        sys.exit(INTERRUPTED)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        progress.close()
    if mode != "lines":
        return
    click.echo(f"done in {time.perf_counter() - t0:.1f}s: {_format_counts(studies.count_trials(study))}")
    if holdout.is_sealed(storage, study.study_name):
        click.echo("stopped: the study was sealed by finalize")
    _echo_best(study, spec)


#: Exit code of a run stopped by SIGINT or SIGTERM (128 + SIGINT).
INTERRUPTED = 130


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupted(study) -> None:
    counts = studies.count_trials(study)
    click.echo(f"tuner: interrupted: {counts['COMPLETE'] + counts['PRUNED']} finished trials kept, the running "
               "trial marked failed; run the same command again to resume", err=True)


def _mode(quiet: bool, json_lines: bool) -> str:
    if quiet and json_lines:
        raise click.UsageError("--quiet and --json-lines exclude each other; pick one")
    return "quiet" if quiet else "json" if json_lines else "lines"


def _echo_best(study, spec) -> None:
    try:
        best = study.best_trial
    except ValueError:
        click.echo("no completed trial")
        return
    click.echo(f"best trial {best.number}: validation {spec.metric} {best.value:.4f}  "
               f"{format_params(best.params)}")


@study.command()
@click.argument("name")
@storage_option
@artifact_option
@click.option("--n-trials", type=click.IntRange(min=1), default=None,
              help="Study-wide total of complete and pruned trials, recorded on the study; default the "
                   "total recorded by the latest start or worker --n-trials.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, callback=_check_finite,
              help="Stop starting new trials after this many seconds.")
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=None,
              help="Seed of the sampler; default the study's seed, mixed with the worker index.")
@click.option("--worker-index", type=click.IntRange(min=0), default=None,
              help="Distinguishes the sampler seeds of workers; default the process id.")
@heartbeat_options
@output_options
def worker(name, storage_url, artifact_dir, n_trials, timeout, seed, worker_index,
           heartbeat_interval, grace_period, quiet, json_lines) -> None:
    """Join the existing study NAME (from this or another host) and run its trials."""
    url = resolve_storage_url(storage_url)
    storage = storage_module.get_existing_storage(url, heartbeat_interval=heartbeat_interval,
                                                  grace_period=grace_period)
    study, spec, data = studies.join(storage, name, seed=seed, worker=worker_index)
    folder = storage_module.artifact_dir(url, artifact_dir, study.user_attrs.get(studies.ARTIFACT_DIR_ATTR))
    artifact_store = get_artifact_store(folder, create=True)
    mode = _mode(quiet, json_lines)
    if mode == "lines":
        click.echo(f"worker joined study {name!r}: {len(data.y_train)} training and "
                   f"{len(data.y_validation)} validation rows")
    _run_and_report(study, spec, data, storage, artifact_store, mode,
                    n_trials=studies.total_trials(study, spec.n_trials, n_trials),
                    seed=spec.seed if seed is None else seed, timeout=timeout)


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "no trials"


@study.command("list")
@storage_option
def list_command(storage_url) -> None:
    """A table of the storage's studies: trials by state, best value, sealed."""
    storage = storage_module.get_existing_storage(resolve_storage_url(storage_url))
    rows = studies.overview(storage)
    if not rows:
        click.echo("no studies in this storage; create one with `tuner study start SPEC`")
        return
    import pandas as pd  # imported by the commands that print or write tables only

    click.echo(pd.DataFrame(rows).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))


@study.command()
@click.argument("name")
@storage_option
@click.option("--out", "out_path", metavar="FILE", required=True,
              help="FILE.csv, FILE.parquet or FILE.json: one row per trial.")
@click.option("--intermediate", is_flag=True, help="Add the per-epoch validation scores (epoch_1, ...).")
def export(name, storage_url, out_path, intermediate) -> None:
    """Write the trials of study NAME as a table: params as columns, state, value, duration."""
    storage = storage_module.get_existing_storage(resolve_storage_url(storage_url))
    df = export_module.trials_table(studies.load(storage, name), intermediate=intermediate)
    path = export_module.write_table(df, out_path)
    click.echo(f"wrote {len(df)} trials, {len(df.columns)} columns to {path}")


@study.command()
@click.argument("name")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(name, storage_url, as_json) -> None:
    """Show a study: trials by state, best trial, locked test result."""
    storage = storage_module.get_existing_storage(resolve_storage_url(storage_url))
    info = studies.summary(studies.load(storage, name), storage)
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"study {info['name']} ({info['direction']} {info['metric']})")
    click.echo(f"trials: {_format_counts(info['n_trials'])} (study-wide total {info['total_trials']})")
    if info["best"]:
        b = info["best"]
        click.echo(f"best trial {b['number']}: validation {b['value']:.4f}  {format_params(b['params'])}")
    record = holdout.get_record(storage, name)
    if record is None:
        click.echo("not finalized")
    elif record["completed"]:
        click.echo(f"sealed: {holdout.describe(record)}")
        click.echo(f"validation best {record['validation_value']:.4f} vs test {record['metrics']['accuracy']:.4f}: "
                   f"gap {record['gap']:+.4f} (how optimistic the best validation score was)")
    else:
        click.echo(f"sealed: {holdout.describe(record)}")
    if info["spec"]:
        click.echo("spec (resolved, as it ran):")
        click.echo(json.dumps(info["spec"], indent=2))


@study.command()
@click.argument("name")
@storage_option
@artifact_option
@click.option("--recover", is_flag=True,
              help="Complete a claim whose finalizing process died, with the same weights and split.")
def finalize(name, storage_url, artifact_dir, recover) -> None:
    """Evaluate the best trial on the test split: once, recorded, and the study sealed."""
    url = resolve_storage_url(storage_url)
    storage = storage_module.get_existing_storage(url)
    study = studies.load(storage, name)
    folder = storage_module.artifact_dir(url, artifact_dir, study.user_attrs.get(studies.ARTIFACT_DIR_ATTR))
    record = holdout.finalize(study, storage, get_artifact_store(folder, create=False), recover=recover)
    click.echo(f"study {name!r} finalized and sealed: {holdout.describe(record)}; "
               f"gap (validation - test) {record['gap']:+.4f}")


@study.command()
@click.argument("name")
@storage_option
@click.option("--out", "out_dir", metavar="DIR", required=True, help="Folder for report.html and the PNG files.")
def report(name, storage_url, out_dir) -> None:
    """Write an offline HTML report of study NAME and its figures as PNG files."""
    storage = storage_module.get_existing_storage(resolve_storage_url(storage_url))
    from tuner import report as report_module  # plotting and importance libraries: 0.7 s to import

    written = report_module.write_report(studies.load(storage, name), storage, out_dir)
    for title, note in written.skipped.items():
        click.echo(f"{title}: {note}")
    click.echo(f"wrote {written.html} and {len(written.pngs)} PNG files")


@cli.command("dashboard")
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but a loopback address forces --read-only.")
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8080, show_default=True)
@click.option("--artifact-dir", metavar="DIR", default=None,
              help="Folder of the artifacts; default $TUNER_ARTIFACT_DIR, else each study's recorded folder.")
@click.option("--read-only", is_flag=True,
              help="Refuse every change through the dashboard (delete, rename, tell, notes, uploads).")
def dashboard_command(storage_url, host, port, artifact_dir, read_only) -> None:
    """Serve optuna-dashboard over the study storage and its artifacts."""
    read_only, warning = dashboard_module.resolve_read_only(host, read_only)
    if warning:
        click.echo(f"tuner: warning: {warning}", err=True)
    url = resolve_storage_url(storage_url)
    server = dashboard_module.make_server(url, host=host, port=port, artifact_dir=artifact_dir, read_only=read_only)
    click.echo(f"optuna-dashboard of {storage_module.mask_url(url)} at {dashboard_module.dashboard_url(host, port)}"
               f"{' (read-only)' if read_only else ''}; Ctrl-C stops it")
    dashboard_module.serve_forever(server)


@cli.group()
def data() -> None:
    """Audit a spec's dataset and its split."""


@data.command("inspect")
@click.argument("spec_path", metavar="SPEC")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--split-out", metavar="FILE", default=None,
              help="Write a CSV with columns row (0-based position in the source) and split.")
def inspect_command(spec_path, as_json, split_out) -> None:
    """Rows, features, classes, class counts per split and the fingerprint of SPEC's data."""
    info = data_inspect.inspect_data(load_spec(spec_path).data, split_out=split_out)
    click.echo(json.dumps(info) if as_json else data_inspect.describe(info))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tuner`` command."""
    try:
        cli.main(args=argv, prog_name="tuner", standalone_mode=False)
    except TunerError as e:
        click.echo(f"tuner: error: {e}", err=True)
        sys.exit(2)
    except (sqlalchemy.exc.DBAPIError, StorageInternalError) as e:
        # The database refused: not a database, read-only, unreachable, a value too long.
        click.echo(f"tuner: error: storage: {first_line(e)}; check the --storage URL and that the "
                   "database is reachable and writable", err=True)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("tuner: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"tuner: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    sys.exit(0)

"""The command line: parses arguments and calls the modules that do the work.

Exit codes: 0 success; 2 bad input or a refused action (one line on stderr); 1 an unexpected
fault.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import time
import warnings

import click
import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError

from tuner import dashboard as dashboard_module
from tuner import holdout, schema
from tuner import report as report_module
from tuner import study as studies
from tuner import workers as run_workers_module
from tuner.errors import TunerError
from tuner.export import write_table
from tuner.forecast import describe_forecast
from tuner.note import forecast_beside_test, other_metrics
from tuner.progress import Progress, format_params
from tuner.spec import MAX_SEED, check_study_name
from tuner.storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    first_line,
    is_sqlite,
    lost_connection,
    mask_url,
    resolve_storage_url,
)

storage_option = click.option(
    "--storage",
    "storage_url",
    metavar="URL",
    default=None,
    help="Database URL; default $TUNER_STORAGE, else sqlite:///tuner.db.",
)
artifact_option = click.option(
    "--artifact-dir",
    metavar="DIR",
    default=None,
    help="Folder of saved model weights; default $TUNER_ARTIFACT_DIR, else the study's folder, else beside the SQLite file.",
)


def heartbeat_options(command):
    """``--heartbeat-interval`` and ``--grace-period`` for commands that run trials."""
    command = click.option(
        "--grace-period",
        type=click.IntRange(min=1),
        default=GRACE_PERIOD_S,
        show_default=True,
        help="Seconds without a heartbeat after which a running trial is failed and retried.",
    )(command)
    return click.option(
        "--heartbeat-interval",
        type=click.IntRange(min=1),
        default=HEARTBEAT_INTERVAL_S,
        show_default=True,
        help="Seconds between a running trial's heartbeats.",
    )(command)


def output_options(command):
    """``--quiet`` and ``--json-lines`` for commands that run trials."""
    command = click.option(
        "--json-lines",
        is_flag=True,
        help="Print one JSON object per finished trial, and nothing else, on stdout.",
    )(command)
    return click.option("--quiet", is_flag=True, help="Print no trial lines and no progress bar.")(
        command
    )


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


timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    callback=_check_finite,
    help="Stop starting new trials after this many seconds.",
)


@study.command()
@click.argument("spec_path", metavar="SPEC")
@storage_option
@artifact_option
@click.option(
    "--name", default=None, callback=_check_name, help="Study name; default the spec's study.name."
)
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="Study-wide total of complete and pruned trials; default the spec's study.n_trials. "
    "Recorded on the study for workers that join it.",
)
@timeout_option
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=MAX_SEED),
    default=None,
    help="Seed of the sampler and of each trial's initialization; default the spec's study.seed.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    help="Worker processes on this host, each with one BLAS thread (SQLite: at most 4); "
    "1 runs in this process, also with one BLAS thread.",
)
@heartbeat_options
@output_options
def start(
    spec_path,
    storage_url,
    artifact_dir,
    name,
    n_trials,
    timeout,
    seed,
    workers,
    heartbeat_interval,
    grace_period,
    quiet,
    json_lines,
) -> None:
    """Create the study of SPEC (or resume it) and run its trials."""
    mode = _mode(quiet, json_lines)
    url = resolve_storage_url(storage_url)
    run_workers_module.check_worker_count(workers, is_sqlite(url))
    study = studies.create_study(
        spec_path,
        storage=url,
        name=name,
        seed=seed,
        artifact_dir=artifact_dir,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    nothing = study.nothing_to_run(n_trials)
    if nothing:  # the recorded total is left as it is
        click.echo(f"tuner: {nothing}", err=True)
        return
    n_trials = study.total_trials(n_trials)
    if mode == "lines":
        click.echo(
            f"study {study.name!r}: {study.data.describe_rows()}, {n_trials} trials in total"
        )
    if workers == 1:
        _run_and_report(study, mode, n_trials=n_trials, timeout=timeout)
        return
    progress = Progress(study.optuna_study, n_trials, mode)
    failed_before = study.count_trials()["FAIL"]
    try:
        # The URL goes through the environment, not argv, so no password shows in process lists.
        exits = run_workers_module.run_workers(
            study.name,
            workers,
            storage_url=url,
            artifact_dir=study.artifact_dir,
            n_trials=n_trials,
            seed=study.seed,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            timeout=timeout,
            poll=progress.update,
        )
    finally:
        progress.update()
        progress.close()
    if mode == "lines":
        click.echo(f"{workers} workers done: {_format_counts(study.count_trials())}")
        reason = study.stop_reason()
        if reason:
            click.echo(f"stopped: {reason}")
        _echo_best(study)
    failed = [e for e in exits if e.returncode not in (0, INTERRUPTED)]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        click.echo(
            f"tuner: error: {failed[0].describe()}{more}; the finished trials are kept, run the "
            "same command again to resume",
            err=True,
        )
        sys.exit(1)
    if any(e.returncode == INTERRUPTED for e in exits):
        _interrupted(study, failed_before)
        sys.exit(INTERRUPTED)


@study.command()
@click.argument("spec_path", metavar="SPEC")
@storage_option
@artifact_option
@click.option(
    "--name", default=None, callback=_check_name, help="Study name; default the spec's study.name."
)
def create(spec_path, storage_url, artifact_dir, name) -> None:
    """Create the study of SPEC (and the database schema) without running trials.

    Workers then join it with `tuner study worker NAME`. Running it again with the same spec
    and data changes nothing and exits 0; a sealed study, other data or another spec exit 2.
    """
    url = resolve_storage_url(storage_url)
    study = studies.create_study(
        spec_path, storage=url, name=name, artifact_dir=artifact_dir, heartbeat_interval=None
    )
    if not study.created:
        click.echo(
            f"study {study.name!r} exists with this spec and data "
            f"({_format_counts(study.count_trials())}); nothing to do"
        )
        return
    click.echo(
        f"study {study.name!r} created in {mask_url(url)}: {study.data.describe_rows()}, "
        f"{study.spec.n_trials} trials to "
        f"run, artifacts in {study.artifact_dir}; run them with `tuner study worker {study.name}`"
    )


def _run_and_report(study, mode, *, n_trials, timeout, label=None, quiet_interrupt=False) -> None:
    """Run trials in this process (:meth:`tuner.Study.optimize`), printing each trial it runs
    (prefixed by ``label``) and a summary. SIGINT (Ctrl-C) and SIGTERM stop the run with exit
    code 130 (see :mod:`tuner.interrupt`) and one line on stderr, unless ``quiet_interrupt`` (a
    worker of ``start --workers``, whose parent prints that line)."""
    t0 = time.perf_counter()
    progress = Progress(study.optuna_study, study.total_trials(n_trials), mode, label=label)
    failed_before = study.count_trials()["FAIL"]
    stopped: list[str] = []
    try:
        study.optimize(
            n_trials=n_trials,
            timeout=timeout,
            callbacks=[lambda _study, trial: progress.update(trial)],
            on_notice=lambda message: progress.write(f"tuner: {message}", err=True),
            on_stop=stopped.append,
        )
    except KeyboardInterrupt:
        progress.close()
        if not quiet_interrupt:
            _interrupted(study, failed_before)
        sys.exit(INTERRUPTED)
    finally:
        progress.close()
    if mode != "lines":
        return
    click.echo(f"done in {time.perf_counter() - t0:.1f}s: {_format_counts(study.count_trials())}")
    for reason in stopped:
        click.echo(f"stopped: {reason}")
    _echo_best(study)


#: Exit code of a run stopped by SIGINT or SIGTERM (128 + SIGINT).
INTERRUPTED = 130


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupted(study, failed_before: int) -> None:
    """The one line on stderr after a run was interrupted; ``failed_before``: the study's
    failed trials before the run (the difference is what the interrupt failed)."""
    counts = study.count_trials()
    failed = counts["FAIL"] - failed_before
    running = (
        "no trial was running"
        if failed <= 0
        else "the running trial marked failed"
        if failed == 1
        else f"{failed} running trials marked failed"
    )
    click.echo(
        f"tuner: interrupted: {counts['COMPLETE'] + counts['PRUNED']} finished trials kept, "
        f"{running}; run the same command again to resume",
        err=True,
    )


def _mode(quiet: bool, json_lines: bool) -> str:
    if quiet and json_lines:
        raise click.UsageError("--quiet and --json-lines exclude each other; pick one")
    return "quiet" if quiet else "json" if json_lines else "lines"


def _echo_best(study) -> None:
    try:
        best = study.optuna_study.best_trial
    except ValueError:
        click.echo("no completed trial")
        return
    folds = study.spec.data.folds
    mean = f" (mean of {folds} folds)" if folds else ""
    click.echo(
        f"best trial {best.number}: validation {study.spec.metric} {best.value:.4f}{mean}  "
        f"{format_params(best.params)}"
    )


@study.command()
@click.argument("name")
@storage_option
@artifact_option
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    help="Study-wide total of complete and pruned trials, recorded on the study; default the "
    "total recorded by the latest start or worker --n-trials.",
)
@timeout_option
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=MAX_SEED),
    default=None,
    help="Seed of the sampler (re-seeded for each trial from it and the trial number); "
    "default the study's seed.",
)
@click.option(
    "--worker-index",
    type=click.IntRange(min=0),
    default=None,
    help="The worker's id in its trial lines; default HOST:PID.",
)
@heartbeat_options
@output_options
def worker(
    name,
    storage_url,
    artifact_dir,
    n_trials,
    timeout,
    seed,
    worker_index,
    heartbeat_interval,
    grace_period,
    quiet,
    json_lines,
) -> None:
    """Join the existing study NAME (from this or another host) and run its trials."""
    mode = _mode(quiet, json_lines)
    parent = run_workers_module.parent_pid()
    if parent is not None:  # a worker of `start --workers`: it stops when its parent dies
        run_workers_module.stop_with_parent(parent)
    study = studies.load_study(
        name,
        storage=storage_url,
        artifact_dir=artifact_dir,
        seed=seed,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )
    study.ensure_not_sealed()
    study.data  # noqa: B018  (loaded, and its fingerprint checked, before any trial)
    nothing = study.nothing_to_run(n_trials)
    if nothing:
        click.echo(f"tuner: {nothing}", err=True)
        return
    if mode == "lines":
        click.echo(f"worker joined study {name!r}: {study.data.describe_rows()}")
    who = f"{socket.gethostname()}:{os.getpid()}" if worker_index is None else worker_index
    _run_and_report(
        study,
        mode,
        n_trials=n_trials,
        timeout=timeout,
        label=f"worker {who}",
        quiet_interrupt=parent is not None,
    )


def _load(name: str, storage_url: str | None, **options):
    """The study ``name`` for a command that reads or finalizes it (no heartbeats unless
    given)."""
    options = {"heartbeat_interval": None, "grace_period": None, **options}
    return studies.load_study(name, storage=storage_url, **options)


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "no trials"


@study.command("list")
@storage_option
def list_command(storage_url) -> None:
    """A table of the storage's studies: trials by state, best value, sealed."""
    rows = studies.list_studies(storage_url)
    if not rows:
        click.echo("no studies in this storage; create one with `tuner study start SPEC`")
        return
    import pandas as pd  # imported by the commands that print or write tables only

    click.echo(
        pd.DataFrame(rows).to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}")
    )


@study.command()
@click.argument("name")
@storage_option
@click.option(
    "--out",
    "out_path",
    metavar="FILE",
    required=True,
    help="FILE.csv, FILE.parquet or FILE.json: one row per trial.",
)
@click.option(
    "--intermediate", is_flag=True, help="Add the per-epoch validation scores (epoch_1, ...)."
)
def export(name, storage_url, out_path, intermediate) -> None:
    """Write the trials of study NAME as a table: params as columns, state, value, duration."""
    df = _load(name, storage_url).trials_dataframe(intermediate=intermediate)
    path = write_table(df, out_path)
    click.echo(f"wrote {len(df)} trials, {len(df.columns)} columns to {path}")


@study.command()
@click.argument("name")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show(name, storage_url, as_json) -> None:
    """Show a study: trials by state, best trial, locked test result."""
    study = _load(name, storage_url)
    info = study.summary()
    if as_json:
        click.echo(json.dumps(info))
        return
    if info["spec"] is None:
        click.echo(f"study {info['name']} ({info['direction']})")
        click.echo(f"no recorded spec: {schema.NOT_RECORDED} (`tuner study start SPEC`)")
    else:
        click.echo(f"study {info['name']} ({info['direction']} {info['metric']})")
    click.echo(
        f"trials: {_format_counts(info['n_trials'])} (study-wide total {info['total_trials']})"
    )
    if info["best"]:
        b = info["best"]
        folds = (info["spec"] or {}).get("data", {}).get("folds")
        mean = f" (mean of {folds} folds)" if folds else ""
        click.echo(
            f"best trial {b['number']}: validation {b['value']:.4f}{mean}  "
            f"{format_params(b['params'])}"
        )
    record = holdout.get_record(study.storage, name)
    if record is None or not record["completed"]:
        click.echo(
            f"forecast of the best trial's test {(info['metric'] or 'score').replace('_', ' ')}: "
            f"{describe_forecast(info['forecast'])}"
        )
    if record is None:
        click.echo("not finalized")
    elif record["completed"]:
        click.echo(f"sealed: {holdout.describe(record)}")
        click.echo(forecast_beside_test(record))
        click.echo(f"test: {other_metrics(record)}")
    else:
        click.echo(f"sealed: {holdout.describe(record)}")
    if info["spec"]:
        click.echo("spec (resolved, as it ran):")
        click.echo(json.dumps(info["spec"], indent=2))


@study.command()
@click.argument("name")
@storage_option
@artifact_option
@click.option(
    "--recover",
    is_flag=True,
    help="Complete a claim whose finalizing process died, with the same weights and split.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Stop new trials, let the running ones finish, then evaluate the best trial.",
)
@click.option(
    "--reuse-test",
    is_flag=True,
    help="Evaluate test rows that another study in this storage already evaluated; the extra "
    "look is counted and the interval widened.",
)
def finalize(name, storage_url, artifact_dir, recover, wait, reuse_test) -> None:
    """Evaluate the best trial on the test split: once, recorded, and the study sealed."""
    # Heartbeat settings as the workers', so that trials of killed workers are failed, not
    # waited for.
    study = _load(
        name,
        storage_url,
        artifact_dir=artifact_dir,
        heartbeat_interval=HEARTBEAT_INTERVAL_S,
        grace_period=GRACE_PERIOD_S,
    )

    def on_wait(running: list[int]) -> None:
        click.echo(
            f"waiting for {len(running)} running trial{'s' if len(running) > 1 else ''} "
            f"({', '.join(map(str, running))}); no new trials start",
            err=True,
        )

    # SIGTERM as Ctrl-C: a claim made but not yet evaluated is then released.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        record = study.finalize(
            recover=recover,
            reuse_test=reuse_test,
            wait=wait,
            on_wait=on_wait,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(f"study {name!r} finalized and sealed: {holdout.describe(record)}")
    click.echo(forecast_beside_test(record))


@study.command()
@click.argument("name")
@storage_option
@click.option(
    "--out",
    "out_dir",
    metavar="DIR",
    required=True,
    help="Folder for report.html and the PNG files.",
)
def report(name, storage_url, out_dir) -> None:
    """Write an offline HTML report of study NAME and its figures as PNG files."""
    study = _load(name, storage_url)
    written = report_module.write_report(study.optuna_study, study.storage, out_dir)
    for title, note in written.skipped.items():
        click.echo(f"{title}: {note}")
    click.echo(f"wrote {written.html} and {len(written.pngs)} PNG files")


@cli.command("dashboard")
@storage_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but a loopback address forces --read-only.",
)
@click.option("--port", type=click.IntRange(min=1, max=65535), default=8080, show_default=True)
@click.option(
    "--artifact-dir",
    metavar="DIR",
    default=None,
    help="Folder of the artifacts; default $TUNER_ARTIFACT_DIR, else each study's recorded folder.",
)
@click.option(
    "--read-only",
    is_flag=True,
    help="Refuse every change through the dashboard (delete, rename, tell, notes, uploads).",
)
def dashboard_command(storage_url, host, port, artifact_dir, read_only) -> None:
    """Serve optuna-dashboard over the study storage and its artifacts."""
    read_only, warning = dashboard_module.resolve_read_only(host, read_only)
    if warning:
        click.echo(f"tuner: warning: {warning}", err=True)
    url = resolve_storage_url(storage_url)
    server = dashboard_module.make_server(
        url, host=host, port=port, artifact_dir=artifact_dir, read_only=read_only
    )
    click.echo(
        f"optuna-dashboard of {mask_url(url)} at {dashboard_module.dashboard_url(host, port)}"
        f"{' (read-only)' if read_only else ''}; Ctrl-C stops it"
    )
    dashboard_module.serve_forever(server)


@cli.group()
def data() -> None:
    """Audit a spec's dataset and its split."""


@data.command("inspect")
@click.argument("spec_path", metavar="SPEC")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--split-out",
    metavar="FILE",
    default=None,
    help="Write a CSV with columns row (0-based position in the source) and split.",
)
def inspect_command(spec_path, as_json, split_out) -> None:
    """Rows, features, classes, class counts per split and the fingerprint of SPEC's data."""
    info = studies.inspect_data(spec_path, split_out=split_out)
    click.echo(json.dumps(info) if as_json else studies.describe_data(info))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``tuner`` command."""
    try:
        cli.main(args=argv, prog_name="tuner", standalone_mode=False)
    except TunerError as e:
        click.echo(f"tuner: error: {e}", err=True)
        sys.exit(2)
    except (sqlalchemy.exc.DBAPIError, StorageInternalError) as e:
        # The database refused: not a database, read-only, unreachable, a value too long.
        click.echo(
            f"tuner: error: storage: {first_line(lost_connection(e) or e)}; check the --storage "
            "URL and that the database is reachable and writable",
            err=True,
        )
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

"""The study report: one HTML file that works offline, and the same figures as PNG files.

The HTML holds plotly figures (plotly.js embedded once, no CDN): the optimization history,
parameter importances, parallel coordinates and slice plots from ``optuna.visualization``,
the learning curves of the top trials, activation histograms at initialization per
initializer, and the locked test result with its interval. The PNGs are drawn with
matplotlib (``optuna.visualization.matplotlib`` and :mod:`tuner.plots`) from the same data:
plotly's own PNG export (kaleido) needs a Chrome of its own at run time.
"""

from __future__ import annotations

import html
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from tuner import holdout, schema
from tuner.data import load_training_data
from tuner.errors import TunerError
from tuner.forecast import describe_forecast, study_forecast
from tuner.nn import MLP, activation_statistics
from tuner.note import forecast_beside_test, other_metrics, validation_gap
from tuner.objective import HISTOGRAM_BINS, histogram_rows
from tuner.plots import (
    count_limit,
    draw_activation_histograms,
    draw_learning_curves,
    draw_test_result,
    layer_value_limits,
)
from tuner.search import suggest
from tuner.spec import parse_recorded_spec
from tuner.study import count_trials

REPORT_FILE = "report.html"
#: Learning curves drawn for this many best completed trials.
TOP_TRIALS = 5
#: Parameter importances compare trials: with fewer completed ones they say nothing.
MIN_TRIALS_FOR_IMPORTANCES = 2
PNG_NOTE = (
    "PNG files beside this report are drawn with matplotlib (optuna.visualization.matplotlib "
    "and tuner.plots) from the same data as these figures; plotly's own PNG export (kaleido) "
    "is not used because it needs a Chrome of its own at run time."
)


@dataclass
class Section:
    """One part of the report: a title, a plotly figure (or None), its PNG file name (or None)
    and a note shown when the figure could not be drawn or needs a caption."""

    title: str
    figure: Any | None = None  # a plotly Figure (plotly ships no type information)
    png: str | None = None
    note: str = ""


@dataclass
class Report:
    """What :func:`write_report` wrote: the HTML file, the PNG files and the notes of figures
    that could not be drawn."""

    html: Path
    pngs: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _once_evaluator():
    """Optuna's default importance evaluator, evaluated once for the plotly and the matplotlib
    figure (a second evaluation would double the report's slowest step)."""
    # optuna.importance imports scikit-learn's ensembles (about 1 s): only a report needs it,
    # so that importing this module (the CLI does) stays cheap.
    import optuna.importance

    class OnceEvaluator(optuna.importance.BaseImportanceEvaluator):
        def __init__(self) -> None:
            self._inner = optuna.importance.PedAnovaImportanceEvaluator()
            self._cache: dict | None = None

        def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
            if self._cache is None:
                self._cache = self._inner.evaluate(study, params, target=target)
            return self._cache

    return OnceEvaluator()


def _first_line(error: object) -> str:
    """The first line of an exception's or a warning's text, else the name of its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _save_matplotlib(axes, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = np.atleast_1d(axes).flat[0].figure
    fig.savefig(path, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)


def _optuna_sections(study: optuna.Study, out: Path) -> list[Section]:
    import matplotlib
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    evaluator = _once_evaluator()
    # Title, PNG stem, plotly and matplotlib functions, options, completed trials needed.
    plots: list[tuple[str, str, Callable[..., Any], Callable[..., Any], dict[str, Any], int]] = [
        (
            "Optimization history",
            "optimization_history",
            vis.plot_optimization_history,
            vis_mpl.plot_optimization_history,
            {},
            1,
        ),
        (
            "Parameter importances",
            "param_importances",
            vis.plot_param_importances,
            vis_mpl.plot_param_importances,
            {"evaluator": evaluator},
            MIN_TRIALS_FOR_IMPORTANCES,
        ),
        (
            "Parallel coordinates",
            "parallel_coordinate",
            vis.plot_parallel_coordinate,
            vis_mpl.plot_parallel_coordinate,
            {},
            1,
        ),
        ("Slice plots", "slice", vis.plot_slice, vis_mpl.plot_slice, {}, 1),
    ]
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    sections = []
    for title, stem, plot, plot_mpl, kwargs, needed in plots:
        if n_complete < needed:
            sections.append(
                Section(
                    title,
                    note=f"not drawn: needs at least {needed} completed "
                    f"trial{'s' if needed > 1 else ''}, the study has {n_complete}",
                )
            )
            continue
        try:
            with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context():
                # rc_context: optuna's matplotlib plots switch the global style to ggplot.
                warnings.simplefilter("always")
                figure = plot(study, **kwargs)
                _save_matplotlib(plot_mpl(study, **kwargs), out / f"{stem}.png")
        except Exception as e:  # noqa: BLE001 - a figure Optuna cannot draw must not sink the report
            # Importances need >= 2 completed trials with varying values and parameters.
            sections.append(Section(title, note=f"not drawn: {_first_line(e)}"))
            continue
        if stem == "slice":
            figure.update_layout(width=None)  # Optuna sets a minimum width wider than the page
        # Optuna's own warnings (e.g. too few trials for importances) belong with the figure.
        notes = sorted(
            {
                _first_line(w.message)
                for w in caught
                if "optuna" in w.filename
                and "matplotlib" not in w.filename
                and not issubclass(w.category, optuna.exceptions.ExperimentalWarning)
            }
        )
        sections.append(
            Section(title, figure, f"{stem}.png", note=" ".join(f"Optuna: {n}" for n in notes))
        )
    return sections


def _learning_curve_section(study: optuna.Study, out: Path) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    title = "Learning curves of the best trials"
    metric = schema.study_metric(study)
    complete = [
        (t, curve)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (curve := schema.learning_curves(t, metric))
    ]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    top = sorted(complete, key=lambda tc: float(tc[0].value or 0.0), reverse=reverse)[:TOP_TRIALS]
    if not top:
        return Section(
            title,
            note=f"no completed trial with the user attributes {schema.TRAINING_LOSS_ATTR!r} "
            f"and {schema.validation_curve_attr(metric)!r}",
        )
    curves = {f"trial {t.number} ({t.value:.4f})": curve for t, curve in top}
    figure = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("training loss (nats)", f"validation {metric.replace('_', ' ')}"),
    )
    for i, (label, (losses, scores)) in enumerate(curves.items()):
        color = f"hsl({i * 360 // len(curves)},60%,45%)"
        for col, ys in ((1, losses), (2, scores)):
            figure.add_trace(
                go.Scatter(
                    x=list(range(1, len(ys) + 1)),
                    y=ys,
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=col == 2,
                    line={"color": color},
                ),
                row=1,
                col=col,
            )
    figure.update_xaxes(
        title_text="epoch", dtick=1 if max(len(c[0]) for c in curves.values()) <= 15 else None
    )
    figure.update_layout(height=380)
    draw_learning_curves(
        curves,
        out / "learning_curves.png",
        title=f"the {len(top)} best completed trials",
        metric=metric,
    )
    return Section(
        title,
        figure,
        "learning_curves.png",
        note=f"the {len(top)} best completed trials (of at most {TOP_TRIALS}), validation "
        f"{metric.replace('_', ' ')} in brackets",
    )


def _reference_hyperparameters(study: optuna.Study, spec) -> tuple[int, dict] | None:
    """The number and hyperparameters (as :func:`tuner.search.suggest` gave them) of the trial
    whose architecture the histogram models take: the best completed trial, else the first
    finished one; None if no trial finished."""

    try:
        reference = study.best_trial
    except ValueError:
        finished = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if not finished:
            return None
        reference = finished[0]
    # FixedTrial replays the trial's suggestions; fixed values come from the spec, as they did.
    return reference.number, suggest(optuna.trial.FixedTrial(reference.params), spec.search)


def _initializers(spec) -> list[str]:
    p = spec.search["initializer"]
    return [str(p.value)] if p.kind == "fixed" else [str(c) for c in p.choices]


def _histogram_figure(stats_by_init: dict[str, list[dict]]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n_cols = max(len(s) for s in stats_by_init.values())
    titles = [
        f"{init}, layer {layer['layer']}: std {layer['std']:.3g}, "
        f"{100 * layer['saturated_fraction']:.0f}% saturated"
        for init, stats in stats_by_init.items()
        for layer in stats
    ]
    figure = make_subplots(
        rows=len(stats_by_init),
        cols=n_cols,
        subplot_titles=titles,
        shared_xaxes="columns",
        vertical_spacing=0.12 if len(stats_by_init) < 5 else 0.06,
    )
    for row, stats in enumerate(stats_by_init.values(), start=1):
        for layer in stats:
            edges = np.asarray(layer["histogram"]["edges"])
            figure.add_trace(
                go.Bar(
                    x=(edges[:-1] + edges[1:]) / 2,
                    y=layer["histogram"]["counts"],
                    width=np.diff(edges),
                    showlegend=False,
                    marker={"color": "#1f77b4"},
                ),
                row=row,
                col=layer["layer"],
            )
            top = count_limit(layer["histogram"]["counts"])
            if top is not None:
                figure.update_yaxes(range=[0, top], row=row, col=layer["layer"])
    for col, limits in enumerate(layer_value_limits(stats_by_init), start=1):
        if limits is not None:
            figure.update_xaxes(range=list(limits), col=col)
    figure.update_annotations(font_size=10)
    figure.update_layout(height=170 * len(stats_by_init) + 60, bargap=0, margin={"t": 40})
    return figure


def _activation_sections(study: optuna.Study, out: Path) -> list[Section]:
    title = "Activation histograms at initialization, per initializer"
    resolved = schema.recorded_spec(study)
    if not resolved:
        return [Section(title, note="the study has no recorded spec")]
    spec = parse_recorded_spec(resolved)
    try:
        # Training rows only: the report never opens the test split.
        data = load_training_data(spec.data)
    except TunerError as e:
        return [Section(title, note=f"not drawn: the study's training data cannot be loaded: {e}")]
    reference = _reference_hyperparameters(study, spec)
    if reference is None:
        return [Section(title, note="no finished trial yet: no architecture to draw")]
    number, hp = reference
    X = histogram_rows(data.X_train, spec.seed)
    batchnorm_on = spec.model["batchnorm"]
    variants = [(batchnorm_on, "the study's model", "the study's model", "activations_at_init.png")]
    if batchnorm_on:
        variants.append(
            (
                False,
                "the same model without BatchNorm, for contrast",
                "without BatchNorm",
                "activations_at_init_no_batchnorm.png",
            )
        )
    sections = []
    for batchnorm, what, short, png in variants:
        stats_by_init = {
            init: activation_statistics(
                MLP(
                    data.n_features,
                    hp["widths"],
                    len(data.classes),
                    activation=hp["activation"],
                    initializer=init,
                    batchnorm=batchnorm,
                    seed=spec.seed,
                ),
                X,
                bins=HISTOGRAM_BINS,
            )
            for init in _initializers(spec)
        }
        caption = (
            f"{what}: the architecture of trial {number} (hidden widths {hp['widths']}, {hp['activation']}), "
            f"{'BatchNorm' if batchnorm else 'no BatchNorm'}; seed {spec.seed}; {X.shape[0]} training "
            "rows; one row per initializer, one column per hidden layer"
        )
        draw_activation_histograms(stats_by_init, out / png, title=f"at initialization, {short}")
        sections.append(
            Section(f"{title}: {what}", _histogram_figure(stats_by_init), png, note=caption)
        )
    return sections


def _test_section(study: optuna.Study, storage, out: Path) -> Section:
    import plotly.graph_objects as go

    title = "Locked test evaluation"
    record = holdout.get_record(storage, study.study_name)
    if record is None:
        return Section(
            title,
            note=f"not finalized: the test split has not been evaluated; run "
            f"`tuner study finalize {study.study_name}` once tuning is over. Forecast of the "
            f"best trial's test {schema.study_metric(study).replace('_', ' ')}: "
            f"{describe_forecast(study_forecast(study))}",
        )
    if not record["completed"]:
        return Section(title, note=holdout.describe(record))
    m = record["metrics"]
    low, high = m["accuracy_ci95"]
    text = (
        f"test accuracy {m['accuracy']:.4f} (95% Wilson interval {low:.4f} to {high:.4f}, "
        f"n = {record['n_test']}), {other_metrics(record)}; trial "
        f"{record['trial_number']}, {validation_gap(record)}; recorded "
        f"{record['completed_at']}"
    )
    if record.get("test_evaluations"):  # absent from records copied from older versions
        text += "; " + holdout.evaluations_note(
            record["test_evaluations"], record["accuracy_ci_simultaneous"]
        )
    text += "; " + forecast_beside_test(record)
    is_accuracy = record.get("metric", "accuracy") == "accuracy"
    validation = (
        record["validation_value"]
        if is_accuracy
        else _validation_accuracy(study, record["trial_number"])
    )
    forecast = record.get("forecast") or {}
    points = [_point("test", "test accuracy", "circle", m["accuracy"], (low, high))]
    if validation is not None:  # the x axis is accuracy: the trial's validation accuracy
        points.append(
            _point(
                "validation", f"validation (trial {record['trial_number']})", "diamond", validation
            )
        )
    if is_accuracy and forecast.get("value") is not None:
        points.insert(
            0,
            _point(
                "forecast",
                "forecast without the test split (BBC-CV)",
                "square",
                forecast["value"],
                forecast["ci95"],
            ),
        )
    figure = go.Figure(points)
    figure.update_layout(
        height=230, xaxis_title="accuracy", title_text="test accuracy with its 95% Wilson interval"
    )
    draw_test_result(
        m["accuracy"],
        (low, high),
        validation,
        out / "test_result.png",
        trial_number=record["trial_number"],
    )
    return Section(title, figure, "test_result.png", note=text)


def _point(row: str, name: str, symbol: str, x: float, interval=None):
    """One marker of the test section's figure at ``x`` on row ``row``, with an asymmetric
    error bar over ``interval`` (low, high) if given."""
    import plotly.graph_objects as go

    error = None
    if interval is not None:
        low, high = interval
        error = {"type": "data", "symmetric": False, "array": [high - x], "arrayminus": [x - low]}
    return go.Scatter(
        x=[x],
        y=[row],
        mode="markers",
        marker={"size": 12, "symbol": symbol},
        name=name,
        error_x=error,
    )


def _validation_accuracy(study: optuna.Study, trial_number: int) -> float | None:
    """The validation accuracy of trial ``trial_number`` from its stored validation predictions
    (for a study whose metric is not accuracy), or None if it stored none."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    stored, labels = schema.validation_predictions(trial), schema.validation_labels(study)
    if stored is None or labels is None:
        return None
    return float(np.mean(stored[0] == labels[0]))


def _header(study: optuna.Study, storage) -> str:
    counts = (
        ", ".join(f"{n} {s.lower()}" for s, n in count_trials(study).items() if n) or "no trials"
    )
    spec = schema.recorded_spec(study) or {}
    try:
        b = study.best_trial
        best = (
            f"trial {b.number}, validation {spec.get('study', {}).get('metric', 'value')} {b.value:.4f}: "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.params.items()
            )
        )
    except ValueError:
        best = "none (no completed trial)"
    rows = [
        ("trials", counts),
        ("best", best),
        ("dataset", str(spec.get("data", {}).get("source"))),
        ("rows", schema.describe_rows(study)),
        ("data fingerprint (SHA-256)", str(schema.data_fingerprint(study))),
        ("sealed", "yes" if holdout.is_sealed(storage, study.study_name) else "no"),
    ]
    return (
        "<table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def write_report(study: optuna.Study, storage, out: Path) -> Report:
    """Write ``out/report.html`` and the PNG files of its figures for ``study``.

    The HTML embeds plotly.js once and loads nothing from the network. A figure that cannot
    be drawn (parameter importances need at least two completed trials whose values and
    parameters vary; no trial has learning curves; the training data is gone) is replaced by a
    note saying why, rather than failing the report.

    Args:
        study: the study, with its recorded spec.
        storage: its RDB storage (for the locked test record).
        out: the output folder, created if missing.

    Returns:
        The :class:`Report`: paths written and the notes of skipped figures.

    Raises:
        TunerError: ``out`` is a file or cannot be created.
    """
    import plotly.offline

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TunerError(f"--out {str(out)!r} is a file; pass a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TunerError(
            f"--out {str(out)!r} cannot be created: {e.strerror}; pass another folder"
        ) from None
    import matplotlib

    matplotlib.use("Agg")  # optuna.visualization.matplotlib draws through pyplot; no display here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sections = [
            _test_section(study, storage, out),
            *_optuna_sections(study, out),
            _learning_curve_section(study, out),
            *_activation_sections(study, out),
        ]

    name = html.escape(study.study_name)
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'>",
        "<head>",
        "<meta charset='utf-8'>",
        f"<title>tuner report: {name}</title>",
        "<style>body{font-family:sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}"
        "th{text-align:left;padding-right:1em;vertical-align:top}td{font-family:monospace}"
        "section{margin-top:2em}.note{color:#555}</style>",
        # plotly.js once, inline: the report works offline and with no CDN.
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>",
        "</head>",
        "<body>",
        f"<h1>Study <span id='study-name'>{name}</span></h1>",
        _header(study, storage),
    ]
    report = Report(out / REPORT_FILE)
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        if s.note:
            parts.append(f"<p class='note'>{html.escape(s.note)}</p>")
        if s.figure is not None:
            parts.append(
                s.figure.to_html(
                    full_html=False, include_plotlyjs=False, config={"displaylogo": False}
                )
            )
        else:
            report.skipped[s.title] = s.note
        if s.png:
            report.pngs.append(out / s.png)
            parts.append(f"<p><a href='{html.escape(s.png)}'>{html.escape(s.png)}</a></p>")
        parts.append("</section>")
    spec = schema.recorded_spec(study)
    parts += [
        "<section><h2>Spec</h2><pre>",
        html.escape(json.dumps(spec, indent=2)),
        "</pre></section>",
        f"<p class='note'>{html.escape(PNG_NOTE)}</p>",
        "</body>",
        "</html>",
    ]
    report.html.write_text("\n".join(parts), encoding="utf-8")
    return report

"""PNG figures drawn with matplotlib (Agg, no display): learning curves and activation
histograms at initialization.

One drawing per picture, used both for a trial's artifacts (one curve, one initializer) and
for the report (the top trials, every initializer). Figures are small and drawn once per
finished trial, so that a study's trials stay fast. matplotlib is imported on first use:
commands that draw nothing do not pay for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

#: Dots per inch of every PNG: small files, quick to draw, still legible in the dashboard.
DPI = 80
#: Learning curves of at most this many epochs get a dot per epoch.
MARKED_EPOCHS = 15
#: Ticks per axis of a learning curve, at most.
TICKS = 5
#: A histogram's tallest bin is clipped at this multiple of the next tallest.
SPIKE_CLIP = 2.0


def _figure(width_in: float, height_in: float):
    # A Figure with its own Agg canvas, not pyplot: no global state, nothing to close, safe
    # in a worker thread.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _margins(
    fig, *, left_in: float, bottom_in: float, top_in: float, wspace: float, hspace: float
) -> None:
    # Fixed margins in inches: matplotlib's automatic layouts double the drawing time.
    w, h = fig.get_size_inches()
    fig.subplots_adjust(
        left=left_in / w,
        right=1 - 0.1 / w,
        bottom=bottom_in / h,
        top=1 - top_in / h,
        wspace=wspace,
        hspace=hspace,
    )


def draw_learning_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str = "",
    metric: str = "accuracy",
) -> Path:
    """Write a PNG of training loss and the validation ``metric`` per epoch, one line per curve.

    Args:
        curves: label -> (training loss per epoch (mean softmax cross-entropy, nats),
            validation value of ``metric`` per epoch (a fraction; log loss in nats)); epoch
            ``i + 1`` at index ``i``. A curve may be shorter than the others (pruned trials).
        path: the PNG file to write.
        title: the figure's title.
        metric: the study's metric (``study.metric``), for the axis label.

    Returns:
        ``path``.
    """
    fig = _figure(6.4, 2.6)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for label, (losses, accuracies) in curves.items():
        # A dot per epoch only where epochs can be told apart: the markers of 30 epochs took
        # a quarter of the figure's drawing time.
        marker = "." if max(len(losses), len(accuracies)) <= MARKED_EPOCHS else None
        loss_ax.plot(range(1, len(losses) + 1), losses, marker=marker, label=label)
        acc_ax.plot(range(1, len(accuracies) + 1), accuracies, marker=marker, label=label)
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, acc_ax):
        # At most TICKS ticks per axis: each tick is several artists, drawn every time.
        ax.xaxis.set_major_locator(MaxNLocator(TICKS, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(TICKS))
        ax.tick_params(labelsize="small")
    loss_ax.set_xlabel("epoch", fontsize="small")
    loss_ax.set_ylabel("training loss (nats)", fontsize="small")
    acc_ax.set_xlabel("epoch", fontsize="small")
    acc_ax.set_ylabel(f"validation {metric.replace('_', ' ')}", fontsize="small")
    _margins(fig, left_in=0.6, bottom_in=0.45, top_in=0.35 if title else 0.1, wspace=0.3, hspace=0)
    if len(curves) > 1:
        acc_ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.savefig(path, format="png")
    return Path(path)


def draw_activation_histograms(
    stats_by_label: Mapping[str, Sequence[dict]], path: Path, *, title: str = ""
) -> Path:
    """Write a PNG of activation histograms: one row per label (e.g. initializer), one column
    per hidden layer, as in Saito, "Deep Learning from Scratch", figures 6-10 to 6-14.

    Args:
        stats_by_label: label -> the per-layer statistics of
            :func:`tuner.nn.activation_statistics` (``layer``, ``std``,
            ``saturated_fraction``, ``histogram`` with ``counts`` and ``edges``).
        path: the PNG file to write.
        title: the figure's title.

    Returns:
        ``path``.
    """
    n_rows = max(len(stats_by_label), 1)
    n_cols = max((len(s) for s in stats_by_label.values()), default=1) or 1
    fig = _figure(2.2 * n_cols + 0.4, 1.4 * n_rows + 0.5)
    # Rows share each layer's x range, so that a collapsed initializer shows as a spike at 0.
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex="col")
    from matplotlib.ticker import MaxNLocator

    for row, (label, stats) in enumerate(stats_by_label.items()):
        for col in range(n_cols):
            ax = axes[row][col]
            if col >= len(stats):
                ax.set_axis_off()
                continue
            layer = stats[col]
            counts, edges = layer["histogram"]["counts"], layer["histogram"]["edges"]
            # One filled step artist, not a bar per bin: 50 Rectangle patches per axes
            # made the figure several times slower to draw.
            ax.stairs(counts, edges, fill=True)
            top = count_limit(counts)
            if top is not None:
                ax.set_ylim(0, top)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            ax.set_title(
                f"layer {layer['layer']}: std {layer['std']:.3g}, "
                f"{100 * layer['saturated_fraction']:.0f}% sat.",
                fontsize="x-small",
            )
            ax.tick_params(labelsize="x-small")
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize="small")
    for col, limits in enumerate(layer_value_limits(stats_by_label)):
        if limits is not None:
            axes[0][col].set_xlim(*limits)
    _margins(
        fig, left_in=0.35, bottom_in=0.3, top_in=0.5 if title else 0.25, wspace=0.08, hspace=0.6
    )
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.savefig(path, format="png")
    return Path(path)


def draw_test_result(
    accuracy: float,
    interval: tuple[float, float],
    validation_value: float | None,
    path: Path,
    *,
    trial_number: int,
) -> Path:
    """Write a PNG of the locked test accuracy with its interval (e.g. the 95% Wilson
    interval) beside the validation accuracy of the same trial (if not None); accuracies are
    fractions.

    Returns:
        ``path``.
    """
    low, high = interval
    fig = _figure(5.0, 1.5)
    ax = fig.subplots()
    ax.errorbar([accuracy], [1], xerr=[[accuracy - low], [high - accuracy]], fmt="o", capsize=4)
    if validation_value is not None:
        ax.plot([validation_value], [0], "D")
    ax.set_yticks(
        [0, 1], [f"validation (trial {trial_number})", "test, 95% interval"], fontsize="small"
    )
    ax.set_ylim(-0.6, 1.6)
    ax.tick_params(labelsize="small")
    ax.set_xlabel("accuracy", fontsize="small")
    _margins(fig, left_in=1.5, bottom_in=0.45, top_in=0.1, wspace=0, hspace=0)
    fig.savefig(path, format="png")
    return Path(path)


def count_limit(counts: Sequence[int]) -> float | None:
    """The y-axis top of a histogram whose tallest bin dwarfs the rest (ReLU's zeros, or a
    saturated tail): :data:`SPIKE_CLIP` times the next tallest; None if no clipping is needed.
    The spike's share is shown in the panel's title."""
    ordered = sorted(counts)
    rest = ordered[-2] if len(ordered) > 1 else 0
    return SPIKE_CLIP * rest if rest and ordered[-1] > SPIKE_CLIP * rest else None


def layer_value_limits(
    stats_by_label: Mapping[str, Sequence[dict]],
) -> list[tuple[float, float] | None]:
    """Per hidden layer, the x-axis range shared by all labels: from the lowest value to the
    99th percentile of the widest label (a few extreme values would otherwise squeeze every
    histogram to the left). None for a layer without spread."""
    n_cols = max((len(s) for s in stats_by_label.values()), default=0)
    limits = []
    for col in range(n_cols):
        histograms = [
            stats[col]["histogram"] for stats in stats_by_label.values() if col < len(stats)
        ]
        low = min(h["edges"][0] for h in histograms)
        high = max(_quantile(h, 0.99) for h in histograms)
        limits.append((low, high) if high > low else None)
    return limits


def _quantile(histogram: dict, q: float) -> float:
    """Upper edge of the bin where the cumulative count first reaches fraction ``q``."""
    counts, edges = histogram["counts"], histogram["edges"]
    target, total = q * sum(counts), 0
    for count, high in zip(counts, edges[1:], strict=True):
        total += count
        if total >= target:
            return high
    return edges[-1]

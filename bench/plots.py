"""The report's figures, drawn from series that `bench.report` prepares.

Three kinds of figure, each written as a PNG of a fixed pixel size:

- a timeline per scenario: one column per variant on a shared time axis (seconds
  from the load start), rows for user-facing throughput by outcome, user-facing
  latency, end-to-end completions, end-to-end lag, and the state that explains the
  behaviour (the breaker, the JetStream backlog);
- a latency-percentile plot per scenario, in the style of an HDR histogram plot;
- the matrix: availability during the fault, silently lost, duplicates and time to
  recover, for every scenario and variant.

Each variant has one colour (`VARIANT_COLOURS`, from the Okabe-Ito palette, which
stays distinguishable with the common colour-vision deficiencies), used the same way
in every figure. Nothing here reads a run folder or computes a figure of the run.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

from bench.records import BREAKER_STATE_CODES, EventKind, Outcome
from bench.stack import Variant

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

DPI = 100
TIMELINE_SIZE_IN = (14.0, 9.0)
PERCENTILE_SIZE_IN = (12.0, 5.0)
MATRIX_SIZE_IN = (12.0, 8.0)
FONT_SIZE = 9

VARIANT_COLOURS: Mapping[Variant, str] = {
    Variant.SYNC_PLAIN: "#E69F00",  # orange
    Variant.SYNC_BREAKER: "#CC79A7",  # reddish purple
    Variant.QUEUE_CORE: "#56B4E9",  # sky blue
    Variant.QUEUE_JETSTREAM: "#009E73",  # bluish green
}
# Outcome colours avoid the four variant colours. Breaker-open is the yellow that
# also marks the open breaker in the state row, so the two read together.
OUTCOME_COLOURS: Mapping[Outcome, str] = {
    Outcome.ACCEPTED: "#0072B2",
    Outcome.BREAKER_OPEN: "#F0E442",
    Outcome.TIMEOUT: "#D55E00",
    Outcome.REFUSED: "#222222",
    Outcome.SERVER_ERROR: "#882255",
    Outcome.CLIENT_ERROR: "#999933",
    Outcome.DROPPED: "#AAAAAA",
}
BREAKER_STATE_COLOURS: Mapping[int, str] = {
    BREAKER_STATE_CODES["closed"]: "#D8D8D8",
    BREAKER_STATE_CODES["half-open"]: "#7A7A7A",
    BREAKER_STATE_CODES["open"]: OUTCOME_COLOURS[Outcome.BREAKER_OPEN],
}
FAULT_COLOUR = "#EE6677"
ACTUAL_FAULT_LINE = "#A50026"
FLAG_COLOUR = "#C00000"
LineStyle = Literal["-", "--", ":"]
PLANNED_STYLE: Final = ":"
ACTUAL_STYLE: Final = "-"

# Seconds-from-load-start ticks every this many seconds on the timelines.
TIME_TICK_S = 5
THOUSANDS = FuncFormatter(lambda value, _: f"{value:,.0f}")
LOG_TICK_DETAIL_RANGE = 1_000.0  # up to three decades: ticks at 1, 2, 5 x 10^k
LATENCY_FLOOR_MS = 0.01  # a log axis cannot show zero; smaller values sit here
PERCENTILE_TICKS = (0.5, 0.9, 0.99, 0.999, 0.9999)
MAX_PERCENTILE = 0.9999

_PROCESS_MARKERS: Mapping[EventKind, tuple[str, str]] = {
    EventKind.PROCESS_EXIT: ("x", "process exit"),
    EventKind.PROCESS_START: ("^", "process start"),
    EventKind.PROCESS_FROZEN: ("v", "process frozen"),
    EventKind.PROCESS_THAWED: ("s", "process thawed"),
}
_BACKLOG_STYLES: Mapping[str, tuple[LineStyle, str]] = {
    "stream_messages": ("-", "messages in streams"),
    "pending": ("--", "pending for consumers"),
    "ack_pending": (":", "delivered, not yet acked"),
}
_NO_STATE = {
    Variant.SYNC_PLAIN: "no breaker: every call goes to the generator",
    Variant.QUEUE_CORE: "no backlog: core NATS stores nothing",
}


@dataclass(frozen=True, kw_only=True)
class Mark:
    """An event drawn on a timeline, at seconds from the load start."""

    at_s: float
    kind: EventKind
    target: str


@dataclass(frozen=True, kw_only=True)
class Timeline:
    """One cell's series, times in seconds from its load start.

    Per-second frames are indexed by the start of their second and hold one row per
    second, empty seconds included.
    """

    warmup_start_s: float  # negative: the warm-up comes before the load
    load_end_s: float
    end_s: float  # the right edge: the drain's end or the last completion
    user: pd.DataFrame  # a count column per Outcome value, p50_ms, p99_ms
    completions: pd.DataFrame  # stored, confirmed: ledger rows per second
    lag: pd.DataFrame  # p50_ms, p99_ms of requested -> stored, by request second
    breaker: pd.DataFrame | None  # at_s, key, state (BREAKER_STATE_CODES)
    backlog: pd.DataFrame | None  # indexed by second: one column per backlog metric
    fault_windows: tuple[tuple[float, float], ...]  # actual (start, end) to shade
    marks: tuple[Mark, ...]  # planned and actual fault times, process events


@dataclass(frozen=True, kw_only=True)
class Column:
    """One variant's column of a scenario's timeline."""

    variant: Variant
    status: str
    flagged: bool  # invalid or harness error: drawn, but marked as not a result
    timeline: Timeline | None  # None: nothing to draw; `note` says why
    note: str | None = None  # the skip reason, the flag's reason, a read error


@dataclass(frozen=True, kw_only=True)
class PercentileCurve:
    """Latency at percentiles `quantiles` (0..1) of `count` values."""

    quantiles: FloatArray
    values_ms: FloatArray
    count: int
    max_ms: float


@dataclass(frozen=True, kw_only=True)
class PercentileSeries:
    variant: Variant
    user: PercentileCurve | None
    end_to_end: PercentileCurve | None
    excluded: str | None = None  # why the variant is not drawn (skipped, invalid)


@dataclass(frozen=True, kw_only=True)
class MatrixCell:
    """The four matrix figures of one cell; None where there is no value."""

    status: str
    shown: bool  # False: skipped, invalid or harness error; `label` says which
    label: str
    availability_during: float | None
    availability_phase: str  # during, or steady for a scenario without faults
    silently_lost: int | None
    duplicates: int | None
    time_to_recover_s: float | None
    has_faults: bool


def _new_figure(size_in: tuple[float, float]) -> Figure:
    return plt.figure(figsize=size_in, dpi=DPI, layout="constrained")


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": every PNG keeps its declared size in pixels.
    figure.savefig(path, dpi=DPI, format="png")
    plt.close(figure)
    logger.debug("wrote %s", path)
    return path


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _steps(index: pd.Index, values: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """x and y for a post-step line over one-second bins, closed at the last edge."""
    x = np.asarray(index, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x, y
    return np.append(x, x[-1] + 1.0), np.append(y, y[-1])


def timeline_figure(
    title: str, columns: Sequence[Column], path: Path, *, subtitle: str = ""
) -> Path:
    """A scenario's timeline: one column per variant, five rows, shared time axis."""
    with plt.rc_context({"font.size": FONT_SIZE}):
        figure = _new_figure(TIMELINE_SIZE_IN)
        figure.suptitle(
            f"{title}\n{subtitle}" if subtitle else title, fontsize=FONT_SIZE + 3
        )
        rows = len(_ROW_LABELS)
        # The axes share limits without being shared: matplotlib's shared axes cost
        # seconds per figure in tick layout, and the limits are known beforehand.
        axes = figure.subplots(rows, len(columns), squeeze=False)
        timelines = [column.timeline for column in columns if column.timeline]
        left = min((t.warmup_start_s for t in timelines), default=-1.0)
        right = max((t.end_s for t in timelines), default=1.0)
        limits = _row_limits(timelines)
        ticks = _time_ticks(left, right)

        drawn_before = False
        for index, column in enumerate(columns):
            column_axes = [axes[row][index] for row in range(rows)]
            _column_title(column_axes[0], column)
            if column.timeline is None:
                _empty_column(column_axes, column)
                continue
            _draw_column(column_axes, column, column.timeline)
            for row, ax in enumerate(column_axes):
                ax.set_xlim(left, right)
                ax.set_xticks(ticks)
                if row < rows - 1:
                    ax.tick_params(labelbottom=False)
                if row in limits:
                    ax.set_ylim(*limits[row])
                    if ax.get_yscale() == "log":
                        _log_ticks(ax, *limits[row])
                    else:
                        ax.yaxis.set_major_formatter(THOUSANDS)
                    if drawn_before:
                        ax.tick_params(labelleft=False)
            column_axes[-1].set_xlabel("seconds from load start")
            drawn_before = True
        _row_labels([axes[row][0] for row in range(rows)])
        _row_legends([axes[row][-1] for row in range(rows)], columns)
        figure.legend(
            handles=_mark_handles(),
            loc="outside lower center",
            ncol=5,
            frameon=False,
        )
        return _save(figure, path)


def _row_limits(timelines: Sequence[Timeline]) -> dict[int, tuple[float, float]]:
    """The y limits of the rows every column shares, by row index."""
    throughput = [
        t.user[[o.value for o in Outcome]].sum(axis=1).max() for t in timelines
    ]
    completions = [t.completions.to_numpy().max(initial=0) for t in timelines]
    latency = [t.user[["p50_ms", "p99_ms"]].to_numpy() for t in timelines]
    lag = [t.lag[["p50_ms", "p99_ms"]].to_numpy() for t in timelines]
    return {
        0: (0.0, _linear_top(throughput)),
        1: _log_range(latency),
        2: (0.0, _linear_top(completions)),
        3: _log_range(lag),
    }


def _linear_top(maxima: Sequence[float]) -> float:
    top = max((float(m) for m in maxima if np.isfinite(m)), default=0.0)
    return top * 1.08 if top > 0 else 1.0


def _log_range(values: Sequence[FloatArray]) -> tuple[float, float]:
    """Log-axis limits around every value, with some room; 1 ms to 10 s if none."""
    joined = np.concatenate([v.ravel() for v in values]) if values else np.empty(0)
    joined = np.maximum(joined[np.isfinite(joined)], LATENCY_FLOOR_MS)
    if joined.size == 0:
        return 1.0, 10_000.0
    return float(joined.min()) / 1.6, float(joined.max()) * 1.6


def _log_ticks(ax: Axes, low: float, high: float) -> None:
    """Ticks at powers of ten (and 2 and 5 times them over a short range), labelled
    as plain numbers."""
    subs = (1.0, 2.0, 5.0) if high / low <= LOG_TICK_DETAIL_RANGE else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _time_ticks(left: float, right: float) -> FloatArray:
    first = math.ceil(left / TIME_TICK_S) * TIME_TICK_S
    return np.arange(first, right + 1e-9, TIME_TICK_S, dtype=np.float64)


def _column_title(ax: Axes, column: Column) -> None:
    colour = VARIANT_COLOURS[column.variant]
    if column.flagged:
        ax.set_title(
            f"{column.variant.value}\n{column.status.upper()}: NOT A RESULT",
            color=FLAG_COLOUR,
            fontweight="bold",
        )
    else:
        ax.set_title(
            f"{column.variant.value}\n{column.status}",
            color=colour,
            fontweight="bold",
        )


def _empty_column(column_axes: Sequence[Axes], column: Column) -> None:
    for ax in column_axes:
        ax.set_axis_off()
    # The title stays visible on an axis turned off; the reason goes mid-column.
    middle = column_axes[len(column_axes) // 2]
    middle.text(
        0.5,
        0.5,
        _wrap(f"{column.status}: {column.note or 'no data'}", 34),
        transform=middle.transAxes,
        ha="center",
        va="center",
        fontsize=FONT_SIZE + 1,
        bbox={"boxstyle": "round", "facecolor": "#F4F4F4", "edgecolor": "#888888"},
    )


def _draw_column(column_axes: Sequence[Axes], column: Column, data: Timeline) -> None:
    colour = VARIANT_COLOURS[column.variant]
    throughput, latency, completions, lag, state = column_axes

    outcomes = [o for o in Outcome if o.value in data.user.columns]
    x, _ = _steps(data.user.index, np.zeros(len(data.user)))
    if x.size:
        stacked = [_steps(data.user.index, data.user[o.value])[1] for o in outcomes]
        throughput.stackplot(
            x,
            stacked,
            colors=[OUTCOME_COLOURS[o] for o in outcomes],
            step="post",
            linewidth=0,
        )

    for quantile, style, width in (("p99_ms", "-", 1.4), ("p50_ms", "--", 1.0)):
        lx, ly = _steps(data.user.index, data.user[quantile])
        latency.step(
            lx,
            np.maximum(ly, LATENCY_FLOOR_MS),
            where="post",
            color=colour,
            linestyle=style,
            linewidth=width,
        )
        gx, gy = _steps(data.lag.index, data.lag[quantile])
        lag.step(
            gx,
            np.maximum(gy, LATENCY_FLOOR_MS),
            where="post",
            color=colour,
            linestyle=style,
            linewidth=width,
        )
    latency.set_yscale("log")
    lag.set_yscale("log")

    for name, style in (("stored", "-"), ("confirmed", "--")):
        cx, cy = _steps(data.completions.index, data.completions[name])
        completions.step(
            cx, cy, where="post", color=colour, linestyle=style, linewidth=1.2
        )

    _draw_state(state, column, data, colour)

    for ax in column_axes:
        _draw_context(ax, data)
    _draw_process_marks(throughput, data)
    throughput.text(
        (data.warmup_start_s + 0.0) / 2,
        0.98,
        "warm-up",
        transform=blended_transform_factory(throughput.transData, throughput.transAxes),
        ha="center",
        va="top",
        fontsize=FONT_SIZE - 1,
        color="#555555",
    )
    if column.flagged:
        for ax in column_axes:
            for spine in ax.spines.values():
                spine.set_edgecolor(FLAG_COLOUR)
                spine.set_linewidth(2.0)
        throughput.text(
            0.5,
            0.5,
            "not a result",
            transform=throughput.transAxes,
            ha="center",
            va="center",
            fontsize=FONT_SIZE + 6,
            color=FLAG_COLOUR,
            alpha=0.6,
            fontweight="bold",
            zorder=10,
        )


def _draw_state(ax: Axes, column: Column, data: Timeline, colour: str) -> None:
    if column.variant is Variant.SYNC_BREAKER:
        _draw_breaker(ax, data.breaker)
    elif column.variant is Variant.QUEUE_JETSTREAM:
        _draw_backlog(ax, data.backlog, colour)
    else:
        ax.set_yticks([])
        ax.text(
            0.5,
            0.5,
            _wrap(_NO_STATE[column.variant], 26),
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#555555",
        )


def _draw_breaker(ax: Axes, breaker: pd.DataFrame | None) -> None:
    ax.set_ylim(0, 1)
    if breaker is None or breaker.empty:
        ax.set_yticks([])
        ax.text(
            0.5,
            0.5,
            "no breaker_state samples",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#555555",
        )
        return
    keys = sorted(breaker["key"].unique())
    height = 1.0 / len(keys)
    for position, key in enumerate(keys):
        part = breaker[breaker["key"] == key].sort_values("at_s")
        starts = part["at_s"].to_numpy(dtype=np.float64)
        states = part["state"].to_numpy(dtype=np.int64)
        # A sample holds until the next one; the last holds for one interval.
        ends = np.append(starts[1:], starts[-1] + 1.0)
        bottom = 1.0 - (position + 1) * height
        for code, state_colour in BREAKER_STATE_COLOURS.items():
            chosen = states == code
            spans = list(zip(starts[chosen], (ends - starts)[chosen], strict=True))
            if spans:
                ax.broken_barh(spans, (bottom, height), facecolors=state_colour)
        # Named inside the band: a tick label would widen this column only.
        ax.text(
            0.02,
            bottom + height / 2,
            f"breaker {key}".strip(),
            transform=blended_transform_factory(ax.transAxes, ax.transData),
            ha="left",
            va="center",
            fontsize=FONT_SIZE - 1,
            color="#333333",
            zorder=6,
        )
    ax.set_yticks([])


def _draw_backlog(ax: Axes, backlog: pd.DataFrame | None, colour: str) -> None:
    if backlog is None or backlog.empty:
        ax.set_yticks([])
        ax.text(
            0.5,
            0.5,
            "no JetStream samples",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="#555555",
        )
        return
    for metric, (style, _label) in _BACKLOG_STYLES.items():
        if metric in backlog.columns:
            x, y = _steps(backlog.index, backlog[metric])
            ax.step(x, y, where="post", color=colour, linestyle=style, linewidth=1.2)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.yaxis.set_major_formatter(THOUSANDS)


def _draw_context(ax: Axes, data: Timeline) -> None:
    """Warm-up, drain, fault windows and fault times, behind the data."""
    ax.axvspan(
        data.warmup_start_s, 0.0, facecolor="white", alpha=0.55, zorder=3, linewidth=0
    )
    ax.axvspan(
        data.warmup_start_s, 0.0, facecolor="#DDDDDD", alpha=0.5, zorder=0, linewidth=0
    )
    ax.axvspan(data.load_end_s, data.end_s, facecolor="#F0F0F0", zorder=0, linewidth=0)
    for start, end in data.fault_windows:
        ax.axvspan(
            start, end, facecolor=FAULT_COLOUR, alpha=0.18, zorder=0, linewidth=0
        )
    for mark in data.marks:
        if mark.kind is EventKind.FAULT_PLANNED:
            ax.axvline(
                mark.at_s,
                color="black",
                linestyle=PLANNED_STYLE,
                linewidth=1.0,
                zorder=4,
            )
        elif mark.kind in (EventKind.FAULT_INJECTED, EventKind.FAULT_CLEARED):
            ax.axvline(
                mark.at_s,
                color=ACTUAL_FAULT_LINE,
                linestyle=ACTUAL_STYLE,
                linewidth=0.9,
                zorder=4,
            )
    ax.grid(True, axis="y", color="#E0E0E0", linewidth=0.6, zorder=0)


def _draw_process_marks(ax: Axes, data: Timeline) -> None:
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    for kind, (marker, _label) in _PROCESS_MARKERS.items():
        times = [
            mark.at_s
            for mark in data.marks
            if mark.kind is kind and data.warmup_start_s <= mark.at_s <= data.end_s
        ]
        if times:
            ax.plot(
                times,
                [0.9] * len(times),
                linestyle="none",
                marker=marker,
                markersize=6,
                markerfacecolor="white",
                markeredgecolor="black",
                transform=transform,
                zorder=6,
                clip_on=False,
            )


# Short enough to fit beside a row; the report's text says the rest.
_ROW_LABELS = (
    "requests/s\nby outcome",
    "user latency\nms (log)",
    "stored, confirmed\nper second",
    "lag, ms (log)\nrequested \u2192 stored",
    "breaker, or\nbacklog (messages)",
)


def _row_labels(first_column: Sequence[Axes]) -> None:
    for ax, label in zip(first_column, _ROW_LABELS, strict=True):
        if ax.axison:
            ax.set_ylabel(label)
        else:
            ax.text(
                -0.05,
                0.5,
                label,
                transform=ax.transAxes,
                rotation=90,
                ha="right",
                va="center",
            )


def _row_legends(last_column: Sequence[Axes], columns: Sequence[Column]) -> None:
    grey = "#444444"
    outcome_handles = [
        Patch(facecolor=OUTCOME_COLOURS[o], label=o.value) for o in Outcome
    ]
    latency_handles = [
        Line2D([], [], color=grey, linestyle="-", linewidth=1.4, label="p99"),
        Line2D([], [], color=grey, linestyle="--", label="p50"),
    ]
    completion_handles = [
        Line2D([], [], color=grey, linestyle="-", label="stored (requestor)"),
        Line2D([], [], color=grey, linestyle="--", label="confirmed (generator)"),
    ]
    state_handles: list[Patch | Line2D] = []
    variants = {column.variant for column in columns if column.timeline}
    if Variant.SYNC_BREAKER in variants:
        names = {code: name for name, code in BREAKER_STATE_CODES.items()}
        state_handles += [
            Patch(
                facecolor=state_colour,
                edgecolor="#888888",
                label=f"breaker {names[code]}",
            )
            for code, state_colour in BREAKER_STATE_COLOURS.items()
        ]
    if Variant.QUEUE_JETSTREAM in variants:
        state_handles += [
            Line2D([], [], color=grey, linestyle=style, label=label)
            for style, label in _BACKLOG_STYLES.values()
        ]
    legends: list[Sequence[Patch | Line2D]] = [
        outcome_handles,
        latency_handles,
        completion_handles,
        latency_handles,
        state_handles,
    ]
    for ax, handles in zip(last_column, legends, strict=True):
        if handles:
            ax.legend(
                handles=handles,
                loc="center left",
                bbox_to_anchor=(1.02, 0.5),
                frameon=False,
                fontsize=FONT_SIZE - 1,
                borderaxespad=0,
            )


def _mark_handles() -> list[Patch | Line2D]:
    handles: list[Patch | Line2D] = [
        Patch(facecolor="#DDDDDD", label="warm-up (data lighter)"),
        Patch(facecolor="#F0F0F0", edgecolor="#CCCCCC", label="drain (no load)"),
        Patch(facecolor=FAULT_COLOUR, alpha=0.35, label="fault window (actual)"),
        Line2D(
            [],
            [],
            color="black",
            linestyle=PLANNED_STYLE,
            label="fault planned start/end",
        ),
        Line2D(
            [],
            [],
            color=ACTUAL_FAULT_LINE,
            linestyle=ACTUAL_STYLE,
            label="fault injected/cleared",
        ),
    ]
    handles += [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=marker,
            markerfacecolor="white",
            markeredgecolor="black",
            label=label,
        )
        for marker, label in _PROCESS_MARKERS.values()
    ]
    return handles


def _percentile_x(quantiles: FloatArray) -> FloatArray:
    """The HDR plot's x: 1 / (1 - q), so each extra nine takes the same width."""
    return 1.0 / (1.0 - np.asarray(quantiles, dtype=np.float64))


def percentile_figure(
    title: str, series: Sequence[PercentileSeries], path: Path
) -> Path:
    """User-facing and end-to-end latency by percentile, one line per variant."""
    with plt.rc_context({"font.size": FONT_SIZE}):
        figure = _new_figure(PERCENTILE_SIZE_IN)
        figure.suptitle(title, fontsize=FONT_SIZE + 3)
        user_ax, e2e_ax = figure.subplots(1, 2, sharex=True)
        panels = (
            (user_ax, "user-facing: due time \u2192 answer (answered sends)", "user"),
            (e2e_ax, "end-to-end: requested \u2192 stored (stored rows)", "e2e"),
        )
        handles: list[Line2D] = []
        for ax, panel_title, which in panels:
            drawn = 0
            for entry in series:
                curve = entry.user if which == "user" else entry.end_to_end
                if entry.excluded is not None or curve is None or curve.count == 0:
                    continue
                drawn += 1
                _draw_curve(ax, curve, VARIANT_COLOURS[entry.variant])
            ax.set_title(panel_title)
            ax.set_xscale("log")
            ax.set_yscale("log")
            _log_ticks(ax, *ax.get_ylim())
            ax.set_xlim(1.0, float(_percentile_x(np.array([MAX_PERCENTILE]))[0]))
            ticks = _percentile_x(np.array(PERCENTILE_TICKS))
            ax.set_xticks(ticks, [f"{100 * q:g}" for q in PERCENTILE_TICKS])
            ax.minorticks_off()
            ax.set_xlabel("percentile (%)")
            ax.set_ylabel("latency, ms (log)")
            ax.grid(True, which="major", color="#E0E0E0", linewidth=0.6)
            if not drawn:
                ax.text(
                    0.5,
                    0.5,
                    "no values",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    color="#555555",
                )
        for entry in series:
            colour = VARIANT_COLOURS[entry.variant]
            if entry.excluded is not None:
                handles.append(
                    Line2D(
                        [],
                        [],
                        color="none",
                        label=f"{entry.variant.value}: {entry.excluded}",
                    )
                )
                continue
            counts = ", ".join(
                f"{curve.count:,} {what}"
                for curve, what in (
                    (entry.user, "answered"),
                    (entry.end_to_end, "stored"),
                )
                if curve is not None
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    color=colour,
                    linewidth=1.8,
                    label=f"{entry.variant.value}: {counts or 'no values'}",
                )
            )
        handles.append(
            Line2D(
                [],
                [],
                color="#444444",
                linestyle=":",
                label="no value left to rank: the maximum carried on",
            )
        )
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 3),
            frameon=False,
        )
        return _save(figure, path)


def _draw_curve(ax: Axes, curve: PercentileCurve, colour: str) -> None:
    x = _percentile_x(curve.quantiles)
    y = np.maximum(curve.values_ms, LATENCY_FLOOR_MS)
    # Past the (n-1)/n quantile there is no value left to rank: the line would only
    # repeat the maximum, so that part is dotted.
    beyond = np.flatnonzero(curve.quantiles > 1.0 - 1.0 / curve.count)
    last = int(beyond[0]) if beyond.size else x.size - 1
    ax.plot(x[: last + 1], y[: last + 1], color=colour, linewidth=1.8)
    if last < x.size - 1:
        ax.plot(x[last:], y[last:], color=colour, linewidth=1.4, linestyle=":")


_MATRIX_PANELS = (
    ("availability_during", "availability during the fault (%)", "higher is better"),
    ("silently_lost", "silently lost (2xx, never stored)", "requests; 0 is right"),
    ("duplicates", "duplicates (one id, two strings)", "requests; 0 is right"),
    ("time_to_recover_s", "time to recover after the fault (s)", "lower is better"),
)


def matrix_figure(
    title: str,
    scenarios: Sequence[str],
    variants: Sequence[Variant],
    cells: Mapping[tuple[str, Variant], MatrixCell],
    path: Path,
) -> Path:
    """Grouped bars: one group per scenario, one bar per variant, four panels."""
    with plt.rc_context({"font.size": FONT_SIZE}):
        figure = _new_figure(MATRIX_SIZE_IN)
        figure.suptitle(title, fontsize=FONT_SIZE + 3)
        axes = figure.subplots(2, 2).ravel()
        width = 0.8 / max(len(variants), 1)
        offsets = [(i - (len(variants) - 1) / 2) * width for i in range(len(variants))]
        # Scenario names break after their first hyphen so that neighbours never
        # overlap: generator-freeze and generator-errors stand side by side.
        tick_labels = [
            scenario.replace("-", "-\n", 1)
            + ("\n(no fault)" if _without_fault(cells, scenario) else "")
            for scenario in scenarios
        ]
        for ax, (field, panel_title, hint) in zip(axes, _MATRIX_PANELS, strict=True):
            groups = [
                [_matrix_value(cells.get((scenario, v)), field) for v in variants]
                for scenario in scenarios
            ]
            top = max(
                (value for group in groups for value, _ in group if value is not None),
                default=0.0,
            )
            limit = top * 1.3 if top > 0 else 1.0
            for index, group in enumerate(groups):
                _draw_group(ax, index, group, offsets, width, variants, limit)
            ax.set_ylim(0, limit)
            ax.set_title(panel_title)
            ax.set_ylabel(hint)
            ax.set_xticks(range(len(scenarios)), tick_labels)
            ax.set_xlim(-0.5, len(scenarios) - 0.5)
            ax.grid(True, axis="y", color="#E0E0E0", linewidth=0.6)
            ax.set_axisbelow(True)
        handles = [
            Patch(facecolor=VARIANT_COLOURS[variant], label=variant.value)
            for variant in variants
        ]
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncol=len(handles),
            frameon=False,
        )
        return _save(figure, path)


def _without_fault(cells: Mapping[tuple[str, Variant], MatrixCell], name: str) -> bool:
    shown = [c for (scenario, _), c in cells.items() if scenario == name and c.shown]
    return bool(shown) and not any(cell.has_faults for cell in shown)


def _draw_group(
    ax: Axes,
    index: int,
    group: Sequence[tuple[float | None, str]],
    offsets: Sequence[float],
    width: float,
    variants: Sequence[Variant],
    limit: float,
) -> None:
    """One scenario's bars; a label above each, or one for the group when no bar
    has a value and every label says the same."""
    labels = {label for _, label in group}
    if all(value is None for value, _ in group) and len(labels) == 1:
        ax.text(
            index,
            limit * 0.03,
            labels.pop(),
            ha="center",
            va="bottom",
            fontsize=FONT_SIZE - 1,
            color="#555555",
        )
        return
    for (value, label), offset, variant in zip(group, offsets, variants, strict=True):
        x = index + offset
        if value is not None:
            ax.bar(x, value, width=width * 0.92, color=VARIANT_COLOURS[variant])
        ax.text(
            x,
            (value or 0.0) + limit * 0.015,
            label,
            ha="center",
            va="bottom",
            rotation=90,
            fontsize=FONT_SIZE - 2,
        )


def _matrix_value(cell: MatrixCell | None, field: str) -> tuple[float | None, str]:
    """The bar height (None: no bar) and the label printed above it."""
    if cell is None:
        return None, "not run"
    if not cell.shown:
        return None, cell.label
    if field == "availability_during":
        if cell.availability_during is None:
            return None, "nothing sent"
        percent = 100.0 * cell.availability_during
        return percent, f"{percent:.1f}"
    if field == "time_to_recover_s":
        if not cell.has_faults:
            return None, "no fault"
        if cell.time_to_recover_s is None:
            return None, "not recovered"
        return cell.time_to_recover_s, f"{cell.time_to_recover_s:.1f}"
    count = cell.silently_lost if field == "silently_lost" else cell.duplicates
    if count is None:
        return None, "not measured"
    return float(count), f"{count:,}"

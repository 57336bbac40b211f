"""The report of a run folder: `report.md`, a self-contained `report.html`, PNGs.

`write_report(run_dir)` reads the run's `manifest.json` and `summary.json` (each cell's
`bench.analysis.CellSummary` as JSON, plus the run's notes), then each cell's raw files
for the series the figures need, and writes:

- `plots/timeline-<scenario>.png`: the variants side by side over time;
- `plots/percentiles-<scenario>.png`: user-facing and end-to-end latency by
  percentile;
- `plots/matrix.png`: availability during the fault, silently lost, duplicates and
  time to recover across scenarios and variants;
- `report.md` (pointing at the PNGs) and `report.html` (the same text, the PNGs
  embedded as data URIs, so that it opens from disk and needs no server).

Every number in the tables comes from the summaries that `bench.analysis` computed;
the figures are drawn from the same raw files, read with its readers. A cell whose
status is invalid or harness_error is flagged wherever it appears and none of its
numbers is shown as a result.

A run folder is refused (`ReportError`) when it has no manifest or when its results
schema version is not one `bench.records.SUPPORTED_RESULTS_SCHEMAS` lists.

`perf_million(tmp_dir)` fabricates a run folder with a million request rows in one
cell and measures how long `write_report` takes on it and how much memory it needs.
`fabricate_run` is the fabricator; the tests use it for a small run folder.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import math
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from bench import analysis, plots
from bench.analysis import CellStatus, RawFileError, open_ledger
from bench.records import (
    BREAKER_STATE_CODES,
    RESULTS_SCHEMA_VERSION,
    SUPPORTED_RESULTS_SCHEMAS,
    EventKind,
    Outcome,
)
from bench.scenario import Scenario
from bench.stack import Variant

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
MATRIX_PNG = "matrix.png"

# The percentiles the HDR-style plot is drawn at: evenly spaced in 1 / (1 - q), from
# the minimum (q = 0) to the 99.99th percentile, 100 points per nine.
PERCENTILE_QUANTILES = 1.0 - 1.0 / np.logspace(0.0, 4.0, 401)
LEDGER_FETCH_ROWS = 65_536  # ledger rows converted to arrays at a time
BACKLOG_METRICS = ("stream_messages", "pending", "ack_pending")
FLAGGED_STATUSES = frozenset({CellStatus.INVALID, CellStatus.HARNESS_ERROR})

PERF_ROWS = 1_000_000
PERF_LIMIT_S = 30.0
PERF_LIMIT_BYTES = 2 * 1024**3


class ReportError(ValueError):
    """The folder is not a run folder this report can read; the message says why."""


@dataclass(frozen=True, kw_only=True)
class CellEntry:
    """One cell of the run as its summary describes it."""

    scenario: str
    variant: Variant
    status: CellStatus
    document: dict[str, Any]  # the cell's summary.json
    directory: Path

    @property
    def flagged(self) -> bool:
        return self.status in FLAGGED_STATUSES

    @property
    def figures(self) -> dict[str, Any] | None:
        figures = self.document.get("figures")
        return figures if isinstance(figures, dict) else None

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the cell has its status: the summary's reason, then the run's."""
        found: list[str] = []
        reason = self.document.get("reason")
        if isinstance(reason, str) and reason:
            found.append(reason)
        for key in ("reasons", "notes"):
            values = self.document.get(key) or []
            if isinstance(values, list):
                found.extend(str(value) for value in values if value)
        return tuple(dict.fromkeys(found))

    def phase(self, name: str) -> dict[str, Any] | None:
        figures = self.figures
        if figures is None:
            return None
        phase = (figures.get("phases") or {}).get(name)
        return phase if isinstance(phase, dict) else None

    @property
    def has_faults(self) -> bool:
        figures = self.figures
        return bool(figures and figures.get("faults"))

    @property
    def fault_phase(self) -> str:
        """`during` for a scenario with faults, `steady` for one without."""
        return "during" if self.has_faults else "steady"


@dataclass(frozen=True, kw_only=True)
class Run:
    directory: Path
    manifest: dict[str, Any]
    cells: tuple[CellEntry, ...]
    scenarios: tuple[str, ...]  # in the manifest's order
    variants: tuple[Variant, ...]  # in `Variant` order

    def cell(self, scenario: str, variant: Variant) -> CellEntry | None:
        for cell in self.cells:
            if cell.scenario == scenario and cell.variant is variant:
                return cell
        return None

    def scenario_description(self, scenario: str) -> dict[str, Any]:
        for described in self.manifest.get("scenarios") or []:
            if isinstance(described, dict) and described.get("name") == scenario:
                return described
        return {}


def _check_schema(path: Path, document: object) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(document)}")
    version = document.get("schema_version")
    if version not in SUPPORTED_RESULTS_SCHEMAS:
        understood = ", ".join(str(v) for v in sorted(SUPPORTED_RESULTS_SCHEMAS))
        raise ReportError(
            f"{path}: results schema version {version!r}; this report understands "
            f"version {understood}. Report it with the code that wrote it."
        )
    return document


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read: {exc}") from exc
    except ValueError as exc:
        raise ReportError(f"{path}: not valid JSON: {exc}") from exc


def read_run(run_dir: Path) -> Run:
    """The manifest and cell summaries of `run_dir`; `ReportError` if unreadable."""
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ReportError(
            f"{run_dir}: no manifest.json, so this is not a run folder "
            "(`python -m bench run` writes one at the top of every run folder)"
        )
    manifest = _check_schema(manifest_path, _read_json(manifest_path))

    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = _check_schema(summary_path, _read_json(summary_path))
        documents = summary.get("cells")
        if not isinstance(documents, list):
            raise ReportError(f"{summary_path}: expected a list under 'cells'")
    else:
        # The run stopped before writing its summary: every cell wrote its own.
        logger.warning("%s is missing; reading the cells' own summaries", summary_path)
        documents = [
            _check_schema(path, _read_json(path))
            for path in sorted(run_dir.glob("*/*/summary.json"))
        ]

    cells = []
    for document in documents:
        if not isinstance(document, dict):
            raise ReportError(f"{summary_path}: a cell is not a JSON object")
        cells.append(_cell_entry(run_dir, document))

    named = [
        str(item.get("name"))
        for item in manifest.get("scenarios") or []
        if isinstance(item, dict) and item.get("name")
    ]
    scenarios = list(dict.fromkeys(named))
    scenarios += [c.scenario for c in cells if c.scenario not in scenarios]
    listed = {str(name) for name in manifest.get("variants") or []}
    present = {cell.variant for cell in cells}
    variants = tuple(v for v in Variant if v.value in listed or v in present)
    return Run(
        directory=run_dir,
        manifest=manifest,
        cells=tuple(cells),
        scenarios=tuple(dict.fromkeys(scenarios)),
        variants=variants,
    )


def _cell_entry(run_dir: Path, document: dict[str, Any]) -> CellEntry:
    scenario = str(document.get("scenario"))
    try:
        variant = Variant(str(document.get("variant")))
        status = CellStatus(str(document.get("status")))
    except ValueError as exc:
        raise ReportError(f"{run_dir}: cell {scenario}: {exc}") from exc
    return CellEntry(
        scenario=scenario,
        variant=variant,
        status=status,
        document=document,
        directory=run_dir / scenario / variant.value,
    )


# Series of one cell


@dataclass(frozen=True, kw_only=True)
class LoadBounds:
    """Epoch seconds of a cell's warm-up start, load start and end, right edge."""

    warmup_start_s: float
    load_start_s: float
    load_end_s: float
    end_s: float


def _phase_time(events: pd.DataFrame, name: str) -> float | None:
    rows = events[
        (events["kind"] == EventKind.PHASE.value) & (events["detail"] == name)
    ]
    return float(rows["at_s"].iloc[0]) if not rows.empty else None


def _load_bounds(
    cell: CellEntry, events: pd.DataFrame, due_s: FloatArray
) -> LoadBounds:
    """From the summary's `all` phase, else the phase events, else the due times."""
    whole = cell.phase("all")
    first_due = float(due_s.min()) if due_s.size else 0.0
    last_due = float(due_s.max()) if due_s.size else 1.0
    if whole is not None:
        load_start, load_end = float(whole["start_s"]), float(whole["end_s"])
    else:
        load_start = _phase_time(events, "load") or first_due
        load_end = (
            _phase_time(events, "load_end") or _phase_time(events, "drain") or last_due
        )
    warmup = _phase_time(events, "warmup")
    warmup_start = min(warmup if warmup is not None else first_due, load_start)
    end = _phase_time(events, "drain_end") or load_end
    return LoadBounds(
        warmup_start_s=warmup_start,
        load_start_s=load_start,
        load_end_s=load_end,
        end_s=max(end, load_end),
    )


def _ledger_times(path: Path, sql: str, columns: int) -> FloatArray:
    """The float columns `sql` selects from a ledger, as an (n, columns) array.

    Only times are read: the report needs neither the ids nor the strings, which are
    most of a ledger's bytes.
    """
    db = open_ledger(path)
    try:
        cursor = db.execute(sql)
        chunks = []
        while rows := cursor.fetchmany(LEDGER_FETCH_ROWS):
            chunks.append(np.array(rows, dtype=np.float64).reshape(-1, columns))
    except sqlite3.Error as exc:
        raise RawFileError(f"ledger {path}: {exc}") from exc
    finally:
        db.close()
    if not chunks:
        return np.empty((0, columns), dtype=np.float64)
    return np.concatenate(chunks)


def _counts_per_second(times_s: FloatArray, first: int, n: int) -> IntArray:
    offset = np.floor(times_s).astype(np.int64) - first
    offset = offset[(offset >= 0) & (offset < n)]
    return np.bincount(offset, minlength=n).astype(np.int64)


def _quantiles_per_second(
    times_s: FloatArray, values: FloatArray, first: int, n: int
) -> tuple[FloatArray, FloatArray]:
    """p50 and p99 of `values` per second of `times_s`, NaN for an empty second.

    Ranked as `bench.analysis` ranks: the p-quantile is the smallest value with at
    least p of the values at or below it.
    """
    offset = np.floor(times_s).astype(np.int64) - first
    keep = (offset >= 0) & (offset < n) & ~np.isnan(values)
    offset, values = offset[keep], values[keep]
    order = np.lexsort((values, offset))
    ordered = values[order]
    counts = np.bincount(offset, minlength=n)
    starts = np.cumsum(counts) - counts
    present = counts > 0
    results = []
    for q in (0.5, 0.99):
        picked = np.full(n, np.nan)
        rank = np.ceil(np.round(counts[present] * q, 6)).astype(np.int64) - 1
        picked[present] = ordered[starts[present] + np.maximum(rank, 0)]
        results.append(picked)
    return results[0], results[1]


def percentile_curve(values_ms: FloatArray) -> plots.PercentileCurve | None:
    """The latency at each of `PERCENTILE_QUANTILES`, ranked as the analysis ranks."""
    values = np.sort(values_ms[~np.isnan(values_ms)])
    if values.size == 0:
        return None
    ranks = np.ceil(np.round(values.size * PERCENTILE_QUANTILES, 6)).astype(np.int64)
    ranks = np.clip(ranks - 1, 0, values.size - 1)
    return plots.PercentileCurve(
        quantiles=PERCENTILE_QUANTILES.copy(),
        values_ms=values[ranks],
        count=int(values.size),
        max_ms=float(values[-1]),
    )


@dataclass(frozen=True, kw_only=True)
class CellSeries:
    timeline: plots.Timeline
    user_curve: plots.PercentileCurve | None
    end_to_end_curve: plots.PercentileCurve | None


def read_series(cell: CellEntry) -> CellSeries:
    """A cell's figure series from its raw files; `RawFileError` if one is bad."""
    directory = cell.directory
    requests = analysis.read_requests(directory / "requests.csv")
    events = analysis.read_events(directory / "events.csv")
    samples = analysis.read_samples(directory / "samples.csv")
    due = requests["due_s"].to_numpy(dtype=np.float64)
    bounds = _load_bounds(cell, events, due)

    requestor_path, generator_paths = analysis.ledger_paths(directory)
    stored = _ledger_times(
        requestor_path,
        "SELECT requested_at, stored_at FROM requests WHERE stored_at IS NOT NULL",
        2,
    )
    confirmed = np.concatenate(
        [
            _ledger_times(
                path,
                "SELECT confirmed_at FROM strings WHERE confirmed_at IS NOT NULL",
                1,
            )[:, 0]
            for path in generator_paths
        ]
    )
    requested_at, stored_at = stored[:, 0], stored[:, 1]
    last_completion = max(
        float(stored_at.max()) if stored_at.size else -math.inf,
        float(confirmed.max()) if confirmed.size else -math.inf,
    )
    end = max(bounds.end_s, last_completion)
    first = math.floor(min(bounds.warmup_start_s, float(due.min(initial=math.inf))))
    n = max(math.ceil(end) - first, 1)
    origin = bounds.load_start_s
    index = pd.Index(np.arange(first, first + n, dtype=np.float64) - origin)

    user = analysis.per_second(requests, start_s=first, end_s=first + n)
    user.index = index
    answered = requests["outcome"].ne(Outcome.DROPPED.value).to_numpy(dtype=bool)
    in_load = (due >= bounds.load_start_s) & (due < bounds.load_end_s)
    user_latency = requests["latency_ms"].to_numpy(dtype=np.float64)[answered & in_load]
    del requests, due

    lag_ms = (stored_at - requested_at) * 1000.0
    p50, p99 = _quantiles_per_second(requested_at, lag_ms, first, n)
    requested_in_load = (requested_at >= bounds.load_start_s) & (
        requested_at < bounds.load_end_s
    )
    timeline = plots.Timeline(
        warmup_start_s=bounds.warmup_start_s - origin,
        load_end_s=bounds.load_end_s - origin,
        end_s=end - origin,
        user=user,
        completions=pd.DataFrame(
            {
                "stored": _counts_per_second(stored_at, first, n),
                "confirmed": _counts_per_second(confirmed, first, n),
            },
            index=index,
        ),
        lag=pd.DataFrame({"p50_ms": p50, "p99_ms": p99}, index=index),
        breaker=_breaker_states(samples, events, bounds, origin),
        backlog=_backlog(samples, origin),
        fault_windows=_fault_windows(cell, events, bounds, origin),
        marks=_marks(events, origin),
    )
    return CellSeries(
        timeline=timeline,
        user_curve=percentile_curve(user_latency),
        end_to_end_curve=percentile_curve(lag_ms[requested_in_load]),
    )


def _breaker_states(
    samples: pd.DataFrame, events: pd.DataFrame, bounds: LoadBounds, origin: float
) -> pd.DataFrame | None:
    """Breaker state per sample; from the breaker events when nothing was sampled."""
    readings = samples[samples["metric"] == "breaker_state"]
    if not readings.empty:
        key = readings["key"]
        if readings["source"].nunique() > 1:
            key = readings["source"] + " → " + key
        return pd.DataFrame(
            {
                "at_s": readings["at_s"].to_numpy(dtype=np.float64) - origin,
                "key": key.to_numpy(dtype=object),
                "state": readings["value"].round().to_numpy(dtype=np.int64),
            }
        )
    changes = events[
        (events["kind"] == EventKind.BREAKER.value) & (events["planned"] == 0)
    ]
    if changes.empty:
        return None
    states = changes["detail"].map(BREAKER_STATE_CODES)
    changes = changes[states.notna()]
    # Every breaker starts closed; each event is the state it moved to.
    opening = pd.DataFrame(
        {
            "at_s": bounds.warmup_start_s,
            "key": changes["target"].unique(),
            "state": BREAKER_STATE_CODES["closed"],
        }
    )
    moved = pd.DataFrame(
        {
            "at_s": changes["at_s"].to_numpy(dtype=np.float64),
            "key": changes["target"].to_numpy(dtype=object),
            "state": states[states.notna()].to_numpy(dtype=np.int64),
        }
    )
    frame = pd.concat([opening, moved], ignore_index=True)
    frame["at_s"] -= origin
    return frame


def _backlog(samples: pd.DataFrame, origin: float) -> pd.DataFrame | None:
    """JetStream backlog per second: each metric's largest reading per stream or
    consumer within the second, summed over them (as the analysis sums its peaks)."""
    readings = samples[
        (samples["source"] == "jetstream") & samples["metric"].isin(BACKLOG_METRICS)
    ]
    if readings.empty:
        return None
    second = np.floor(readings["at_s"].to_numpy(dtype=np.float64))
    per_key = readings.assign(second=second).groupby(["metric", "second", "key"])
    summed = per_key["value"].max().groupby(level=["metric", "second"]).sum()
    frame = summed.unstack("metric")
    frame = frame.reindex(
        np.arange(frame.index.min(), frame.index.max() + 1, dtype=np.float64)
    )
    frame.index = pd.Index(frame.index.to_numpy(dtype=np.float64) - origin)
    return frame


def _fault_windows(
    cell: CellEntry, events: pd.DataFrame, bounds: LoadBounds, origin: float
) -> tuple[tuple[float, float], ...]:
    """Actual fault windows: the analysis' matched times, else the raw events."""
    windows = []
    figures = cell.figures
    if figures is not None and figures.get("faults"):
        for fault in figures["faults"]:
            start = _first_given(
                fault.get("actual_start_s"), fault.get("planned_start_s")
            )
            end = _first_given(
                fault.get("actual_end_s"), fault.get("planned_end_s"), bounds.load_end_s
            )
            if start is not None and end is not None:
                windows.append((start, end))
    else:
        observed = events[events["planned"] == 0].sort_values("at_s")
        injected = observed[observed["kind"] == EventKind.FAULT_INJECTED.value]
        cleared = observed[observed["kind"] == EventKind.FAULT_CLEARED.value]
        for start, target in zip(injected["at_s"], injected["target"], strict=True):
            ends = cleared[(cleared["target"] == target) & (cleared["at_s"] >= start)]
            end = float(ends["at_s"].iloc[0]) if not ends.empty else bounds.load_end_s
            windows.append((float(start), end))
    return tuple((start - origin, end - origin) for start, end in windows)


def _first_given(*values: object) -> float | None:
    for value in values:
        if isinstance(value, int | float):
            return float(value)
    return None


_MARK_KINDS = frozenset(
    {
        EventKind.FAULT_PLANNED,
        EventKind.FAULT_INJECTED,
        EventKind.FAULT_CLEARED,
        EventKind.PROCESS_EXIT,
        EventKind.PROCESS_START,
        EventKind.PROCESS_FROZEN,
        EventKind.PROCESS_THAWED,
    }
)


def _marks(events: pd.DataFrame, origin: float) -> tuple[plots.Mark, ...]:
    planned = events["planned"] == 1
    kinds = events["kind"]
    chosen = events[
        (planned & (kinds == EventKind.FAULT_PLANNED.value))
        | (~planned & kinds.isin([k.value for k in _MARK_KINDS]))
    ]
    return tuple(
        plots.Mark(at_s=float(at_s) - origin, kind=EventKind(kind), target=str(target))
        for at_s, kind, target in zip(
            chosen["at_s"], chosen["kind"], chosen["target"], strict=True
        )
    )


# The document: blocks rendered once as Markdown and once as HTML


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str
    style: str = ""  # "warning" draws it as a flagged box


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    text: str
    style: str = ""  # pass, fail, flag, expected, muted


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class Image:
    path: str  # relative to the run folder
    alt: str


Block = Heading | Paragraph | Items | Table | Image

_CODE_SPAN = re.compile(r"`([^`]+)`")


def _md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Iterable[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            text = f"> **{block.text}**" if block.style == "warning" else block.text
            lines += [text, ""]
        elif isinstance(block, Items):
            lines += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_text(h) for h in block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            for row in block.rows:
                texts = [
                    f"**{_md_text(c.text)}**"
                    if c.style in ("flag", "fail")
                    else _md_text(c.text)
                    for c in row
                ]
                lines.append("| " + " | ".join(texts) + " |")
            lines.append("")
        else:
            lines += [f"![{block.alt}]({block.path})", ""]
    return "\n".join(lines)


def _html_text(text: str) -> str:
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(text))


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1440px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left;
         vertical-align: top; }
th { background: #f2f2f2; }
td.pass { color: #1a6e1a; }
td.fail { color: #b00000; font-weight: bold; }
td.flag { color: #b00000; font-weight: bold; background: #fde8e8; }
td.expected { color: #6b4e00; background: #fff6d6; }
td.muted { color: #777; }
p.warning { border: 2px solid #b00000; background: #fde8e8; padding: 0.6em;
            font-weight: bold; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def render_html(blocks: Iterable[Block], *, title: str, run_dir: Path) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            parts.append(f"<h{level}>{_html_text(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            style = f' class="{block.style}"' if block.style else ""
            parts.append(f"<p{style}>{_html_text(block.text)}</p>")
        elif isinstance(block, Items):
            items = "".join(f"<li>{_html_text(item)}</li>" for item in block.items)
            parts.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            header = "".join(f"<th>{_html_text(h)}</th>" for h in block.header)
            body = "".join(
                "<tr>"
                + "".join(
                    f'<td class="{c.style}">{_html_text(c.text)}</td>'
                    if c.style
                    else f"<td>{_html_text(c.text)}</td>"
                    for c in row
                )
                + "</tr>"
                for row in block.rows
            )
            parts.append(f"<table><tr>{header}</tr>{body}</table>")
        else:
            data = base64.b64encode((run_dir / block.path).read_bytes()).decode()
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" '
                f'alt="{html.escape(block.alt)}"></figure>'
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# Formatting of summary figures

NONE = "\u2014"


def _percent(value: object) -> str:
    if not isinstance(value, int | float):
        return NONE
    return f"{100.0 * value:.2f}%"


def _ms(value: object) -> str:
    if not isinstance(value, int | float):
        return NONE
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def _seconds(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else NONE


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else NONE


def _observed(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "not measured"
    if isinstance(value, int) or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _gate_name(gate: dict[str, Any]) -> str:
    metric = str(gate.get("metric"))
    if gate.get("outcome"):
        metric += f"[{gate['outcome']}]"
    return metric


def _gate_counts(cell: CellEntry) -> str:
    gates = cell.document.get("gates") or []
    if not gates:
        return "none apply"
    passed = sum(1 for gate in gates if gate.get("passed"))
    expected = sum(
        1 for gate in gates if gate.get("passed") and gate.get("expected_loss")
    )
    text = f"{passed} passed, {len(gates) - passed} failed"
    return text + (f" ({expected} of them an expected loss)" if expected else "")


def _status_cell(cell: CellEntry) -> Cell:
    if cell.flagged:
        return Cell(f"{cell.status.value.upper()}: not a result", "flag")
    if cell.status is CellStatus.SKIPPED:
        return Cell("skipped", "muted")
    if cell.status is CellStatus.GATE_FAILED:
        return Cell("gate_failed", "fail")
    return Cell(cell.status.value, "pass")


def _summary_table(run: Run) -> Table:
    rows = []
    for scenario in run.scenarios:
        for variant in run.variants:
            cell = run.cell(scenario, variant)
            if cell is None:
                continue
            label = (scenario, variant.value)
            if cell.flagged or cell.figures is None:
                note = "see Cells not presented as results" if cell.flagged else NONE
                rows.append(
                    (Cell(label[0]), Cell(label[1]), _status_cell(cell))
                    + (Cell(note, "muted"),)
                    + (Cell(NONE, "muted"),) * 6
                )
                continue
            phase = cell.phase(cell.fault_phase) or {}
            whole = cell.phase("all") or {}
            ledger = cell.figures.get("ledger") or {}
            availability = _percent(phase.get("availability"))
            p99_during = _ms((phase.get("latency") or {}).get("p99_ms"))
            if not cell.has_faults:
                availability += " (steady)"
                p99_during += " (steady)"
            recover = cell.figures.get("time_to_recover_s")
            rows.append(
                (
                    Cell(label[0]),
                    Cell(label[1]),
                    _status_cell(cell),
                    Cell(availability),
                    Cell(p99_during),
                    Cell(_ms((whole.get("latency") or {}).get("p99_ms"))),
                    Cell(_count(ledger.get("silently_lost"))),
                    Cell(_count(ledger.get("duplicates"))),
                    Cell(
                        _seconds(recover)
                        if cell.has_faults and recover is not None
                        else ("not recovered" if cell.has_faults else "no fault")
                    ),
                    Cell(_gate_counts(cell)),
                )
            )
    return Table(
        header=(
            "scenario",
            "variant",
            "status",
            "availability during fault",
            "p99 during fault, ms",
            "p99 whole load, ms",
            "silently lost",
            "duplicates",
            "time to recover, s",
            "gates",
        ),
        rows=tuple(rows),
    )


def _definitions() -> Items:
    band = analysis.RECOVERY_AVAILABILITY_BAND
    return Items(
        (
            "Availability: accepted / sent, over the requests due in the phase. "
            "`during` runs from the first fault's actual injection to the last "
            "fault's actual clearing (from `events.csv`); a scenario without a "
            "fault shows its whole load, marked (steady).",
            "p99: the 99th percentile of latency measured from each request's due "
            "time, over every answered send (every outcome except dropped), exact "
            "on the raw values: a stalled sender cannot hide a stall.",
            "Silently lost: a 2xx the user received whose id has no stored string "
            "in the requestor ledger after the drain. Duplicates: ids stored by "
            "more than one generator, plus ids given a string another id already "
            "has. Both count every row of the cell, warm-up included.",
            "Time to recover: seconds from a fault's end until "
            f"{analysis.RECOVERY_HOLD_S} consecutive seconds each have an "
            f"availability at most {100 * band:g} percentage points below the "
            "before phase's, and a p99 no higher than the larger of "
            f"{analysis.RECOVERY_P99_FACTOR:g} times the before phase's p99 and "
            f"that p99 plus {analysis.RECOVERY_P99_MARGIN_MS:g} ms; the largest "
            "over the faults. Not recovered: that never happened before the load "
            "ended.",
            "Status: ok (every gate held), gate_failed (the figures are sound, a "
            "hypothesis did not hold), invalid (the load generator fell behind: "
            "the figures measure it, not the system), harness_error (the raw "
            "records contradict each other), skipped (not run, with the reason).",
        )
    )


def _scenario_table(run: Run, scenario: str) -> Table:
    rows = []
    for variant in run.variants:
        cell = run.cell(scenario, variant)
        if cell is None:
            continue
        if cell.flagged or cell.figures is None:
            rows.append(
                (Cell(variant.value), _status_cell(cell)) + (Cell(NONE, "muted"),) * 6
            )
            continue
        figures = cell.figures
        if cell.has_faults:
            availability = " / ".join(
                _percent((cell.phase(name) or {}).get("availability"))
                for name in ("before", "during", "after")
            )
        else:
            availability = _percent((cell.phase("steady") or {}).get("availability"))
        phase = cell.phase(cell.fault_phase) or {}
        latency = phase.get("latency") or {}
        outcomes = phase.get("outcomes") or {}
        others = "; ".join(
            f"{name} {count:,}"
            for name, count in outcomes.items()
            if name != Outcome.ACCEPTED.value and count
        )
        backlog = (figures.get("backlog") or {}).get("peak_backlog")
        rows.append(
            (
                Cell(variant.value),
                _status_cell(cell),
                Cell(availability),
                Cell(f"{_ms(latency.get('p50_ms'))} / {_ms(latency.get('p99_ms'))}"),
                Cell(others or "none"),
                Cell(_observed(backlog) if backlog is not None else NONE),
                Cell(_count((figures.get("ledger") or {}).get("silently_lost"))),
                Cell(_seconds(figures.get("drain_time_s"))),
            )
        )
    faults = _has_faults(run, scenario)
    return Table(
        header=(
            "variant",
            "status",
            "availability before / during / after" if faults else "availability",
            "p50 / p99 " + ("during" if faults else "steady") + ", ms",
            "not accepted " + ("during" if faults else "steady"),
            "peak backlog, messages",
            "silently lost",
            "drain, s",
        ),
        rows=tuple(rows),
    )


def _described_faults(run: Run, scenario: str) -> list[dict[str, Any]]:
    faults = run.scenario_description(scenario).get("faults") or []
    return [fault for fault in faults if isinstance(fault, dict)]


def _has_faults(run: Run, scenario: str) -> bool:
    if _described_faults(run, scenario):
        return True
    return any(cell.has_faults for cell in run.cells if cell.scenario == scenario)


def _fault_text(fault: dict[str, Any]) -> str:
    text = f"{fault.get('action')} {fault.get('target')} at {fault.get('at_s', 0):g} s"
    if fault.get("duration_s"):
        text += f" for {fault['duration_s']:g} s"
    if fault.get("latency_ms"):
        text += f" (+{fault['latency_ms']:g} ms per string)"
    if fault.get("error_rate"):
        text += f" (error rate {fault['error_rate']:g})"
    return text


def _scenario_intro(run: Run, scenario: str) -> str:
    described = run.scenario_description(scenario)
    parts = [str(described.get("description") or "").strip()]
    load = described.get("load") or {}
    if load:
        parts.append(
            f"Load: {load.get('rate_per_s', 0):g} requests/s, open loop, for "
            f"{load.get('duration_s', 0):g} s after a {load.get('warmup_s', 0):g} s "
            f"warm-up, then up to {load.get('drain_s', 0):g} s of drain."
        )
    faults = _described_faults(run, scenario)
    if faults:
        times = "; ".join(_fault_text(fault) for fault in faults)
        parts.append(f"Faults, in seconds from the load start: {times}.")
    else:
        parts.append("No fault.")
    return " ".join(part for part in parts if part)


_TIMELINE_READING = (
    "One column per variant, on a shared time axis in seconds from the load start. "
    "The warm-up (before 0) is drawn lighter and counts in no figure; the drain "
    "(grey, after the load end) has no new requests. The pink band is each fault "
    "as it actually happened, from its fault_injected to its fault_cleared event; "
    "dotted black lines are the planned times and solid dark-red lines the actual "
    "ones, so the gap between them is the harness's own delay. Markers at the top "
    "of the first row are processes exiting, starting, freezing and thawing. Rows, "
    "top to bottom: requests per second by the outcome the user saw, stacked, by "
    "due time (the height is the offered load, blue is accepted); the user's p50 "
    "(dashed) and p99 (solid) latency per second, from the due time, on a log "
    "axis; end-to-end completions per second, strings stored in the requestor "
    "ledger (solid) and confirmations in the generator ledgers (dashed); the "
    "end-to-end lag from the request reaching the requestor to its string being "
    "stored, p50 and p99 over the requests made in each second; and the state that "
    "explains the behaviour: the breaker for `sync-breaker`, the JetStream backlog "
    "for `queue-jetstream`. A skipped variant's column says why; a flagged one is "
    "framed in red and is not a result."
)

_PERCENTILE_READING = (
    "One line per variant, in its colour. The x axis stretches the tail: each step "
    "from 90 to 99 to 99.9 to 99.99 takes the same width, so what averages hide is "
    "visible. Left, what the user saw: latency from the due time of every answered "
    "send in the measured load (warm-up excluded, the fault included), so a line "
    "that steps up near the share of requests that fell in the fault shows the "
    "fault's cost. Right, end to end from the requestor ledger: from the request "
    "reaching the requestor to its string being stored. For a sync variant a 201 "
    "means stored, so its two panels nearly agree; a queue variant answers at once "
    "(left) and stores later (right), and the gap between its panels is the work "
    "the queue took off the user's path. A request that was never stored has no "
    "end-to-end time and is absent from the right panel: read the silently lost "
    "count in the tables, not here. Where a line turns dotted there are no more "
    "values to rank: it only carries the maximum on."
)

_MATRIX_READING = (
    "One group of bars per scenario, one bar per variant in its colour. "
    "Availability during the fault is the share of sent requests accepted between "
    "the fault's actual start and end (for a scenario without a fault: over the "
    "whole load, labelled no fault). Silently lost and duplicates count over the "
    "whole cell, warm-up included: a bar above zero is a promise broken, unless a "
    "gate marks the loss as documented behaviour (core NATS is at most once). "
    "Time to recover is measured from the fault's end. Where there is no bar the "
    "label says why: skipped, invalid, harness_error, not recovered, no fault."
)


def _generator_hints(action: str, variants: set[Variant]) -> list[str]:
    hints = []
    down = action in ("kill", "freeze")
    if Variant.SYNC_PLAIN in variants:
        hints.append(
            {
                "kill": "`sync-plain`: errors fill row 1 as soon as the generator "
                "is gone (the requestor answers 503, server_error, when its call "
                "fails) and row 3 falls to zero: the user feels the dependency's "
                "failure directly, for as long as it lasts.",
                "freeze": "`sync-plain`: every call waits out the call timeout, so "
                "row 2's p50 climbs to about that timeout (1 s by default) and row "
                "1 turns to timeout: a silent peer holds every caller.",
                "slow": "`sync-plain`: row 2 rises by the added delay: a "
                "synchronous caller inherits its dependency's latency.",
                "errors": "`sync-plain`: about the error rate's share of row 1 "
                "turns to server_error for as long as the fault lasts.",
            }.get(action, "`sync-plain`: the user sees the generator's fault directly.")
        )
    if Variant.SYNC_BREAKER in variants:
        if down:
            hints.append(
                "`sync-breaker`: in row 5 the band turns yellow (open) after a "
                "few failures, or after one call timeout when the generator is "
                "frozen; from then on row 1 fills with yellow breaker_open answers "
                "and row 2's p50 falls to around a millisecond: the breaker failing "
                "fast instead of waiting. Grey stripes are half-open probes; the "
                "band turns light grey (closed) at the first probe after the fault "
                "ends, so recovery lags the fault's end by up to the reset timeout."
            )
        elif action == "errors":
            hints.append(
                "`sync-breaker`: the band opens only when enough failures happen "
                "to come in a row: pybreaker counts consecutive failures, not a "
                "rate, so with part of the calls failing it flickers or stays "
                "closed, and the user sees much the same errors as without it."
            )
        else:
            hints.append(
                "`sync-breaker`: a slow call that ends before the timeout is no "
                "failure, so the band stays closed and row 2 rises as for "
                "`sync-plain`: a breaker does not help against slowness."
            )
    if Variant.QUEUE_CORE in variants:
        hints.append(
            "`queue-core`: row 1 stays accepted and row 2 flat; look at rows 3 and "
            "4 during the fault: requests accepted while no generator listens are "
            "never stored, because core NATS delivers only to a subscriber that is "
            "there at that moment. They are the cell's silently lost count."
            if down
            else "`queue-core`: the user is answered at once, so rows 1 and 2 "
            "barely move; the fault shows only in rows 3 and 4."
        )
    if Variant.QUEUE_JETSTREAM in variants:
        hints.append(
            "`queue-jetstream`: row 1 stays accepted and row 2 flat while row 3 "
            "falls to zero; in row 5 the backlog climbs for the length of the fault "
            "and drains after it, as row 3 shows a burst of completions above the "
            "offered rate and row 4 a lag up to the length of the outage: the work "
            "waited in the stream."
            if down
            else "`queue-jetstream`: the user is answered at once; failed or slow "
            "work shows as a higher lag in row 4 and, if the generator falls "
            "behind, a backlog in row 5."
        )
    return hints


def _timeline_hints(run: Run, scenario: str) -> list[str]:
    drawn = set()
    for variant in run.variants:
        cell = run.cell(scenario, variant)
        if cell is not None and cell.status is not CellStatus.SKIPPED:
            drawn.add(variant)
    faults = _described_faults(run, scenario)
    if not faults:
        return [
            "No fault: each variant's baseline. Every row should be flat: row 1 "
            "all accepted at the offered rate, a steady latency, completions "
            "tracking the offered rate with a small constant lag, no backlog and "
            "a closed breaker. What moves here is this machine's noise, the scale "
            "against which to read the fault scenarios."
        ]
    hints: list[str] = []
    for fault in faults:
        target = str(fault.get("target") or "")
        action = str(fault.get("action") or "")
        if target.startswith("generator"):
            hints += _generator_hints(action, drawn)
        elif target == "requestor":
            hints.append(
                "The requestor is the user-facing endpoint of every design, so "
                "while it is down row 1 turns refused (black: no HTTP answer at "
                "all) in every column. Look at rows 3 and 4 after its restart: "
                "work already handed on completes if its replies waited in a "
                "stream, and is gone if it lived only in the dead process."
            )
        elif target == "nats":
            hints.append(
                "Only the queue variants have a broker (the sync ones were "
                "skipped). While it is down the requestor cannot hand a request "
                "over, so look for row 1 turning to server_error (503) with row 2 "
                "staying low: it refuses at once instead of accepting what it "
                "cannot deliver. After the restart row 1 returns to accepted as "
                "the clients reconnect; for `queue-jetstream` row 5 shows what the "
                "stream held across the restart."
            )
    return list(dict.fromkeys(hints))


def _gate_table(run: Run) -> Table:
    rows = []
    for scenario in run.scenarios:
        for variant in run.variants:
            cell = run.cell(scenario, variant)
            if cell is None:
                continue
            for gate in cell.document.get("gates") or []:
                observed = _observed(gate.get("observed"))
                if gate.get("detail"):
                    observed += f" ({gate['detail']})"
                passed = bool(gate.get("passed"))
                if cell.flagged:
                    result = Cell(f"not judged: cell {cell.status.value}", "flag")
                elif gate.get("expected_loss"):
                    result = (
                        Cell("pass; expected: documented behaviour", "expected")
                        if passed
                        else Cell("FAIL: the documented loss did not show", "fail")
                    )
                else:
                    result = Cell("pass", "pass") if passed else Cell("FAIL", "fail")
                value = gate.get("value")
                expected = f"{gate.get('op')} {_observed(value)}"
                rows.append(
                    (
                        Cell(scenario),
                        Cell(_gate_name(gate)),
                        Cell(variant.value),
                        Cell(str(gate.get("phase"))),
                        Cell(observed),
                        Cell(expected),
                        result,
                        Cell(str(gate.get("why") or "")),
                    )
                )
    return Table(
        header=(
            "scenario",
            "gate",
            "variant",
            "phase",
            "observed",
            "expected",
            "result",
            "why",
        ),
        rows=tuple(rows),
    )


def _not_results(run: Run) -> list[str]:
    items = []
    for cell in run.cells:
        if cell.flagged or cell.status is CellStatus.SKIPPED:
            reasons = "; ".join(cell.reasons) or "no reason recorded"
            items.append(
                f"{cell.scenario} x `{cell.variant.value}`: {cell.status.value}. "
                f"{reasons}"
            )
    return items


def _run_notes(run: Run) -> list[str]:
    items = []
    for cell in run.cells:
        if cell.flagged or cell.status is CellStatus.SKIPPED:
            continue
        for note in cell.document.get("notes") or []:
            items.append(f"{cell.scenario} x `{cell.variant.value}`: {note}")
    return items


def _limits(run: Run) -> Items:
    machine = run.manifest.get("machine") or {}
    memory = machine.get("memory_bytes")
    memory_text = f", {memory / 1024**3:.1f} GiB of memory" if memory else ""
    cpus = machine.get("cpu_count")
    flagged = [c for c in run.cells if c.flagged]
    fault_counts = [
        int(((c.phase("during") or {}).get("latency") or {}).get("count") or 0)
        for c in run.cells
        if not c.flagged and c.phase("during") is not None
    ]
    items = [
        f"One machine: {machine.get('cpu_model') or 'CPU model not recorded'}, "
        f"{cpus if cpus else 'an unrecorded number of'} logical CPUs{memory_text}. "
        "Every service, the NATS server and the load generator run on it and share "
        "its CPUs, so absolute throughput and latency are this machine's; the "
        "comparison between variants within one run is what carries over.",
        "Loopback only: no network delay, loss or partition between the services. "
        "A real network adds its latency to every synchronous call, and makes a "
        "partition, not only a crash, possible.",
        "The load generator (one Locust process) shares the same cores with the "
        "services. A cell where it fell behind is marked invalid and none of its "
        "numbers is shown: more than "
        f"{analysis.MAX_DROPPED_FRACTION:.0%} of due requests dropped, less than "
        f"{analysis.MIN_ACHIEVED_RATE_FRACTION:.0%} of the offered rate sent, or "
        f"{analysis.LOADGEN_CPU_LIMIT_PERCENT:g}% CPU or more for "
        f"{analysis.LOADGEN_CPU_LIMIT_SAMPLES} consecutive seconds.",
        "The circuit breaker (pybreaker) opens after a number of consecutive "
        "failures (`--fail-max`, 5 by default) and one success resets the count: "
        "it does not measure a failure rate. A dependency that fails every other "
        "call never trips it, and one that fails half of its calls at random trips "
        "it only when enough failures happen to come in a row, so under partial "
        "failure the breaker's state says little about how much is failing.",
        "One nats-server: JetStream replication, clustering and leader elections "
        "are not measured.",
        "Breaker state and JetStream backlog are sampled once a second: a state "
        "that lasted less than a second may not show in the timelines.",
        "Percentiles are exact on the raw values, but a tail percentile rests on "
        "few of them: p99.9 of fewer than 1,000 answered sends is their maximum."
        + (
            f" The smallest fault phase of this run holds {min(fault_counts):,} "
            "answered sends."
            if fault_counts
            else ""
        ),
    ]
    if flagged:
        listed = "; ".join(
            f"{c.scenario} x {c.variant.value} ({c.status.value}: "
            f"{'; '.join(c.reasons) or 'no reason recorded'})"
            for c in flagged
        )
        items.append(f"Cells not presented as results: {listed}.")
    else:
        items.append("No cell of this run was marked invalid or harness_error.")
    if run.manifest.get("complete") is False:
        items.append("The run did not complete: only the cells listed here were run.")
    return Items(tuple(items))


def _when(value: object) -> str:
    if not isinstance(value, int | float):
        return NONE
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _manifest_table(run: Run) -> Table:
    manifest = run.manifest
    git = manifest.get("git") or {}
    commit = str(git.get("commit") or "not recorded")
    if git.get("dirty"):
        commit += " (with uncommitted changes)"
    argv = manifest.get("argv") or []
    rows: list[tuple[str, str]] = [
        ("results schema version", str(manifest.get("schema_version"))),
        ("commit", commit),
        ("profile", str(manifest.get("profile"))),
        ("seed", str(manifest.get("seed"))),
        ("command", " ".join(str(a) for a in argv) or NONE),
        ("started", _when(manifest.get("started_at_s"))),
        ("finished", _when(manifest.get("finished_at_s"))),
        ("wall time, s", _seconds(manifest.get("wall_s"))),
        ("complete", str(manifest.get("complete", NONE))),
    ]
    for key, value in (manifest.get("machine") or {}).items():
        rows.append((f"machine: {key}", str(value)))
    for key, value in (manifest.get("versions") or {}).items():
        rows.append((f"version: {key}", str(value or "not installed")))
    return Table(
        header=("item", "value"),
        rows=tuple((Cell(key), Cell(value)) for key, value in rows),
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _matrix_cell(cell: CellEntry) -> plots.MatrixCell:
    figures = cell.figures
    shown = not cell.flagged and cell.status is not CellStatus.SKIPPED and bool(figures)
    label = cell.status.value if not shown else ""
    if not shown or figures is None:
        return plots.MatrixCell(
            status=cell.status.value,
            shown=False,
            label=label or "no figures",
            availability_during=None,
            availability_phase=cell.fault_phase,
            silently_lost=None,
            duplicates=None,
            time_to_recover_s=None,
            has_faults=cell.has_faults,
        )
    ledger = figures.get("ledger") or {}
    return plots.MatrixCell(
        status=cell.status.value,
        shown=True,
        label="",
        availability_during=(cell.phase(cell.fault_phase) or {}).get("availability"),
        availability_phase=cell.fault_phase,
        silently_lost=ledger.get("silently_lost"),
        duplicates=ledger.get("duplicates"),
        time_to_recover_s=figures.get("time_to_recover_s"),
        has_faults=cell.has_faults,
    )


def _scenario_figures(run: Run, scenario: str, plots_dir: Path) -> tuple[Path, Path]:
    columns = []
    series = []
    for variant in run.variants:
        cell = run.cell(scenario, variant)
        if cell is None:
            columns.append(
                plots.Column(
                    variant=variant,
                    status="not run",
                    flagged=False,
                    timeline=None,
                    note="this run has no such cell",
                )
            )
            series.append(
                plots.PercentileSeries(
                    variant=variant, user=None, end_to_end=None, excluded="not run"
                )
            )
            continue
        if cell.status is CellStatus.SKIPPED:
            note = "; ".join(cell.reasons) or "no reason recorded"
            columns.append(
                plots.Column(
                    variant=variant,
                    status=cell.status.value,
                    flagged=False,
                    timeline=None,
                    note=note,
                )
            )
            series.append(
                plots.PercentileSeries(
                    variant=variant,
                    user=None,
                    end_to_end=None,
                    excluded=f"skipped ({note})",
                )
            )
            continue
        try:
            data = read_series(cell)
        except (RawFileError, OSError, sqlite3.Error) as exc:
            logger.warning("%s x %s: no figures: %s", scenario, variant.value, exc)
            columns.append(
                plots.Column(
                    variant=variant,
                    status=cell.status.value,
                    flagged=cell.flagged,
                    timeline=None,
                    note=f"raw files unreadable: {exc}",
                )
            )
            series.append(
                plots.PercentileSeries(
                    variant=variant,
                    user=None,
                    end_to_end=None,
                    excluded="raw files unreadable",
                )
            )
            continue
        columns.append(
            plots.Column(
                variant=variant,
                status=cell.status.value,
                flagged=cell.flagged,
                timeline=data.timeline,
                note="; ".join(cell.reasons) if cell.flagged else None,
            )
        )
        series.append(
            plots.PercentileSeries(
                variant=variant,
                user=data.user_curve,
                end_to_end=data.end_to_end_curve,
                excluded=f"{cell.status.value}, not a result" if cell.flagged else None,
            )
        )

    faults = "; ".join(_fault_text(f) for f in _described_faults(run, scenario))
    timeline = plots.timeline_figure(
        f"{scenario}: sync HTTP vs NATS queues, one column per variant",
        columns,
        plots_dir / f"timeline-{_slug(scenario)}.png",
        subtitle=f"fault: {faults}" if faults else "no fault: the baseline",
    )
    percentiles = plots.percentile_figure(
        f"{scenario}: latency by percentile over the measured load (warm-up excluded)",
        series,
        plots_dir / f"percentiles-{_slug(scenario)}.png",
    )
    return timeline, percentiles


def build_document(run: Run, plots_dir: Path) -> list[Block]:
    """Every block of the report; draws the figures into `plots_dir` on the way."""
    manifest = run.manifest
    git = manifest.get("git") or {}
    statuses = [cell.status for cell in run.cells]
    tally = ", ".join(
        f"{statuses.count(status)} {status.value}"
        for status in CellStatus
        if statuses.count(status)
    )
    blocks: list[Block] = [
        Heading(
            1, f"Sync HTTP vs NATS queues under load and faults: {run.directory.name}"
        ),
        Paragraph(
            "Four variants of one requestor/generator system under the same "
            "open-loop load and the same scheduled faults: `sync-plain` and "
            "`sync-breaker` (synchronous HTTP, the latter with a pybreaker circuit "
            "breaker) against `queue-core` (core NATS, at most once) and "
            "`queue-jetstream` (JetStream, durable). Every number here is computed "
            "by `bench.analysis` from the run folder's raw files (`requests.csv`, "
            "`events.csv`, `samples.csv`, the SQLite ledgers), and every figure is "
            "drawn from the same files."
        ),
        Paragraph(
            f"Profile `{manifest.get('profile')}`, seed {manifest.get('seed')}, "
            f"commit {str(git.get('commit') or 'not recorded')[:12]}"
            f"{' (uncommitted changes)' if git.get('dirty') else ''}, started "
            f"{_when(manifest.get('started_at_s'))}; {len(run.cells)} cells: "
            f"{tally or 'none'}."
        ),
    ]
    flagged = [cell for cell in run.cells if cell.flagged]
    if flagged:
        names = ", ".join(f"{c.scenario} x {c.variant.value}" for c in flagged)
        count = "1 cell is" if len(flagged) == 1 else f"{len(flagged)} cells are"
        blocks.append(
            Paragraph(
                f"{count} not a result (invalid or harness_error): {names}. No "
                "number of such a cell is shown in a table, and its timeline "
                "column is framed in red; the reasons are under Cells not "
                "presented as results.",
                "warning",
            )
        )
    if manifest.get("complete") is False:
        blocks.append(
            Paragraph(
                "This run did not complete: only the cells listed were run.",
                "warning",
            )
        )
    blocks += [
        Heading(2, "Summary"),
        _summary_table(run),
        _definitions(),
    ]

    for scenario in run.scenarios:
        timeline, percentiles = _scenario_figures(run, scenario, plots_dir)
        blocks += [
            Heading(2, f"Scenario {scenario}"),
            Paragraph(_scenario_intro(run, scenario)),
            _scenario_table(run, scenario),
            Heading(3, "Timeline"),
            Image(
                timeline.relative_to(run.directory).as_posix(),
                f"{scenario}: timeline of every variant",
            ),
            Paragraph(_TIMELINE_READING),
            Paragraph("What to look for:"),
            Items(tuple(_timeline_hints(run, scenario))),
            Heading(3, "Latency by percentile"),
            Image(
                percentiles.relative_to(run.directory).as_posix(),
                f"{scenario}: latency by percentile",
            ),
            Paragraph(_PERCENTILE_READING),
        ]

    matrix = plots.matrix_figure(
        "Across the matrix: availability during the fault, loss, duplicates, recovery",
        run.scenarios,
        run.variants,
        {(c.scenario, c.variant): _matrix_cell(c) for c in run.cells},
        plots_dir / MATRIX_PNG,
    )
    blocks += [
        Heading(2, "Across the matrix"),
        Image(matrix.relative_to(run.directory).as_posix(), "the matrix"),
        Paragraph(_MATRIX_READING),
        Heading(2, "Gates"),
        Paragraph(
            "Each gate is a hypothesis its scenario states about a variant, checked "
            "against the cell's figures; a figure that could not be measured fails "
            "its gate. `expected: documented behaviour` marks a gate that checks "
            "for a loss the design documents (core NATS is at most once): it "
            "passing confirms the limit, it is not a defect. Gates of a cell that "
            "is not a result are not judged."
        ),
        _gate_table(run),
        Heading(2, "Cells not presented as results"),
        Items(tuple(_not_results(run) or ["None: every cell that ran is a result."])),
    ]
    notes = _run_notes(run)
    if notes:
        blocks += [
            Paragraph("Notes the harness recorded on cells that are results:"),
            Items(tuple(notes)),
        ]
    blocks += [
        Heading(2, "Limits of this run"),
        _limits(run),
        Heading(2, "Manifest"),
        _manifest_table(run),
    ]
    return blocks


def write_report(run_dir: Path) -> Path:
    """Write `report.md`, `report.html` and `plots/` into `run_dir`; return the
    HTML's path. `ReportError` if `run_dir` is not a run folder this code reads."""
    started = time.perf_counter()
    run = read_run(run_dir)
    plots_dir = run_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    blocks = build_document(run, plots_dir)

    (run_dir / REPORT_MD).write_text(render_markdown(blocks))
    html_path = run_dir / REPORT_HTML
    html_path.write_text(
        render_html(blocks, title=f"Report: {run_dir.name}", run_dir=run_dir)
    )
    logger.info(
        "report of %s written in %.1f s: %s",
        run_dir,
        time.perf_counter() - started,
        html_path,
    )
    return html_path


# A fabricated run folder, for the report's tests and its performance check


FABRICATED_EPOCH_S = 1_750_000_000.0
FABRICATED_CELL_SPACING_S = 1_000.0
_FAIL_MAX = 5  # the sync-breaker's consecutive failures before it opens
_RESET_TIMEOUT_S = 2.0
_CALL_TIMEOUT_MS = 1_000.0


@dataclass
class _Fabricated:
    """The arrays of one fabricated cell, one entry per scheduled request."""

    due: FloatArray
    latency_ms: FloatArray
    status: IntArray
    outcome: npt.NDArray[np.object_]
    cause: npt.NDArray[np.object_]
    has_id: npt.NDArray[np.bool_]
    store_after_s: FloatArray  # accepted -> stored; NaN: never stored
    breaker: list[tuple[float, str]] = field(default_factory=list)  # (at_s, state)


def _answer(
    cell: _Fabricated,
    mask: npt.NDArray[np.bool_],
    *,
    outcome: Outcome,
    status: int,
    cause: str,
    latency_ms: float | FloatArray,
    has_id: bool = True,
) -> None:
    cell.outcome[mask] = outcome.value
    cell.status[mask] = status
    cell.cause[mask] = cause
    cell.latency_ms[mask] = (
        latency_ms if np.isscalar(latency_ms) else np.asarray(latency_ms)[mask]
    )
    cell.has_id[mask] = has_id
    cell.store_after_s[mask] = np.nan


def _fabricate_fault(
    cell: _Fabricated,
    variant: Variant,
    action: str,
    target: str,
    window: tuple[float, float],
    rng: np.random.Generator,
    *,
    error_rate: float,
    slow_ms: float,
) -> None:
    """Rewrite the requests due in `window` as `variant` answers them."""
    start, end = window
    due = cell.due
    inside = (due >= start) & (due < end)
    if target == "requestor":
        _answer(
            cell,
            inside,
            outcome=Outcome.REFUSED,
            status=0,
            cause="connection_refused",
            latency_ms=0.4,
            has_id=False,
        )
        return
    if target == "nats":
        _answer(
            cell,
            inside,
            outcome=Outcome.SERVER_ERROR,
            status=503,
            cause="broker_unavailable",
            latency_ms=1.2,
        )
        return
    if action == "slow":
        if variant.is_queue:
            cell.store_after_s[inside] += slow_ms / 1000.0
        else:
            cell.latency_ms[inside] += slow_ms
        return
    if action == "errors":
        failing = inside & (rng.random(due.size) < error_rate)
        if variant is Variant.QUEUE_JETSTREAM:
            cell.store_after_s[failing] += 0.25  # negatively acked, then retried
        elif variant is Variant.QUEUE_CORE:
            cell.store_after_s[failing] = np.nan
        else:
            _answer(
                cell,
                failing,
                outcome=Outcome.SERVER_ERROR,
                status=503,
                cause="peer_failed",
                latency_ms=cell.latency_ms.copy(),
            )
        return

    frozen = action == "freeze"
    if variant is Variant.QUEUE_CORE:
        cell.store_after_s[inside] = np.nan
        return
    if variant is Variant.QUEUE_JETSTREAM:
        cell.store_after_s[inside] = (end - due[inside]) + 0.05
        return

    def fail(mask: npt.NDArray[np.bool_]) -> None:
        if frozen:
            _answer(
                cell,
                mask,
                outcome=Outcome.TIMEOUT,
                status=504,
                cause="timeout",
                latency_ms=_CALL_TIMEOUT_MS + cell.latency_ms,
            )
        else:
            _answer(
                cell,
                mask,
                outcome=Outcome.SERVER_ERROR,
                status=503,
                cause="peer_unavailable",
                latency_ms=1.0,
            )

    if variant is Variant.SYNC_PLAIN:
        fail(inside)
        return
    # The breaker opens on the fifth consecutive failure; every reset timeout one
    # probe is let through (half-open), until one succeeds after the fault.
    rate = due.size / max(float(due[-1] - due[0]), 1e-9)
    opened = start + (_CALL_TIMEOUT_MS / 1000.0 if frozen else _FAIL_MAX / rate)
    probes = opened + _RESET_TIMEOUT_S * np.arange(1, 1000)
    closed = float(probes[np.searchsorted(probes, end)])
    probe_s = _CALL_TIMEOUT_MS / 1000.0 if frozen else 0.002
    fail(inside & (due < opened))
    rejected = (due >= opened) & (due < closed)
    _answer(
        cell,
        rejected,
        outcome=Outcome.BREAKER_OPEN,
        status=503,
        cause="breaker_open",
        latency_ms=0.3,
    )
    failed_probes = probes[probes < end]
    first_after = np.searchsorted(due, failed_probes)
    probe_rows = np.zeros(due.size, dtype=bool)
    probe_rows[first_after[first_after < due.size]] = True
    fail(probe_rows)
    cell.breaker.append((opened, "open"))
    for probe in failed_probes:
        cell.breaker += [(probe, "half-open"), (probe + probe_s, "open")]
    cell.breaker += [(closed, "half-open"), (closed + 0.002, "closed")]


def _fabricate_cell(
    directory: Path,
    scenario: Scenario,
    variant: Variant,
    *,
    warmup_start: float,
    rows: int | None,
    seed: int,
    loadgen_cpu_percent: float,
) -> analysis.CellPlan:
    """Write one cell's raw files as `bench run` lays them out; return its plan."""
    from bench.events import EventLog, SampleWriter
    from service_core.ledger import GeneratorLedger, RequestorLedger

    rng = np.random.default_rng(seed)
    load = scenario.load
    load_start = warmup_start + load.warmup_s
    load_end = load_start + load.duration_s
    drain_end = load_end + min(load.drain_s, 2.0)
    total_s = load.warmup_s + load.duration_s
    n = rows if rows is not None else round(load.rate_per_s * total_s)
    rate = n / total_s
    due = warmup_start + (np.arange(n) + rng.uniform(0.0, 0.9, n)) / rate
    base_ms = rng.lognormal(np.log(3.0 if not variant.is_queue else 1.5), 0.35, n)
    cell = _Fabricated(
        due=due,
        latency_ms=base_ms,
        status=np.full(n, 202 if variant.is_queue else 201, dtype=np.int64),
        outcome=np.full(n, Outcome.ACCEPTED.value, dtype=object),
        cause=np.full(n, "", dtype=object),
        has_id=np.ones(n, dtype=bool),
        store_after_s=(
            rng.lognormal(np.log(0.004), 0.3, n) if variant.is_queue else np.zeros(n)
        ),
    )
    events = EventLog()
    events.add(EventKind.PHASE, "harness", "warmup", at_s=warmup_start, planned=True)
    events.add(EventKind.PHASE, "harness", "load", at_s=load_start, planned=True)
    events.add(EventKind.PHASE, "harness", "load_end", at_s=load_end, planned=True)
    windows = []
    for step in scenario.faults:
        planned_start = load_start + step.at_s
        planned_end = planned_start + step.duration_s
        injected, cleared = planned_start + 0.004, planned_end + 0.006
        action = step.action.value
        events.add(
            EventKind.FAULT_PLANNED,
            step.target,
            f"{action} start",
            at_s=planned_start,
            planned=True,
        )
        events.add(
            EventKind.FAULT_PLANNED,
            step.target,
            f"{action} end",
            at_s=planned_end,
            planned=True,
        )
        events.add(
            EventKind.FAULT_INJECTED, step.target, f"{action}: injected", at_s=injected
        )
        events.add(
            EventKind.FAULT_CLEARED, step.target, f"{action}: cleared", at_s=cleared
        )
        healthy = cleared
        if action == "kill":
            healthy = cleared + 0.3
            events.add(
                EventKind.PROCESS_EXIT,
                step.target,
                "PID 4242 exit code -9",
                at_s=injected + 0.001,
            )
            events.add(EventKind.PROCESS_START, step.target, "PID 4343", at_s=cleared)
            events.add(EventKind.PROCESS_START, step.target, "healthy", at_s=healthy)
        elif action == "freeze":
            events.add(
                EventKind.PROCESS_FROZEN, step.target, "PID 4242", at_s=injected + 0.2
            )
            events.add(
                EventKind.PROCESS_THAWED, step.target, "PID 4242", at_s=cleared + 0.2
            )
        windows.append((injected, healthy))
        _fabricate_fault(
            cell,
            variant,
            action,
            step.target,
            (injected, healthy),
            rng,
            error_rate=step.error_rate,
            slow_ms=step.latency_ms,
        )
    for at_s, state in cell.breaker:
        events.add(EventKind.BREAKER, "requestor:generator-1", state, at_s=at_s)
    events.add(EventKind.PHASE, "harness", "drain", at_s=load_end + 0.05)
    events.add(EventKind.PHASE, "harness", "drain_end", at_s=drain_end)

    # The client's rows.
    directory.mkdir(parents=True, exist_ok=True)
    done = due + cell.latency_ms / 1000.0
    sent = due + np.minimum(0.0002, cell.latency_ms / 2000.0)
    ids = np.array([f"{seed:08x}{row:024x}" for row in range(n)], dtype=object)
    pd.DataFrame(
        {
            "seq": np.arange(n, dtype=np.int64),
            "due_s": due,
            "sent_s": sent,
            "done_s": done,
            "latency_ms": cell.latency_ms,
            "status": cell.status,
            "outcome": cell.outcome,
            "cause": cell.cause,
            "request_id": np.where(cell.has_id, ids, ""),
        }
    ).to_csv(directory / "requests.csv", index=False, float_format="%.6f", na_rep="")

    # The ledgers: a row for every id the requestor gave; stored rows also at the
    # generator. A JetStream work queue hands its backlog over no faster than the
    # generator drains it, four times the offered rate here.
    accepted = cell.outcome == Outcome.ACCEPTED.value
    requested_at = due + 0.0001
    if variant.is_queue:
        accepted_at = np.where(accepted, done - 0.0001, np.nan)
        earliest = accepted_at + cell.store_after_s
        if variant is Variant.QUEUE_JETSTREAM:
            step_s = 1.0 / (4.0 * rate)
            order = np.arange(n) * step_s
            queued = np.where(np.isnan(earliest), -np.inf, earliest - order)
            earliest = np.where(
                np.isnan(earliest), np.nan, np.maximum.accumulate(queued) + order
            )
        stored_at = np.where(accepted, earliest, np.nan)
        confirmed_at = stored_at + 0.003
    else:
        stored_at = np.where(accepted, done - 0.0001, np.nan)
        accepted_at = stored_at
        confirmed_at = stored_at + rng.uniform(0.01, 0.5, n)
    rows_with_id = np.flatnonzero(cell.has_id)
    is_stored = ~np.isnan(stored_at)

    def nullable(values: FloatArray) -> list[float | None]:
        return [None if math.isnan(v) else v for v in values.tolist()]

    id_list = ids[rows_with_id].tolist()
    stored_ids = is_stored[rows_with_id]
    requestor_rows = zip(
        id_list,
        [64] * len(id_list),
        np.where(
            stored_ids,
            "confirmed",
            np.where(accepted[rows_with_id], "accepted", "failed"),
        ).tolist(),
        [
            None if ok else cause
            for ok, cause in zip(
                accepted[rows_with_id].tolist(),
                cell.cause[rows_with_id].tolist(),
                strict=True,
            )
        ],
        [i if s else None for i, s in zip(id_list, stored_ids.tolist(), strict=True)],
        ["generator-1" if s else None for s in stored_ids.tolist()],
        requested_at[rows_with_id].tolist(),
        nullable(accepted_at[rows_with_id]),
        nullable(stored_at[rows_with_id] - 0.0005),
        nullable(stored_at[rows_with_id]),
        nullable(confirmed_at[rows_with_id]),
        stored_ids.astype(np.int64).tolist(),
        strict=True,
    )
    stored_rows = np.flatnonzero(is_stored)
    generator_rows = zip(
        ids[stored_rows].tolist(),
        [64] * stored_rows.size,
        ids[stored_rows].tolist(),
        ["generator-1"] * stored_rows.size,
        requested_at[stored_rows].tolist(),
        (stored_at[stored_rows] - 0.0005).tolist(),
        confirmed_at[stored_rows].tolist(),
        [1] * stored_rows.size,
        [1] * stored_rows.size,
        strict=True,
    )
    ledgers = directory / "ledgers"
    for kind, path, sql, table in (
        (
            RequestorLedger,
            ledgers / analysis.REQUESTOR_LEDGER,
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            requestor_rows,
        ),
        (
            GeneratorLedger,
            ledgers / "generator-1.sqlite3",
            "INSERT INTO strings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            generator_rows,
        ),
    ):
        kind(path).close()
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN")
            db.executemany(sql, table)
            db.execute("COMMIT")
        finally:
            db.close()

    # Once-a-second samples, as the sampler writes them.
    samples = SampleWriter(directory / "samples.csv")
    ticks = np.arange(math.ceil(warmup_start), drain_end) + 0.5
    in_stream = np.sort(accepted_at[accepted]) if variant.is_queue else None
    left_stream = np.sort(stored_at[is_stored]) if variant.is_queue else None
    breaker_times = np.array([at for at, _ in cell.breaker] or [np.inf])
    breaker_codes = [BREAKER_STATE_CODES[state] for _, state in cell.breaker]
    for tick in ticks.tolist():
        during_load = load_start <= tick <= load_end
        samples.add(
            tick,
            "locust",
            "cpu_percent",
            "",
            loadgen_cpu_percent if during_load else 20.0,
        )
        samples.add(tick, "requestor", "cpu_percent", "", 30.0)
        samples.add(tick, "requestor", "rss_bytes", "", 60e6)
        if variant is Variant.SYNC_BREAKER:
            latest = int(np.searchsorted(breaker_times, tick, side="right"))
            code = breaker_codes[latest - 1] if latest else 0
            samples.add(tick, "requestor", "breaker_state", "generator-1", code)
        if (
            variant is Variant.QUEUE_JETSTREAM
            and in_stream is not None
            and left_stream is not None
        ):
            held = float(
                np.searchsorted(in_stream, tick) - np.searchsorted(left_stream, tick)
            )
            samples.add(tick, "jetstream", "stream_messages", "REQUESTS", held)
            samples.add(tick, "jetstream", "pending", "REQUESTS/generators", held)
            samples.add(
                tick, "jetstream", "ack_pending", "REQUESTS/generators", min(held, 64.0)
            )
    samples.close()
    for name in ("requestor", "generator-1", *(("nats",) if variant.is_queue else ())):
        events.add(
            EventKind.PROCESS_EXIT, name, "stopped, exit code 0", at_s=drain_end + 0.1
        )
    events.write(directory / "events.csv")

    return analysis.CellPlan(
        scenario=scenario.name,
        variant=variant,
        warmup_start_s=warmup_start,
        load_start_s=load_start,
        load_end_s=load_end,
        drain_end_s=drain_end,
        offered_rate_per_s=rate,
        faults=tuple(
            analysis.FaultWindow(
                start_s=load_start + step.at_s,
                end_s=load_start + step.end_s if step.duration_s else None,
                target=step.target,
                action=step.action.value,
            )
            for step in scenario.faults
        ),
        gates=tuple(scenario.gates),
        scheduled_requests=n,
    )


def fabricate_run(
    run_dir: Path,
    *,
    scenarios: Sequence[str] = ("steady", "generator-kill", "broker-kill"),
    variants: Sequence[Variant] = tuple(Variant),
    profile: str = "quick",
    seed: int = 1,
    rows: int | None = None,
    invalid: Iterable[tuple[str, Variant]] = (),
) -> Path:
    """Write a run folder laid out as `bench run` lays one out, without a stack.

    The scenarios are the packaged ones under `profile`; each variant answers its
    faults in the way its design does (the sync ones fail or fail fast, core NATS
    loses what it accepted while no generator listens, JetStream holds a backlog and
    drains it), with plausible latencies. Each cell's `summary.json` is what
    `bench.analysis.summarise` makes of it. `rows` fixes the request rows of every
    cell run (the rate follows). A cell in `invalid` gets a load generator at 97%
    CPU, which the analysis marks invalid.
    """
    from bench.manifest import build_manifest
    from bench.scenario import PROFILES, load_scenarios

    available = load_scenarios()
    chosen = [available[name].scaled(PROFILES[profile]) for name in scenarios]
    flagged = set(invalid)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(
        repo=Path(__file__).resolve().parent.parent,
        seed=seed,
        profile=profile,
        argv=["fabricated by bench.report.fabricate_run"],
        scenarios=[
            {
                "name": s.name,
                "description": s.description,
                "load": vars(s.load),
                "faults": [{**vars(f), "action": f.action.value} for f in s.faults],
                "gates": [dataclasses.asdict(gate) for gate in s.gates],
                "generators": s.generators,
                "file": str(s.path) if s.path else None,
            }
            for s in chosen
        ],
    )
    manifest["variants"] = [variant.value for variant in variants]
    manifest["started_at_s"] = FABRICATED_EPOCH_S

    documents = []
    for index, (scenario, variant) in enumerate(
        (s, v) for s in chosen for v in variants
    ):
        directory = run_dir / scenario.name / variant.value
        directory.mkdir(parents=True, exist_ok=True)
        reason = scenario.skip_reason(variant)
        if reason is not None:
            document: dict[str, Any] = {
                "schema_version": RESULTS_SCHEMA_VERSION,
                "scenario": scenario.name,
                "variant": variant.value,
                "status": CellStatus.SKIPPED.value,
                "reasons": [reason],
            }
        else:
            plan = _fabricate_cell(
                directory,
                scenario,
                variant,
                warmup_start=FABRICATED_EPOCH_S + index * FABRICATED_CELL_SPACING_S,
                rows=rows,
                seed=seed * 1000 + index,
                loadgen_cpu_percent=97.0
                if (scenario.name, variant) in flagged
                else 45.0,
            )
            document = analysis.summarise(directory, plan).to_json()
            document["notes"] = []
        (directory / "summary.json").write_text(json.dumps(document, indent=2) + "\n")
        documents.append(document)

    manifest["finished_at_s"] = FABRICATED_EPOCH_S + len(documents) * 60.0
    manifest["wall_s"] = len(documents) * 60.0
    manifest["complete"] = True
    (run_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, default=str) + "\n"
    )
    (run_dir / "summary.json").write_text(
        json.dumps(
            {"schema_version": RESULTS_SCHEMA_VERSION, "cells": documents},
            indent=2,
        )
        + "\n"
    )
    return run_dir


# The report's process reads its own high-water mark from /proc: `getrusage`'s
# ru_maxrss survives exec on Linux, so in a child it would report the parent's
# fabrication as well.
_PERF_CHILD = """
import json, resource, sys, time
from pathlib import Path
from bench.report import write_report
started = time.perf_counter()
path = write_report(Path(sys.argv[1]))
elapsed = time.perf_counter() - started
peak_kib = None
try:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak_kib = int(line.split()[1])
except OSError:
    pass
if peak_kib is None:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"report_s": elapsed, "peak_rss_bytes": peak_kib * 1024,
                  "report": str(path)}))
"""


def perf_million(tmp_dir: Path, *, rows: int = PERF_ROWS) -> dict[str, Any]:
    """Fabricate a run with `rows` request rows in one cell; time its report.

    The cell is generator-kill x queue-jetstream under the default profile, with
    ledgers of matching size. The report runs in a fresh Python process, so that
    its peak resident memory (VmHWM, the process's high-water mark) is the
    report's own and not the fabrication's; `wall_s` includes that process's
    start and imports, `report_s` is `write_report` alone. Returns the measurements
    and whether they are within `PERF_LIMIT_S` and `PERF_LIMIT_BYTES`.
    """
    run_dir = tmp_dir / "perf-run"
    started = time.perf_counter()
    fabricate_run(
        run_dir,
        scenarios=("generator-kill",),
        variants=(Variant.QUEUE_JETSTREAM,),
        profile="default",
        rows=rows,
    )
    fabricate_s = time.perf_counter() - started

    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", _PERF_CHILD, str(run_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall_s = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(
            f"the report process failed with exit code {child.returncode}: "
            f"{child.stderr.strip()[-2000:]}"
        )
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    result = {
        "rows": rows,
        "fabricate_s": round(fabricate_s, 2),
        "report_s": round(measured["report_s"], 2),
        "wall_s": round(wall_s, 2),
        "peak_rss_bytes": int(measured["peak_rss_bytes"]),
        "report": measured["report"],
        "limit_s": PERF_LIMIT_S,
        "limit_bytes": PERF_LIMIT_BYTES,
    }
    result["within_limits"] = (
        wall_s < PERF_LIMIT_S and result["peak_rss_bytes"] < PERF_LIMIT_BYTES
    )
    logger.info("report of %d rows: %s", rows, result)
    return result

"""Run the matrix: every scenario against every variant, one fresh stack per cell.

One cell: build a stack in the cell's folder; start the Locust process first (it
boots while the services do, and waits for the schedule's start time); start and
check every service; warm up; drive the load while the fault runner injects the
scenario's faults; keep the load through recovery; let Locust finish its schedule;
drain (until every accepted request is stored and confirmed, or the drain window
ends); stop the stack gracefully; then summarise the raw files and check the gates.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench import analysis
from bench.collect import ProcessWatcher, Sampler
from bench.events import EventLog, SampleWriter
from bench.faults import FaultRunner
from bench.load import LoadGenerator, LoadSettings
from bench.manifest import build_manifest
from bench.records import RESULTS_SCHEMA_VERSION, EventKind
from bench.scenario import Profile, Scenario
from bench.schedule import arrival_offsets
from bench.stack import (
    QUEUE_ACK_WAIT_S,
    Stack,
    StackError,
    StackOptions,
    Variant,
    build_stack,
)

logger = logging.getLogger(__name__)

# Locust takes one to two seconds to import gevent and start its users; the schedule
# starts this long after the Locust process, while the services boot meanwhile.
LOAD_BOOT_S = 1.6
TICK_S = 0.05
DRAIN_POLL_S = 0.2


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    scenarios: Sequence[Scenario]
    variants: Sequence[Variant]
    profile: Profile
    seed: int
    out_dir: Path
    rate_per_s: float | None = None
    argv: Sequence[str] = ()


@dataclass
class CellResult:
    scenario: str
    variant: Variant
    directory: Path
    status: analysis.CellStatus
    reasons: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    wall_s: float = 0.0


class Progress(Protocol):
    def __call__(self, line: str, *, final: bool = False) -> None: ...


# Stopping the stack, the drain of a healthy cell and the summary take about this
# long on the development machine; it only feeds the estimate of the time left.
CELL_OVERHEAD_S = 2.5


def _planned_cell_s(scenario: Scenario) -> float:
    load = scenario.load
    return LOAD_BOOT_S + load.warmup_s + load.duration_s + CELL_OVERHEAD_S


class _Labelled:
    """Progress lines of one cell, prefixed with the cell's label."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.label = label

    def __call__(self, line: str, *, final: bool = False) -> None:
        self.progress(f"{self.label}  {line}", final=final)


def cell_dir(out_dir: Path, scenario: str, variant: Variant) -> Path:
    return out_dir / scenario / variant.value


def run_matrix(options: RunOptions, progress: Progress) -> list[CellResult]:
    """Run every cell; write the manifest and the run's summaries as it goes."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    scaled = [
        scenario.scaled(options.profile, options.rate_per_s)
        for scenario in options.scenarios
    ]
    manifest = build_manifest(
        repo=Path(__file__).resolve().parent.parent,
        seed=options.seed,
        profile=options.profile.name,
        argv=list(options.argv),
        scenarios=[_describe(scenario) for scenario in scaled],
    )
    manifest["variants"] = [variant.value for variant in options.variants]
    manifest["started_at_s"] = time.time()
    write_json(options.out_dir / "manifest.json", manifest)

    cells = [(s, v) for s in scaled for v in options.variants]
    planned_s = [
        0.0 if scenario.skip_reason(variant) else _planned_cell_s(scenario)
        for scenario, variant in cells
    ]
    results: list[CellResult] = []
    started = time.monotonic()
    try:
        for index, (scenario, variant) in enumerate(cells):
            left_s = sum(planned_s[index:])
            label = (
                f"[{index + 1}/{len(cells)}, ~{left_s / 60:.1f} min left] "
                f"{scenario.name} x {variant.value}"
            )
            reason = scenario.skip_reason(variant)
            directory = cell_dir(options.out_dir, scenario.name, variant)
            if reason is not None:
                result = _skipped(scenario, variant, directory, reason)
            else:
                result = run_cell(
                    scenario,
                    variant,
                    directory,
                    seed=options.seed,
                    progress=_Labelled(progress, label),
                )
            results.append(result)
            progress(
                f"{label}  {result.status.value}  {'; '.join(result.reasons)}",
                final=True,
            )
    finally:
        manifest["finished_at_s"] = time.time()
        manifest["wall_s"] = round(time.monotonic() - started, 3)
        manifest["complete"] = len(results) == len(cells)
        write_json(options.out_dir / "manifest.json", manifest)
        write_run_summary(options.out_dir, results)
    return results


def run_cell(
    scenario: Scenario,
    variant: Variant,
    directory: Path,
    *,
    seed: int,
    progress: Progress,
) -> CellResult:
    """Run one scenario against one variant in `directory`; never raises for a
    failure of the system under test, only records it."""
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    events = EventLog()
    samples = SampleWriter(directory / "samples.csv")
    stack = build_stack(
        variant,
        directory,
        StackOptions(
            generators=scenario.generators, service_flags=scenario.service_flags
        ),
    )
    load_spec = scenario.load
    start_at = time.time() + LOAD_BOOT_S
    load_start = start_at + load_spec.warmup_s
    load_end = load_start + load_spec.duration_s
    load = LoadGenerator(
        LoadSettings(
            out_dir=directory,
            rate_per_user_per_s=load_spec.rate_per_s,
            duration_s=load_spec.warmup_s + load_spec.duration_s,
            seed=seed,
            start_at_s=start_at,
        ),
        host=stack.requestor_url,
    )
    sampler = Sampler(stack, samples, events, extra_pids=lambda: {"locust": load.pid})
    watcher = ProcessWatcher(stack, events)
    reasons: list[str] = []
    drain_end = load_end
    sampling = False
    try:
        load.start()
        stack.start()
        if time.time() > start_at:
            reasons.append(
                f"the stack was healthy {time.time() - start_at:.2f} s after the "
                "load began; the warm-up absorbed it"
            )
        events.add(EventKind.PHASE, "harness", "warmup", at_s=start_at, planned=True)
        events.add(EventKind.PHASE, "harness", "load", at_s=load_start, planned=True)
        events.add(EventKind.PHASE, "harness", "load_end", at_s=load_end, planned=True)
        sampler.start()
        sampling = True
        faults = FaultRunner(stack, scenario.faults, load_start, events)
        while time.time() < load_end:
            faults.tick()
            watcher.poll()
            _report(progress, load, load_start, load_end, "load")
            time.sleep(TICK_S)
        faults.finish()
        watcher.poll()
        events.add(EventKind.PHASE, "harness", "drain")
        drain_end = drain(
            stack, load_end + _drain_window_s(scenario, variant), watcher.poll, load
        )
        if load.alive:
            reasons.append("Locust did not finish its schedule by itself; stopped")
            load.stop()
        events.add(EventKind.PHASE, "harness", "drain_end", at_s=drain_end)
    except StackError as exc:
        logger.error("%s x %s: %s", scenario.name, variant.value, exc)
        reasons.append(f"harness error: {exc}")
    except KeyboardInterrupt:
        reasons.append("interrupted")
        raise
    finally:
        stop_cell(stack, load, sampler if sampling else None, events, samples)

    plan = analysis.CellPlan(
        scenario=scenario.name,
        variant=variant,
        warmup_start_s=start_at,
        load_start_s=load_start,
        load_end_s=load_end,
        drain_end_s=drain_end,
        offered_rate_per_s=load_spec.rate_per_s,
        faults=tuple(
            analysis.FaultWindow(
                target=step.target,
                action=step.action.value,
                start_s=load_start + step.at_s,
                end_s=load_start + step.end_s if step.duration_s else None,
            )
            for step in scenario.faults
        ),
        gates=scenario.gates,
        scheduled_requests=len(
            arrival_offsets(
                load.settings.rate_per_user_per_s,
                load.settings.duration_s,
                load.settings.seed,
                process=load.settings.arrival,
            )
        ),
    )
    return finish_cell(plan, directory, reasons, started)


def stop_cell(
    stack: Stack,
    load: LoadGenerator,
    sampler: Sampler | None,
    events: EventLog,
    samples: SampleWriter,
) -> None:
    """Stop whatever still runs (sampler, load, then the stack, each process recorded
    with its exit code) and write the cell's `events.csv` and `samples.csv`."""
    if sampler is not None:
        sampler.stop()
    if load.alive:
        load.stop()
    for name, code in stack.stop().items():
        events.add(EventKind.PROCESS_EXIT, name, f"stopped, exit code {code}")
    events.write(stack.run_dir / "events.csv")
    samples.close()


def finish_cell(
    plan: analysis.CellPlan, directory: Path, reasons: list[str], started: float
) -> CellResult:
    """Summarise a cell's raw files, check its gates, write its `summary.json`."""
    harness_failed = any(reason.startswith("harness error") for reason in reasons)
    try:
        summary = analysis.summarise(directory, plan)
    except (OSError, ValueError, sqlite3.Error) as exc:
        reasons.append(f"harness error: the cell could not be summarised: {exc}")
        return CellResult(
            scenario=plan.scenario,
            variant=plan.variant,
            directory=directory,
            status=analysis.CellStatus.HARNESS_ERROR,
            reasons=reasons,
            wall_s=time.monotonic() - started,
        )
    document = summary.to_json()
    if harness_failed:
        document["status"] = analysis.CellStatus.HARNESS_ERROR.value
    document["notes"] = reasons
    write_json(directory / "summary.json", document)
    return CellResult(
        scenario=plan.scenario,
        variant=plan.variant,
        directory=directory,
        status=analysis.CellStatus(document["status"]),
        reasons=[*reasons, *document.get("reasons", [])],
        summary=document,
        wall_s=time.monotonic() - started,
    )


def _drain_window_s(scenario: Scenario, variant: Variant) -> float:
    """How long after the load the harness waits for the ledgers to settle.

    A JetStream message a killed consumer held comes back only after the ack wait,
    so the window is never shorter than that.
    """
    if variant is Variant.QUEUE_JETSTREAM:
        return max(scenario.load.drain_s, QUEUE_ACK_WAIT_S + 1.0)
    return scenario.load.drain_s


def drain(
    stack: Stack, deadline_s: float, poll: Callable[[], None], load: LoadGenerator
) -> float:
    """Wait until Locust has written its last rows and every accepted request is
    stored and confirmed, or until the deadline.

    Reads the ledgers directly (WAL lets a reader in beside the writer). Returns the
    time the drain ended.
    """
    requestor = stack.run_dir / "ledgers" / "requestor.sqlite3"
    generators = [
        stack.run_dir / "ledgers" / f"{name}.sqlite3" for name in stack.generator_urls
    ]
    # Locust answers for its last requests within its own timeout; past the drain's
    # deadline it gets that long more before it is stopped.
    load_deadline_s = max(deadline_s, time.time() + load.stop_timeout_s + 5)
    while time.time() < max(deadline_s, load_deadline_s if load.alive else 0.0):
        poll()
        settled = time.time() >= deadline_s or _open_work(requestor, generators) == 0
        if settled and not load.alive:
            break
        time.sleep(DRAIN_POLL_S)
    return time.time()


def _open_work(requestor: Path, generators: list[Path]) -> int:
    """Accepted but not yet confirmed, at the requestor and at every generator."""
    try:
        total = _count(
            requestor,
            "SELECT count(*) FROM requests WHERE status IN ('accepted', 'stored')",
        )
        for path in generators:
            total += _count(
                path, "SELECT count(*) FROM strings WHERE confirmed_at IS NULL"
            )
    except sqlite3.Error:
        return -1
    return total


def _count(path: Path, query: str) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as db:
        value: int = db.execute(query).fetchone()[0]
    return value


def _report(
    progress: Progress, load: LoadGenerator, start: float, end: float, phase: str
) -> None:
    now = time.time()
    status = load.status()
    if status is None:
        progress(f"{phase} starting")
        return
    errors = status["done"] - status["outcomes"].get("accepted", 0)
    progress(
        f"{phase} {max(0.0, now - start):5.1f}/{end - start:.1f} s  "
        f"rate {status['achieved_rate_per_s']:6.1f}/s  "
        f"errors {errors}  dropped {status['dropped']}"
    )


def _skipped(
    scenario: Scenario, variant: Variant, directory: Path, reason: str
) -> CellResult:
    directory.mkdir(parents=True, exist_ok=True)
    document = analysis.CellSummary.skipped(
        scenario=scenario.name, variant=variant, reason=reason
    ).to_json()
    write_json(directory / "summary.json", document)
    return CellResult(
        scenario=scenario.name,
        variant=variant,
        directory=directory,
        status=analysis.CellStatus.SKIPPED,
        reasons=[reason],
        summary=document,
    )


def write_run_summary(out_dir: Path, results: list[CellResult]) -> None:
    """`summary.json` (every cell's document) and `summary.csv` (one row each)."""
    documents = [result.summary or _bare(result) for result in results]
    write_json(
        out_dir / "summary.json",
        {"schema_version": RESULTS_SCHEMA_VERSION, "cells": documents},
    )
    rows = [analysis.summary_row(document) for document in documents]
    with (out_dir / "summary.csv").open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _bare(result: CellResult) -> dict[str, Any]:
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "scenario": result.scenario,
        "variant": result.variant.value,
        "status": result.status.value,
        "reasons": result.reasons,
    }


def _describe(scenario: Scenario) -> dict[str, Any]:
    return {
        "name": scenario.name,
        "description": scenario.description,
        "load": vars(scenario.load),
        "faults": [
            {**vars(step), "action": step.action.value} for step in scenario.faults
        ],
        "gates": [dataclasses.asdict(gate) for gate in scenario.gates],
        "generators": scenario.generators,
        "file": str(scenario.path) if scenario.path else None,
    }


def write_json(path: Path, document: Any) -> None:
    """Write `document` to `path` atomically: readers see the old or the new file."""
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2, default=str) + "\n")
    temporary.replace(path)

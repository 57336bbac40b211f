"""The live view of `python -m bench up`: what the stack does, second by second.

`bench.up` builds a `Frame` once a second; a view shows it. `RichView` redraws one
screen in place (rich's `Live`) on a terminal; `LineView` prints one plain status line
per second, and each new event on a line of its own, for logs, CI and tests. Neither
reads anything itself: every figure comes in the frame.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Protocol, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bench.records import Outcome

# The outcomes a user can cause by hand; client_error is a harness bug and stays out
# of the view (it is still counted in the summary).
SHOWN_OUTCOMES = (
    Outcome.ACCEPTED,
    Outcome.BREAKER_OPEN,
    Outcome.TIMEOUT,
    Outcome.REFUSED,
    Outcome.SERVER_ERROR,
    Outcome.DROPPED,
)
OUTCOME_STYLES = {
    Outcome.ACCEPTED: "green",
    Outcome.BREAKER_OPEN: "magenta",
    Outcome.TIMEOUT: "yellow",
    Outcome.REFUSED: "red",
    Outcome.SERVER_ERROR: "red",
    Outcome.DROPPED: "bright_black",
}


class SessionPhase(StrEnum):
    STARTING = "starting"  # the stack is booting, or the load has not begun
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"  # everything stopped, the run folder written


class ProcessState(StrEnum):
    STARTING = "starting"  # not started yet, or not yet healthy
    RUNNING = "running"
    FROZEN = "frozen"  # SIGSTOP: alive, answers nothing
    DEAD = "dead"
    RESTARTING = "restarting"  # started again, waiting until healthy
    STOPPED = "stopped"  # stopped by the harness at the end


STATE_STYLES = {
    ProcessState.STARTING: "cyan",
    ProcessState.RUNNING: "green",
    ProcessState.FROZEN: "blue",
    ProcessState.DEAD: "bold red",
    ProcessState.RESTARTING: "yellow",
    ProcessState.STOPPED: "bright_black",
}


@dataclass(frozen=True, kw_only=True)
class ProcessRow:
    name: str
    role: str  # broker, requestor, generator, load
    pid: int | None
    url: str | None
    state: ProcessState
    note: str = ""  # "restart in 1.2 s", "press r to restart" ...


@dataclass(frozen=True, kw_only=True)
class SecondRow:
    """The requests due in one second, counted as their answers arrived."""

    t_s: int  # seconds from the load start
    counts: Mapping[Outcome, int]
    p50_ms: float | None
    p99_ms: float | None
    # Answers may still arrive: a request due then can wait up to the client timeout.
    partial: bool = False


@dataclass(frozen=True, kw_only=True)
class EventRow:
    at_s: float  # epoch seconds
    t_s: float | None  # seconds from the load start, None before it is known
    kind: str
    target: str
    detail: str


@dataclass(frozen=True, kw_only=True)
class Frame:
    """Everything the view shows at one moment."""

    variant: str
    run_dir: Path
    phase: SessionPhase
    now_t_s: float | None  # seconds from the load start; None before it is known
    duration_s: float | None  # None: until Ctrl-C
    rate_per_user_per_s: float
    users: int | None
    offered_rate_per_s: float | None
    achieved_rate_per_s: float | None
    in_flight: int | None
    totals: Mapping[Outcome, int]
    seconds: Sequence[SecondRow]  # oldest first
    latest: SecondRow | None  # the newest second whose answers are (nearly) all in
    breakers: Mapping[str, str] | None  # "requestor:generator-1" -> "open"
    backlog: float | None  # JetStream messages held, None when not a JetStream run
    processes: Sequence[ProcessRow]
    load: ProcessRow
    web_url: str | None
    events: Sequence[EventRow]  # the most recent, oldest first
    faults: Sequence[str]  # manual faults seen so far, as text
    commands: Sequence[str]
    restart_hint: str
    keys_enabled: bool
    notes: Sequence[str] = field(default_factory=tuple)


class View(Protocol):
    """Shows frames; used as a context manager around the interactive loop."""

    def __enter__(self) -> View: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def show(self, frame: Frame) -> None: ...


def make_view(*, headless: bool, stream: TextIO | None = None) -> View:
    """A `RichView` on a terminal, a `LineView` when headless or not a terminal."""
    stream = sys.stdout if stream is None else stream
    if headless or not stream.isatty():
        return LineView(stream)
    return RichView()


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _t(value: float | None) -> str:
    return "t=?" if value is None else f"t={value:.1f}s"


def _wall(at_s: float) -> str:
    milliseconds = int(at_s % 1 * 1000)
    return f"{time.strftime('%H:%M:%S', time.localtime(at_s))}.{milliseconds:03d}"


def _state_text(frame: Frame) -> str:
    if frame.breakers is not None:
        if not frame.breakers:
            return "breaker: no reading yet"
        return "breaker " + ", ".join(
            f"{name} {state}" for name, state in sorted(frame.breakers.items())
        )
    if frame.backlog is not None:
        return f"JetStream backlog {frame.backlog:.0f} messages"
    return ""


def _load_text(frame: Frame) -> str:
    parts = []
    if frame.users is not None:
        parts.append(
            f"{frame.users} user(s) x {frame.rate_per_user_per_s:g}/s "
            f"offered {frame.offered_rate_per_s or 0:.1f}/s"
        )
    if frame.achieved_rate_per_s is not None:
        parts.append(f"sent {frame.achieved_rate_per_s:.1f}/s")
    if frame.in_flight is not None:
        parts.append(f"in flight {frame.in_flight}")
    return ", ".join(parts) or "load starting"


class LineView:
    """Plain lines: a header once the stack is up, then one status line a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._header_done = False
        self._last_t: int | None = None
        self._printed_events: set[tuple[float, str, str, str]] = set()
        self._printed_faults: set[str] = set()
        self._pids: dict[str, int | None] = {}

    def __enter__(self) -> LineView:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stream.flush()

    def show(self, frame: Frame) -> None:
        if not self._header_done and frame.phase is not SessionPhase.STARTING:
            self._header(frame)
        for event in frame.events:
            key = (event.at_s, event.kind, event.target, event.detail)
            if key in self._printed_events:
                continue
            self._printed_events.add(key)
            self._write(
                f"  event {_t(event.t_s)} {_wall(event.at_s)} {event.kind} "
                f"{event.target}: {event.detail}"
            )
        for fault in frame.faults:
            if fault not in self._printed_faults:
                self._printed_faults.add(fault)
                self._write(f"  fault {fault}")
        for process in frame.processes:
            previous = self._pids.get(process.name)
            if process.pid is not None and previous not in (None, process.pid):
                self._write(f"  {process.name} is PID {process.pid} now")
            if process.pid is not None:
                self._pids[process.name] = process.pid
        self._write(self._status(frame))
        self.stream.flush()

    def _status(self, frame: Frame) -> str:
        parts = [f"{frame.phase.value:<8} {_t(frame.now_t_s):>9}"]
        latest = frame.latest
        if latest is not None:
            counts = " ".join(
                f"{outcome.value} {latest.counts.get(outcome, 0)}"
                for outcome in SHOWN_OUTCOMES
            )
            parts.append(
                f"second {latest.t_s}: {counts} p50 {_ms(latest.p50_ms)} "
                f"p99 {_ms(latest.p99_ms)} ms"
            )
        state = _state_text(frame)
        if state:
            parts.append(state)
        parts.append(
            " ".join(
                f"{p.name}[{p.pid or '-'}] {p.state.value}"
                + (f" ({p.note})" if p.note else "")
                for p in frame.processes
            )
        )
        parts.append(_load_text(frame))
        return " | ".join(parts)

    def _header(self, frame: Frame) -> None:
        self._header_done = True
        lines = [
            f"bench up: {frame.variant}, open-loop load at "
            f"{frame.rate_per_user_per_s:g} requests/s per user; "
            f"run folder {frame.run_dir}",
            "processes:",
        ]
        for process in [*frame.processes, frame.load]:
            lines.append(
                f"  {process.name:<12} {process.role:<9} PID {process.pid or '-':<8} "
                f"{process.url or ''}".rstrip()
            )
        if frame.web_url:
            lines.append(f"Locust web UI: {frame.web_url} ({_WEB_HINT})")
        lines.append("to try, in another terminal:")
        lines += [f"  {command}" for command in frame.commands]
        lines.append(frame.restart_hint)
        lines += frame.notes
        for line in lines:
            self._write(line)

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")


_WEB_HINT = (
    "each Locust user is one open-loop stream at the per-user rate: the user count "
    "you set there multiplies the offered rate; stopping there stops the load, the "
    "stack keeps running"
)


class RichView:
    """One screen, redrawn in place every second."""

    def __init__(self) -> None:
        self.console = Console()
        self._live = Live(
            console=self.console,
            auto_refresh=False,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._handlers: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    def __enter__(self) -> RichView:
        self._live.start()
        # basicConfig's handler holds the stderr of before the Live started; send its
        # lines through the Live's proxy, so that a warning prints above the screen
        # instead of tearing through it.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.__stderr__,
                sys.__stdout__,
            ):
                self._handlers.append((handler, handler.stream))
                handler.setStream(sys.stderr)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()
        self._live.stop()

    def show(self, frame: Frame) -> None:
        self._live.update(render(frame), refresh=True)


def render(frame: Frame) -> RenderableType:
    """The whole screen for one frame."""
    title = Text.assemble(
        ("bench up ", "bold"),
        (frame.variant, "bold cyan"),
        f"  {frame.phase.value}  {_t(frame.now_t_s)}",
        (
            f" of {frame.duration_s:g} s"
            if frame.duration_s is not None
            else "  (until Ctrl-C)"
        ),
        f"  {_load_text(frame)}",
    )
    parts: list[RenderableType] = [title, Text(f"run folder {frame.run_dir}")]
    if frame.web_url:
        parts.append(Text(f"Locust web UI {frame.web_url}: {_WEB_HINT}", "cyan"))
    parts.append(_seconds_table(frame))
    state = _state_text(frame)
    if state:
        open_breaker = frame.breakers is not None and any(
            value != "closed" for value in frame.breakers.values()
        )
        parts.append(Text(state, "bold magenta" if open_breaker else "bold"))
    parts.append(_process_table(frame))
    parts.append(_event_table(frame))
    if frame.faults:
        parts.append(Text("manual faults: " + "; ".join(frame.faults), "bold red"))
    commands = Text("to try, in another terminal:\n", "bold")
    commands.append("\n".join(f"  {command}" for command in frame.commands))
    commands.append(f"\n{frame.restart_hint}")
    if frame.keys_enabled:
        commands.append("\nkeys: r restart every dead service, q stop", "bold")
    parts.append(commands)
    parts += [Text(note, "yellow") for note in frame.notes]
    return Group(*parts)


def _seconds_table(frame: Frame) -> Table:
    table = Table(
        title="requests by due second (… : answers still arriving)",
        title_justify="left",
        expand=False,
    )
    table.add_column("t s", justify="right")
    for outcome in SHOWN_OUTCOMES:
        table.add_column(outcome.value, justify="right", style=OUTCOME_STYLES[outcome])
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    for row in frame.seconds:
        table.add_row(
            f"{row.t_s}{' …' if row.partial else ''}",
            *(str(row.counts.get(outcome, 0)) for outcome in SHOWN_OUTCOMES),
            _ms(row.p50_ms),
            _ms(row.p99_ms),
        )
    table.add_row(
        "total",
        *(str(frame.totals.get(outcome, 0)) for outcome in SHOWN_OUTCOMES),
        "",
        "",
        style="bold",
    )
    return table


def _process_table(frame: Frame) -> Table:
    table = Table(title="processes", title_justify="left")
    for column in ("name", "role", "PID", "URL", "state", "note"):
        table.add_column(column)
    for process in [*frame.processes, frame.load]:
        table.add_row(
            process.name,
            process.role,
            str(process.pid or "-"),
            process.url or "",
            Text(process.state.value, STATE_STYLES[process.state]),
            process.note,
        )
    return table


def _event_table(frame: Frame) -> Table:
    table = Table(title="recent events", title_justify="left")
    for column in ("t s", "time", "kind", "target", "detail"):
        table.add_column(column)
    for event in frame.events:
        table.add_row(
            "?" if event.t_s is None else f"{event.t_s:.2f}",
            _wall(event.at_s),
            event.kind,
            event.target,
            event.detail,
        )
    return table

"""`python -m bench up`: one variant's stack under load, kept running to be broken.

The session is one cell of the scenario "manual", run with the pieces `bench run`
uses: the stack (`bench.stack`), the open-loop load (`bench.load`, with its web UI on
request), the sampler and the process watcher (`bench.collect`), then the same drain,
stop, summary (`bench.run.finish_cell`) and report. What differs is who injects the
faults: the user, from another terminal, with `kill -9`, `kill -STOP` / `kill -CONT`
or `curl .../admin/fault`, while a live view (`bench.live`) shows what happens.

How a manual fault becomes data:

- The process watcher, polled every POLL_INTERVAL_S, records a process_exit,
  process_frozen or process_thawed event for whatever happened to a process, whoever
  did it. The supervisor reads the same process states after each poll and opens a
  fault window (kill, freeze) at that moment.
- A fault set through `/admin/fault` is seen by the service probe, which asks every
  generator for its current fault every PROBE_FAULT_INTERVAL_S and opens a window
  (slow, errors) when it changes: its start is known to within that interval.
- A kill window closes when the process is healthy again (started by
  `--restart-after` or the `r` key); a freeze window when the process is seen running
  again; a slow or errors window when the fault is cleared or its process exits.
- When the load has stopped, the windows that overlap it become the cell plan's
  fault windows, and each is written to `events.csv` as a fault_injected and (once
  closed) a fault_cleared event, so that the analysis and the report treat it as
  they treat a scenario's fault. A window opened before the load start is taken to
  start with the load; one that ended before it is left out.

`state.json` at the top of the run folder lists every process (PID, URL, state) and is
rewritten atomically whenever one of them changes, for scripts and tests to find them.

Known shortcomings:

- A fault's time is when the harness noticed it: an exit or a freeze within
  POLL_INTERVAL_S plus the loop's own work, a fault set through `/admin/fault` within
  PROBE_FAULT_INTERVAL_S. A fault set and cleared within one probe interval is not
  seen at all.
- The analysis pairs each fault_injected with the next fault_cleared of the same
  target. Two manual faults overlapping on one process (a latency fault, then a
  freeze that ends first) can be paired crosswise: their ends swap, the span they
  cover together stays right.
- With the web UI the user sets the rate there, so the cell's offered rate is taken
  from the rows the schedules produced, not from `--rate`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import re
import select
import signal
import sys
import termios
import threading
import time
import tty
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from bench import analysis
from bench.collect import ProcessWatcher, Sampler
from bench.events import EventLog, SampleWriter
from bench.live import (
    EventRow,
    Frame,
    ProcessRow,
    ProcessState,
    SecondRow,
    SessionPhase,
    View,
    make_view,
)
from bench.load import REQUESTS_FILE, LoadError, LoadGenerator, LoadSettings
from bench.manifest import build_manifest
from bench.records import BREAKER_STATE_CODES, REQUEST_COLUMNS, EventKind, Outcome
from bench.run import (
    LOAD_BOOT_S,
    CellResult,
    cell_dir,
    drain,
    finish_cell,
    stop_cell,
    write_json,
    write_run_summary,
)
from bench.scenario import FaultAction
from bench.stack import (
    HEALTH_TIMEOUT_S,
    Stack,
    StackError,
    StackOptions,
    Variant,
    build_stack,
    free_port,
    http_get_json,
    http_get_text,
)
from service_core.metrics import parse

logger = logging.getLogger(__name__)

SCENARIO = "manual"
PROFILE = "manual"
STATE_FILE = "state.json"
DEFAULT_RATE_PER_S = 100.0

# The watcher and the supervisor look at every process this often, so that a kill or
# a freeze by hand is an event well within a second of it.
POLL_INTERVAL_S = 0.1
VIEW_INTERVAL_S = 1.0
PROBE_FAULT_INTERVAL_S = 0.25
PROBE_METRICS_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 0.3
# After the load stops, up to this long for every accepted request to be confirmed.
DRAIN_S = 10.0
# After a second Ctrl-C, Locust gets this long to stop instead of its stop timeout.
HURRIED_STOP_S = 3.0
# A restart under way at the end is waited for at most this long.
RESTART_JOIN_S = HEALTH_TIMEOUT_S + 5.0
RECENT_EVENTS = 8
SHOWN_SECONDS = 10
TAIL_KEEP_S = 60
# Locust flushes requests.csv once a second: a second's quick answers are all in the
# file this long after the second has ended.
FLUSH_LAG_S = 1.0
# The shortest load window a plan may have, for a session stopped before its load.
MIN_LOAD_WINDOW_S = 0.001

# state.json format history (`STATE_SCHEMA`, written into the file):
# - 1: first version.
STATE_SCHEMA = 1

EXIT_OK = 0
EXIT_HARNESS_FAILED = 2
EXIT_INTERRUPTED = 130

_STATE_NAMES = {code: name for name, code in BREAKER_STATE_CODES.items()}
_BREAKER_LABEL = re.compile(r'breaker="([^"]*)"')
_DUE = REQUEST_COLUMNS.index("due_s")
_LATENCY = REQUEST_COLUMNS.index("latency_ms")
_OUTCOME = REQUEST_COLUMNS.index("outcome")

Progress = Callable[[str], None]


class UpOptionsError(ValueError):
    """An option of `bench up` is out of range; the message names it."""


@dataclass(frozen=True, kw_only=True)
class UpOptions:
    variant: Variant
    out_dir: Path
    rate_per_s: float = DEFAULT_RATE_PER_S  # per Locust user; one user unless --web
    duration_s: float | None = None  # None: until Ctrl-C or SIGTERM
    restart_after_s: float | None = None  # None: a killed process stays down
    web: bool = False
    generators: int = 1
    seed: int = 1
    headless: bool = False
    argv: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s > 0):
            raise UpOptionsError(f"--rate must be above 0, got {self.rate_per_s!r}")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise UpOptionsError(
                f"--duration must be above 0 seconds, got {self.duration_s!r}"
            )
        if self.restart_after_s is not None and not (
            math.isfinite(self.restart_after_s) and self.restart_after_s >= 0
        ):
            raise UpOptionsError(
                f"--restart-after must be 0 seconds or more, got "
                f"{self.restart_after_s!r}"
            )
        if self.generators < 1:
            raise UpOptionsError(
                f"--generators must be 1 or more, got {self.generators}"
            )


@dataclass(frozen=True, kw_only=True)
class UpResult:
    cell: CellResult
    out_dir: Path
    report_path: Path | None


def _clock(at_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at_s))


def role_of(name: str) -> str:
    if name == "nats":
        return "broker"
    if name == "requestor":
        return "requestor"
    return "generator"


# Manual faults


@dataclass
class ManualFault:
    """A fault seen in the stack, from when it was noticed to when it ended."""

    target: str
    action: FaultAction
    start_s: float
    detail: str
    end_s: float | None = None
    end_detail: str = ""
    latency_ms: float = 0.0
    error_rate: float = 0.0

    def describe(self, origin_s: float | None) -> str:
        def at(value: float) -> str:
            return _clock(value) if origin_s is None else f"{value - origin_s:.1f}"

        if self.end_s is None:
            return f"{self.action.value} {self.target} since t={at(self.start_s)} s"
        return (
            f"{self.action.value} {self.target} t={at(self.start_s)}-{at(self.end_s)} s"
        )


class ManualFaults:
    """Every manual fault seen so far; thread-safe (the probe adds from its thread)."""

    def __init__(self) -> None:
        self._faults: list[ManualFault] = []
        self._lock = threading.Lock()

    def open(
        self,
        target: str,
        action: FaultAction,
        at_s: float,
        detail: str,
        *,
        latency_ms: float = 0.0,
        error_rate: float = 0.0,
    ) -> None:
        with self._lock:
            if self._open(target, action) is not None:
                return
            self._faults.append(
                ManualFault(
                    target=target,
                    action=action,
                    start_s=at_s,
                    detail=detail,
                    latency_ms=latency_ms,
                    error_rate=error_rate,
                )
            )
        logger.info("manual fault noticed: %s %s (%s)", action.value, target, detail)

    def close(
        self, target: str, actions: Sequence[FaultAction], at_s: float, detail: str
    ) -> None:
        with self._lock:
            for action in actions:
                fault = self._open(target, action)
                if fault is not None:
                    fault.end_s = at_s
                    fault.end_detail = detail
                    logger.info("manual fault ended: %s %s", action.value, target)

    def snapshot(self) -> list[ManualFault]:
        with self._lock:
            return [dataclasses.replace(fault) for fault in self._faults]

    def in_load(self, load_start_s: float, load_end_s: float) -> list[ManualFault]:
        """The faults that overlap the load, none starting before it, by start."""
        chosen = []
        for fault in self.snapshot():
            if fault.start_s >= load_end_s:
                continue
            if fault.end_s is not None and fault.end_s < load_start_s:
                continue
            fault.start_s = max(fault.start_s, load_start_s)
            chosen.append(fault)
        return sorted(chosen, key=lambda fault: fault.start_s)

    def _open(self, target: str, action: FaultAction) -> ManualFault | None:
        for fault in self._faults:
            if (
                fault.target == target
                and fault.action is action
                and fault.end_s is None
            ):
                return fault
        return None


class Supervisor:
    """Turns what the watcher found into fault windows, and restarts the dead.

    Called after every watcher poll. A process found dead opens a kill window and,
    with `restart_after_s`, is started again that long after its death was noticed;
    `restart_dead` starts every dead process at once. A restart runs in a thread of
    its own (waiting until healthy takes a while), records a process_start event as
    the fault runner does, and closes the kill window once the process is healthy.
    A frozen process is alive, and never restarted.
    """

    def __init__(
        self,
        stack: Stack,
        events: EventLog,
        faults: ManualFaults,
        restart_after_s: float | None,
    ) -> None:
        self.stack = stack
        self.events = events
        self.faults = faults
        self.restart_after_s = restart_after_s
        self._dead: set[str] = set()
        self._frozen: set[str] = set()
        self._restart_at: dict[str, float] = {}
        self._restarting: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._accepting = True
        self._lock = threading.Lock()

    def observe(self, now_s: float) -> None:
        for name, process in self.stack.processes.items():
            with self._lock:
                if name in self._restarting or process.pid is None:
                    continue
                newly_dead = not process.alive and name not in self._dead
                if newly_dead:
                    self._dead.add(name)
                    if self.restart_after_s is not None and self._accepting:
                        self._restart_at[name] = now_s + self.restart_after_s
            if newly_dead:
                detail = f"PID {process.pid} exit code {process.returncode}"
                self.faults.close(
                    name,
                    (FaultAction.FREEZE, FaultAction.SLOW, FaultAction.ERRORS),
                    now_s,
                    f"the process exited ({detail})",
                )
                self._frozen.discard(name)
                self.faults.open(name, FaultAction.KILL, now_s, detail)
                continue
            if not process.alive:
                continue
            if process.frozen and name not in self._frozen:
                self._frozen.add(name)
                self.faults.open(name, FaultAction.FREEZE, now_s, f"PID {process.pid}")
            elif not process.frozen and name in self._frozen:
                self._frozen.discard(name)
                self.faults.close(
                    name, (FaultAction.FREEZE,), now_s, f"PID {process.pid} running"
                )

    def tick(self, now_s: float) -> None:
        """Start every process whose restart is due."""
        with self._lock:
            due = [name for name, at_s in self._restart_at.items() if now_s >= at_s]
        for name in due:
            self.restart(name)

    def restart_dead(self) -> list[str]:
        """Start every dead process now; the names of those started."""
        with self._lock:
            dead = sorted(self._dead)
        return [name for name in dead if self.restart(name)]

    def restart(self, name: str) -> bool:
        with self._lock:
            if not self._accepting or name not in self._dead:
                return False
            self._dead.discard(name)
            self._restart_at.pop(name, None)
            self._restarting.add(name)
        thread = threading.Thread(
            target=self._restart, args=(name,), name=f"restart-{name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return True

    def restart_due_s(self, name: str) -> float | None:
        with self._lock:
            return self._restart_at.get(name)

    def dead(self, name: str) -> bool:
        """Found dead while the session ran (not stopped by the harness)."""
        with self._lock:
            return name in self._dead

    def restarting(self, name: str) -> bool:
        with self._lock:
            return name in self._restarting

    def shutdown(self) -> None:
        """Start nothing more; restarts already under way go on."""
        with self._lock:
            self._accepting = False
            self._restart_at.clear()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _restart(self, name: str) -> None:
        process = self.stack[name]
        try:
            process.start()
            self.events.add(EventKind.PROCESS_START, name, f"PID {process.pid}")
            logger.info("%s started again as PID %s", name, process.pid)
            process.wait_healthy()
            self.faults.close(
                name,
                (FaultAction.KILL,),
                time.time(),
                f"started again as PID {process.pid}, healthy",
            )
        except (StackError, OSError) as exc:
            logger.error("restarting %s failed: %s", name, exc)
        finally:
            with self._lock:
                self._restarting.discard(name)


def _fault_action(spec: tuple[float, float]) -> FaultAction:
    """errors when the (latency_ms, error_rate) fault fails work, else slow."""
    return FaultAction.ERRORS if spec[1] > 0 else FaultAction.SLOW


class ServiceProbe:
    """What the services say about themselves that the view and the faults need.

    Every PROBE_FAULT_INTERVAL_S it asks each generator for the fault set through its
    `/admin/fault`, and opens or closes a manual fault when that changes; every
    PROBE_METRICS_INTERVAL_S, with `breakers`, it reads each service's
    `coupling_breaker_state_code` from `/metrics`. A process that is down or frozen is
    skipped, never waited on.
    """

    def __init__(self, stack: Stack, faults: ManualFaults, *, breakers: bool) -> None:
        self.stack = stack
        self.faults = faults
        self.read_breakers = breakers
        self._breakers: dict[str, str] = {}
        self._specs: dict[str, tuple[int, float, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def breakers(self) -> dict[str, str] | None:
        if not self.read_breakers:
            return None
        with self._lock:
            return dict(self._breakers)

    def _run(self) -> None:
        next_metrics_s = time.monotonic()
        while not self._stop.is_set():
            try:
                self.probe_faults()
                if self.read_breakers and time.monotonic() >= next_metrics_s:
                    next_metrics_s = time.monotonic() + PROBE_METRICS_INTERVAL_S
                    self.probe_breakers()
            except Exception:
                logger.exception("probing the services failed; the next round retries")
            self._stop.wait(PROBE_FAULT_INTERVAL_S)

    def _answering(self, name: str) -> bool:
        process = self.stack[name]
        return bool(process.alive and not process.frozen)

    def probe_faults(self) -> None:
        for name, url in self.stack.generator_urls.items():
            process = self.stack[name]
            pid = process.pid
            if pid is None or not self._answering(name):
                continue
            status, body = http_get_json(
                f"{url}/admin/fault", timeout_s=PROBE_TIMEOUT_S
            )
            if status != 200 or not isinstance(body, dict):
                continue
            now_s = time.time()
            spec = (float(body.get("latency_ms", 0)), float(body.get("error_rate", 0)))
            previous = self._specs.get(name)
            # A process started again has no fault: the one before died with it.
            before = (
                (0.0, 0.0) if previous is None or previous[0] != pid else previous[1:]
            )
            self._specs[name] = (pid, *spec)
            if spec == before:
                continue
            detail = f"latency_ms={spec[0]:g} error_rate={spec[1]:g}"
            if before != (0.0, 0.0):
                self.faults.close(
                    name, (_fault_action(before),), now_s, f"fault now {detail}"
                )
            if spec != (0.0, 0.0):
                self.faults.open(
                    name,
                    _fault_action(spec),
                    now_s,
                    detail,
                    latency_ms=spec[0],
                    error_rate=spec[1],
                )

    def probe_breakers(self) -> None:
        states: dict[str, str] = {}
        urls = {"requestor": self.stack.requestor_url, **self.stack.generator_urls}
        # A breaker is named after the URL of the peer it guards.
        names = {url: name for name, url in urls.items()}
        for name, url in urls.items():
            if not self._answering(name):
                continue
            text = http_get_text(f"{url}/metrics", timeout_s=PROBE_TIMEOUT_S)
            if text is None:
                continue
            for key, value in parse(text).items():
                if not key.startswith("coupling_breaker_state_code{"):
                    continue
                match = _BREAKER_LABEL.search(key)
                peer = match.group(1) if match else ""
                state = _STATE_NAMES.get(int(value), str(value))
                states[f"{name}->{names.get(peer, peer)}"] = state
        with self._lock:
            self._breakers = states


# Reading the load as it runs


@dataclass
class _Second:
    counts: Counter[Outcome] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


def _quantile(ordered: list[float], q: float) -> float | None:
    """The smallest value with at least `q` of the values at or below it."""
    if not ordered:
        return None
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


class RequestTail:
    """The rows Locust appends to requests.csv, read on from where the last read
    stopped and counted by due second, seconds from `origin_s`.

    Locust writes whole rows and flushes once a second; a line without its newline
    yet is kept for the next read. With `origin_s` None, the first due time read
    becomes the origin (the web UI's load starts when its first user does).
    """

    def __init__(self, path: Path, origin_s: float | None) -> None:
        self.path = path
        self.origin_s = origin_s
        self.first_due_s: float | None = None
        self.rows = 0
        self.totals: Counter[Outcome] = Counter()
        self._seconds: dict[int, _Second] = {}
        self._offset = 0
        self._rest = b""

    def read(self) -> int:
        """Read the rows written since the last call; how many there were."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return 0
        self._offset += len(chunk)
        complete, newline, self._rest = (self._rest + chunk).rpartition(b"\n")
        if not newline:
            return 0
        count = 0
        lines = complete.decode(errors="replace").splitlines()
        for values in csv.reader(lines):
            if len(values) != len(REQUEST_COLUMNS) or values[0] == REQUEST_COLUMNS[0]:
                continue
            try:
                self._add(values)
            except ValueError:
                logger.debug("unreadable row in %s: %s", self.path, values)
                continue
            count += 1
        if self._seconds:
            oldest = max(self._seconds) - TAIL_KEEP_S
            for second in [s for s in self._seconds if s < oldest]:
                del self._seconds[second]
        return count

    def _add(self, values: list[str]) -> None:
        due_s = float(values[_DUE])
        outcome = Outcome(values[_OUTCOME])
        if self.first_due_s is None or due_s < self.first_due_s:
            self.first_due_s = due_s
        if self.origin_s is None:
            self.origin_s = due_s
        entry = self._seconds.setdefault(math.floor(due_s - self.origin_s), _Second())
        entry.counts[outcome] += 1
        if values[_LATENCY] and outcome is not Outcome.DROPPED:
            entry.latencies_ms.append(float(values[_LATENCY]))
        self.totals[outcome] += 1
        self.rows += 1

    def second(self, second: int, *, partial: bool = False) -> SecondRow:
        entry = self._seconds.get(second, _Second())
        ordered = sorted(entry.latencies_ms)
        return SecondRow(
            t_s=second,
            counts=dict(entry.counts),
            p50_ms=_quantile(ordered, 0.5),
            p99_ms=_quantile(ordered, 0.99),
            partial=partial,
        )


class WebLoadGenerator(LoadGenerator):
    """Locust with its web UI, loading from the start with one user.

    With a web port, `LoadGenerator` leaves Locust waiting for someone to press start;
    `bench up` promises load from the start, so it adds Locust's `--autostart`.
    """

    def command(self, now_s: float | None = None) -> list[str]:
        return [*super().command(now_s), "--autostart"]


class KeyReader:
    """Single key presses from the terminal, never waiting for one.

    Only when stdin is a terminal: it is put in cbreak mode (keys arrive one by one,
    Ctrl-C still signals) for the session and restored after.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._saved: list[Any] | None = None

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> KeyReader:
        if not sys.stdin.isatty():
            return self
        fd = sys.stdin.fileno()
        try:
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except termios.error as exc:
            logger.warning("keys disabled: stdin could not be set to cbreak: %s", exc)
            return self
        self._fd = fd
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None and self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
        self._fd = None

    def read(self) -> str:
        if self._fd is None:
            return ""
        ready, _, _ = select.select([self._fd], [], [], 0)
        if not ready:
            return ""
        return os.read(self._fd, 64).decode(errors="ignore")


class StateFile:
    """`state.json`, replaced atomically, and only when its content changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last = ""

    def write(self, document: dict[str, Any]) -> bool:
        body = json.dumps(document, indent=2, default=str)
        if body == self._last:
            return False
        self._last = body
        write_json(self.path, {**document, "updated_at_s": time.time()})
        return True


class _DrainSkipped(Exception):
    """A second Ctrl-C during the drain."""


# The session


class UpSession:
    """One interactive cell: start, watch and restart, stop, summarise."""

    def __init__(self, options: UpOptions, view: View, progress: Progress) -> None:
        self.options = options
        self.view = view
        self.progress = progress
        self.directory = cell_dir(options.out_dir, SCENARIO, options.variant)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.events = EventLog()
        self.samples = SampleWriter(self.directory / "samples.csv")
        self.stack = build_stack(
            options.variant,
            self.directory,
            StackOptions(generators=options.generators),
        )
        self.web_url: str | None = None
        # Headless, Locust starts first and waits for the schedule's start while the
        # services boot, as in `bench run`. With the web UI the stack starts first:
        # there each user's schedule begins when the user does.
        self.start_at_s = None if options.web else time.time() + LOAD_BOOT_S
        settings = LoadSettings(
            out_dir=self.directory,
            rate_per_user_per_s=options.rate_per_s,
            seed=options.seed,
            start_at_s=self.start_at_s,
        )
        if options.web:
            port = free_port()
            self.web_url = f"http://127.0.0.1:{port}"
            self.load: LoadGenerator = WebLoadGenerator(
                settings, host=self.stack.requestor_url, web_port=port
            )
        else:
            self.load = LoadGenerator(settings, host=self.stack.requestor_url)
        self.tail = RequestTail(self.directory / REQUESTS_FILE, self.start_at_s)
        self.faults = ManualFaults()
        self.supervisor = Supervisor(
            self.stack, self.events, self.faults, options.restart_after_s
        )
        self.watcher = ProcessWatcher(self.stack, self.events)
        self.probe = ServiceProbe(
            self.stack, self.faults, breakers=options.variant is Variant.SYNC_BREAKER
        )
        self.sampler: Sampler | None = None
        self.state = StateFile(options.out_dir / STATE_FILE)
        self.reasons: list[str] = []
        self.phase = SessionPhase.STARTING
        self.keys_enabled = False
        self.load_started_at_s: float | None = None
        self.stop_reason: str | None = None
        self.stop_requested = threading.Event()
        self.hurry = threading.Event()
        self.load_window: tuple[float, float] | None = None
        self.fault_windows: list[ManualFault] = []
        self._pids_seen: dict[tuple[str, int], None] = {}

    def run(self) -> CellResult:
        """Run the session until stopped; the cell's result once summarised."""
        started = time.monotonic()
        with self._signals():
            try:
                with KeyReader() as keys, self.view:
                    self.keys_enabled = keys.enabled
                    self._start()
                    self._loop(keys)
            except StackError as exc:
                logger.error("%s: %s", self.options.variant.value, exc)
                self.reasons.append(f"harness error: {exc}")
            finally:
                drain_end_s = self._stop(time.time())
        plan = self._plan(drain_end_s)
        self.progress("summarising the cell")
        result = finish_cell(plan, self.directory, self.reasons, started)
        self.phase = SessionPhase.FINISHED
        self._write_state()
        return result

    def describe(self) -> dict[str, Any]:
        """The manifest's entry for this session, with the faults seen."""
        load_start_s, load_end_s = self.load_window or (0.0, 0.0)
        return {
            "name": SCENARIO,
            "description": "Faults injected by hand while `python -m bench up` ran, "
            "each drawn where the harness noticed it.",
            "load": {
                "rate_per_s": self._offered_rate_per_s(),
                "warmup_s": 0.0,
                "duration_s": round(load_end_s - load_start_s, 3),
                "drain_s": DRAIN_S,
            },
            "faults": [
                {
                    "at_s": round(fault.start_s - load_start_s, 3),
                    "action": fault.action.value,
                    "target": fault.target,
                    "duration_s": (
                        0.0
                        if fault.end_s is None
                        else round(fault.end_s - fault.start_s, 3)
                    ),
                    "latency_ms": fault.latency_ms,
                    "error_rate": fault.error_rate,
                }
                for fault in self.fault_windows
            ],
            "gates": [],
            "generators": self.options.generators,
            "web": self.web_url is not None,
            "restart_after_s": self.options.restart_after_s,
            "stopped_by": self.stop_reason,
            "file": None,
        }

    # Phases

    def _start(self) -> None:
        if self.start_at_s is None:
            self.stack.start()
            self._start_load()
        else:
            for detail in ("warmup", "load"):
                self.events.add(
                    EventKind.PHASE,
                    "harness",
                    detail,
                    at_s=self.start_at_s,
                    planned=True,
                )
            self._start_load()
            self._write_state()
            self.stack.start()
            late_s = time.time() - self.start_at_s
            if late_s > 0:
                self.reasons.append(
                    f"the stack was healthy {late_s:.2f} s after the load began; "
                    "the first requests found it down"
                )
        self.watcher.poll()
        self.sampler = Sampler(
            self.stack,
            self.samples,
            self.events,
            extra_pids=lambda: {"locust": self.load.pid},
        )
        self.sampler.start()
        self.probe.start()
        self.phase = SessionPhase.RUNNING
        self._write_state()
        logger.info("stack of %s up in %s", self.options.variant, self.directory)

    def _start_load(self) -> None:
        self.load.start()
        self.load_started_at_s = time.time()

    def _loop(self, keys: KeyReader) -> None:
        next_view_s = time.time()
        while not self.stop_requested.is_set():
            now_s = time.time()
            self.watcher.poll()
            self.supervisor.observe(now_s)
            self.supervisor.tick(now_s)
            self._handle_keys(keys.read())
            if self._load_gone() or self._duration_over(now_s):
                break
            self._write_state()
            if now_s >= next_view_s:
                self.view.show(self._frame(now_s))
                next_view_s = self._next_view_s(now_s)
            self.stop_requested.wait(POLL_INTERVAL_S)
        self.phase = SessionPhase.STOPPING
        self._write_state()
        self.view.show(self._frame(time.time()))

    def _next_view_s(self, now_s: float) -> float:
        """Half-way through the next second of the load, once its start is known:
        a frame a little late then still shows the second it is meant to."""
        origin_s = self._origin_s()
        if origin_s is None:
            return now_s + VIEW_INTERVAL_S
        return origin_s + math.floor(now_s - origin_s) + VIEW_INTERVAL_S + 0.5

    def _stop(self, load_end_s: float) -> float:
        """Stop the load, drain, stop the stack, write the raw files. Returns the end
        of the drain. The stack is stopped whatever fails before."""
        self.phase = SessionPhase.STOPPING
        self.progress(f"stopping: {self.stop_reason or 'harness error'}")
        self.supervisor.shutdown()
        drain_end_s = time.time()
        try:
            if self.load.alive:
                self.progress(
                    f"stopping the load (Locust PID {self.load.pid}); requests in "
                    "flight get their answer or their timeout"
                )
                self.load.stop(HURRIED_STOP_S if self.hurry.is_set() else None)
            self.events.add(EventKind.PHASE, "harness", "load_end", at_s=load_end_s)
            self.supervisor.join(2.0 if self.hurry.is_set() else RESTART_JOIN_S)
            if self.sampler is not None and not self.hurry.is_set():
                drain_end_s = self._drain()
        finally:
            self.probe.stop()
            try:
                self._record_faults(load_end_s)
            finally:
                self.progress("stopping the stack")
                stop_cell(
                    self.stack, self.load, self.sampler, self.events, self.samples
                )
                self._write_state()
        return drain_end_s

    def _drain(self) -> float:
        self.events.add(EventKind.PHASE, "harness", "drain")
        self.progress(
            f"draining: up to {DRAIN_S:g} s until every accepted request is stored "
            "and confirmed (Ctrl-C to skip)"
        )
        try:
            drain_end_s = drain(
                self.stack, time.time() + DRAIN_S, self._drain_poll, self.load
            )
        except _DrainSkipped:
            drain_end_s = time.time()
            self.reasons.append("the drain was cut short by a second Ctrl-C")
        self.events.add(EventKind.PHASE, "harness", "drain_end", at_s=drain_end_s)
        return drain_end_s

    def _drain_poll(self) -> None:
        self.watcher.poll()
        if self.hurry.is_set():
            raise _DrainSkipped

    def _record_faults(self, load_end_s: float) -> None:
        """Fix the load window and write the manual faults in it as fault events."""
        self.tail.read()
        if self.start_at_s is not None:
            load_start_s = self.start_at_s
        else:
            load_start_s = self.tail.first_due_s or self.load_started_at_s or load_end_s
            for detail in ("warmup", "load"):
                self.events.add(EventKind.PHASE, "harness", detail, at_s=load_start_s)
        if load_end_s <= load_start_s:
            self.reasons.append("stopped before the load began: no request was due")
            load_end_s = load_start_s + MIN_LOAD_WINDOW_S
        self.load_window = (load_start_s, load_end_s)

        self.fault_windows = self.faults.in_load(load_start_s, load_end_s)
        for fault in self.fault_windows:
            self.events.add(
                EventKind.FAULT_INJECTED,
                fault.target,
                f"{fault.action.value} (manual): {fault.detail}",
                at_s=fault.start_s,
            )
            if fault.end_s is not None:
                self.events.add(
                    EventKind.FAULT_CLEARED,
                    fault.target,
                    f"{fault.action.value} (manual): {fault.end_detail}",
                    at_s=fault.end_s,
                )

    def _plan(self, drain_end_s: float) -> analysis.CellPlan:
        assert self.load_window is not None
        load_start_s, load_end_s = self.load_window
        return analysis.CellPlan(
            scenario=SCENARIO,
            variant=self.options.variant,
            warmup_start_s=load_start_s,
            load_start_s=load_start_s,
            load_end_s=load_end_s,
            drain_end_s=max(drain_end_s, load_end_s),
            offered_rate_per_s=self._offered_rate_per_s(),
            faults=tuple(
                analysis.FaultWindow(
                    target=fault.target,
                    action=fault.action.value,
                    start_s=fault.start_s,
                    end_s=None if fault.end_s is None else min(fault.end_s, load_end_s),
                )
                for fault in self.fault_windows
            ),
        )

    def _offered_rate_per_s(self) -> float:
        """The planned rate headless; with the web UI, where the user sets the number
        of users, the rate the schedules actually offered over the load."""
        if self.web_url is None or self.load_window is None:
            return self.options.rate_per_s
        load_start_s, load_end_s = self.load_window
        window_s = load_end_s - load_start_s
        if self.tail.rows == 0 or window_s < 1.0:
            return self.options.rate_per_s
        return self.tail.rows / window_s

    # While running

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the session; a second one hurries the stop."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stop_requested.is_set():
                self.hurry.set()
            else:
                self.stop_reason = signal.Signals(signum).name
                logger.info("%s: stopping", self.stop_reason)
            self.stop_requested.set()

        previous = {
            signum: signal.signal(signum, on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle_keys(self, keys: str) -> None:
        if "r" in keys:
            started = self.supervisor.restart_dead()
            logger.info("key r: restarting %s", ", ".join(started) or "nothing")
        if "q" in keys:
            self.stop_reason = "key q"
            self.stop_requested.set()

    def _load_gone(self) -> bool:
        if self.load.alive:
            return False
        code = self.load.returncode
        self.events.add(
            EventKind.PROCESS_EXIT, "locust", f"PID {self.load.pid} exit code {code}"
        )
        self.reasons.append(
            f"Locust (PID {self.load.pid}) exited with code {code} while the "
            "session ran; the load ended there"
        )
        self.stop_reason = "Locust exited"
        return True

    def _duration_over(self, now_s: float) -> bool:
        if self.options.duration_s is None:
            return False
        origin_s = self._origin_s()
        if origin_s is None and self.load_started_at_s is not None:
            # The web UI's load that has not sent anything yet: counted from when
            # its first request would have been due had Locust started at once.
            origin_s = self.load_started_at_s + LOAD_BOOT_S
        if origin_s is None or now_s < origin_s + self.options.duration_s:
            return False
        self.stop_reason = f"--duration {self.options.duration_s:g}"
        return True

    def _origin_s(self) -> float | None:
        """t = 0 of the view: the load start, once known."""
        return self.tail.origin_s

    # What the view and state.json show

    def _process_rows(self, now_s: float) -> list[ProcessRow]:
        rows = []
        for name, process in self.stack.processes.items():
            state, note = self._state_of(name, now_s)
            rows.append(
                ProcessRow(
                    name=name,
                    role=role_of(name),
                    pid=process.pid,
                    url=self._url_of(name),
                    state=state,
                    note=note,
                )
            )
        return rows

    def _state_of(self, name: str, now_s: float) -> tuple[ProcessState, str]:
        process = self.stack[name]
        if self.phase is SessionPhase.FINISHED:
            return ProcessState.STOPPED, ""
        if self.supervisor.restarting(name):
            return ProcessState.RESTARTING, f"start {process.starts}"
        if process.pid is None:
            return ProcessState.STARTING, ""
        if not process.alive:
            if not self.supervisor.dead(name):
                return ProcessState.STOPPED, ""
            due_s = self.supervisor.restart_due_s(name)
            if due_s is not None:
                return ProcessState.DEAD, f"restart in {max(0.0, due_s - now_s):.1f} s"
            return ProcessState.DEAD, (
                "press r to restart" if self.keys_enabled else "stays down"
            )
        if process.frozen:
            return ProcessState.FROZEN, f"kill -CONT {process.pid} to thaw"
        return ProcessState.RUNNING, ""

    def _url_of(self, name: str) -> str | None:
        if name == "requestor":
            return self.stack.requestor_url
        if name == "nats":
            return self.stack.nats_url
        url: str | None = self.stack.generator_urls.get(name)
        return url

    def _load_row(self) -> ProcessRow:
        if self.load.alive:
            state = ProcessState.RUNNING
        elif self.load.pid is None:
            state = ProcessState.STARTING
        else:
            state = (
                ProcessState.STOPPED
                if self.phase is not SessionPhase.RUNNING
                else ProcessState.DEAD
            )
        return ProcessRow(
            name="locust",
            role="load",
            pid=self.load.pid,
            url=self.web_url,
            state=state,
            note="web UI" if self.web_url else "",
        )

    def _commands(self) -> list[str]:
        name, url = next(iter(self.stack.generator_urls.items()))
        pid = self.stack[name].pid or "PID"
        requestor_pid = self.stack["requestor"].pid or "PID"
        commands = [
            f"kill -9 {pid}                          # kill {name}",
            f"kill -STOP {pid}  /  kill -CONT {pid}     # freeze {name} / thaw it",
            f"curl -X POST {url}/admin/fault -d '{{\"latency_ms\": 300}}'",
            f"curl -X POST {url}/admin/fault -d '{{\"error_rate\": 0.5}}'",
            f"curl -X DELETE {url}/admin/fault",
            f"kill -9 {requestor_pid}                          # kill the requestor",
        ]
        if "nats" in self.stack.processes:
            nats_pid = self.stack["nats"].pid or "PID"
            commands.append(
                f"kill -9 {nats_pid}                          # kill nats-server"
            )
        return commands

    def _restart_hint(self) -> str:
        after = self.options.restart_after_s
        if after is not None:
            hint = f"a killed process starts again {after:g} s after its exit is seen"
        elif self.keys_enabled:
            hint = "a killed process stays down until you press r"
        else:
            hint = (
                "a killed process stays down (start with --restart-after S to bring "
                "it back)"
            )
        return hint + "; a frozen process is never restarted, only thawed"

    def _frame(self, now_s: float) -> Frame:
        self.tail.read()
        origin_s = self._origin_s()
        now_t_s = None if origin_s is None else now_s - origin_s
        seconds: list[SecondRow] = []
        latest: SecondRow | None = None
        if now_t_s is not None and now_t_s >= 1:
            newest = math.floor(now_t_s) - 1
            settled_s = now_t_s - self.load.settings.timeout_s - FLUSH_LAG_S
            seconds = [
                self.tail.second(second, partial=second + 1 > settled_s)
                for second in range(max(0, newest - SHOWN_SECONDS + 1), newest + 1)
            ]
            latest_second = math.floor(now_t_s - FLUSH_LAG_S) - 1
            if latest_second >= 0:
                latest = self.tail.second(latest_second)

        try:
            status = self.load.status()
        except LoadError:
            status = None
        backlog = None
        if self.options.variant is Variant.QUEUE_JETSTREAM:
            reading = self.sampler.latest.get("jetstream") if self.sampler else None
            backlog = reading.get("backlog") if reading else None

        recent = [event for event in self.events.snapshot() if event.at_s <= now_s]
        phase = self.phase
        if phase is SessionPhase.RUNNING and (now_t_s is None or now_t_s < 0):
            phase = SessionPhase.STARTING
        return Frame(
            variant=self.options.variant.value,
            run_dir=self.options.out_dir,
            phase=phase,
            now_t_s=now_t_s,
            duration_s=self.options.duration_s,
            rate_per_user_per_s=self.options.rate_per_s,
            users=status["users"] if status else None,
            offered_rate_per_s=status["offered_rate_per_s"] if status else None,
            achieved_rate_per_s=status["achieved_rate_per_s"] if status else None,
            in_flight=status["in_flight"] if status else None,
            totals=dict(self.tail.totals),
            seconds=seconds,
            latest=latest,
            breakers=self.probe.breakers(),
            backlog=backlog,
            processes=self._process_rows(now_s),
            load=self._load_row(),
            web_url=self.web_url,
            events=[
                EventRow(
                    at_s=event.at_s,
                    t_s=None if origin_s is None else event.at_s - origin_s,
                    kind=event.kind.value,
                    target=event.target,
                    detail=event.detail,
                )
                for event in recent[-RECENT_EVENTS:]
            ],
            faults=[fault.describe(origin_s) for fault in self.faults.snapshot()],
            commands=self._commands(),
            restart_hint=self._restart_hint(),
            keys_enabled=self.keys_enabled,
            notes=tuple(self.reasons),
        )

    def _write_state(self) -> None:
        now_s = time.time()
        processes = []
        for name, process in self.stack.processes.items():
            if process.pid is not None:
                self._pids_seen[(name, process.pid)] = None
            url = self._url_of(name)
            state, _ = self._state_of(name, now_s)
            processes.append(
                {
                    "name": name,
                    "role": role_of(name),
                    "pid": process.pid,
                    "url": url,
                    "port": urllib.parse.urlsplit(url).port if url else None,
                    "alive": process.alive,
                    "frozen": process.frozen,
                    "state": state.value,
                    "starts": process.starts,
                }
            )
        if self.load.pid is not None:
            self._pids_seen[("locust", self.load.pid)] = None
        self.state.write(
            {
                "schema": STATE_SCHEMA,
                "phase": self.phase.value,
                "variant": self.options.variant.value,
                "run_dir": str(self.options.out_dir.resolve()),
                "cell_dir": str(self.directory.resolve()),
                "harness_pid": os.getpid(),
                "load_start_s": self._origin_s(),
                "duration_s": self.options.duration_s,
                "restart_after_s": self.options.restart_after_s,
                "processes": processes,
                "load": {
                    "name": "locust",
                    "role": "load",
                    "pid": self.load.pid,
                    "alive": self.load.alive,
                    "web_url": self.web_url,
                    "rate_per_user_per_s": self.options.rate_per_s,
                },
                "nats_url": self.stack.nats_url,
                "nats_monitor_url": self.stack.nats_monitor_url,
                "pids_seen": [
                    {"name": name, "pid": pid} for name, pid in self._pids_seen
                ],
            }
        )


# The run folder around the session


def run_up(options: UpOptions, view: View, progress: Progress) -> UpResult:
    """Run one interactive session and write its run folder and report."""
    options.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    manifest = build_manifest(
        repo=Path(__file__).resolve().parent.parent,
        seed=options.seed,
        profile=PROFILE,
        argv=list(options.argv),
        scenarios=[],
    )
    manifest["variants"] = [options.variant.value]
    manifest["started_at_s"] = time.time()
    manifest["complete"] = False
    manifest_path = options.out_dir / "manifest.json"
    session = UpSession(options, view, progress)
    manifest["scenarios"] = [session.describe()]
    write_json(manifest_path, manifest)

    result = session.run()

    manifest["scenarios"] = [session.describe()]
    manifest["finished_at_s"] = time.time()
    manifest["wall_s"] = round(time.monotonic() - started, 3)
    manifest["complete"] = True
    write_json(manifest_path, manifest)
    write_run_summary(options.out_dir, [result])
    return UpResult(
        cell=result,
        out_dir=options.out_dir,
        report_path=_write_report(options.out_dir, progress),
    )


def _write_report(out_dir: Path, progress: Progress) -> Path | None:
    progress("writing the report")
    try:
        from bench.report import write_report
    except ImportError as exc:
        progress(f"no report: bench.report cannot be imported ({exc})")
        return None
    try:
        return write_report(out_dir)
    except Exception as exc:
        # The report is written by code that changes on its own schedule; the run
        # folder is complete without it, and can be reported on later.
        logger.exception("the report of %s failed", out_dir)
        progress(
            f"the report failed ({type(exc).__name__}: {exc}); the run folder is "
            f"complete, retry with bench.report.write_report({str(out_dir)!r})"
        )
        return None


# Command line


def command(args: argparse.Namespace) -> int:
    """`python -m bench up`; the options are declared in `bench.cli`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        options = UpOptions(
            variant=Variant(args.variant),
            out_dir=args.out or Path("results") / f"up-{stamp}",
            rate_per_s=args.rate,
            duration_s=args.duration,
            restart_after_s=args.restart_after,
            web=args.web,
            generators=args.generators,
            seed=args.seed,
            headless=args.headless,
            argv=sys.argv,
        )
    except UpOptionsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_HARNESS_FAILED

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    progress(f"run folder: {options.out_dir}")
    try:
        outcome = run_up(options, make_view(headless=options.headless), progress)
    except KeyboardInterrupt:
        progress(f"interrupted; what was collected is in {options.out_dir}")
        return EXIT_INTERRUPTED

    from bench.tables import summary_table

    print(summary_table([outcome.cell]))
    for reason in outcome.cell.reasons:
        print(f"note: {reason}")
    print(f"results in {outcome.out_dir}")
    if outcome.report_path is not None:
        print(f"report: {outcome.report_path}")
    if outcome.cell.status is analysis.CellStatus.HARNESS_ERROR:
        return EXIT_HARNESS_FAILED
    return EXIT_OK

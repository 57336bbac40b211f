"""Drive open-loop load at the requestor with a real Locust process, and watch it.

The harness side of the load: `LoadSettings` is what one Locust process is told,
through environment variables that `bench/locustfile.py` reads back with
`LoadSettings.from_environment`; `LoadGenerator` starts that process (headless, or
with its web UI), samples its CPU and memory, reads its live `load-status.json`, stops
it, and reads the `requests.csv` it leaves behind.

The generator is itself a bottleneck that must be watched: one Locust process holds
a few thousand requests per second on a small machine, and a run that asks for more
measures the generator, not the system. Its `load-status.json` counts the requests it
could not send on time (`dropped`, cause `late`), and `sample()` gives its CPU use; a
run whose generator drops more than a trace of its load, or sits near 100 % CPU,
says more about the generator than about the system.

This module imports neither Locust nor gevent (both patch the standard library when
imported); only the Locust process does.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import psutil

from bench.records import REQUEST_COLUMNS, SEQ_USER_BLOCK, Outcome
from bench.schedule import ArrivalProcess

logger = logging.getLogger(__name__)

LOCUSTFILE_PATH = Path(__file__).with_name("locustfile.py")
REQUESTS_FILE = "requests.csv"
STATUS_FILE = "load-status.json"
LOG_FILE = "locust.log"

DEFAULT_MAX_IN_FLIGHT = 1000
DEFAULT_LATE_TOLERANCE_MS = 50.0
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_LENGTH = 64

# Each user numbers its requests from user_index * SEQ_STRIDE, so that `seq` is unique
# in a run folder however many users there are, and stays contiguous within one user.
SEQ_STRIDE = SEQ_USER_BLOCK

# Locust gets this long beyond the client timeout to let every user wait for its
# requests in flight and write their rows, before it kills the users.
STOP_MARGIN_S = 3.0
# `--run-time` is a backstop only: a fixed-duration run ends itself when its schedule
# is done. The backstop leaves room for Locust's start-up and the final drain.
RUN_TIME_MARGIN_S = 10.0

# load-status.json format history (`LOAD_STATUS_SCHEMA`, written into the file):
# - 1: first version.
LOAD_STATUS_SCHEMA = 1


class LoadError(RuntimeError):
    """The load generator was misconfigured, did not start, or left no records."""


class LoadSettingsError(LoadError, ValueError):
    """A load setting, given in code or in the environment, is out of range."""


@dataclass(frozen=True, kw_only=True)
class LoadSettings:
    """What each user of one Locust process does; see `ENVIRONMENT_VARIABLES`."""

    out_dir: Path
    rate_per_user_per_s: float
    duration_s: float = 0.0  # 0: keep loading until Locust stops
    seed: int = 0
    # Epoch seconds of offset 0 of every schedule; None: each user's own start.
    start_at_s: float | None = None
    arrival: ArrivalProcess = ArrivalProcess.POISSON
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # per user
    late_tolerance_ms: float = DEFAULT_LATE_TOLERANCE_MS
    timeout_s: float = DEFAULT_TIMEOUT_S
    length: int = DEFAULT_LENGTH
    # Index of this process's first user: several Locust processes feeding one run
    # folder take disjoint ranges, so their seeds and `seq` values never collide.
    first_user_index: int = 0

    def __post_init__(self) -> None:
        positive = {
            "rate_per_user_per_s": self.rate_per_user_per_s,
            "max_in_flight": self.max_in_flight,
            "timeout_s": self.timeout_s,
            "length": self.length,
        }
        for name, value in positive.items():
            if not math.isfinite(value) or value <= 0:
                raise LoadSettingsError(f"{name} must be above 0, got {value!r}")
        at_least_zero = {
            "duration_s": self.duration_s,
            "late_tolerance_ms": self.late_tolerance_ms,
            "first_user_index": self.first_user_index,
        }
        for name, value in at_least_zero.items():
            if not math.isfinite(value) or value < 0:
                raise LoadSettingsError(f"{name} must be 0 or more, got {value!r}")
        if self.start_at_s is not None and not math.isfinite(self.start_at_s):
            raise LoadSettingsError(
                f"start_at_s must be epoch seconds, got {self.start_at_s!r}"
            )

    @property
    def fixed_duration(self) -> bool:
        return self.duration_s > 0

    def to_environment(self) -> dict[str, str]:
        """The environment variables that give these settings to the locustfile."""
        environment = {}
        for name, variable in ENVIRONMENT_VARIABLES.items():
            value = getattr(self, name)
            if value is not None:
                environment[variable.name] = str(value)
        return environment

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> LoadSettings:
        """Read the settings back; raise `LoadSettingsError` naming a bad variable."""
        values: dict[str, Any] = {}
        for item in fields(cls):
            variable = ENVIRONMENT_VARIABLES[item.name]
            text = environ.get(variable.name, "").strip()
            if not text:
                continue
            try:
                values[item.name] = variable.parse(text)
            except ValueError as exc:
                raise LoadSettingsError(f"{variable.name}={text!r}: {exc}") from exc
        for required in ("out_dir", "rate_per_user_per_s"):
            if required not in values:
                raise LoadSettingsError(
                    f"{ENVIRONMENT_VARIABLES[required].name} must be set; "
                    "the harness sets it, see bench/locustfile.py"
                )
        return cls(**values)


class EnvironmentVariable(NamedTuple):
    name: str
    parse: Callable[[str], object]


# Every `LoadSettings` field and the variable that carries it to the locustfile.
ENVIRONMENT_VARIABLES = {
    "out_dir": EnvironmentVariable("COUPLING_LOAD_OUT_DIR", Path),
    "rate_per_user_per_s": EnvironmentVariable("COUPLING_LOAD_RATE_PER_USER", float),
    "duration_s": EnvironmentVariable("COUPLING_LOAD_DURATION_S", float),
    "seed": EnvironmentVariable("COUPLING_LOAD_SEED", int),
    "start_at_s": EnvironmentVariable("COUPLING_LOAD_START_AT", float),
    "arrival": EnvironmentVariable("COUPLING_LOAD_ARRIVAL", ArrivalProcess),
    "max_in_flight": EnvironmentVariable("COUPLING_LOAD_MAX_IN_FLIGHT", int),
    "late_tolerance_ms": EnvironmentVariable("COUPLING_LOAD_LATE_TOLERANCE_MS", float),
    "timeout_s": EnvironmentVariable("COUPLING_LOAD_TIMEOUT_S", float),
    "length": EnvironmentVariable("COUPLING_LOAD_LENGTH", int),
    "first_user_index": EnvironmentVariable("COUPLING_LOAD_FIRST_USER_INDEX", int),
}
ENVIRONMENT_PREFIX = "COUPLING_LOAD_"


class LoadStatus(TypedDict):
    """load-status.json: the Locust process's counts so far, rewritten once a second.

    `due` counts the scheduled requests whose due time has come; each is then either
    `sent` or `dropped` (`pending` in between, for a moment). `done` counts the sent
    requests that have an outcome; `in_flight` is `sent - done`. `rows` is the number
    of rows written to requests.csv, `done + dropped` once they are flushed. The rates
    are over the last interval (about a second): offered is due, achieved is sent.
    """

    schema: int
    at_s: float
    pid: int
    state: str  # "starting", "running", "finished"
    users: int  # users whose stream is running
    due: int
    sent: int
    done: int
    in_flight: int
    pending: int
    dropped: int
    rows: int
    outcomes: dict[str, int]  # every `Outcome` value, dropped included
    dropped_by_cause: dict[str, int]
    interval_s: float
    offered_rate_per_s: float
    achieved_rate_per_s: float
    completed_rate_per_s: float
    complete: bool  # finished, and every due request has exactly one row


@dataclass(frozen=True)
class RequestRow:
    """One row of requests.csv, typed; see `bench.records.REQUEST_COLUMNS`."""

    seq: int
    due_s: float
    sent_s: float | None
    done_s: float | None
    latency_ms: float | None
    status: int
    outcome: Outcome
    cause: str
    request_id: str

    @property
    def user_index(self) -> int:
        return self.seq // SEQ_STRIDE

    @property
    def send_lag_ms(self) -> float | None:
        """How long after its due time the request went out."""
        if self.sent_s is None:
            return None
        return (self.sent_s - self.due_s) * 1000.0


def read_request_rows(path: Path) -> list[RequestRow]:
    """Every row of a requests.csv, in file order (completion order, not seq)."""
    with path.open(newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None or tuple(header) != REQUEST_COLUMNS:
            raise LoadError(
                f"{path}: expected the header {','.join(REQUEST_COLUMNS)}, "
                f"got {header!r}"
            )
        try:
            return [_request_row(values) for values in reader]
        except ValueError as exc:
            raise LoadError(f"{path}, line {reader.line_num}: {exc}") from exc


def _request_row(values: list[str]) -> RequestRow:
    if len(values) != len(REQUEST_COLUMNS):
        raise ValueError(f"expected {len(REQUEST_COLUMNS)} fields, got {values!r}")
    seq, due_s, sent_s, done_s, latency_ms, status, outcome, cause, request_id = values
    return RequestRow(
        seq=int(seq),
        due_s=float(due_s),
        sent_s=float(sent_s) if sent_s else None,
        done_s=float(done_s) if done_s else None,
        latency_ms=float(latency_ms) if latency_ms else None,
        status=int(status),
        outcome=Outcome(outcome),
        cause=cause,
        request_id=request_id,
    )


def read_status(path: Path) -> LoadStatus | None:
    """The latest load-status.json, or None before the first one is written."""
    try:
        document: LoadStatus = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise LoadError(f"{path} is not valid JSON: {exc}") from exc
    if document.get("schema") != LOAD_STATUS_SCHEMA:
        raise LoadError(
            f"{path} has schema {document.get('schema')!r}; "
            f"this harness reads schema {LOAD_STATUS_SCHEMA}"
        )
    return document


@dataclass(frozen=True)
class ProcessSample:
    """One reading of the Locust process's resource use."""

    at_s: float
    cpu_percent: float  # of one core; above 100 only if it used several
    rss_bytes: int


class LoadGenerator:
    """One Locust process running `bench/locustfile.py` against `host`.

    `users` Locust users each run their own open-loop stream at
    `settings.rate_per_user_per_s`, seeded `settings.seed + user_index`. With
    `web_port`, the web UI listens on 127.0.0.1 and nothing starts until someone
    presses start there; the user count typed there sets the offered rate.
    """

    def __init__(
        self,
        settings: LoadSettings,
        *,
        host: str,
        users: int = 1,
        web_port: int | None = None,
        log_level: str = "INFO",
    ) -> None:
        if users < 1:
            raise LoadSettingsError(f"users must be 1 or more, got {users}")
        # Absolute, because Locust runs in the out dir and reads the path from there.
        self.settings = replace(settings, out_dir=settings.out_dir.resolve())
        self.host = host
        self.users = users
        self.web_port = web_port
        self.log_level = log_level
        self._popen: subprocess.Popen[bytes] | None = None
        self._process: psutil.Process | None = None

    @property
    def offered_rate_per_s(self) -> float:
        return self.settings.rate_per_user_per_s * self.users

    @property
    def out_dir(self) -> Path:
        return self.settings.out_dir

    @property
    def requests_path(self) -> Path:
        return self.out_dir / REQUESTS_FILE

    @property
    def status_path(self) -> Path:
        return self.out_dir / STATUS_FILE

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_FILE

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    @property
    def stop_timeout_s(self) -> float:
        """Locust's `--stop-timeout`: the client timeout plus time to write rows."""
        return self.settings.timeout_s + STOP_MARGIN_S

    def command(self, now_s: float | None = None) -> list[str]:
        """The argv of the Locust process, as it would start at `now_s`."""
        argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE_PATH)]
        argv += ["--host", self.host, "--users", str(self.users)]
        # All users at once: they wait for the schedule's start, not for each other.
        argv += ["--spawn-rate", str(self.users)]
        argv += ["--stop-timeout", f"{self.stop_timeout_s:g}"]
        argv += ["--loglevel", self.log_level, "--only-summary"]
        if self.web_port is None:
            argv.append("--headless")
            if self.settings.fixed_duration:
                argv += ["--run-time", f"{self.run_time_s(now_s)}s"]
        else:
            argv += ["--web-host", "127.0.0.1", "--web-port", str(self.web_port)]
        return argv

    def run_time_s(self, now_s: float | None = None) -> int:
        """Locust's `--run-time` backstop for a fixed-duration run starting now."""
        now_s = time.time() if now_s is None else now_s
        wait_s = 0.0
        if self.settings.start_at_s is not None:
            wait_s = max(0.0, self.settings.start_at_s - now_s)
        total_s = wait_s + self.settings.duration_s + self.stop_timeout_s
        return math.ceil(total_s + RUN_TIME_MARGIN_S)

    def environment(self) -> dict[str, str]:
        """This process's environment, with the settings in place of any inherited."""
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(ENVIRONMENT_PREFIX)
        }
        return {**inherited, "PYTHONUNBUFFERED": "1", **self.settings.to_environment()}

    def start(self) -> None:
        """Start Locust in its own session, logging to `log_path`."""
        if self.alive:
            raise LoadError(f"Locust is already running as PID {self.pid}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"--- start at {time.time():.6f}: {' '.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.out_dir,
                start_new_session=True,
            )
        self._process = psutil.Process(self._popen.pid)
        # psutil measures CPU between two calls; this first one sets the baseline.
        with contextlib.suppress(psutil.Error):
            self._process.cpu_percent(interval=None)
        logger.info(
            "load generator started as PID %s: %s users at %.1f req/s each against %s",
            self._popen.pid,
            self.users,
            self.settings.rate_per_user_per_s,
            self.host,
        )

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for Locust to exit by itself: its exit code, None if it still runs."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(
        self, timeout_s: float | None = None, signum: signal.Signals = signal.SIGINT
    ) -> int | None:
        """Ask Locust to stop (`signum`), then SIGKILL if it outlives `timeout_s`.

        SIGINT and SIGTERM both make every user stop scheduling, wait for its
        requests in flight and write their rows. SIGKILL loses the rows of the
        requests in flight and up to a second of written rows not yet flushed.
        """
        if self._popen is None:
            return None
        timeout_s = self.stop_timeout_s + 5.0 if timeout_s is None else timeout_s
        if self.alive:
            self._popen.send_signal(signum)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "Locust (PID %s) did not exit within %s s of %s; killing it, "
                    "its last second of requests.csv may be missing",
                    self._popen.pid,
                    timeout_s,
                    signum.name,
                )
                self._popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._popen.wait(timeout=5.0)
        return self._popen.poll()

    def sample(self) -> ProcessSample | None:
        """CPU since the previous call, and RSS, of Locust; None once it has exited."""
        if self._process is None or not self.alive:
            return None
        try:
            with self._process.oneshot():
                cpu_percent = self._process.cpu_percent(interval=None)
                rss_bytes = self._process.memory_info().rss
        except psutil.Error:
            return None
        return ProcessSample(
            at_s=time.time(), cpu_percent=cpu_percent, rss_bytes=rss_bytes
        )

    def status(self) -> LoadStatus | None:
        return read_status(self.status_path)

    def read_requests(self) -> list[RequestRow]:
        """The rows of requests.csv; complete only after Locust has exited."""
        if not self.requests_path.exists():
            raise LoadError(
                f"Locust left no {self.requests_path}; last log lines:\n"
                f"{self.log_tail()}"
            )
        return read_request_rows(self.requests_path)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

"""Once a second, read what the stack shows about itself.

For each process: CPU percent and resident memory (psutil). For each service: its
`/metrics` page, from which breaker states and NATS reconnects are turned into events
when they change. For a JetStream stack: the server's `/jsz` monitoring page, giving
the backlog per stream and the pending, ack-pending and redelivered counts per
consumer. Readings go to `samples.csv` as they are taken; a reading that fails (a
process down, or frozen) is skipped, never invented.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psutil

from bench.events import EventLog, SampleWriter
from bench.records import BREAKER_STATE_CODES, EventKind
from bench.stack import ManagedProcess, Stack, http_get_json, http_get_text
from service_core.metrics import parse

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0
SCRAPE_TIMEOUT_S = 0.3

_STATE_NAMES = {code: name for name, code in BREAKER_STATE_CODES.items()}


class Sampler:
    """A background thread sampling `stack` (and extra processes) every second."""

    def __init__(
        self,
        stack: Stack,
        samples: SampleWriter,
        events: EventLog,
        *,
        extra_pids: Callable[[], dict[str, int | None]] | None = None,
    ) -> None:
        self.stack = stack
        self.samples = samples
        self.events = events
        self.extra_pids = extra_pids or dict
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._psutil: dict[int, psutil.Process] = {}
        self._breaker_states: dict[tuple[str, str], int] = {}
        self._reconnects: dict[str, float] = {}
        self.latest: dict[str, dict[str, float]] = {}
        # Breakers are labelled with their peer's URL; samples and events name the
        # peer process instead, which is what a reader of the plots knows.
        self._peer_names = {url: name for name, url in self._service_urls().items()}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.samples.flush()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:
                logger.exception("sampling failed; the next second will retry")
            next_at += SAMPLE_INTERVAL_S
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def sample_once(self) -> None:
        now = time.time()
        pids = {**self.stack.pids(), **self.extra_pids()}
        for name, pid in pids.items():
            self._sample_process(now, name, pid)
        for name, url in self._service_urls().items():
            process = self.stack.processes.get(name)
            if process is not None and (not process.alive or process.frozen):
                continue
            text = http_get_text(f"{url}/metrics", timeout_s=SCRAPE_TIMEOUT_S)
            if text is not None:
                self._read_metrics(now, name, parse(text))
        if self.stack.nats_monitor_url and self.stack["nats"].alive:
            self._sample_jetstream(now)
        self.samples.flush()

    def _service_urls(self) -> dict[str, str]:
        return {"requestor": self.stack.requestor_url, **self.stack.generator_urls}

    def _sample_process(self, now: float, name: str, pid: int | None) -> None:
        if pid is None:
            return
        try:
            process = self._psutil.get(pid)
            if process is None:
                process = self._psutil[pid] = psutil.Process(pid)
                process.cpu_percent(None)  # the first reading is always 0
                return
            with process.oneshot():
                cpu = process.cpu_percent(None)
                rss = process.memory_info().rss
        except psutil.Error:
            self._psutil.pop(pid, None)
            return
        self.samples.add(now, name, "cpu_percent", "", cpu)
        self.samples.add(now, name, "rss_bytes", "", rss)
        self.latest.setdefault(name, {}).update(cpu_percent=cpu, rss_bytes=rss)

    def _read_metrics(self, now: float, name: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key.startswith("coupling_breaker_state_code{"):
                breaker = self._peer_names.get(
                    _label(key, "breaker"), _label(key, "breaker")
                )
                self.samples.add(now, name, "breaker_state", breaker, value)
                code = int(value)
                previous = self._breaker_states.get((name, breaker))
                if previous != code:
                    self._breaker_states[(name, breaker)] = code
                    if previous is not None:
                        self.events.add(
                            EventKind.BREAKER,
                            f"{name}->{breaker}",
                            _STATE_NAMES.get(code, str(code)),
                        )
            elif key == "coupling_nats_reconnects_total":
                previous_count = self._reconnects.get(name)
                self._reconnects[name] = value
                if previous_count is not None and value > previous_count:
                    self.events.add(
                        EventKind.NATS_RECONNECT, name, f"reconnects={int(value)}"
                    )
            elif key == "coupling_nats_connected":
                self.samples.add(now, name, "nats_connected", "", value)

    def _sample_jetstream(self, now: float) -> None:
        url = f"{self.stack.nats_monitor_url}/jsz?streams=true&consumers=true"
        status, page = http_get_json(url, timeout_s=SCRAPE_TIMEOUT_S)
        if status != 200 or not isinstance(page, dict):
            return
        total = 0.0
        for account in page.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                messages = float(stream.get("state", {}).get("messages", 0))
                total += messages
                self.samples.add(
                    now, "jetstream", "stream_messages", stream["name"], messages
                )
                for consumer in stream.get("consumer_detail") or []:
                    key = f"{stream['name']}/{consumer['name']}"
                    for metric in ("num_pending", "num_ack_pending", "num_redelivered"):
                        value = float(consumer.get(metric, 0))
                        self.samples.add(
                            now, "jetstream", metric.removeprefix("num_"), key, value
                        )
        self.latest["jetstream"] = {"backlog": total}


def _label(key: str, label: str) -> str:
    marker = f'{label}="'
    start = key.find(marker)
    if start < 0:
        return ""
    start += len(marker)
    return key[start : key.find('"', start)]


class ProcessWatcher:
    """Notices exits and freezes of the stack's processes, whoever caused them.

    Called every tick of the harness's loop (well under a second apart): an exit is an
    event with the exit code; a process found stopped (`kill -STOP` by hand) or
    running again is an event too, and the process is marked so that the sampler does
    not wait on it and the stack thaws it before stopping it.
    """

    def __init__(self, stack: Stack, events: EventLog) -> None:
        self.stack = stack
        self.events = events
        self._alive: dict[str, int | None] = {}
        self._stopped: dict[int, bool] = {}

    def poll(self) -> None:
        for name, process in self.stack.processes.items():
            pid = process.pid
            seen = self._alive.get(name)
            if process.alive:
                if seen != pid:
                    self._alive[name] = pid
                self._check_frozen(name, process)
            elif seen is not None:
                self._alive[name] = None
                self.events.add(
                    EventKind.PROCESS_EXIT,
                    name,
                    f"PID {seen} exit code {process.returncode}",
                )

    def _check_frozen(self, name: str, process: ManagedProcess) -> None:
        pid = process.pid
        if pid is None:
            return
        try:
            stopped = psutil.Process(pid).status() == psutil.STATUS_STOPPED
        except psutil.Error:
            return
        if stopped != self._stopped.get(pid, False):
            self._stopped[pid] = stopped
            process.frozen = stopped
            kind = EventKind.PROCESS_FROZEN if stopped else EventKind.PROCESS_THAWED
            self.events.add(kind, name, f"PID {pid}")

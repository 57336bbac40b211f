"""Inject a scenario's faults into a running stack on schedule.

Each step has a start (kill, freeze, slow down, make fail, restart) and, when it has a
duration, an end (start again, thaw, clear). Both the planned and the actual times are
recorded as events, so plots can show how late the harness was; exits and freezes
themselves are recorded by the process watcher, whoever caused them. Restarts wait for
the process to be healthy in a thread of their own, so the schedule is never held up.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.events import EventLog
from bench.records import EventKind
from bench.scenario import FaultAction, FaultStep
from bench.stack import ManagedProcess, Stack, StackError, http_send_json

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    step: FaultStep
    started: bool = False
    ended: bool = False


class FaultRunner:
    """Runs `steps` against `stack`, timed from `load_start_s` (epoch seconds)."""

    def __init__(
        self,
        stack: Stack,
        steps: tuple[FaultStep, ...],
        load_start_s: float,
        events: EventLog,
    ) -> None:
        self.stack = stack
        self.load_start_s = load_start_s
        self.events = events
        self._pending = [_Pending(step) for step in steps]
        self._threads: list[threading.Thread] = []
        for step in steps:
            start = load_start_s + step.at_s
            events.add(
                EventKind.FAULT_PLANNED,
                step.target,
                f"{step.action.value} start",
                at_s=start,
                planned=True,
            )
            if step.duration_s:
                events.add(
                    EventKind.FAULT_PLANNED,
                    step.target,
                    f"{step.action.value} end",
                    at_s=start + step.duration_s,
                    planned=True,
                )

    def tick(self, now_s: float | None = None) -> None:
        """Carry out every start or end that is due."""
        now_s = time.time() if now_s is None else now_s
        elapsed = now_s - self.load_start_s
        for pending in self._pending:
            step = pending.step
            if not pending.started and elapsed >= step.at_s:
                pending.started = True
                self._start(step)
                if not step.duration_s:
                    pending.ended = True
            if (
                pending.started
                and not pending.ended
                and elapsed >= step.at_s + step.duration_s
            ):
                pending.ended = True
                self._end(step)

    def finish(self, timeout_s: float = 30.0) -> None:
        """End every fault still in force and wait for restarts under way."""
        for pending in self._pending:
            if pending.started and not pending.ended:
                pending.ended = True
                self._end(pending.step)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def done(self) -> bool:
        return all(pending.ended for pending in self._pending)

    def _start(self, step: FaultStep) -> None:
        process = self.stack[step.target]
        action = step.action
        logger.info("fault: %s %s", action.value, step.target)
        if action is FaultAction.KILL:
            process.kill()
            self._injected(step, f"SIGKILL PID {process.pid}")
        elif action is FaultAction.FREEZE:
            process.send(signal.SIGSTOP)
            self._injected(step, f"SIGSTOP PID {process.pid}")
        elif action in (FaultAction.SLOW, FaultAction.ERRORS):
            body = {"latency_ms": step.latency_ms, "error_rate": step.error_rate}
            status, answer = http_send_json(
                "POST", f"{self._url_of(step.target)}/admin/fault", body
            )
            if status != 200:
                raise StackError(
                    f"POST /admin/fault on {step.target} answered {status}: {answer}"
                )
            self._injected(
                step, f"latency_ms={step.latency_ms} error_rate={step.error_rate}"
            )
        elif action is FaultAction.RESTART:
            self._injected(step, f"SIGTERM PID {process.pid}")
            self._in_thread(self._restart, process, step, True)

    def _end(self, step: FaultStep) -> None:
        process = self.stack[step.target]
        action = step.action
        logger.info("fault cleared: %s %s", action.value, step.target)
        if action is FaultAction.KILL:
            self._in_thread(self._restart, process, step, False)
        elif action is FaultAction.FREEZE:
            process.send(signal.SIGCONT)
            self._cleared(step, f"SIGCONT PID {process.pid}")
        elif action in (FaultAction.SLOW, FaultAction.ERRORS):
            status, answer = http_send_json(
                "DELETE", f"{self._url_of(step.target)}/admin/fault"
            )
            if status != 200:
                logger.warning(
                    "DELETE /admin/fault on %s answered %s: %s",
                    step.target,
                    status,
                    answer,
                )
            self._cleared(step, "fault cleared")

    def _restart(self, process: ManagedProcess, step: FaultStep, stop: bool) -> None:
        # The fault lasts until the service is back: a restarted process that is
        # still booting serves nobody, so the fault is cleared once it is healthy.
        if stop:
            process.stop()
        process.start()
        self.events.add(EventKind.PROCESS_START, process.name, f"PID {process.pid}")
        try:
            process.wait_healthy()
        except StackError as exc:
            logger.error("%s", exc)
            return
        self._cleared(step, f"started again as PID {process.pid}, healthy")

    def _in_thread(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _url_of(self, target: str) -> str:
        if target == "requestor":
            return self.stack.requestor_url
        try:
            return self.stack.generator_urls[target]
        except KeyError:
            raise StackError(
                f"no HTTP surface for fault target {target!r}; expected requestor "
                f"or one of {sorted(self.stack.generator_urls)}"
            ) from None

    def _injected(self, step: FaultStep, detail: str) -> None:
        self.events.add(
            EventKind.FAULT_INJECTED, step.target, f"{step.action}: {detail}"
        )

    def _cleared(self, step: FaultStep, detail: str) -> None:
        self.events.add(
            EventKind.FAULT_CLEARED, step.target, f"{step.action}: {detail}"
        )

"""Open-loop load on the requestor, for a real Locust process.

`bench.load.LoadGenerator` runs this file (``python -m locust -f bench/locustfile.py
--host URL ...``, headless or with the web UI); it can be run by hand the same way,
given the environment below.

Every Locust user is one open-loop stream: a seeded arrival schedule
(`bench.schedule`) says when each of its requests is due, and each request is sent at
its due time in a greenlet of its own, whether or not the earlier ones have answered.
Latency is measured from the due time, not from the send, so a stall of the system
shows up in full instead of slowing the load down (coordinated omission). A request
that cannot go out within the late tolerance of its due time, or that would exceed
the cap on requests in flight, is not sent and is recorded as `dropped`, with cause
`late` or `concurrency_cap`.

User i follows the schedule seeded `COUPLING_LOAD_SEED + i` at the per-user rate (i
counts from `COUPLING_LOAD_FIRST_USER_INDEX`, in the order Locust starts users); the
streams are independent, so the offered rate is the per-user rate times the number
of users, and the user count typed into the web UI scales the load.

Environment variables (declared once, in `bench.load.ENVIRONMENT_VARIABLES`):

- `COUPLING_LOAD_RATE_PER_USER` (required): requests per second of each user.
- `COUPLING_LOAD_DURATION_S`: seconds of schedule per user. 0, the default, loads
  until Locust stops. With a fixed duration, once every user's schedule is done and
  its requests have answered, Locust quits by itself (headless) or the test stops
  (web UI).
- `COUPLING_LOAD_SEED`: seed of user 0's schedule (default 0).
- `COUPLING_LOAD_START_AT`: epoch seconds at which offset 0 of every schedule falls;
  every user waits for it, so Locust can be started while the services boot. Unset,
  each user's schedule starts when the user does (the web UI's way). A user that
  starts after it records the due times it has missed as dropped (`late`).
- `COUPLING_LOAD_ARRIVAL`: `poisson` (default) or `uniform`.
- `COUPLING_LOAD_OUT_DIR` (required): folder for `requests.csv` and
  `load-status.json`; `requests.csv` must not exist yet.
- `COUPLING_LOAD_MAX_IN_FLIGHT`: cap on requests in flight, per user (default 1000).
- `COUPLING_LOAD_LATE_TOLERANCE_MS`: how long after its due time a request may
  still be sent (default 50).
- `COUPLING_LOAD_TIMEOUT_S`: client timeout of a request, from the send to its last
  byte (default 5).
- `COUPLING_LOAD_LENGTH`: the `length` asked for in every request (default 64).
- `COUPLING_LOAD_FIRST_USER_INDEX`: index of this process's first user (default 0).
  When one Locust process is not enough, each further process gets the next range
  of user indexes, so that seeds and `seq` values stay distinct across processes.

What it writes, in `COUPLING_LOAD_OUT_DIR`:

- `requests.csv`: one raw row per due request (`bench.records.REQUEST_COLUMNS`), in
  the order the outcomes became known, flushed at least once a second. `seq` is
  `user_index * bench.load.SEQ_STRIDE + index in the user's schedule`.
- `load-status.json`: the counts so far (`bench.load.LoadStatus`), replaced once a
  second by an atomic rename.

Stopping: when Locust stops a user (end of the fixed duration, `--run-time`, Ctrl-C,
SIGTERM, fewer users in the web UI), the stream schedules nothing due after that
moment, waits for its requests in flight (each ends within the client timeout), and
writes their rows, so every request due before the stop has exactly one row. Locust
must be given `--stop-timeout` longer than the client timeout for that wait. The
process exits with code 0 when the record is complete, `EXIT_INCOMPLETE` (3) when it
is not (a stream failed, or a row is missing), and `EXIT_BAD_SETTINGS` (2) when the
environment is wrong or `requests.csv` exists already. SIGKILL loses the rows of the
requests in flight and up to a second of rows not yet flushed.

Locust's own statistics are fed (so the web UI shows the load), but they are
closed-loop bucketed figures: no result is computed from them.

Known shortcomings:

- gevent's timers wake up to about a millisecond after the due time; that lag is
  part of every latency (it is the `sent_s - due_s` of a row).
- A stop from the web UI goes through Locust's `runner.stop()`, which inspects the
  call stack before it tells any user and so holds every greenlet for about 0.1 s;
  the requests due in that moment are dropped as `late`. Ctrl-C and SIGTERM tell
  the streams first and do not lose them.
- The client's deadline covers the whole request. Should it fire while the request
  head is still being written (only a peer that stops reading for megabytes could
  cause that), geventhttpclient keeps that connection's slot in its pool; later
  requests of the stream may then wait for a connection, inside their latency.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import errno
import itertools
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from http.client import HTTPException
from pathlib import Path
from typing import Any

import gevent
from gevent import GreenletExit
from gevent.event import Event
from gevent.pool import Group
from geventhttpclient.client import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed
from geventhttpclient.url import URL
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import STATE_CLEANUP, STATE_INIT, STATE_STOPPED

from bench.load import (
    LOAD_STATUS_SCHEMA,
    REQUESTS_FILE,
    SEQ_STRIDE,
    STATUS_FILE,
    LoadSettings,
    LoadSettingsError,
    LoadStatus,
)
from bench.outcome import BodyFields, ClientError, DroppedCause, classify, read_body
from bench.records import REQUEST_COLUMNS, Outcome
from bench.schedule import iter_arrival_offsets

logger = logging.getLogger(__name__)

STRINGS_PATH = "/strings"
STATUS_INTERVAL_S = 1.0
# A request's own deadline ends it within the client timeout; this is only for the
# scheduler to notice that every one of them has ended.
DRAIN_GRACE_S = 1.0
# Due requests handed out back to back (a Poisson cluster, or a stream catching up)
# yield to the event loop after this many, so sends and answers keep moving.
MAX_BURST = 64
EXIT_INCOMPLETE = 3
EXIT_BAD_SETTINGS = 2


class EpochClock:
    """Epoch seconds read off the monotonic clock.

    Due, send and answer times are taken from `time.monotonic()` and converted with
    one fixed offset, so a step of the wall clock during a run cannot reorder them.
    """

    def __init__(self) -> None:
        self._epoch_at_zero = time.time() - time.monotonic()

    def epoch(self, monotonic_s: float) -> float:
        return self._epoch_at_zero + monotonic_s

    def monotonic(self, epoch_s: float) -> float:
        return epoch_s - self._epoch_at_zero


class RequestFailed(Exception):
    """What Locust's statistics are told about a request that did not succeed."""


class RequestLog:
    """requests.csv, written row by row and flushed by the caller."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Exclusive creation: a run folder's records are never overwritten.
        self._file = path.open("x", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(REQUEST_COLUMNS)
        self._file.flush()
        self.rows = 0

    def write(self, row: Sequence[object]) -> None:
        self._writer.writerow(row)
        self.rows += 1

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class LoadRun:
    """Everything one Locust process shares: settings, clock, records, counts."""

    def __init__(self, settings: LoadSettings, environment: Any) -> None:
        self.settings = settings
        self.environment = environment
        self.clock = EpochClock()
        self.log = RequestLog(settings.out_dir / REQUESTS_FILE)
        self.status_path = settings.out_dir / STATUS_FILE
        self.due = 0
        self.sent = 0
        self.done = 0
        self.outcomes: Counter[Outcome] = Counter()
        self.dropped_by_cause: Counter[str] = Counter()
        self.failed = False
        self.closed = False
        self._user_indexes = itertools.count(settings.first_user_index)
        self._streams_started = 0
        self._streams_running: set[OpenLoopStream] = set()
        self._test_ended = False
        self._last_tick = (time.monotonic(), 0, 0, 0)
        self._write_status()
        self._ticker = gevent.spawn(self._tick)

    @property
    def headless(self) -> bool:
        options = self.environment.parsed_options
        return bool(options is not None and options.headless)

    @property
    def complete(self) -> bool:
        """Every due request has its one row, and nothing went wrong on the way."""
        return (
            not self.failed
            and not self._streams_running
            and self.log.rows == self.due
            and self.done == self.sent
        )

    def open_stream(self, host: str) -> OpenLoopStream:
        stream = OpenLoopStream(self, next(self._user_indexes), host)
        self._streams_started += 1
        self._streams_running.add(stream)
        return stream

    def request_stop_all(self) -> None:
        for stream in list(self._streams_running):
            stream.request_stop()

    def stream_finished(self, stream: OpenLoopStream) -> None:
        """Called once per stream after its drain; may end a fixed-duration test."""
        self._streams_running.discard(stream)
        if not stream.schedule_ended or self._streams_running or self._test_ended:
            return
        runner = self.environment.runner
        if runner is None or self._streams_started < runner.target_user_count:
            return
        self._test_ended = True
        self.flush()
        if self.headless:
            logger.info("every schedule is done and drained; quitting Locust")
            gevent.spawn(runner.quit)
        else:
            logger.info("every schedule is done and drained; stopping the test")
            gevent.spawn(runner.stop)

    def record(
        self,
        seq: int,
        due_s: float,
        sent_monotonic_s: float | None,
        done_monotonic_s: float | None,
        status: int,
        outcome: Outcome,
        cause: str | None,
        request_id: str | None,
    ) -> None:
        """Write the one row of a due request, and count it."""
        if self.closed:
            logger.error("row %s came after requests.csv was closed; lost", seq)
            self.failed = True
            return
        sent_s = done_s = latency_ms = None
        if sent_monotonic_s is not None:
            sent_s = self.clock.epoch(sent_monotonic_s)
        if done_monotonic_s is not None:
            done_s = self.clock.epoch(done_monotonic_s)
            latency_ms = (done_s - due_s) * 1000.0
        self.log.write(
            (
                seq,
                f"{due_s:.6f}",
                "" if sent_s is None else f"{sent_s:.6f}",
                "" if done_s is None else f"{done_s:.6f}",
                "" if latency_ms is None else f"{latency_ms:.3f}",
                status,
                outcome.value,
                cause or "",
                request_id or "",
            )
        )
        self.outcomes[outcome] += 1
        if outcome is Outcome.DROPPED:
            self.dropped_by_cause[cause or ""] += 1
            self._tell_locust("DROPPED", cause or "", 0.0, RequestFailed(str(cause)))
        else:
            self.done += 1
            failure = None
            if outcome is not Outcome.ACCEPTED:
                failure = RequestFailed(f"{outcome.value}: {cause or status}")
            self._tell_locust("POST", STRINGS_PATH, latency_ms or 0.0, failure)

    def _tell_locust(
        self,
        request_type: str,
        name: str,
        response_time_ms: float,
        failure: Exception | None,
    ) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=response_time_ms,
            response_length=0,
            response=None,
            context={},
            exception=failure,
        )

    def flush(self) -> None:
        self.log.flush()
        self._write_status()

    def close(self) -> None:
        """Final flush and status; called once, when Locust quits."""
        if self.closed:
            return
        self.closed = True
        self._ticker.kill(block=False)
        self.log.close()
        self._write_status()
        if self.complete:
            logger.info(
                "load record complete: %s rows, %s",
                self.log.rows,
                {outcome.value: count for outcome, count in self.outcomes.items()},
            )
        else:
            logger.error(
                "load record INCOMPLETE: %s due, %s rows, %s sent, %s done, "
                "stream failure: %s",
                self.due,
                self.log.rows,
                self.sent,
                self.done,
                self.failed,
            )

    def _tick(self) -> None:
        while not self.closed:
            gevent.sleep(STATUS_INTERVAL_S)
            if not self.closed:
                self.flush()

    def _write_status(self) -> None:
        now = time.monotonic()
        last_at, last_due, last_sent, last_done = self._last_tick
        interval_s = now - last_at
        self._last_tick = (now, self.due, self.sent, self.done)

        def rate(count: int, last: int) -> float:
            return (count - last) / interval_s if interval_s > 0 else 0.0

        dropped = self.outcomes[Outcome.DROPPED]
        if self.closed:
            state = "finished"
        elif self._streams_started:
            state = "running"
        else:
            state = "starting"
        status: LoadStatus = {
            "schema": LOAD_STATUS_SCHEMA,
            "at_s": self.clock.epoch(now),
            "pid": os.getpid(),
            "state": state,
            "users": len(self._streams_running),
            "due": self.due,
            "sent": self.sent,
            "done": self.done,
            "in_flight": self.sent - self.done,
            "pending": self.due - self.sent - dropped,
            "dropped": dropped,
            "rows": self.log.rows,
            "outcomes": {outcome.value: self.outcomes[outcome] for outcome in Outcome},
            "dropped_by_cause": {
                str(cause): count for cause, count in self.dropped_by_cause.items()
            },
            "interval_s": interval_s,
            "offered_rate_per_s": rate(self.due, last_due),
            "achieved_rate_per_s": rate(self.sent, last_sent),
            "completed_rate_per_s": rate(self.done, last_done),
            "complete": self.closed and self.complete,
        }
        partial = self.status_path.with_name(self.status_path.name + ".partial")
        partial.write_text(json.dumps(status, indent=1) + "\n")
        partial.replace(self.status_path)


class OpenLoopStream:
    """One user's schedule: hands out due requests and records every one of them."""

    def __init__(self, run: LoadRun, index: int, host: str) -> None:
        settings = run.settings
        self._load = run
        self.index = index
        self.seed = settings.seed + index
        self.schedule_ended = False
        self._seq_base = index * SEQ_STRIDE
        self._fixed_duration_s = (
            settings.duration_s if settings.fixed_duration else None
        )
        self._schedule: Iterator[tuple[int, float]] = enumerate(
            iter_arrival_offsets(
                settings.rate_per_user_per_s, self.seed, process=settings.arrival
            )
        )
        self._next: tuple[int, float] | None = None
        self._late_tolerance_s = settings.late_tolerance_ms / 1000.0
        self._timeout_s = settings.timeout_s
        self._max_in_flight = settings.max_in_flight
        self._anchor_monotonic_s = 0.0
        self._anchor_epoch_s = 0.0
        self._stop_requested = Event()
        self._stop_monotonic_s: float | None = None
        self._started = False

        url = URL(host)
        if url.scheme != "http":
            raise ValueError(f"expected an http:// host, got {host!r}")
        self._path = url.path.rstrip("/") + STRINGS_PATH
        self._payload = json.dumps({"length": settings.length}).encode()
        self._headers = {"Content-Type": "application/json"}
        self._client = HTTPClient(
            url.host,
            port=url.port,
            concurrency=settings.max_in_flight,
            connection_timeout=settings.timeout_s,
            network_timeout=settings.timeout_s,
        )
        self._requests = Group()
        # seq -> due_s of every request handed out whose row is not written yet
        self._unrecorded: dict[int, float] = {}

    @property
    def started(self) -> bool:
        return self._started

    def request_stop(self) -> None:
        """Schedule nothing due from now on; idempotent."""
        if self._stop_monotonic_s is None:
            self._stop_monotonic_s = time.monotonic()
            self._stop_requested.set()

    def wait_for_stop(self) -> None:
        self._stop_requested.wait()

    def run(self) -> None:
        """Follow the schedule until it ends or a stop, then drain; once only."""
        if self._started:
            raise RuntimeError(f"stream {self.index} has already run")
        self._started = True
        self._anchor()
        try:
            self._follow_until_stopped()
        finally:
            self._drain()
            self._client.close()
            self._load.stream_finished(self)
        logger.info(
            "stream %s (seed %s) done: schedule %s",
            self.index,
            self.seed,
            "ended" if self.schedule_ended else "stopped",
        )

    def _anchor(self) -> None:
        settings = self._load.settings
        clock = self._load.clock
        if settings.start_at_s is None:
            self._anchor_monotonic_s = time.monotonic()
            self._anchor_epoch_s = clock.epoch(self._anchor_monotonic_s)
            return
        self._anchor_epoch_s = settings.start_at_s
        self._anchor_monotonic_s = clock.monotonic(settings.start_at_s)
        late_s = time.monotonic() - self._anchor_monotonic_s
        if late_s > self._late_tolerance_s:
            logger.warning(
                "user %s started %.3f s after COUPLING_LOAD_START_AT; the requests "
                "due until now are recorded as dropped (late): start Locust earlier",
                self.index,
                late_s,
            )

    def _follow_until_stopped(self) -> None:
        try:
            self._follow_schedule()
        except GreenletExit:
            # Locust kills a user outright when it has no stop timeout: the requests
            # due before that moment are still handed out before the drain.
            self.request_stop()
            with contextlib.suppress(GreenletExit):
                self._follow_schedule()

    def _follow_schedule(self) -> None:
        burst = 0
        while True:
            if self._next is None:
                self._next = self._next_due()
                if self._next is None:
                    self.schedule_ended = True
                    return
            seq, offset = self._next
            due_monotonic_s = self._anchor_monotonic_s + offset
            stop_s = self._stop_monotonic_s
            if stop_s is not None and due_monotonic_s >= stop_s:
                return
            delay_s = due_monotonic_s - time.monotonic()
            if delay_s > 0:
                burst = 0
                self._stop_requested.wait(delay_s)
                continue
            self._next = None
            self._hand_out(seq, self._anchor_epoch_s + offset, due_monotonic_s)
            burst += 1
            if burst >= MAX_BURST:
                burst = 0
                gevent.sleep(0)

    def _next_due(self) -> tuple[int, float] | None:
        index, offset = next(self._schedule)
        if self._fixed_duration_s is not None and offset >= self._fixed_duration_s:
            return None
        return self._seq_base + index, offset

    def _hand_out(self, seq: int, due_s: float, due_monotonic_s: float) -> None:
        self._load.due += 1
        if time.monotonic() - due_monotonic_s > self._late_tolerance_s:
            self._drop(seq, due_s, DroppedCause.LATE)
        elif len(self._requests) >= self._max_in_flight:
            self._drop(seq, due_s, DroppedCause.CONCURRENCY_CAP)
        else:
            self._unrecorded[seq] = due_s
            self._requests.spawn(self._send, seq, due_s, due_monotonic_s)

    def _drop(self, seq: int, due_s: float, cause: DroppedCause) -> None:
        self._load.record(seq, due_s, None, None, 0, Outcome.DROPPED, cause, None)

    def _send(self, seq: int, due_s: float, due_monotonic_s: float) -> None:
        sent_monotonic_s = time.monotonic()
        if sent_monotonic_s - due_monotonic_s > self._late_tolerance_s:
            del self._unrecorded[seq]
            self._drop(seq, due_s, DroppedCause.LATE)
            return
        self._load.sent += 1
        status = 0
        body = b""
        client_error: str | None = None
        deadline = gevent.Timeout(self._timeout_s)
        deadline.start()
        try:
            response = self._client.request(
                "POST", self._path, body=self._payload, headers=self._headers
            )
            status = response.status_code
            body = response.read()
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            client_error = ClientError.TIMEOUT
        except GreenletExit:
            client_error = ClientError.ABANDONED
        except HTTPConnectionClosed:
            client_error = ClientError.CLOSED
        except HTTPException:
            client_error = ClientError.BAD_RESPONSE
        except TimeoutError:
            client_error = ClientError.TIMEOUT
        except ConnectionRefusedError:
            client_error = ClientError.REFUSED
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            client_error = ClientError.RESET
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            client_error = f"{ClientError.OS_ERROR}:{name}"
        finally:
            deadline.close()
        done_monotonic_s = time.monotonic()

        if client_error is not None:
            status = 0
        fields = read_body(body) if body else BodyFields(None, None)
        outcome = classify(status, fields.error_cause, client_error)
        cause = client_error if client_error is not None else fields.error_cause
        del self._unrecorded[seq]
        self._load.record(
            seq,
            due_s,
            sent_monotonic_s,
            done_monotonic_s,
            status,
            outcome,
            cause,
            fields.request_id,
        )

    def _drain(self) -> None:
        """Account for every request due before the stop, then wait for answers."""
        self._write_off_unreached()
        deadline_s = time.monotonic() + self._timeout_s + DRAIN_GRACE_S
        while self._requests and (remaining_s := deadline_s - time.monotonic()) > 0:
            try:
                self._requests.join(timeout=remaining_s)
            except GreenletExit:
                break
        if self._requests:
            logger.warning(
                "stream %s: %s requests still unanswered at the end of the drain; "
                "recorded as abandoned",
                self.index,
                len(self._requests),
            )
            with contextlib.suppress(GreenletExit):
                self._requests.kill(block=True, timeout=DRAIN_GRACE_S)
        # A greenlet killed before it ran never wrote its row.
        for seq, due_s in sorted(self._unrecorded.items()):
            self._drop(seq, due_s, DroppedCause.STOPPED)
        self._unrecorded.clear()

    def _write_off_unreached(self) -> None:
        """Record as dropped what was due before a stop but never handed out.

        Only a stream that was behind its schedule and was then killed twice has any.
        """
        stop_s = self._stop_monotonic_s
        if stop_s is None or self.schedule_ended:
            return
        while True:
            if self._next is None:
                self._next = self._next_due()
                if self._next is None:
                    return
            seq, offset = self._next
            if self._anchor_monotonic_s + offset >= stop_s:
                return
            self._next = None
            self._load.due += 1
            self._drop(seq, self._anchor_epoch_s + offset, DroppedCause.STOPPED)


_run: LoadRun | None = None


def current_run() -> LoadRun:
    if _run is None:
        raise RuntimeError("the load run is made by Locust's init event; none was")
    return _run


def _make_run(environment: Any, **_kwargs: Any) -> None:
    global _run
    try:
        settings = LoadSettings.from_environment(os.environ)
    except LoadSettingsError as exc:
        logger.error("cannot start the load: %s", exc)
        sys.exit(EXIT_BAD_SETTINGS)
    try:
        _run = LoadRun(settings, environment)
    except FileExistsError as exc:
        logger.error(
            "cannot start the load: %s exists already; give an empty out dir", exc
        )
        sys.exit(EXIT_BAD_SETTINGS)
    atexit.register(_run.log.close)
    logger.info(
        "open-loop load: %.3f req/s per user, %s arrivals, seed %s, %s, offset 0 at %s",
        settings.rate_per_user_per_s,
        settings.arrival.value,
        settings.seed,
        f"{settings.duration_s:g} s" if settings.fixed_duration else "unbounded",
        settings.start_at_s or "each user's start",
    )


def _finish_run(environment: Any, **_kwargs: Any) -> None:
    if _run is None:
        return
    runner = environment.runner
    # On SIGTERM and Ctrl-C Locust fires `quitting` before it stops the users; stop
    # them here, so that their drain is over before the record is closed and the exit
    # code chosen. The streams hear of it first: `runner.stop()` inspects the call
    # stack before it tells any user, and that blocks every greenlet for a moment.
    _run.request_stop_all()
    if runner is not None:
        waited_s = 0.0
        while runner.state == STATE_CLEANUP and waited_s < environment.stop_timeout:
            gevent.sleep(0.05)
            waited_s += 0.05
        if runner.state not in (STATE_INIT, STATE_STOPPED):
            runner.stop()
    _run.close()
    environment.process_exit_code = 0 if _run.complete else EXIT_INCOMPLETE


# Locust's `EventHook.add_listener` carries no annotations.
events.init.add_listener(_make_run)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_finish_run)  # type: ignore[no-untyped-call]


class OpenLoopUser(User):
    """One open-loop stream at `COUPLING_LOAD_RATE_PER_USER` requests per second."""

    wait_time = constant(0)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._stream: OpenLoopStream | None = None

    def on_start(self) -> None:
        run = current_run()
        try:
            self._stream = run.open_stream(self.host or "")
        except ValueError as exc:
            logger.error(
                "cannot load %r: %s; pass --host http://HOST:PORT", self.host, exc
            )
            run.failed = True
            raise StopUser() from exc

    @task
    def follow_schedule(self) -> None:
        stream = self._stream
        # Locust runs a task again after it returns; a stream runs once.
        if stream is None or stream.started:
            raise StopUser()
        try:
            stream.run()
        except Exception:
            logger.exception("stream %s failed; its record is incomplete", stream.index)
            current_run().failed = True
            raise StopUser() from None
        # A finished schedule waits here for Locust to stop the user, so that Locust
        # does not start the task again.
        with contextlib.suppress(GreenletExit):
            stream.wait_for_stop()
        raise StopUser()

    def on_stop(self) -> None:
        if self._stream is not None and not self._stream.started:
            current_run().stream_finished(self._stream)

    def stop(self, force: bool = False) -> bool:
        if self._stream is not None:
            self._stream.request_stop()
        stopped: bool = super().stop(force)
        return stopped

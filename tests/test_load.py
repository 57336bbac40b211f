"""The open-loop load generator, end to end: a real Locust process, real HTTP.

A stand-in requestor (aiohttp, in a thread of the test process, on loopback) answers
`POST /strings` the way the test asks: 202 at once, 503 naming the breaker, or a stall.
Every test reads the raw `requests.csv` the Locust process leaves behind.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiohttp import web

from bench.load import (
    LOCUSTFILE_PATH,
    SEQ_STRIDE,
    LoadGenerator,
    LoadSettings,
    LoadSettingsError,
    LoadStatus,
    RequestRow,
)
from bench.outcome import ClientError, DroppedCause
from bench.records import Outcome
from bench.schedule import ArrivalProcess, arrival_offsets
from bench.stack import free_port, http_get_json

# Locust's start-up takes about a second; the schedule starts after it.
START_DELAY_S = 2.0
EXIT_TIMEOUT_S = 30.0


class StandInRequestor:
    """Answers `POST /strings` with the replies of `pattern`, in turn.

    A reply is "accepted" (202 with an id), "breaker_open" (503), or "stall" (202,
    but only after `stall_s`).
    """

    def __init__(self, pattern: Sequence[str], stall_s: float = 0.0) -> None:
        self.pattern = tuple(pattern)
        self.stall_s = stall_s
        self.received: Counter[str] = Counter()
        self.accepted_ids: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _strings(self, request: web.Request) -> web.Response:
        await request.read()
        reply = self.pattern[sum(self.received.values()) % len(self.pattern)]
        self.received[reply] += 1
        if reply == "breaker_open":
            return web.json_response(
                {"error": "breaker_open", "detail": "the breaker is open"}, status=503
            )
        if reply == "stall":
            await asyncio.sleep(self.stall_s)
        identifier = uuid.uuid4().hex
        self.accepted_ids.add(identifier)
        return web.json_response({"id": identifier, "status": "accepted"}, status=202)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/strings", self._strings)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            cleanup = self._runner.cleanup()
            asyncio.run_coroutine_threadsafe(cleanup, self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def requestor_factory() -> Iterator[type[StandInRequestor]]:
    started: list[StandInRequestor] = []

    class Started(StandInRequestor):
        def __init__(self, pattern: Sequence[str], stall_s: float = 0.0) -> None:
            super().__init__(pattern, stall_s)
            started.append(self)
            self.start()

    yield Started
    for requestor in started:
        requestor.stop()


@pytest.fixture
def generators() -> Iterator[list[LoadGenerator]]:
    """Load generators a test started; any still running is killed after it."""
    started: list[LoadGenerator] = []
    yield started
    for generator in started:
        generator.stop(timeout_s=5.0, signum=signal.SIGKILL)


def start_load(
    generators: list[LoadGenerator],
    out_dir: Path,
    host: str,
    *,
    users: int = 1,
    **settings: object,
) -> LoadGenerator:
    load_settings = LoadSettings(
        out_dir=out_dir,
        start_at_s=time.time() + START_DELAY_S,
        **settings,  # type: ignore[arg-type]
    )
    generator = LoadGenerator(load_settings, host=host, users=users)
    generators.append(generator)
    generator.start()
    return generator


def finish(generator: LoadGenerator) -> list[RequestRow]:
    """Wait for Locust to quit by itself; its rows."""
    code = generator.wait(EXIT_TIMEOUT_S)
    assert code == 0, generator.log_tail()
    return generator.read_requests()


def rows_by_user(rows: list[RequestRow]) -> dict[int, list[RequestRow]]:
    users: dict[int, list[RequestRow]] = {}
    for row in sorted(rows, key=lambda row: row.seq):
        users.setdefault(row.user_index, []).append(row)
    return users


def assert_one_row_per_due_request(rows: list[RequestRow]) -> None:
    """Within each user, seq runs 0, 1, 2 ... with no gap and no repeat."""
    for user_index, user_rows in rows_by_user(rows).items():
        indexes = [row.seq - user_index * SEQ_STRIDE for row in user_rows]
        assert indexes == list(range(len(indexes))), f"user {user_index}"


def sent_rows(rows: list[RequestRow]) -> list[RequestRow]:
    """The rows of requests that went out, after checking the ones that did not.

    On a busy two-core machine the Locust process may now and then be kept off the CPU
    for longer than the late tolerance; the requests due then are dropped as late, and
    counted. Tests that are not about drops allow a trace of those, and no other kind.
    """
    dropped = [row for row in rows if row.outcome is Outcome.DROPPED]
    assert {row.cause for row in dropped} <= {DroppedCause.LATE}
    assert len(dropped) <= 0.02 * len(rows)
    return [row for row in rows if row.outcome is not Outcome.DROPPED]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_settings_travel_through_the_environment_unchanged(tmp_path: Path) -> None:
    settings = LoadSettings(
        out_dir=tmp_path,
        rate_per_user_per_s=12.5,
        duration_s=3.0,
        seed=17,
        start_at_s=1_800_000_000.123456,
        arrival=ArrivalProcess.UNIFORM,
        max_in_flight=7,
        late_tolerance_ms=20.0,
        timeout_s=1.5,
        length=128,
        first_user_index=2,
    )

    assert LoadSettings.from_environment(settings.to_environment()) == settings


def test_missing_or_bad_settings_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(LoadSettingsError, match="COUPLING_LOAD_RATE_PER_USER"):
        LoadSettings.from_environment({"COUPLING_LOAD_OUT_DIR": str(tmp_path)})
    with pytest.raises(LoadSettingsError, match="COUPLING_LOAD_TIMEOUT_S='soon'"):
        LoadSettings.from_environment(
            {
                "COUPLING_LOAD_OUT_DIR": str(tmp_path),
                "COUPLING_LOAD_RATE_PER_USER": "10",
                "COUPLING_LOAD_TIMEOUT_S": "soon",
            }
        )
    with pytest.raises(LoadSettingsError, match="max_in_flight"):
        LoadSettings(out_dir=tmp_path, rate_per_user_per_s=1.0, max_in_flight=0)


def test_locust_command_offers_rate_times_users_with_a_run_time_backstop(
    tmp_path: Path,
) -> None:
    settings = LoadSettings(
        out_dir=tmp_path,
        rate_per_user_per_s=100.0,
        duration_s=60.0,
        start_at_s=1_000.0,
        timeout_s=5.0,
    )
    generator = LoadGenerator(settings, host="http://127.0.0.1:9", users=4)

    argv = generator.command(now_s=990.0)

    assert generator.offered_rate_per_s == 400.0
    assert argv[1:5] == ["-m", "locust", "-f", str(LOCUSTFILE_PATH)]
    assert "--headless" in argv

    def option(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert option("--users") == "4"
    assert option("--host") == "http://127.0.0.1:9"
    # The schedule ends 70 s from now; Locust's own limit comes well after.
    assert int(option("--run-time").removesuffix("s")) > 70 + 5
    assert float(option("--stop-timeout")) > settings.timeout_s


def test_every_due_request_has_one_row_with_its_outcome(
    tmp_path: Path,
    requestor_factory: type[StandInRequestor],
    generators: list[LoadGenerator],
) -> None:
    pattern = ["accepted"] * 7 + ["breaker_open"] * 2 + ["stall"]
    requestor = requestor_factory(pattern, stall_s=2.0)
    generator = start_load(
        generators,
        tmp_path,
        requestor.url,
        users=2,
        rate_per_user_per_s=50.0,
        duration_s=3.0,
        seed=40,
        timeout_s=1.0,
    )
    start_at_s = generator.settings.start_at_s
    assert start_at_s is not None

    rows = finish(generator)

    # Exactly the requests of each user's seeded schedule, due when it said.
    for user_index, user_rows in rows_by_user(rows).items():
        offsets = arrival_offsets(50.0, 3.0, seed=40 + user_index)
        assert len(user_rows) == len(offsets)
        for row, offset in zip(user_rows, offsets, strict=True):
            assert row.due_s == pytest.approx(start_at_s + offset, abs=2e-6)
    assert_one_row_per_due_request(rows)
    assert set(rows_by_user(rows)) == {0, 1}

    # Each outcome is what the stand-in requestor did.
    sent = sent_rows(rows)
    outcomes = Counter(row.outcome for row in sent)
    assert outcomes == {
        Outcome.ACCEPTED: requestor.received["accepted"],
        Outcome.BREAKER_OPEN: requestor.received["breaker_open"],
        Outcome.TIMEOUT: requestor.received["stall"],
    }
    for row in sent:
        assert row.sent_s is not None
        assert row.done_s is not None
        assert row.latency_ms is not None
        assert row.latency_ms >= (row.sent_s - row.due_s) * 1000.0 - 1e-3
        assert row.latency_ms == pytest.approx(
            (row.done_s - row.due_s) * 1000.0, abs=0.002
        )
        if row.outcome is Outcome.ACCEPTED:
            assert (row.status, row.cause) == (202, "")
            assert row.request_id in requestor.accepted_ids
        elif row.outcome is Outcome.BREAKER_OPEN:
            assert (row.status, row.cause, row.request_id) == (503, "breaker_open", "")
        else:
            assert (row.status, row.cause) == (0, ClientError.TIMEOUT)
            assert 1000.0 <= row.latency_ms < 1200.0

    status = generator.status()
    assert status is not None
    assert status["state"] == "finished"
    assert status["complete"]
    assert status["due"] == status["rows"] == len(rows)


def test_a_stalled_system_does_not_slow_the_sending(
    tmp_path: Path,
    requestor_factory: type[StandInRequestor],
    generators: list[LoadGenerator],
) -> None:
    requestor = requestor_factory(["stall"], stall_s=1.0)
    generator = start_load(
        generators,
        tmp_path,
        requestor.url,
        rate_per_user_per_s=100.0,
        duration_s=3.0,
        seed=2,
        timeout_s=5.0,
    )

    rows = finish(generator)

    assert_one_row_per_due_request(rows)
    assert len(rows) == len(arrival_offsets(100.0, 3.0, seed=2))
    sent = sent_rows(rows)
    assert {row.outcome for row in sent} == {Outcome.ACCEPTED}
    assert requestor.received["stall"] == len(sent)
    # Sent on schedule although every earlier request was still unanswered ...
    send_lags_ms = [row.send_lag_ms for row in sent if row.send_lag_ms is not None]
    assert len(send_lags_ms) == len(sent)
    assert percentile(send_lags_ms, 0.95) < 10.0
    # ... and timed from the due time, so the stall shows in full.
    latencies_ms = [row.latency_ms for row in sent if row.latency_ms is not None]
    assert min(latencies_ms) >= 1000.0


def test_requests_beyond_the_in_flight_cap_are_dropped_and_counted(
    tmp_path: Path,
    requestor_factory: type[StandInRequestor],
    generators: list[LoadGenerator],
) -> None:
    requestor = requestor_factory(["stall"], stall_s=1.0)
    generator = start_load(
        generators,
        tmp_path,
        requestor.url,
        rate_per_user_per_s=50.0,
        duration_s=2.0,
        seed=8,
        arrival=ArrivalProcess.UNIFORM,
        max_in_flight=5,
    )

    rows = finish(generator)

    assert_one_row_per_due_request(rows)
    assert len(rows) == 100
    dropped = [row for row in rows if row.outcome is Outcome.DROPPED]
    sent = [row for row in rows if row.outcome is not Outcome.DROPPED]
    # About five go out each second; the rest of that second finds the cap full.
    assert len(sent) == requestor.received["stall"]
    assert 8 <= len(sent) <= 12
    assert {row.outcome for row in sent} == {Outcome.ACCEPTED}
    causes = Counter(row.cause for row in dropped)
    assert causes[DroppedCause.CONCURRENCY_CAP] >= 80
    assert causes.keys() <= {DroppedCause.CONCURRENCY_CAP, DroppedCause.LATE}
    for row in sent:
        assert row.sent_s is not None
        in_flight = [
            other
            for other in sent
            if other.sent_s is not None
            and other.done_s is not None
            and other.sent_s < row.sent_s < other.done_s
        ]
        assert len(in_flight) < 5
    for row in dropped:
        assert (row.sent_s, row.done_s, row.latency_ms) == (None, None, None)
        assert (row.status, row.request_id) == (0, "")


def test_due_times_missed_before_the_first_user_started_are_dropped_late(
    tmp_path: Path,
    requestor_factory: type[StandInRequestor],
    generators: list[LoadGenerator],
) -> None:
    requestor = requestor_factory(["accepted"])
    settings = LoadSettings(
        out_dir=tmp_path,
        rate_per_user_per_s=50.0,
        duration_s=3.0,
        start_at_s=time.time() - 1.0,
        arrival=ArrivalProcess.UNIFORM,
    )
    generator = LoadGenerator(settings, host=requestor.url)
    generators.append(generator)
    generator.start()

    rows = finish(generator)

    assert_one_row_per_due_request(rows)
    assert len(rows) == 150
    late = [row for row in rows if row.outcome is Outcome.DROPPED]
    accepted = [row for row in rows if row.outcome is Outcome.ACCEPTED]
    assert len(late) + len(accepted) == len(rows)
    assert {row.cause for row in late} == {DroppedCause.LATE}
    # Locust took about a second to start: at least the second before it is lost.
    assert len(late) >= 50
    assert len(accepted) == requestor.received["accepted"] > 0
    # Everything due before the user could send (less the tolerance) was dropped;
    # on a busy machine a few later sends may be late too, and are counted the same.
    first_send_s = min(row.sent_s for row in accepted if row.sent_s is not None)
    tolerance_s = settings.late_tolerance_ms / 1000
    assert all(
        row.outcome is Outcome.DROPPED
        for row in rows
        if row.due_s < first_send_s - tolerance_s
    )


def test_nothing_listening_is_refused(
    tmp_path: Path, generators: list[LoadGenerator]
) -> None:
    generator = start_load(
        generators,
        tmp_path,
        f"http://127.0.0.1:{free_port()}",
        rate_per_user_per_s=50.0,
        duration_s=1.0,
        seed=3,
        first_user_index=4,
    )

    rows = finish(generator)

    assert_one_row_per_due_request(rows)
    # A process whose users are numbered from 4: seq from 4 * SEQ_STRIDE, seed 3 + 4.
    assert set(rows_by_user(rows)) == {4}
    assert len(rows) == len(arrival_offsets(50.0, 1.0, seed=7))
    assert {(row.outcome, row.status, row.cause) for row in rows} == {
        (Outcome.REFUSED, 0, ClientError.REFUSED)
    }


def test_sigint_mid_run_leaves_a_consistent_record_and_exits(
    tmp_path: Path,
    requestor_factory: type[StandInRequestor],
    generators: list[LoadGenerator],
) -> None:
    requestor = requestor_factory(["stall"], stall_s=0.5)
    generator = start_load(
        generators,
        tmp_path,
        requestor.url,
        users=2,
        rate_per_user_per_s=40.0,
        duration_s=0.0,
        seed=5,
    )
    start_at_s = generator.settings.start_at_s
    assert start_at_s is not None

    # Live: the status file and the process's resource use, once a second.
    running: LoadStatus | None = None
    deadline_s = start_at_s + 2.0
    while time.time() < deadline_s:
        time.sleep(0.25)
        status = generator.status()
        if status is not None and status["state"] == "running" and status["sent"]:
            running = status
    assert running is not None
    assert running["in_flight"] > 0
    assert running["users"] == 2
    sample = generator.sample()
    assert sample is not None
    assert sample.rss_bytes > 0

    stop_s = time.time()
    code = generator.stop(timeout_s=EXIT_TIMEOUT_S)
    assert code == 0, generator.log_tail()

    rows = generator.read_requests()
    assert_one_row_per_due_request(rows)
    assert set(rows_by_user(rows)) == {0, 1}
    # Each user's rows are a prefix of its schedule, ending about at the stop.
    for user_index, user_rows in rows_by_user(rows).items():
        offsets = arrival_offsets(40.0, stop_s + 1.0 - start_at_s, seed=5 + user_index)
        assert len(user_rows) <= len(offsets)
        assert user_rows[-1].due_s == pytest.approx(
            start_at_s + offsets[len(user_rows) - 1], abs=2e-6
        )
        assert user_rows[-1].due_s > stop_s - 0.5
    # The requests in flight at the stop were waited for, not abandoned.
    sent = sent_rows(rows)
    assert Counter(row.outcome for row in sent) == {Outcome.ACCEPTED: len(sent)}
    assert requestor.received["stall"] == len(sent)
    final = generator.status()
    assert final is not None
    assert final["complete"]
    assert final["rows"] == final["due"] == len(rows)
    assert final["done"] == final["sent"] == len(sent)


def post_form(url: str, form: dict[str, object]) -> int:
    data = urllib.parse.urlencode(form).encode()
    with urllib.request.urlopen(url, data=data, timeout=5.0) as response:
        status: int = response.status
        return status


def test_web_ui_user_count_sets_the_load_and_its_stop_drains(
    tmp_path: Path,
    requestor_factory: type[StandInRequestor],
    generators: list[LoadGenerator],
) -> None:
    requestor = requestor_factory(["accepted"])
    web_port = free_port()
    settings = LoadSettings(out_dir=tmp_path, rate_per_user_per_s=25.0, seed=9)
    generator = LoadGenerator(settings, host=requestor.url, web_port=web_port)
    generators.append(generator)
    generator.start()
    web_url = f"http://127.0.0.1:{web_port}"
    deadline_s = time.monotonic() + EXIT_TIMEOUT_S
    while http_get_json(f"{web_url}/stats/requests")[0] != 200:
        assert time.monotonic() < deadline_s, generator.log_tail()
        time.sleep(0.1)

    # Three users typed into the web UI: three streams, seeds 9, 10 and 11.
    assert post_form(f"{web_url}/swarm", {"user_count": 3, "spawn_rate": 3}) == 200
    time.sleep(2.0)
    running = generator.status()
    assert post_form(f"{web_url}/stop", {}) == 200
    code = generator.stop(timeout_s=EXIT_TIMEOUT_S)

    assert code == 0, generator.log_tail()
    assert running is not None
    assert running["users"] == 3
    rows = generator.read_requests()
    assert_one_row_per_due_request(rows)
    assert set(rows_by_user(rows)) == {0, 1, 2}
    # Locust's stop from the web UI holds every greenlet for a moment (it inspects
    # the call stack first); what fell due then is dropped as late, and counted.
    dropped = [row for row in rows if row.outcome is Outcome.DROPPED]
    assert {row.cause for row in dropped} <= {DroppedCause.LATE}
    accepted = [row for row in rows if row.outcome is Outcome.ACCEPTED]
    assert len(accepted) + len(dropped) == len(rows)
    assert len(accepted) == requestor.received["accepted"]
    assert 75.0 * 1.0 < len(rows) < 75.0 * 4.0

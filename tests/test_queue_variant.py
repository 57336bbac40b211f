"""The queue variant, against a real nats-server, real processes and real ledgers.

Every test starts its own stack on free loopback ports and reads the outcome where a
user or operator would: HTTP answers, the SQLite ledgers, `/metrics`, the broker.
Recovery tests shorten `ack_wait` so that deliveries cut off by a kill come back in
seconds rather than the default 30.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from bench.stack import Stack, Variant, http_get_json, http_get_text, http_send_json
from queue_variant import topology
from queue_variant.transport import REJECT_REASON_HEADER
from service_core.metrics import parse
from tests.conftest import StartStack

# Redeliveries after a kill come back within ack_wait; 2 s keeps the tests short while
# staying far above the few milliseconds a batch takes here.
FAST_REDELIVERY = ("--ack-wait-s", "2", "--retry-delay-s", "0.2")
FAST_FLAGS = {"generator": FAST_REDELIVERY, "requestor": FAST_REDELIVERY}

SETTLE_TIMEOUT_S = 25.0


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll_s)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def ledger_rows(stack: Stack, name: str) -> dict[str, dict[str, Any]]:
    """Every row of one service's ledger, by request id."""
    path = stack.run_dir / "ledgers" / f"{name}.sqlite3"
    db = sqlite3.connect(path, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        table = "requests" if name == "requestor" else "strings"
        return {row["id"]: dict(row) for row in db.execute(f"SELECT * FROM {table}")}
    finally:
        db.close()


def metrics(url: str) -> dict[str, float]:
    text = http_get_text(f"{url}/metrics")
    assert text is not None, f"no /metrics at {url}"
    return parse(text)


def all_threads_stopped(pid: int) -> bool:
    """Linux: every thread of `pid` in the stopped state."""
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        if not fields["State"].strip().startswith("T"):
            return False
    return True


def post_string(stack: Stack, length: int = 16) -> str:
    status, body = http_send_json(
        "POST", f"{stack.requestor_url}/strings", {"length": length}
    )
    assert status == 202, (status, body)
    assert body["status"] == "accepted"
    request_id: str = body["id"]
    return request_id


def confirmed_everywhere(stack: Stack, ids: set[str]) -> bool:
    """Every id confirmed at the requestor and at the generator that made it."""
    stored = ledger_rows(stack, "requestor")
    if not all(stored.get(rid, {}).get("confirmed_at") for rid in ids):
        return False
    generated: dict[str, dict[str, Any]] = {}
    for name in stack.generator_urls:
        generated.update(ledger_rows(stack, name))
    return all(generated.get(rid, {}).get("confirmed_at") for rid in ids)


@dataclass
class Figures:
    """The figures of a recovery test, printed for the record."""

    accepted: int
    stored: int
    confirmed: int
    duplicates_absorbed: int
    redelivered: int = 0

    def __str__(self) -> str:
        return (
            f"accepted={self.accepted} stored={self.stored} "
            f"confirmed={self.confirmed} "
            f"duplicates_absorbed={self.duplicates_absorbed} "
            f"redelivered={self.redelivered}"
        )


def assert_exactly_once(stack: Stack, accepted: set[str]) -> Figures:
    """Each accepted id stored once, with one value, confirmed where it was made."""
    stored = ledger_rows(stack, "requestor")
    per_generator = {name: ledger_rows(stack, name) for name in stack.generator_urls}

    missing = sorted(
        rid for rid in accepted if not stored.get(rid, {}).get("stored_at")
    )
    assert not missing, f"{len(missing)} accepted requests never stored: {missing[:5]}"

    values = [row["value"] for row in stored.values() if row["value"] is not None]
    assert len(values) == len(set(values)), "one value was given to two ids"
    for rid in accepted:
        row = stored[rid]
        made = per_generator[row["generator"]][rid]
        assert made["value"] == row["value"], f"{rid}: requestor and generator differ"
        assert made["confirmed_at"] is not None, f"{rid}: never confirmed"
    in_two = set.intersection(*(set(rows) for rows in per_generator.values()))
    assert len(per_generator) == 1 or not in_two, f"ids in two ledgers: {in_two}"

    duplicates = sum(
        row["deliveries"] - 1 for row in stored.values() if row["deliveries"]
    )
    for rows in per_generator.values():
        duplicates += sum(row["deliveries"] - 1 for row in rows.values())
        duplicates += sum(max(row["confirmations"] - 1, 0) for row in rows.values())
    confirmed = sum(
        1
        for rows in per_generator.values()
        for rid, row in rows.items()
        if rid in accepted and row["confirmed_at"] is not None
    )
    stored_count = sum(1 for rid in accepted if stored[rid]["stored_at"])
    return Figures(len(accepted), stored_count, confirmed, duplicates)


@dataclass
class SteadyLoad:
    """POST /strings at a fixed pace from a thread, keeping the ids that got 202."""

    url: str
    interval_s: float
    accepted: list[str] = field(default_factory=list)
    other: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            status, body = http_send_json(
                "POST", f"{self.url}/strings", {"length": 12}, timeout_s=3.0
            )
            if status == 202:
                self.accepted.append(body["id"])
            else:
                self.other[status] = self.other.get(status, 0) + 1
            next_due += self.interval_s
            self._stop.wait(max(0.0, next_due - time.monotonic()))


@contextmanager
def steady_load(url: str, interval_s: float = 0.012) -> Iterator[SteadyLoad]:
    load = SteadyLoad(url, interval_s)
    thread = threading.Thread(target=load.run, name="steady-load", daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load._stop.set()
        thread.join(timeout=10)


@pytest.mark.parametrize("variant", [Variant.QUEUE_JETSTREAM, Variant.QUEUE_CORE])
def test_request_is_served_end_to_end(
    start_stack: StartStack, variant: Variant
) -> None:
    stack = start_stack(variant)

    request_id = post_string(stack, length=24)

    wait_until(
        lambda: confirmed_everywhere(stack, {request_id}),
        10,
        "the request stored at the requestor and confirmed at the generator",
    )
    status, record = http_get_json(f"{stack.requestor_url}/strings/{request_id}")
    assert status == 200
    assert record["id"] == request_id
    assert record["status"] == "confirmed"
    assert len(record["value"]) == 24
    assert record["generator"] == "generator-1"
    assert record["deliveries"] == 1
    for stamp in ("requested_at", "accepted_at", "generated_at", "stored_at"):
        assert record[stamp] > 0, stamp
    made = ledger_rows(stack, "generator-1")[request_id]
    assert made["value"] == record["value"]
    assert made["confirmed_at"] is not None

    health = http_get_json(f"{stack.generator_urls['generator-1']}/healthz")[1]
    assert health["broker"]["connected"] is True
    assert health["broker"]["mode"] == (
        "core" if variant is Variant.QUEUE_CORE else "jetstream"
    )
    seen = metrics(stack.requestor_url)
    assert seen['coupling_requests_total{outcome="accepted"}'] == 1
    assert seen['coupling_messages_published_total{subject="strings.request"}'] == 1
    assert seen["coupling_nats_connected"] == 1


@pytest.mark.parametrize("role", ["requestor", "generator"])
def test_each_service_explains_its_flags(role: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"queue_variant.{role}", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    for flag in ("--nats-url", "--mode", "--publish-timeout-s", "--ack-wait-s"):
        assert flag in done.stdout


def test_generator_refuses_to_start_without_an_instance_name() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "queue_variant.generator", "--instance", "a.b"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )

    assert done.returncode == 2
    assert "instance must be 1 to 64 letters" in done.stderr


def test_bad_bodies_are_refused_with_json_errors(start_stack: StartStack) -> None:
    stack = start_stack(Variant.QUEUE_JETSTREAM)
    url = f"{stack.requestor_url}/strings"

    status, body = http_send_json("POST", url, {"length": 0})
    assert status == 400
    assert body["error"] == "invalid_body"
    assert body["field"] == "$.length"

    status, body = http_send_json("POST", url, {"length": "long"})
    assert (status, body["field"]) == (400, "$.length")

    status, body = http_send_json("POST", url, {"length": 10, "padding": "x" * 600_000})
    assert status == 413
    assert body["error"] == "body_too_large"

    status, body = http_get_json(f"{stack.requestor_url}/strings/no-such-id")
    assert status == 404
    assert body["error"] == "not_found"

    status, _ = http_send_json("POST", url)
    assert status == 202, "an empty body means the default length"
    seen = metrics(stack.requestor_url)
    assert seen['coupling_requests_total{outcome="invalid_body"}'] == 2
    assert seen['coupling_requests_total{outcome="body_too_large"}'] == 1


def test_core_nats_loses_requests_accepted_while_no_generator_listens(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.QUEUE_CORE)
    generator = stack["generator-1"]

    generator.stop()
    lost = {post_string(stack) for _ in range(20)}
    generator.start()
    generator.wait_healthy()
    time.sleep(0.3)
    survivor = post_string(stack)

    wait_until(lambda: confirmed_everywhere(stack, {survivor}), 10, "the later request")
    stored = ledger_rows(stack, "requestor")
    never_stored = {rid for rid in lost if stored[rid]["stored_at"] is None}
    print(f"core NATS, no generator: accepted={len(lost)} lost={len(never_stored)}")
    assert never_stored == lost, "at most once: nobody listened, so nothing arrived"
    assert all(stored[rid]["status"] == "accepted" for rid in lost)
    assert not lost & set(ledger_rows(stack, "generator-1"))


def test_two_generators_share_one_durable_consumer_without_duplicates(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.QUEUE_JETSTREAM, generators=2)

    ids = {post_string(stack) for _ in range(200)}

    wait_until(lambda: confirmed_everywhere(stack, ids), SETTLE_TIMEOUT_S, "all 200")
    first, second = ledger_rows(stack, "generator-1"), ledger_rows(stack, "generator-2")
    print(f"two generators: generator-1={len(first)} generator-2={len(second)}")
    assert first, "generator-1 got work"
    assert second, "generator-2 got work"
    assert not set(first) & set(second), "no id generated by both"
    assert set(first) | set(second) == ids
    figures = assert_exactly_once(stack, ids)
    assert figures.duplicates_absorbed == 0


def test_post_answers_503_at_once_while_the_broker_is_down(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.QUEUE_JETSTREAM)
    broker = stack["nats"]

    broker.kill()
    wait_until(
        lambda: metrics(stack.requestor_url)["coupling_nats_connected"] == 0,
        5,
        "the requestor noticing the broker is gone",
        poll_s=0.02,
    )
    started = time.monotonic()
    status, body = http_send_json(
        "POST", f"{stack.requestor_url}/strings", {"length": 5}
    )
    elapsed_s = time.monotonic() - started

    assert status == 503
    assert body["error"] == "peer_unavailable"
    assert elapsed_s < 0.5, f"answered after {elapsed_s:.3f} s"
    seen = metrics(stack.requestor_url)
    assert seen['coupling_requests_total{outcome="peer_unavailable"}'] == 1
    assert seen["coupling_nats_disconnects_total"] == 1
    rows = ledger_rows(stack, "requestor").values()
    assert [(row["status"], row["failure"]) for row in rows] == [
        ("failed", "peer_unavailable")
    ]

    broker.start()
    broker.wait_healthy()
    wait_until(
        lambda: http_send_json("POST", f"{stack.requestor_url}/strings")[0] == 202,
        10,
        "a request accepted again once the broker is back",
    )
    assert metrics(stack.requestor_url)["coupling_nats_reconnects_total"] == 1


def test_post_answers_504_within_the_publish_timeout_when_the_broker_stalls(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.QUEUE_JETSTREAM)
    broker = stack["nats"]

    broker.send(signal.SIGSTOP)
    try:
        pid = broker.pid
        assert pid is not None
        # A stop signal reaches the threads of a running process one by one.
        wait_until(lambda: all_threads_stopped(pid), 2, "nats-server frozen")
        started = time.monotonic()
        status, body = http_send_json(
            "POST", f"{stack.requestor_url}/strings", {"length": 5}
        )
        elapsed_s = time.monotonic() - started
    finally:
        broker.send(signal.SIGCONT)

    assert status == 504
    assert body["error"] == "timeout"
    assert 0.9 < elapsed_s < 1.5, f"answered after {elapsed_s:.3f} s, timeout is 1 s"
    assert (
        metrics(stack.requestor_url)['coupling_requests_total{outcome="timeout"}'] == 1
    )
    post_string(stack)


def test_full_request_stream_answers_503_stream_full(start_stack: StartStack) -> None:
    small = ("--stream-max-msgs", "5")
    stack = start_stack(
        Variant.QUEUE_JETSTREAM, service_flags={"generator": small, "requestor": small}
    )
    generator = stack["generator-1"]

    generator.stop()
    held = {post_string(stack) for _ in range(5)}
    status, body = http_send_json("POST", f"{stack.requestor_url}/strings", {})

    assert status == 503
    assert body["error"] == "stream_full"
    assert "maximum messages exceeded" in body["detail"]
    generator.start()
    generator.wait_healthy()
    wait_until(lambda: confirmed_everywhere(stack, held), 10, "the held requests")


def garbage_for(stage: topology.Stage) -> dict[str, bytes]:
    whole: dict[str, Any] = {
        topology.Stage.REQUEST: {"id": "bad1", "length": 5, "requested_at": 1.0},
        topology.Stage.REPLY: {
            "id": "bad1",
            "value": "abc",
            "generated_at": 1.0,
            "generator": "generator-1",
        },
        topology.Stage.CONFIRM: {"id": "bad1", "stored_at": 1.0},
    }[stage]
    missing = {key: value for key, value in whole.items() if key != "id"}
    return {
        "not_json": b"this is not json {",
        "bad_version": json.dumps({"version": 99, **whole}).encode(),
        "invalid_field": json.dumps({"version": 1, **missing}).encode(),
    }


CONSUMED = {
    topology.Stage.REQUEST: (topology.REQUEST_SUBJECT, "generator-1"),
    topology.Stage.REPLY: (topology.REPLY_SUBJECT, "requestor"),
    topology.Stage.CONFIRM: (topology.confirm_subject("generator-1"), "generator-1"),
}


async def publish_garbage(nats_url: str, jetstream: bool) -> list[Any]:
    """Publish each kind of garbage on each consumed subject; core: the dead letters."""
    nc = await nats.connect(nats_url)
    dead: list[Any] = []
    try:
        if not jetstream:
            await nc.subscribe(
                f"{topology.DEAD_LETTER_SUBJECT_PREFIX}.>", cb=_collect(dead)
            )
        js = nc.jetstream()
        for stage, (subject, _) in CONSUMED.items():
            for payload in garbage_for(stage).values():
                if jetstream:
                    await js.publish(subject, payload)
                else:
                    await nc.publish(subject, payload)
        await nc.flush()
        if not jetstream:
            deadline = time.monotonic() + 5
            while len(dead) < 9 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        await nc.close()
    return dead


def _collect(into: list[Any]) -> Callable[[Any], Any]:
    async def collect(msg: Any) -> None:
        into.append(msg)

    return collect


async def jetstream_state(nats_url: str) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The dead letters' headers, and how many messages each work queue still holds."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        headers: list[dict[str, str]] = []
        for sequence in range(1, 20):
            try:
                raw = await js.get_msg(topology.DEAD_LETTER_STREAM, sequence)
            except NotFoundError:
                break
            headers.append(dict(raw.headers or {}))
        backlog = {}
        for stream in (
            topology.REQUEST_STREAM,
            topology.REPLY_STREAM,
            topology.CONFIRM_STREAM,
        ):
            info = await js.stream_info(stream)
            backlog[stream] = info.state.messages
        return headers, backlog
    finally:
        await nc.close()


@pytest.mark.parametrize("variant", [Variant.QUEUE_JETSTREAM, Variant.QUEUE_CORE])
def test_malformed_messages_are_moved_aside_and_consumers_go_on(
    start_stack: StartStack, variant: Variant
) -> None:
    stack = start_stack(variant)
    assert stack.nats_url is not None
    jetstream = variant is Variant.QUEUE_JETSTREAM

    dead = asyncio.run(publish_garbage(stack.nats_url, jetstream))

    urls = {"requestor": stack.requestor_url, **stack.generator_urls}

    def all_counted() -> bool:
        for stage, (subject, service) in CONSUMED.items():
            seen = metrics(urls[service])
            for reason in garbage_for(stage):
                labels = f'reason="{reason}",subject="{subject}"'
                if seen.get(f"coupling_messages_rejected_total{{{labels}}}") != 1:
                    return False
        return True

    wait_until(all_counted, 10, "each malformed message counted once by its consumer")
    if jetstream:
        headers, backlog = asyncio.run(jetstream_state(stack.nats_url))
        reasons = sorted(h[REJECT_REASON_HEADER].split(":")[0] for h in headers)
        assert reasons == sorted(["not_json", "bad_version", "invalid_field"] * 3)
        assert backlog == dict.fromkeys(backlog, 0), "terminated, not left in the queue"
    else:
        reasons = sorted(
            msg.headers[REJECT_REASON_HEADER].split(":")[0] for msg in dead
        )
        assert reasons == sorted(["not_json", "bad_version", "invalid_field"] * 3)
    log = stack["generator-1"].log_path.read_text()
    assert "WARNING" in log
    assert "malformed message on strings.request (not_json)" in log

    request_id = post_string(stack)
    wait_until(
        lambda: confirmed_everywhere(stack, {request_id}),
        10,
        "a good request afterwards",
    )


@pytest.mark.parametrize(
    ("target", "how"),
    [
        ("generator-1", "kill"),
        ("requestor", "kill"),
        ("nats", "kill"),
        ("generator-1", "sigterm"),
        ("requestor", "sigterm"),
    ],
)
def test_restart_under_load_loses_no_accepted_request(
    start_stack: StartStack, target: str, how: str
) -> None:
    stack = start_stack(Variant.QUEUE_JETSTREAM, service_flags=FAST_FLAGS)
    process = stack[target]
    if target in stack.generator_urls:
        # Slow work keeps a batch in flight, so the stop cuts into it.
        fault = f"{stack.generator_urls[target]}/admin/fault"
        assert http_send_json("POST", fault, {"latency_ms": 150})[0] == 200

    with steady_load(stack.requestor_url) as load:
        time.sleep(1.0)
        if how == "kill":
            process.kill()
        else:
            assert process.stop() == 0, "a graceful stop exits cleanly"
        time.sleep(0.5)
        process.start()
        process.wait_healthy()
        time.sleep(1.0)
    accepted = set(load.accepted)

    assert len(accepted) > 100, f"load too thin: {len(accepted)}, others {load.other}"
    wait_until(
        lambda: confirmed_everywhere(stack, accepted),
        SETTLE_TIMEOUT_S,
        "every accepted request stored and confirmed",
        poll_s=0.25,
    )
    figures = assert_exactly_once(stack, accepted)
    figures.redelivered = int(
        sum(
            value
            for url in (stack.requestor_url, *stack.generator_urls.values())
            for key, value in metrics(url).items()
            if key.startswith("coupling_messages_redelivered_total")
        )
    )
    print(f"{target} {how}: {figures} (not accepted, by status: {load.other})")

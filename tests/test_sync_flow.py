"""The sync variant's happy path, scale-out and shutdown, on real processes."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from bench.stack import Variant
from service_core.contract import CONTRACT_VERSION
from tests.conftest import StartStack
from tests.sync_support import (
    CLIENT_TIMEOUT,
    FAST_POLL_FLAGS,
    FAST_POLL_S,
    ledger_rows,
    post_string,
    sample,
    scrape,
    send,
    wait_until,
)


@pytest.mark.parametrize("variant", [Variant.SYNC_PLAIN, Variant.SYNC_BREAKER])
async def test_each_sync_variant_stores_a_string_and_confirms_it(
    start_stack: StartStack, variant: Variant
) -> None:
    stack = start_stack(variant, service_flags={"generator": FAST_POLL_FLAGS})

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        answer = await post_string(session, stack, {"length": 17})

        assert answer.status == 201
        request_id = answer.body["id"]
        assert answer.body["status"] == "stored"
        assert len(answer.body["value"]) == 17
        stored = ledger_rows(stack, "requestor")[request_id]
        generated = ledger_rows(stack, "generator-1")[request_id]
        assert stored["value"] == generated["value"] == answer.body["value"]
        assert stored["stored_at"] is not None
        assert generated["generator"] == "generator-1"

        await wait_until(
            lambda: (
                ledger_rows(stack, "generator-1")[request_id]["confirmed_at"]
                is not None
            ),
            timeout_s=5 * FAST_POLL_S + 1,
            what="generator ledger marks the string confirmed",
        )
        shown = await send(
            session, "GET", f"{stack.requestor_url}/strings/{request_id}"
        )
        assert shown.status == 200
        assert shown.body["status"] == "confirmed"
        assert shown.body["generator"] == "generator-1"
        assert shown.body["deliveries"] == 1
        for stamp in ("requested_at", "generated_at", "stored_at", "confirmed_at"):
            assert shown.body[stamp] is not None, stamp
        generator_metrics = await scrape(session, stack.generator_urls["generator-1"])
        assert sample(generator_metrics, "generated_total") == 1
        assert sample(generator_metrics, "confirmations_total") == 1
        assert sample(generator_metrics, "confirmation_polls_total", result="ok") >= 1


async def test_unknown_string_id_is_404_with_a_json_body(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.SYNC_PLAIN)

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        answer = await send(session, "GET", f"{stack.requestor_url}/strings/nope")

    assert answer.status == 404
    assert answer.error == "not_found"


async def test_two_generators_share_the_work_and_each_id_is_in_one_ledger(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.SYNC_BREAKER, generators=2)

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        answers = await asyncio.gather(
            *(post_string(session, stack, {"length": 8}) for _ in range(40))
        )

    assert [answer.status for answer in answers] == [201] * 40
    ids = {answer.body["id"] for answer in answers}
    first = set(ledger_rows(stack, "generator-1"))
    second = set(ledger_rows(stack, "generator-2"))
    assert first, "generator-1 got no work"
    assert second, "generator-2 got no work"
    assert first | second == ids
    assert not first & second


async def test_requestor_sigterm_finishes_in_flight_requests_and_loses_none(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.SYNC_BREAKER)
    requestor = stack["requestor"]
    generator_url = stack.generator_urls["generator-1"]

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        # A slow generator keeps every request in flight when the signal arrives.
        fault = await send(
            session, "POST", f"{generator_url}/admin/fault", {"latency_ms": 300}
        )
        assert fault.status == 200
        in_flight = [
            asyncio.create_task(post_string(session, stack)) for _ in range(20)
        ]
        await asyncio.sleep(0.15)
        requestor.send(signal.SIGTERM)
        answers = await asyncio.gather(*in_flight)
        after = await post_string(session, stack)
        assert requestor.popen is not None
        exit_code = await asyncio.to_thread(requestor.popen.wait, 15)

    assert exit_code == 0
    assert [answer.status for answer in answers] == [201] * 20
    assert after.status == 0, "a stopped requestor must not take new requests"
    rows = ledger_rows(stack, "requestor")
    for answer in answers:
        row = rows[answer.body["id"]]
        assert row["stored_at"] is not None
        assert row["value"] == answer.body["value"]


async def test_generator_sigterm_makes_a_final_confirmation_poll(
    start_stack: StartStack,
) -> None:
    # Polls every minute: only the poll on SIGTERM can confirm within the test.
    stack = start_stack(
        Variant.SYNC_BREAKER, service_flags={"generator": ("--poll-interval-s", "60")}
    )

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        answer = await post_string(session, stack)
    assert answer.status == 201
    request_id = answer.body["id"]
    assert ledger_rows(stack, "generator-1")[request_id]["confirmed_at"] is None
    exit_code = await asyncio.to_thread(stack["generator-1"].stop)

    assert exit_code == 0
    assert ledger_rows(stack, "generator-1")[request_id]["confirmed_at"] is not None
    assert ledger_rows(stack, "requestor")[request_id]["confirmed_at"] is not None


async def test_poller_survives_a_requestor_outage_and_warns_once(
    start_stack: StartStack,
) -> None:
    stack = start_stack(
        Variant.SYNC_BREAKER,
        service_flags={"generator": (*FAST_POLL_FLAGS, "--reset-timeout-s", "0.3")},
    )
    generator = stack["generator-1"]
    generator_url = stack.generator_urls["generator-1"]
    stack["requestor"].kill()

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        # A string the requestor never saw keeps the poller asking during the outage.
        orphan = {
            "version": CONTRACT_VERSION,
            "id": "orphan-1",
            "length": 4,
            "requested_at": 1.0,
        }
        generated = await send(session, "POST", f"{generator_url}/generate", orphan)
        assert generated.status == 200
        await asyncio.sleep(20 * FAST_POLL_S)
        during = await scrape(session, generator_url)

        await asyncio.to_thread(stack["requestor"].start)
        await asyncio.to_thread(stack["requestor"].wait_healthy)
        answer = await post_string(session, stack)
        assert answer.status == 201
        await wait_until(
            lambda: (
                ledger_rows(stack, "generator-1")[answer.body["id"]]["confirmed_at"]
                is not None
            ),
            timeout_s=3,
            what="confirmation once the requestor is back",
        )

    assert sample(during, "confirmation_polls_total", result="peer_unavailable") >= 5
    assert sample(during, "confirmation_polls_total", result="breaker_open") >= 1
    log = generator.log_path.read_text()
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, warnings
    assert "answered again" in log
    assert ledger_rows(stack, "generator-1")["orphan-1"]["confirmed_at"] is None

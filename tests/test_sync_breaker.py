"""How the sync variants behave when the generator dies, with and without a breaker."""

from __future__ import annotations

import asyncio

import aiohttp

from bench.stack import Stack, Variant
from tests.conftest import StartStack
from tests.sync_support import (
    CLIENT_TIMEOUT,
    Answer,
    ledger_rows,
    post_string,
    sample,
    scrape,
    send,
)

FAIL_MAX = 5
RESET_TIMEOUT_S = 1.0
BREAKER_FLAGS = {"requestor": ("--reset-timeout-s", str(RESET_TIMEOUT_S))}
FAST_FAIL_MS = 10.0


def start_breaker_stack(start_stack: StartStack, generators: int = 1) -> Stack:
    return start_stack(
        Variant.SYNC_BREAKER, generators=generators, service_flags=BREAKER_FLAGS
    )


async def trip(session: aiohttp.ClientSession, stack: Stack) -> list[Answer]:
    """Kill the generator and send the failures that open the breaker."""
    stack["generator-1"].kill()
    return [await post_string(session, stack) for _ in range(FAIL_MAX)]


def breaker_of(stack: Stack, generator: str = "generator-1") -> str:
    return stack.generator_urls[generator]


async def test_breaker_opens_after_fail_max_failures_and_then_fails_fast(
    start_stack: StartStack,
) -> None:
    stack = start_breaker_stack(start_stack)

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        failures = await trip(session, stack)
        refused = [await post_string(session, stack) for _ in range(10)]
        metrics = await scrape(session, stack.requestor_url)

    assert [answer.status for answer in failures] == [503] * FAIL_MAX
    assert {answer.error for answer in failures} == {"peer_unavailable"}
    assert [answer.status for answer in refused] == [503] * 10
    assert {answer.error for answer in refused} == {"breaker_open"}
    slowest_ms = max(answer.elapsed_s for answer in refused) * 1000
    assert slowest_ms < FAST_FAIL_MS, f"slowest refusal took {slowest_ms:.1f} ms"

    breaker = breaker_of(stack)
    assert sample(metrics, "breaker_state_code", breaker=breaker) == 2
    assert sample(metrics, "breaker_state", breaker=breaker, state="open") == 1
    assert sample(metrics, "breaker_rejections_total", breaker=breaker) == 10
    assert sample(metrics, "peer_calls_total", result="peer_unavailable") == FAIL_MAX
    assert (
        sample(
            metrics,
            "breaker_transitions_total",
            breaker=breaker,
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert sample(metrics, "requests_total", outcome="breaker_open") == 10
    failed = [row["failure"] for row in ledger_rows(stack, "requestor").values()]
    assert sorted(failed) == sorted(["peer_unavailable"] * 5 + ["breaker_open"] * 10)


async def test_breaker_lets_exactly_one_probe_through_per_half_open_cycle(
    start_stack: StartStack,
) -> None:
    stack = start_breaker_stack(start_stack)

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        await trip(session, stack)
        cycles = []
        for _ in range(2):
            await asyncio.sleep(RESET_TIMEOUT_S + 0.1)
            before = await scrape(session, stack.requestor_url)
            burst = await asyncio.gather(
                *(post_string(session, stack) for _ in range(20))
            )
            after = await scrape(session, stack.requestor_url)
            cycles.append((burst, before, after))

    for burst, before, after in cycles:
        assert [answer.status for answer in burst] == [503] * 20
        probes = [answer for answer in burst if answer.error != "breaker_open"]
        assert [answer.error for answer in probes] == ["peer_unavailable"]
        sent = sample(after, "peer_calls_total") - sample(before, "peer_calls_total")
        assert sent == 1
    transitions = {
        (from_state, to_state): sample(
            after,
            "breaker_transitions_total",
            from_state=from_state,
            to_state=to_state,
        )
        for from_state, to_state in [
            ("closed", "open"),
            ("open", "half-open"),
            ("half-open", "open"),
        ]
    }
    assert transitions == {
        ("closed", "open"): 1,
        ("open", "half-open"): 2,
        ("half-open", "open"): 2,
    }


async def test_breaker_closes_once_the_generator_is_back(
    start_stack: StartStack,
) -> None:
    stack = start_breaker_stack(start_stack)
    generator = stack["generator-1"]

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        await trip(session, stack)
        await asyncio.to_thread(generator.start)
        await asyncio.to_thread(generator.wait_healthy)
        await asyncio.sleep(RESET_TIMEOUT_S + 0.1)
        answers = [await post_string(session, stack) for _ in range(10)]
        metrics = await scrape(session, stack.requestor_url)

    assert [answer.status for answer in answers] == [201] * 10
    breaker = breaker_of(stack)
    assert sample(metrics, "breaker_state_code", breaker=breaker) == 0
    for from_state, to_state in [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]:
        count = sample(
            metrics,
            "breaker_transitions_total",
            breaker=breaker,
            from_state=from_state,
            to_state=to_state,
        )
        assert count == 1, (from_state, to_state)
    generated = ledger_rows(stack, "generator-1")
    assert all(answer.body["id"] in generated for answer in answers)


async def test_breaker_skips_a_dead_generator_and_serves_from_the_other(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.SYNC_BREAKER, generators=2)
    stack["generator-2"].kill()

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        answers = [await post_string(session, stack) for _ in range(40)]
        metrics = await scrape(session, stack.requestor_url)

    errors = [answer.error for answer in answers if answer.status != 201]
    assert errors == ["peer_unavailable"] * FAIL_MAX
    assert all(answer.status == 201 for answer in answers[2 * FAIL_MAX :])
    assert sample(metrics, "breaker_state_code", breaker=breaker_of(stack)) == 0
    dead = breaker_of(stack, "generator-2")
    assert sample(metrics, "breaker_state_code", breaker=dead) == 2
    assert sample(metrics, "requests_total", outcome="breaker_open") == 0


async def test_plain_variant_with_generator_killed_fails_fast_and_never_lies(
    start_stack: StartStack,
) -> None:
    stack = start_stack(Variant.SYNC_PLAIN)
    stop_load = asyncio.Event()

    async def user(session: aiohttp.ClientSession) -> list[Answer]:
        answers = []
        while not stop_load.is_set():
            answers.append(await post_string(session, stack))
        return answers

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        users = [asyncio.create_task(user(session)) for _ in range(8)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(stack["generator-1"].kill)
        await asyncio.sleep(0.5)
        stop_load.set()
        during = [answer for task in users for answer in await task]
        after = [await post_string(session, stack) for _ in range(20)]
        metrics = await scrape(session, stack.requestor_url)

    assert {answer.status for answer in during} == {201, 503}
    assert {answer.error for answer in during if answer.status == 503} == {
        "peer_unavailable"
    }
    assert [answer.error for answer in after] == ["peer_unavailable"] * 20
    assert max(answer.elapsed_s for answer in after) < 0.1
    assert sample(metrics, "breaker_rejections_total") == 0

    stored = ledger_rows(stack, "requestor")
    generated = ledger_rows(stack, "generator-1")
    for answer in during:
        if answer.status == 201:
            request_id = answer.body["id"]
            assert stored[request_id]["stored_at"] is not None
            assert stored[request_id]["value"] == answer.body["value"]
            assert generated[request_id]["value"] == answer.body["value"]


async def test_breaker_holds_back_every_caller_while_a_slow_probe_is_in_flight(
    start_stack: StartStack,
) -> None:
    stack = start_stack(
        Variant.SYNC_BREAKER,
        service_flags={
            "requestor": ("--reset-timeout-s", "0.5", "--call-timeout-s", "0.5")
        },
    )
    fault_url = f"{stack.generator_urls['generator-1']}/admin/fault"

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        await send(session, "POST", fault_url, {"error_rate": 1})
        failures = [await post_string(session, stack) for _ in range(FAIL_MAX)]
        tripped = await post_string(session, stack)
        # Recovered, but slower than the call timeout: the probe hangs until it.
        await send(session, "POST", fault_url, {"latency_ms": 800})
        await asyncio.sleep(0.6)
        probe = asyncio.create_task(post_string(session, stack))
        await asyncio.sleep(0.1)
        held_back = await asyncio.gather(
            *(post_string(session, stack) for _ in range(20))
        )
        probe_answer = await probe

    assert {answer.error for answer in failures} == {"peer_failed"}
    assert tripped.error == "breaker_open", "5xx answers count as failures"
    assert probe_answer.status == 504
    assert probe_answer.error == "timeout"
    assert {answer.error for answer in held_back} == {"breaker_open"}
    assert all("probe" in answer.body["detail"] for answer in held_back)
    assert max(answer.elapsed_s for answer in held_back) < 0.1

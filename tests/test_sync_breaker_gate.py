"""The breaker wrapper on its own: real pybreaker, driven by real asyncio calls."""

from __future__ import annotations

import asyncio
import time

import pytest

from service_core.errors import BreakerOpenError, PeerFailedError, PeerRejectedError
from service_core.metrics import Registry, parse
from sync_variant.breaker import Breaker, BreakerMetrics, BreakerState
from tests.sync_support import sample

NAME = "http://peer.test"


def make_breaker(
    registry: Registry, *, fail_max: int = 2, reset_timeout_s: float = 60.0
) -> Breaker:
    return Breaker(
        NAME,
        fail_max=fail_max,
        reset_timeout_s=reset_timeout_s,
        metrics=BreakerMetrics(registry),
        excluded=[PeerRejectedError],
    )


async def call(
    breaker: Breaker,
    error: Exception | None = None,
    release: asyncio.Event | None = None,
) -> None:
    """One guarded call that waits for `release`, then raises `error` if given."""
    with breaker.calling():
        if release is not None:
            await release.wait()
        if error is not None:
            raise error


def state_of(breaker: Breaker) -> BreakerState:
    return breaker.state


def transitions(registry: Registry) -> dict[tuple[str, str], float]:
    samples = parse(registry.render())
    found = {}
    for old in BreakerState:
        for new in BreakerState:
            count = sample(
                samples,
                "breaker_transitions_total",
                breaker=NAME,
                from_state=old.value,
                to_state=new.value,
            )
            if count:
                found[(old.value, new.value)] = count
    return found


async def test_rejected_calls_do_not_count_toward_opening() -> None:
    breaker = make_breaker(Registry(), fail_max=2)

    for _ in range(5):
        with pytest.raises(PeerRejectedError):
            await call(breaker, PeerRejectedError("400"))

    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.fail_count == 0


async def test_only_consecutive_failures_open_the_breaker() -> None:
    breaker = make_breaker(Registry(), fail_max=2)

    with pytest.raises(PeerFailedError):
        await call(breaker, PeerFailedError("500"))
    await call(breaker)
    with pytest.raises(PeerFailedError):
        await call(breaker, PeerFailedError("500"))
    assert state_of(breaker) is BreakerState.CLOSED
    with pytest.raises(PeerFailedError):
        await call(breaker, PeerFailedError("500"))

    assert state_of(breaker) is BreakerState.OPEN
    with pytest.raises(BreakerOpenError):
        await call(breaker)


async def test_a_late_failure_while_open_is_not_a_transition() -> None:
    registry = Registry()
    breaker = make_breaker(registry, fail_max=1)
    release = asyncio.Event()
    early = asyncio.create_task(call(breaker, PeerFailedError("500"), release))
    late = asyncio.create_task(call(breaker, PeerFailedError("500"), release))
    await asyncio.sleep(0)

    release.set()
    results = await asyncio.gather(early, late, return_exceptions=True)

    assert all(isinstance(result, PeerFailedError) for result in results)
    assert state_of(breaker) is BreakerState.OPEN
    assert transitions(registry) == {("closed", "open"): 1}


async def test_one_probe_at_a_time_while_not_closed_and_its_success_closes() -> None:
    registry = Registry()
    breaker = make_breaker(registry, fail_max=1, reset_timeout_s=0.05)
    with pytest.raises(PeerFailedError):
        await call(breaker, PeerFailedError("500"))
    await asyncio.sleep(0.06)
    release = asyncio.Event()
    probe = asyncio.create_task(call(breaker, release=release))
    await asyncio.sleep(0)
    assert state_of(breaker) is BreakerState.HALF_OPEN

    started = time.perf_counter()
    for _ in range(10):
        with pytest.raises(BreakerOpenError, match="probe"):
            await call(breaker)
    refused_s = time.perf_counter() - started
    release.set()
    await probe
    await call(breaker)

    assert refused_s < 0.01
    assert state_of(breaker) is BreakerState.CLOSED
    assert transitions(registry) == {
        ("closed", "open"): 1,
        ("open", "half-open"): 1,
        ("half-open", "closed"): 1,
    }
    samples = parse(registry.render())
    assert sample(samples, "breaker_rejections_total", breaker=NAME) == 10
    assert sample(samples, "breaker_state", breaker=NAME, state="closed") == 1
    assert sample(samples, "breaker_state_code", breaker=NAME) == 0


async def test_a_failed_probe_reopens_for_another_reset_timeout() -> None:
    registry = Registry()
    breaker = make_breaker(registry, fail_max=1, reset_timeout_s=0.05)
    with pytest.raises(PeerFailedError):
        await call(breaker, PeerFailedError("500"))
    await asyncio.sleep(0.06)

    with pytest.raises(PeerFailedError):
        await call(breaker, PeerFailedError("still down"))

    assert state_of(breaker) is BreakerState.OPEN
    with pytest.raises(BreakerOpenError, match="reset timeout"):
        await call(breaker)
    assert transitions(registry) == {
        ("closed", "open"): 1,
        ("open", "half-open"): 1,
        ("half-open", "open"): 1,
    }

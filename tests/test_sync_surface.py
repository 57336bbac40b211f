"""The sync services' HTTP surfaces: bad input, and faults set through the admin API.

One sync-plain stack serves every test here; a test that sets a fault clears it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.stack import Stack, StackOptions, Variant, running
from service_core.contract import CONTRACT_VERSION, DEFAULT_LENGTH
from service_core.surface import MAX_BODY_BYTES
from tests.sync_support import CLIENT_TIMEOUT, post_string, send

CALL_TIMEOUT_S = 0.3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir: Path = tmp_path_factory.mktemp("sync-surface")
    flags = {"requestor": ("--call-timeout-s", str(CALL_TIMEOUT_S))}
    with running(Variant.SYNC_PLAIN, run_dir, StackOptions(service_flags=flags)) as up:
        yield up


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as client:
        yield client


@pytest.fixture
async def fault_url(stack: Stack, session: aiohttp.ClientSession) -> AsyncIterator[str]:
    url = f"{stack.generator_urls['generator-1']}/admin/fault"
    yield url
    await send(session, "DELETE", url)


VALID_STRING_REQUEST = {
    "version": CONTRACT_VERSION,
    "id": "a1",
    "length": 5,
    "requested_at": 1.0,
}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "$"),
        (b'{"length": "x"}', "$.length"),
        (b'{"length": 0}', "$.length"),
        (b'{"length": 1025}', "$.length"),
    ],
)
async def test_malformed_new_string_body_gets_400_naming_the_field(
    stack: Stack, session: aiohttp.ClientSession, body: bytes, field: str
) -> None:
    answer = await send(session, "POST", f"{stack.requestor_url}/strings", data=body)

    assert answer.status == 400
    assert answer.error == "invalid_body"
    assert answer.body["field"] == field


async def test_empty_new_string_body_asks_for_the_default_length(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    answer = await send(session, "POST", f"{stack.requestor_url}/strings", data=b"")

    assert answer.status == 201
    assert len(answer.body["value"]) == DEFAULT_LENGTH


@pytest.mark.parametrize(
    ("role", "path"),
    [
        ("requestor", "/strings"),
        ("requestor", "/confirmations/query"),
        ("generator", "/generate"),
    ],
)
async def test_oversized_body_gets_413(
    stack: Stack, session: aiohttp.ClientSession, role: str, path: str
) -> None:
    base = (
        stack.requestor_url
        if role == "requestor"
        else stack.generator_urls["generator-1"]
    )
    oversized = b" " * (MAX_BODY_BYTES + 1)

    answer = await send(session, "POST", base + path, data=oversized)

    assert answer.status == 413
    assert answer.error == "body_too_large"


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({**VALID_STRING_REQUEST, "version": CONTRACT_VERSION + 1}, "$.version"),
        ({k: v for k, v in VALID_STRING_REQUEST.items() if k != "id"}, "$.id"),
        ({**VALID_STRING_REQUEST, "length": -1}, "$.length"),
    ],
    ids=["wrong-version", "missing-id", "bad-length"],
)
async def test_generate_refuses_a_wrong_version_or_a_bad_field_with_400(
    stack: Stack,
    session: aiohttp.ClientSession,
    request_body: dict[str, object],
    field: str,
) -> None:
    url = f"{stack.generator_urls['generator-1']}/generate"

    answer = await send(session, "POST", url, request_body)

    assert answer.status == 400
    assert answer.body["field"] == field


@pytest.mark.parametrize(
    "body",
    [b'{"error_rate": 2}', b'{"latncy_ms": 5}', b"{", b'{"latency_ms": "slow"}'],
)
async def test_admin_fault_with_a_bad_body_gets_400(
    session: aiohttp.ClientSession, fault_url: str, body: bytes
) -> None:
    answer = await send(session, "POST", fault_url, data=body)

    assert answer.status == 400
    assert answer.error == "invalid_body"


async def test_confirmation_query_with_a_bad_body_gets_400(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    url = f"{stack.requestor_url}/confirmations/query"

    answer = await send(session, "POST", url, {"ids": "a1"})

    assert answer.status == 400
    assert answer.body["field"] == "$.ids"


async def test_injected_errors_fail_requests_with_peer_failed_until_cleared(
    stack: Stack, session: aiohttp.ClientSession, fault_url: str
) -> None:
    assert (await send(session, "POST", fault_url, {"error_rate": 1})).status == 200
    failing = [await post_string(session, stack) for _ in range(3)]
    assert (await send(session, "DELETE", fault_url)).status == 200
    cleared = await post_string(session, stack)

    assert [answer.status for answer in failing] == [503] * 3
    assert {answer.error for answer in failing} == {"peer_failed"}
    assert cleared.status == 201


async def test_injected_latency_beyond_the_call_timeout_gives_504_in_time(
    stack: Stack, session: aiohttp.ClientSession, fault_url: str
) -> None:
    await send(session, "POST", fault_url, {"latency_ms": 1000})

    started = time.perf_counter()
    answer = await post_string(session, stack)
    elapsed_s = time.perf_counter() - started

    assert answer.status == 504
    assert answer.error == "timeout"
    assert CALL_TIMEOUT_S <= elapsed_s < CALL_TIMEOUT_S + 0.2

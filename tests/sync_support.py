"""What the sync variant's tests share: HTTP calls, ledger rows, metric samples.

Tests see the services only as a user, the harness or an operator would: through
their HTTP surfaces, their `/metrics`, their log files and their SQLite ledgers.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.stack import Stack
from service_core.metrics import parse

FAST_POLL_S = 0.1
# Generators poll often in tests, so a confirmation arrives within a few tenths.
FAST_POLL_FLAGS = ("--poll-interval-s", str(FAST_POLL_S))
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10)

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as a test sees it; `status` 0 means nothing answered."""

    status: int
    body: Any
    elapsed_s: float

    @property
    def error(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    payload: Any = None,
    *,
    data: bytes | None = None,
) -> Answer:
    """Send JSON `payload` (or raw `data`) and read the JSON answer."""
    started = time.perf_counter()
    try:
        async with session.request(
            method,
            url,
            json=payload if data is None else None,
            data=data,
            headers={"Content-Type": "application/json"},
        ) as response:
            raw = await response.read()
            status = response.status
    except aiohttp.ClientError:
        return Answer(0, None, time.perf_counter() - started)
    elapsed_s = time.perf_counter() - started
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw
    return Answer(status, body, elapsed_s)


async def post_string(
    session: aiohttp.ClientSession, stack: Stack, payload: Any = None
) -> Answer:
    """`POST /strings` on the stack's requestor."""
    return await send(session, "POST", f"{stack.requestor_url}/strings", payload)


def ledger_rows(stack: Stack, name: str) -> dict[str, dict[str, Any]]:
    """Every row of the ledger of process `name`, by request id."""
    path = stack.run_dir / "ledgers" / f"{name}.sqlite3"
    table = "requests" if name == "requestor" else "strings"
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(f"SELECT * FROM {table}").fetchall()
    return {row["id"]: dict(row) for row in rows}


async def scrape(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    async with session.get(f"{base_url}/metrics") as response:
        return parse(await response.text())


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        sample_name, _, label_text = key.partition("{")
        if sample_name != f"coupling_{name}":
            continue
        found = dict(_LABEL.findall(label_text))
        if all(found.get(label) == wanted for label, wanted in labels.items()):
            total += value
    return total


async def wait_until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
) -> None:
    """Poll `check` until it holds, or fail saying what did not happen in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)

"""Calls from a sync service to its peer over HTTP.

This is the one place where aiohttp's errors and HTTP status codes become the
project's `PeerError`s: a timeout is `PeerTimeoutError`, a refused or reset connection
`PeerUnavailableError`, a 5xx (or a 2xx whose body breaks the contract)
`PeerFailedError`, a 4xx `PeerRejectedError`. The breaker sees the same errors, raised
inside its block, and ignores `PeerRejectedError`: a peer that answers 4xx is up, and
the call was ours to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TypeVar

import aiohttp
import msgspec

from service_core import contract
from service_core.errors import (
    BreakerOpenError,
    ContractError,
    PeerError,
    PeerFailedError,
    PeerRejectedError,
    PeerTimeoutError,
    PeerUnavailableError,
)
from service_core.metrics import Counter
from sync_variant.breaker import Breaker, BreakerMetrics
from sync_variant.config import PeerCallSettings

logger = logging.getLogger(__name__)

ReplyT = TypeVar("ReplyT", bound=msgspec.Struct)

OK = "ok"
JSON_HEADERS = {"Content-Type": "application/json"}
# How much of an unexpected answer's body an error message quotes.
QUOTED_BODY_CHARS = 200


def open_session(settings: PeerCallSettings, *, peers: int) -> aiohttp.ClientSession:
    """A client session for `peers` peers whose pool and timeout follow `settings`.

    Each peer gets up to `connection_limit` connections of its own, so that a slow
    peer holding all of its connections cannot starve calls to the others. The
    per-call `asyncio.timeout` in `PeerClient` is what bounds a call; the session's
    own timeout only replaces aiohttp's default of 300 s, so that nothing sent
    through this session can wait longer than a call may.
    """
    connector = aiohttp.TCPConnector(
        limit=settings.connection_limit * peers,
        limit_per_host=settings.connection_limit,
    )
    timeout = aiohttp.ClientTimeout(total=settings.call_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def make_breaker(
    name: str, settings: PeerCallSettings, metrics: BreakerMetrics
) -> Breaker | None:
    """The breaker for the peer `name`, or None when the settings turn breakers off."""
    if not settings.breaker:
        return None
    return Breaker(
        name,
        fail_max=settings.fail_max,
        reset_timeout_s=settings.reset_timeout_s,
        metrics=metrics,
        excluded=[PeerRejectedError],
    )


class PeerClient:
    """POSTs contract messages to one peer and decodes its replies."""

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession,
        call_timeout_s: float,
        breaker: Breaker | None,
        calls: Counter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.breaker = breaker
        self._session = session
        self._call_timeout_s = call_timeout_s
        self._calls = calls

    async def post(
        self, path: str, message: msgspec.Struct, reply_kind: type[ReplyT]
    ) -> ReplyT:
        """Send `message` to `path` and return the peer's reply, or raise `PeerError`.

        Never takes longer than the call timeout; fails at once with
        `BreakerOpenError` when the breaker refuses the call.
        """
        url = self.base_url + path
        data = contract.encode(message)
        guard = self.breaker.calling() if self.breaker else contextlib.nullcontext()
        started = time.perf_counter()
        try:
            with guard:
                async with asyncio.timeout(self._call_timeout_s):
                    async with self._session.post(
                        url, data=data, headers=JSON_HEADERS
                    ) as response:
                        body = await response.read()
                reply = _reply_of(url, response.status, body, reply_kind)
        except BreakerOpenError:
            raise
        except PeerError as exc:
            self._count(exc.cause)
            raise
        except TimeoutError as exc:
            self._count(PeerTimeoutError.cause)
            raise PeerTimeoutError(
                f"{url} did not answer within {self._call_timeout_s} s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            self._count(PeerUnavailableError.cause)
            raise PeerUnavailableError(
                f"{url} could not be reached: {type(exc).__name__}: {exc}"
            ) from exc

        self._count(OK)
        logger.debug(
            "POST %s: %s in %.1f ms",
            url,
            response.status,
            (time.perf_counter() - started) * 1000,
        )
        return reply

    def _count(self, result: str) -> None:
        if self._calls is not None:
            self._calls.inc(target=self.base_url, result=result)


def _reply_of(url: str, status: int, body: bytes, reply_kind: type[ReplyT]) -> ReplyT:
    if 200 <= status < 300:
        try:
            return contract.decode(body, reply_kind)
        except ContractError as exc:
            raise PeerFailedError(f"{url} answered {status} with {exc}") from exc
    quoted = body[:QUOTED_BODY_CHARS].decode(errors="replace")
    if 400 <= status < 500:
        raise PeerRejectedError(f"{url} refused the call with {status}: {quoted}")
    raise PeerFailedError(f"{url} failed with {status}: {quoted}")

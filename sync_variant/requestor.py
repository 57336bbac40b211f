"""The sync requestor: `POST /strings` calls a generator and waits for the string.

A request is recorded before the call, stored when the reply arrives, and only then
answered 201; a failed call is recorded with its cause and answered 503 (504 for a
timeout). Calls go round robin over the generators; with breakers on, a generator
whose breaker refuses is skipped, and the request fails with `breaker_open` only when
every breaker refuses. Generators learn which of their strings are stored by polling
`POST /confirmations/query`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from service_core import contract
from service_core.clock import now_s
from service_core.contract import (
    CONTRACT_VERSION,
    ConfirmationAnswer,
    ConfirmationQuery,
    NewStringBody,
    StringReply,
    StringRequest,
)
from service_core.errors import BreakerOpenError, PeerError, PeerFailedError
from service_core.ledger import RequestorLedger, RequestStatus
from service_core.lifecycle import main as service_main
from service_core.metrics import Registry
from service_core.surface import error_response, json_response, read_body
from sync_variant.breaker import BreakerMetrics
from sync_variant.config import RequestorConfig
from sync_variant.peer import PeerClient, make_breaker, open_session

logger = logging.getLogger(__name__)


class GeneratorPool:
    """The generators, called in turn; with breakers, an open one is skipped."""

    def __init__(self, peers: Sequence[PeerClient]) -> None:
        self.peers = list(peers)
        self._turns = itertools.count()

    async def generate(self, request: StringRequest) -> StringReply:
        first = next(self._turns) % len(self.peers)
        refusals: list[BreakerOpenError] = []
        for offset in range(len(self.peers)):
            peer = self.peers[(first + offset) % len(self.peers)]
            try:
                reply = await peer.post("/generate", request, StringReply)
            except BreakerOpenError as exc:
                # Refused before anything was sent, so trying the next one cannot
                # duplicate the request.
                refusals.append(exc)
                continue
            if reply.id != request.id:
                raise PeerFailedError(
                    f"{peer.base_url} answered for id {reply.id!r}, "
                    f"expected {request.id!r}"
                )
            return reply
        if len(refusals) == 1:
            raise refusals[0]
        raise BreakerOpenError(
            f"the breakers of all {len(refusals)} generators refused the call; "
            f"the last said: {refusals[-1]}"
        )


class RequestorService:
    role = "requestor"

    def __init__(self, config: RequestorConfig) -> None:
        self.config = config
        self.registry = Registry()
        self.ledger = RequestorLedger(config.db_path)
        self._session: aiohttp.ClientSession | None = None
        self._pool: GeneratorPool | None = None

        self._breaker_metrics = BreakerMetrics(self.registry)
        self._requests = self.registry.counter(
            "requests_total", "POST /strings answered, by outcome (stored or cause)"
        )
        self._peer_calls = self.registry.counter(
            "peer_calls_total",
            "calls sent to a generator, by target and result (ok or cause); "
            "calls a breaker refused are not sent and not counted here",
        )
        self._confirmation_queries = self.registry.counter(
            "confirmation_queries_total", "POST /confirmations/query answered"
        )
        self.registry.gauge(
            "ledger_rows",
            "rows of the requestor ledger, by status",
            lambda: [({"status": s}, n) for s, n in self.ledger.row_counts().items()],
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/strings", self.create_string),
            web.get("/strings/{id}", self.show_string),
            web.post("/confirmations/query", self.answer_confirmations),
        ]

    async def start(self) -> None:
        self._session = open_session(self.config, peers=len(self.config.generator_urls))
        peers = []
        for url in self.config.generator_urls:
            peers.append(
                PeerClient(
                    url,
                    session=self._session,
                    call_timeout_s=self.config.call_timeout_s,
                    breaker=make_breaker(url, self.config, self._breaker_metrics),
                    calls=self._peer_calls,
                )
            )
        self._pool = GeneratorPool(peers)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        self.ledger.close()

    def health(self) -> dict[str, Any]:
        peers = self._pool.peers if self._pool else []
        return {
            "breaker": self.config.breaker,
            "generators": {
                peer.base_url: peer.breaker.state.value if peer.breaker else "direct"
                for peer in peers
            },
        }

    async def create_string(self, request: web.Request) -> web.Response:
        body = await read_body(request, NewStringBody, empty_means_default=True)
        if self._pool is None:
            raise web.HTTPServiceUnavailable(text="requestor is still starting")
        string_request = StringRequest(
            version=CONTRACT_VERSION,
            id=uuid.uuid4().hex,
            length=body.length,
            requested_at=now_s(),
        )
        self.ledger.record_requested(string_request)

        try:
            reply = await self._pool.generate(string_request)
        except PeerError as exc:
            self.ledger.record_failed(string_request.id, exc.cause)
            self._requests.inc(outcome=exc.cause)
            logger.debug("request %s failed: %s", string_request.id, exc)
            raise
        self.ledger.store_replies([reply], now_s())

        self._requests.inc(outcome=RequestStatus.STORED)
        return json_response(
            {"id": reply.id, "value": reply.value, "status": RequestStatus.STORED},
            status=201,
        )

    async def show_string(self, request: web.Request) -> web.Response:
        request_id = request.match_info["id"]
        record = self.ledger.get(request_id)
        if record is None:
            return error_response(
                404, "not_found", f"no request with id {request_id!r} here"
            )
        return json_response(dataclasses.asdict(record))

    async def answer_confirmations(self, request: web.Request) -> web.Response:
        query = await read_body(request, ConfirmationQuery)
        held = self.ledger.held(query.ids)
        self.ledger.record_confirmed([item.id for item in held], now_s())
        self._confirmation_queries.inc()
        logger.debug("confirmation query: %d asked, %d held", len(query.ids), len(held))
        return web.Response(
            body=contract.encode(ConfirmationAnswer(held=held)),
            content_type="application/json",
        )


def main() -> int:
    return service_main(
        RequestorConfig,
        RequestorService,
        prog="python -m sync_variant.requestor",
        description="Sync requestor: asks generators over HTTP for random strings "
        "and stores them.",
    )


if __name__ == "__main__":
    sys.exit(main())

"""The sync generator: `POST /generate` makes, stores and returns a random string.

Generation is idempotent per request id: a retried call gets the string stored the
first time. A fault set through `/admin/fault` delays or fails the work. Confirmations
come from polling the requestor (`sync_variant.poller`), through a breaker of its own
when breakers are on.

A call the requestor has given up on (it timed out) is still carried out: the string
is stored here and never confirmed, which is the waste synchronous coupling costs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import aiohttp
from aiohttp import web

from service_core import contract
from service_core.clock import now_s
from service_core.contract import StringRequest
from service_core.fault import FaultInjector, InjectedFailure
from service_core.generation import random_string
from service_core.ledger import GeneratorLedger
from service_core.lifecycle import main as service_main
from service_core.metrics import Registry
from service_core.surface import error_response, fault_routes, read_body
from sync_variant.breaker import BreakerMetrics
from sync_variant.config import GeneratorConfig
from sync_variant.peer import PeerClient, make_breaker, open_session
from sync_variant.poller import ConfirmationPoller

logger = logging.getLogger(__name__)


class GeneratorService:
    role = "generator"

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.registry = Registry()
        self.ledger = GeneratorLedger(config.db_path)
        self.fault = FaultInjector()
        self._session: aiohttp.ClientSession | None = None
        self._requestor: PeerClient | None = None
        self._poller: ConfirmationPoller | None = None

        self._breaker_metrics = BreakerMetrics(self.registry)
        self._generated = self.registry.counter(
            "generated_total", "strings generated and stored for the first time"
        )
        self._duplicates = self.registry.counter(
            "duplicate_requests_total",
            "requests for an id already generated, answered with the stored string",
        )
        self._injected = self.registry.counter(
            "injected_failures_total", "requests failed on purpose by the fault"
        )
        self.registry.gauge(
            "ledger_rows",
            "rows of the generator ledger: generated, and of those confirmed",
            lambda: [({"status": s}, n) for s, n in self.ledger.row_counts().items()],
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/generate", self.generate),
            *fault_routes(self.fault, self.registry),
        ]

    async def start(self) -> None:
        self._session = open_session(self.config, peers=1)
        self._requestor = PeerClient(
            self.config.requestor_url,
            session=self._session,
            call_timeout_s=self.config.call_timeout_s,
            breaker=make_breaker(
                self.config.requestor_url, self.config, self._breaker_metrics
            ),
        )
        self._poller = ConfirmationPoller(
            ledger=self.ledger,
            requestor=self._requestor,
            interval_s=self.config.poll_interval_s,
            batch=self.config.poll_batch,
            registry=self.registry,
        )
        self._poller.start()

    async def stop(self) -> None:
        if self._poller is not None:
            await self._poller.stop()
        if self._session is not None:
            await self._session.close()
        self.ledger.close()

    def health(self) -> dict[str, Any]:
        breaker = self._requestor.breaker if self._requestor else None
        poller = self._poller
        return {
            "requestor": self.config.requestor_url,
            "breaker": breaker.state.value if breaker else "direct",
            "requestor_reachable": poller.requestor_reachable if poller else None,
            "fault": self.fault.active,
        }

    async def generate(self, request: web.Request) -> web.Response:
        string_request = await read_body(request, StringRequest)

        try:
            await self.fault.apply()
        except InjectedFailure as exc:
            self._injected.inc()
            return error_response(500, "injected_failure", str(exc))

        [generated] = self.ledger.generate(
            [string_request],
            generator=self.config.instance,
            make_value=random_string,
            at_s=now_s(),
        )
        if generated.is_new:
            self._generated.inc()
        else:
            self._duplicates.inc()
        return web.Response(
            body=contract.encode(generated.reply), content_type="application/json"
        )


def main() -> int:
    return service_main(
        GeneratorConfig,
        GeneratorService,
        prog="python -m sync_variant.generator",
        description="Sync generator: makes random strings for the requestor over "
        "HTTP and polls it for confirmations.",
    )


if __name__ == "__main__":
    sys.exit(main())

"""The queue generator: consumes requests, generates and stores strings, replies.

Per batch of requests: apply the current fault to each (concurrently), generate and
store the strings in one ledger transaction, publish the replies, and acknowledge each
request only once its reply is stored by the broker. A redelivered request gets the
string stored the first time, so a repeated reply carries the same value.

Each generator also consumes the confirmations for its own instance name, and marks
those strings received in its ledger.

Known shortcoming: a request redelivered to another generator after this one crashed
mid-batch is generated again there. If the first reply had reached the broker, the
reply stream drops the second as a duplicate (same message id, within the duplicate
window); either way one of the two ledgers keeps a row that is never confirmed, whose
string no requestor ever stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from queue_variant.topology import REPLY_SUBJECT, REQUESTS, Stage, confirmations_for
from queue_variant.transport import Broker, Outgoing, QueueConfig, Settlement
from service_core import contract, lifecycle
from service_core.clock import now_s
from service_core.contract import Confirmation, StringRequest
from service_core.errors import ConfigError
from service_core.fault import FaultInjector, InjectedFailure
from service_core.generation import random_string
from service_core.ledger import GeneratorLedger
from service_core.metrics import Registry
from service_core.surface import fault_routes

logger = logging.getLogger(__name__)

# The instance name is a NATS subject token and part of a consumer name.
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorConfig(QueueConfig):
    """A generator's settings: the shared queue settings and a required instance."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _INSTANCE_NAME.fullmatch(self.instance):
            raise ConfigError(
                f"instance must be 1 to 64 letters, digits, '-' or '_', unique among "
                f"generators (it names this generator's confirmation subject); got "
                f"{self.instance!r}: pass --instance generator-1, for example"
            )


class GeneratorService:
    """The generator's transport-specific part, run by `service_core.lifecycle`."""

    role = "generator"

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.registry = Registry()
        self._ledger = GeneratorLedger(config.db_path)
        self._injector = FaultInjector()
        self._broker = Broker(config, self.registry)
        self._broker.add_consumer(
            REQUESTS, StringRequest, self._handle_requests, workers=config.fetch_workers
        )
        self._broker.add_consumer(
            confirmations_for(config.instance), Confirmation, self._handle_confirmations
        )
        self._duplicates = self.registry.counter(
            "duplicates_absorbed_total",
            "deliveries the ledger had already seen and did not store again, by stage",
        )
        self._unknown = self.registry.counter(
            "confirmations_unknown_total",
            "confirmations for ids this generator's ledger does not hold",
        )
        self.registry.gauge(
            "ledger_rows",
            "rows of the generator's ledger: generated, and of those confirmed",
            lambda: [
                ({"status": status}, float(count))
                for status, count in self._ledger.row_counts().items()
            ],
        )

    def routes(self) -> list[web.RouteDef]:
        return fault_routes(self._injector, self.registry)

    async def start(self) -> None:
        await self._broker.start()

    async def stop(self) -> None:
        await self._broker.stop()
        self._ledger.close()

    def health(self) -> dict[str, Any]:
        return {**self._broker.health(), "fault_active": self._injector.active}

    async def _handle_requests(
        self, requests: Sequence[StringRequest]
    ) -> list[Settlement]:
        settlements = [Settlement.RETRY] * len(requests)
        ready = await self._survivors_of_fault(requests)
        if not ready:
            return settlements

        generated = self._ledger.generate(
            [requests[index] for index in ready],
            generator=self.config.instance,
            make_value=random_string,
            at_s=now_s(),
        )
        repeats = sum(1 for result in generated if not result.is_new)
        if repeats:
            self._duplicates.inc(repeats, stage=Stage.REQUEST.value)

        errors = await self._broker.publish_many(
            [
                Outgoing(
                    REPLY_SUBJECT,
                    contract.encode(result.reply),
                    f"{result.reply.id}:reply",
                )
                for result in generated
            ]
        )
        for index, error in zip(ready, errors, strict=True):
            if error is None:
                settlements[index] = Settlement.ACK
        failed = [error for error in errors if error is not None]
        if failed:
            logger.warning(
                "%d of %d replies not published (%s); their requests will come again",
                len(failed),
                len(errors),
                failed[0],
            )
        return settlements

    async def _survivors_of_fault(self, requests: Sequence[StringRequest]) -> list[int]:
        """Indices of the requests the current fault lets through, after its delay."""
        if not self._injector.active:
            return list(range(len(requests)))
        # Concurrently, as the sync generator serves concurrent calls: a latency fault
        # delays each request by latency_ms, not a batch by batch x latency_ms.
        outcomes = await asyncio.gather(
            *(self._injector.apply() for _ in requests), return_exceptions=True
        )
        survivors: list[int] = []
        for index, outcome in enumerate(outcomes):
            if outcome is None:
                survivors.append(index)
            elif not isinstance(outcome, InjectedFailure):
                raise outcome
        if len(survivors) < len(requests):
            logger.debug(
                "fault failed %d of %d requests",
                len(requests) - len(survivors),
                len(requests),
            )
        return survivors

    async def _handle_confirmations(
        self, confirmations: Sequence[Confirmation]
    ) -> list[Settlement]:
        fresh = self._ledger.mark_confirmed(confirmations, now_s())
        for confirmation, is_new in zip(confirmations, fresh, strict=True):
            if is_new:
                continue
            if self._ledger.holds(confirmation.id):
                self._duplicates.inc(stage=Stage.CONFIRM.value)
            else:
                self._unknown.inc()
                logger.warning(
                    "confirmation for %s, which this generator's ledger does not hold",
                    confirmation.id,
                )
        return [Settlement.ACK] * len(confirmations)


def main(argv: Sequence[str] | None = None) -> int:
    return lifecycle.main(
        GeneratorConfig,
        GeneratorService,
        prog="python -m queue_variant.generator",
        description="Generator of the queue variant: consumes string requests from "
        "NATS, generates and stores each string, and publishes it back.",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())

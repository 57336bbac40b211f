"""The queue requestor: takes `POST /strings`, publishes requests, stores replies.

`POST /strings` answers `202 accepted` only once the broker holds the request: in
`jetstream` mode when the server's PubAck has arrived, in `core` mode when a flush
has reached the server (which in core NATS still promises nothing about delivery).
Replies are stored in one ledger transaction per batch; for each, a confirmation goes
to the generator instance whose string was stored, and only then is the reply
acknowledged.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from queue_variant.topology import REPLIES, REQUEST_SUBJECT, Stage, confirm_subject
from queue_variant.transport import Broker, Outgoing, QueueConfig, Settlement
from service_core import contract, lifecycle
from service_core.clock import now_s
from service_core.contract import (
    CONTRACT_VERSION,
    Confirmation,
    NewStringBody,
    StringReply,
    StringRequest,
)
from service_core.errors import ContractError, PeerError
from service_core.ledger import RequestorLedger
from service_core.metrics import Registry
from service_core.surface import error_response, json_response, read_body

logger = logging.getLogger(__name__)

ACCEPTED = "accepted"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestorConfig(QueueConfig):
    """The requestor needs only the settings both queue services share."""


class RequestorService:
    """The requestor's transport-specific part, run by `service_core.lifecycle`."""

    role = "requestor"

    def __init__(self, config: RequestorConfig) -> None:
        self.config = config
        self.registry = Registry()
        self._ledger = RequestorLedger(config.db_path)
        self._broker = Broker(config, self.registry)
        self._broker.add_consumer(
            REPLIES, StringReply, self._handle_replies, workers=config.fetch_workers
        )
        self._requests = self.registry.counter(
            "requests_total", "POST /strings, by outcome: accepted or the error's cause"
        )
        self._duplicates = self.registry.counter(
            "duplicates_absorbed_total",
            "deliveries the ledger had already seen and did not store again, by stage",
        )
        self.registry.gauge(
            "ledger_rows",
            "rows of the requestor's ledger, by status",
            lambda: [
                ({"status": status}, float(count))
                for status, count in self._ledger.row_counts().items()
            ],
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/strings", self._post_string),
            web.get("/strings/{id}", self._get_string),
        ]

    async def start(self) -> None:
        await self._broker.start()

    async def stop(self) -> None:
        await self._broker.stop()
        self._ledger.close()

    def health(self) -> dict[str, Any]:
        return self._broker.health()

    async def _post_string(self, request: web.Request) -> web.Response:
        try:
            body = await read_body(request, NewStringBody, empty_means_default=True)
        except ContractError:
            self._requests.inc(outcome="invalid_body")
            raise
        except web.HTTPRequestEntityTooLarge:
            self._requests.inc(outcome="body_too_large")
            raise

        message = StringRequest(
            version=CONTRACT_VERSION,
            id=uuid.uuid4().hex,
            length=body.length,
            requested_at=now_s(),
        )
        self._ledger.record_requested(message)
        outgoing = Outgoing(
            REQUEST_SUBJECT, contract.encode(message), f"{message.id}:request"
        )
        try:
            await self._broker.publish(outgoing)
        except PeerError as exc:
            self._ledger.record_failed(message.id, exc.cause)
            self._requests.inc(outcome=exc.cause)
            logger.debug("request %s failed: %s", message.id, exc)
            raise

        self._ledger.record_accepted(message.id, now_s())
        self._requests.inc(outcome=ACCEPTED)
        return json_response({"id": message.id, "status": ACCEPTED}, status=202)

    async def _get_string(self, request: web.Request) -> web.Response:
        request_id = request.match_info["id"]
        record = self._ledger.get(request_id)
        if record is None:
            return error_response(
                404, "not_found", f"no request with id {request_id!r} in this ledger"
            )
        return json_response(dataclasses.asdict(record))

    async def _handle_replies(self, replies: Sequence[StringReply]) -> list[Settlement]:
        stored_at = now_s()
        fresh = self._ledger.store_replies(replies, stored_at)

        confirmations: list[Outgoing] = []
        for reply, is_new in zip(replies, fresh, strict=True):
            generator, at_s = reply.generator, stored_at
            if not is_new:
                # The string stored first stays; confirm it to the generator that made
                # it, which may differ from this copy's after a redelivery.
                self._duplicates.inc(stage=Stage.REPLY.value)
                record = self._ledger.get(reply.id)
                if record is not None and record.generator and record.stored_at:
                    generator, at_s = record.generator, record.stored_at
            confirmation = Confirmation(
                version=CONTRACT_VERSION, id=reply.id, stored_at=at_s
            )
            confirmations.append(
                Outgoing(
                    confirm_subject(generator),
                    contract.encode(confirmation),
                    f"{reply.id}:confirm",
                )
            )

        errors = await self._broker.publish_many(confirmations)
        confirmed = [
            reply.id for reply, error in zip(replies, errors, strict=True) if not error
        ]
        if confirmed:
            self._ledger.record_confirmed(confirmed, now_s())
        failed = [error for error in errors if error is not None]
        if failed:
            logger.warning(
                "%d of %d confirmations not published (%s); their replies will be "
                "handled again",
                len(failed),
                len(errors),
                failed[0],
            )
        return [Settlement.RETRY if error else Settlement.ACK for error in errors]


def main(argv: Sequence[str] | None = None) -> int:
    return lifecycle.main(
        RequestorConfig,
        RequestorService,
        prog="python -m queue_variant.requestor",
        description="Requestor of the queue variant: accepts POST /strings, asks the "
        "generators for strings over NATS and stores their replies.",
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())

"""The NATS side of both queue services: connection, publishing, consumer loops.

Two modes share one shape. In `jetstream` mode the server stores every message before
a publish returns (the PubAck), consumers pull batches from durable consumers, and a
message is acknowledged only after its effects are committed and its follow-up message
is stored, so a crash at any point ends in a redelivery that the ledger absorbs: at
least once. In `core` mode messages go straight to the subscribers of a queue group
and are gone if nobody listens or processing fails: at most once, the baseline.

The roles hand a `Broker` their consumers as handlers that take a batch of decoded
messages and say, per message, whether it is done (`Settlement.ACK`) or should come
again (`Settlement.RETRY`); decoding, dead-lettering, acknowledging and metrics happen
here. Batches are pulled with `pull.Puller` rather than nats-py's `fetch` (see there
why). nats-py exceptions are translated into `service_core.errors` in this package and
go no further.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Generic, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext

from queue_variant import topology
from queue_variant.pull import Puller, PullUnavailableError
from queue_variant.topology import ConsumerLimits, ConsumerSpec, StreamLimits
from service_core import contract
from service_core.config import ServiceConfig, setting
from service_core.errors import (
    BrokerFullError,
    ConfigError,
    ContractError,
    PeerError,
    PeerFailedError,
    PeerTimeoutError,
    PeerUnavailableError,
)
from service_core.metrics import Registry

logger = logging.getLogger(__name__)

MessageT = TypeVar("MessageT", bound=msgspec.Struct)

REJECT_REASON_HEADER = "Coupling-Reject-Reason"
REJECT_SUBJECT_HEADER = "Coupling-Source-Subject"
MSG_ID_HEADER = "Nats-Msg-Id"

# JetStream's "store failed" error; with "maximum messages/bytes exceeded" in its
# description it is a discard-new stream at its limit.
_STREAM_STORE_FAILED = 10077

# A publish that JetStream could not take right now (no stream answered yet after a
# server restart, a 503 other than a full stream) is tried again after this pause,
# within the publish timeout.
PUBLISH_RETRY_PAUSE_S = 0.05

# `Client.flush` waits for a PONG; if its own timeout fires, the PONG that arrives
# later meets a cancelled future, and the resulting exception ends nats-py's read loop
# for good (the connection then looks alive but reads nothing). So the flush itself is
# given this long, far past any publish timeout, and callers stop waiting for it sooner.
_FLUSH_GIVE_UP_S = 60

# Pull inboxes are unsubscribed before the drain (their loops have ended, so nothing
# would handle a late delivery), and the drain itself is bounded well below nats-py's
# 30 s default so that a stop never outlasts the harness's patience.
_DRAIN_TIMEOUT_S = 5


class TransportMode(StrEnum):
    """How messages travel between the services."""

    JETSTREAM = "jetstream"  # stored by the server, acknowledged: at least once
    CORE = "core"  # straight to subscribers: at most once


class Settlement(Enum):
    """What to do with one consumed message once its handler is done with it."""

    ACK = "ack"  # done: JetStream deletes it from the work queue
    RETRY = "retry"  # failed: JetStream redelivers it later; core NATS has lost it


@dataclass(frozen=True, kw_only=True)
class QueueConfig(ServiceConfig):
    """The settings both queue services share."""

    nats_url: str = setting("nats://127.0.0.1:4222", "NATS server URL")
    mode: TransportMode = setting(
        TransportMode.JETSTREAM,
        "jetstream (stored, acknowledged: at least once) or core (at most once)",
    )
    publish_timeout_s: float = setting(
        1.0, "how long a publish waits for the server to acknowledge it"
    )
    fetch_batch: int = setting(100, "most messages one pull takes at once")
    fetch_timeout_s: float = setting(
        1.0, "how long an idle pull waits for messages; also bounds a stop's wait"
    )
    fetch_workers: int = setting(
        2, "concurrent pull loops for requests and replies in each process"
    )
    ack_wait_s: float = setting(
        30.0, "JetStream redelivers a message not acknowledged within this"
    )
    max_ack_pending: int = setting(
        2000, "most unacknowledged messages a durable consumer hands out at once"
    )
    retry_delay_s: float = setting(
        1.0, "how long JetStream waits before redelivering a message that failed"
    )
    stream_max_msgs: int = setting(
        1_000_000, "messages a work-queue stream holds before it refuses new ones"
    )
    stream_max_bytes: int = setting(
        1 << 30, "bytes a stream holds before it refuses new ones (dead letters: drops)"
    )
    duplicate_window_s: float = setting(
        120.0, "how long JetStream remembers message ids to drop republished copies"
    )
    dead_letter_max_msgs: int = setting(
        100_000, "malformed messages kept; the oldest are dropped beyond this"
    )
    reconnect_wait_s: float = setting(
        0.5, "pause between attempts to reconnect to the NATS server"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive(
            "publish_timeout_s",
            "fetch_batch",
            "fetch_timeout_s",
            "fetch_workers",
            "ack_wait_s",
            "max_ack_pending",
            "retry_delay_s",
            "stream_max_msgs",
            "stream_max_bytes",
            "duplicate_window_s",
            "dead_letter_max_msgs",
            "reconnect_wait_s",
        )
        if not self.nats_url.startswith(("nats://", "tls://")):
            raise ConfigError(
                f"nats_url must look like nats://host:port, got {self.nats_url!r}"
            )
        if self.max_ack_pending < self.fetch_batch * self.fetch_workers:
            raise ConfigError(
                f"max_ack_pending ({self.max_ack_pending}) must be at least "
                f"fetch_batch x fetch_workers ({self.fetch_batch * self.fetch_workers})"
                f", or pulls would wait on each other"
            )

    @property
    def stream_limits(self) -> StreamLimits:
        return StreamLimits(
            max_msgs=self.stream_max_msgs,
            max_bytes=self.stream_max_bytes,
            duplicate_window_s=self.duplicate_window_s,
            dead_letter_max_msgs=self.dead_letter_max_msgs,
        )

    @property
    def consumer_limits(self) -> ConsumerLimits:
        return ConsumerLimits(
            ack_wait_s=self.ack_wait_s, max_ack_pending=self.max_ack_pending
        )


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish; `msg_id` lets JetStream drop a republished copy."""

    subject: str
    payload: bytes
    msg_id: str
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Sequence[MessageT]], Awaitable[Sequence[Settlement]]]


class _BrokerBusyError(PeerUnavailableError):
    """JetStream answered that it cannot take the message just now; try again."""


@dataclass
class Backoff:
    """Growing pauses between attempts that keep failing, with some jitter."""

    first_s: float = 0.05
    most_s: float = 2.0
    _next_s: float = field(default=0.0, init=False)

    def next_s(self) -> float:
        self._next_s = min(self.most_s, max(self.first_s, self._next_s * 2))
        return self._next_s * random.uniform(0.75, 1.0)

    def reset(self) -> None:
        self._next_s = 0.0


class Broker:
    """One service's NATS connection, its publishes and its consumer loops."""

    def __init__(self, config: QueueConfig, registry: Registry) -> None:
        self.config = config
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._consumers: list[_Consumer[Any]] = []
        self.stopping = asyncio.Event()
        self._flushes: set[asyncio.Task[None]] = set()

        self.published = registry.counter(
            "messages_published_total", "messages the server acknowledged, by subject"
        )
        self.deduplicated = registry.counter(
            "messages_deduplicated_total",
            "publishes JetStream recognised as copies of a stored message, by subject",
        )
        self.consumed = registry.counter(
            "messages_consumed_total", "messages taken from the broker, by subject"
        )
        self.redelivered = registry.counter(
            "messages_redelivered_total",
            "consumed messages JetStream had delivered before, by subject",
        )
        self.rejected = registry.counter(
            "messages_rejected_total",
            "malformed messages moved to the dead-letter subject, by subject, reason",
        )
        self.failed = registry.counter(
            "messages_failed_total",
            "consumed messages whose processing failed (retried later in JetStream, "
            "lost in core NATS), by subject",
        )
        self.disconnects = registry.counter(
            "nats_disconnects_total", "times the connection to NATS was lost"
        )
        self.reconnects = registry.counter(
            "nats_reconnects_total", "times the connection to NATS was re-established"
        )
        registry.gauge(
            "nats_connected",
            "1 while connected to the NATS server",
            lambda: [({}, 1.0 if self.connected else 0.0)],
        )

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def jetstream(self) -> bool:
        return self.config.mode is TransportMode.JETSTREAM

    @property
    def js_context(self) -> JetStreamContext | None:
        """The JetStream context once connected in `jetstream` mode."""
        return self._js

    def add_consumer(
        self,
        spec: ConsumerSpec,
        kind: type[MessageT],
        handler: Handler[MessageT],
        *,
        workers: int = 1,
    ) -> None:
        """Consume `spec` once started: decode each message as `kind`, then handle."""
        self._consumers.append(_Consumer(self, spec, kind, handler, workers))

    async def start(self) -> None:
        """Connect, set up streams and consumers, and start consuming.

        Waits for the server as long as it takes: nats-py retries the first connection
        too when reconnects are unlimited.
        """
        logger.info("connecting to NATS at %s", self.config.nats_url)
        self._nc = await nats.connect(
            self.config.nats_url,
            name=self.config.instance or None,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.config.reconnect_wait_s,
            connect_timeout=2,
            drain_timeout=_DRAIN_TIMEOUT_S,
            # No buffering while disconnected: a publish then fails at once instead of
            # waiting in memory, where it would die with the process.
            pending_size=0,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
            closed_cb=self._on_close,
        )
        logger.info("connected to NATS (%s mode)", self.config.mode.value)
        if self.jetstream:
            self._js = self._nc.jetstream(timeout=self.config.publish_timeout_s * 5)
            await self.until_ready(
                "streams",
                lambda js: topology.ensure_streams(js, self.config.stream_limits),
            )
        for consumer in self._consumers:
            await consumer.start()

    async def stop(self) -> None:
        """Let every loop finish its batch, then drain and close the connection."""
        for consumer in self._consumers:
            await consumer.close_intake()
        self.stopping.set()
        loops = [task for consumer in self._consumers for task in consumer.tasks]
        if loops:
            _, late = await asyncio.wait(loops, timeout=self.config.shutdown_timeout_s)
            for task in late:
                logger.warning(
                    "a consumer loop did not finish within %s s; cancelling it: its "
                    "unacknowledged messages will be redelivered",
                    self.config.shutdown_timeout_s,
                )
                task.cancel()
        for consumer in self._consumers:
            await consumer.unsubscribe()

        nc = self._nc
        if nc is None or nc.is_closed:
            return
        try:
            await nc.drain()
        except nats.errors.Error as exc:
            logger.warning("NATS drain failed (%s); closing the connection", exc)
            await nc.close()

    def health(self) -> dict[str, Any]:
        return {
            "broker": {
                "mode": self.config.mode.value,
                "url": self.config.nats_url,
                "connected": self.connected,
                "reconnects": int(self.reconnects.value()),
                "consumers": [consumer.spec.durable for consumer in self._consumers],
            }
        }

    async def publish(self, outgoing: Outgoing) -> None:
        """Publish and return once the server holds it, or raise a `PeerError`.

        Fails at once if not connected; never waits past `publish_timeout_s`. A retry
        after a transient refusal reuses the message id, so that a first attempt that
        was stored after all is not stored twice.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.publish_timeout_s
        while True:
            remaining_s = deadline - loop.time()
            try:
                await self._publish_once(outgoing, remaining_s)
                return
            except _BrokerBusyError:
                if remaining_s <= 2 * PUBLISH_RETRY_PAUSE_S:
                    raise
            await asyncio.sleep(PUBLISH_RETRY_PAUSE_S)

    async def publish_many(self, batch: Sequence[Outgoing]) -> list[PeerError | None]:
        """Publish concurrently; per message, the error that stopped it, if any."""
        if not self.jetstream:
            return await self._publish_core_batch(batch)
        results = await asyncio.gather(
            *(
                self._publish_once(item, self.config.publish_timeout_s)
                for item in batch
            ),
            return_exceptions=True,
        )
        errors: list[PeerError | None] = []
        for result in results:
            if isinstance(result, PeerError) or result is None:
                errors.append(result)
            else:
                raise result
        return errors

    async def _publish_once(self, outgoing: Outgoing, timeout_s: float) -> None:
        nc = self.connection()
        if self._js is None:
            await self._publish_core(nc, outgoing)
            await self._flush(nc, timeout_s)
        else:
            await self._publish_jetstream(self._js, outgoing, timeout_s)
        self.published.inc(subject=outgoing.subject)

    async def _publish_jetstream(
        self, js: JetStreamContext, outgoing: Outgoing, timeout_s: float
    ) -> None:
        # js.publish rather than publish_async: publish_async's futures never resolve
        # when the server answers with an error (nats-py raises inside its reply
        # handler instead), so a full stream would look like a timeout.
        headers = {MSG_ID_HEADER: outgoing.msg_id, **dict(outgoing.headers)}
        where = f"{outgoing.subject} (message id {outgoing.msg_id})"
        try:
            ack = await js.publish(
                outgoing.subject, outgoing.payload, timeout=timeout_s, headers=headers
            )
        except TimeoutError as exc:
            raise PeerTimeoutError(
                f"NATS did not acknowledge {where} within {timeout_s:.3f} s"
            ) from exc
        except nats.js.errors.NoStreamResponseError as exc:
            raise _BrokerBusyError(
                f"no JetStream stream answered for {where}; is JetStream enabled and "
                f"the stream set up?"
            ) from exc
        except nats.js.errors.ServiceUnavailableError as exc:
            description = exc.description or ""
            if exc.err_code == _STREAM_STORE_FAILED and "maximum" in description:
                raise BrokerFullError(
                    f"stream refused {where}: {description}; the consumers must "
                    f"catch up, or the stream limits be raised"
                ) from exc
            raise _BrokerBusyError(
                f"JetStream unavailable for {where}: {description}"
            ) from exc
        except nats.js.errors.APIError as exc:
            raise PeerFailedError(f"JetStream refused {where}: {exc}") from exc
        except nats.errors.Error as exc:
            raise self._unreachable(where, exc) from exc
        if ack.duplicate:
            self.deduplicated.inc(subject=outgoing.subject)

    async def _publish_core(self, nc: Client, outgoing: Outgoing) -> None:
        headers = dict(outgoing.headers) or None
        try:
            await nc.publish(outgoing.subject, outgoing.payload, headers=headers)
        except nats.errors.Error as exc:
            raise self._unreachable(outgoing.subject, exc) from exc

    async def _publish_core_batch(
        self, batch: Sequence[Outgoing]
    ) -> list[PeerError | None]:
        # At most once: handed to the client to send, and nothing more is known.
        try:
            nc = self.connection()
            for outgoing in batch:
                await self._publish_core(nc, outgoing)
                self.published.inc(subject=outgoing.subject)
        except PeerError as exc:
            return [exc] * len(batch)
        return [None] * len(batch)

    async def _flush(self, nc: Client, timeout_s: float) -> None:
        flush = asyncio.ensure_future(nc.flush(timeout=_FLUSH_GIVE_UP_S))
        self._flushes.add(flush)
        flush.add_done_callback(self._forget_flush)
        try:
            await asyncio.wait_for(asyncio.shield(flush), timeout_s)
        except TimeoutError as exc:
            raise PeerTimeoutError(
                f"NATS did not answer a flush within {timeout_s:.3f} s"
            ) from exc
        except nats.errors.Error as exc:
            raise self._unreachable("a flush", exc) from exc

    def _forget_flush(self, flush: asyncio.Task[None]) -> None:
        self._flushes.discard(flush)
        if not flush.cancelled() and flush.exception() is not None:
            logger.debug("a late flush failed: %s", flush.exception())

    def connection(self) -> Client:
        if self._nc is None or not self._nc.is_connected:
            raise PeerUnavailableError(
                f"not connected to NATS at {self.config.nats_url} (still connecting "
                f"or reconnecting); try again shortly"
            )
        return self._nc

    def _unreachable(self, what: str, exc: Exception) -> PeerUnavailableError:
        return PeerUnavailableError(
            f"could not send {what} to NATS at {self.config.nats_url}: "
            f"{type(exc).__name__} {exc}"
        )

    async def until_ready(
        self, what: str, step: Callable[[JetStreamContext], Awaitable[None]]
    ) -> None:
        """Run a JetStream management step, retrying while the server is not ready.

        Just after nats-server starts, JetStream can answer 503 or not at all for a
        moment; a refusal for a reason that retrying cannot fix raises `ConfigError`.
        """
        if self._js is None:
            return
        backoff = Backoff(most_s=1.0)
        while True:
            try:
                await step(self._js)
                return
            except (TimeoutError, nats.errors.Error) as exc:
                delay_s = backoff.next_s()
                logger.warning(
                    "JetStream not ready to set up %s (%s); retrying in %.2f s",
                    what,
                    type(exc).__name__,
                    delay_s,
                )
                await asyncio.sleep(delay_s)

    async def pause(self, delay_s: float) -> None:
        """Sleep, but wake up at once when the service stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay_s)

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, OSError | nats.errors.UnexpectedEOF | TimeoutError):
            logger.debug("NATS connection error: %s", exc)
        else:
            logger.warning("NATS client error: %s: %s", type(exc).__name__, exc)

    async def _on_disconnect(self) -> None:
        if self.stopping.is_set():
            return
        self.disconnects.inc()
        logger.warning(
            "disconnected from NATS at %s; reconnecting every %s s",
            self.config.nats_url,
            self.config.reconnect_wait_s,
        )

    async def _on_reconnect(self) -> None:
        self.reconnects.inc()
        logger.info("reconnected to NATS at %s", self.config.nats_url)

    async def _on_close(self) -> None:
        logger.info("NATS connection closed")


class _Consumer(Generic[MessageT]):
    """The loops of one consumer: take a batch, decode, handle, settle, repeat."""

    def __init__(
        self,
        broker: Broker,
        spec: ConsumerSpec,
        kind: type[MessageT],
        handler: Handler[MessageT],
        workers: int,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.kind = kind
        self.handler = handler
        self.workers = workers
        self.tasks: list[asyncio.Task[None]] = []
        self._pullers: list[Puller] = []
        self._subscription: Subscription | None = None
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue(
            maxsize=broker.config.fetch_batch * 10
        )
        self._dead_subject = topology.dead_letter_subject(spec.stage)

    async def start(self) -> None:
        config = self.broker.config
        nc = self.broker.connection()
        js = self.broker.js_context
        if js is None:
            self._subscription = await nc.subscribe(
                self.spec.subject, queue=self.spec.queue_group, cb=self._inbox.put
            )
            self.tasks.append(asyncio.create_task(self._run_core()))
        else:
            await self.broker.until_ready(
                f"consumer {self.spec.durable}",
                lambda js: topology.ensure_consumer(
                    js, self.spec, config.consumer_limits
                ),
            )
            for _ in range(self.workers):
                puller = Puller(nc, self.spec.stream, self.spec.durable)
                await puller.open()
                self._pullers.append(puller)
                self.tasks.append(asyncio.create_task(self._run_pull(puller)))
        logger.info(
            "consuming %s as %s (%d loop%s)",
            self.spec.subject,
            self.spec.durable,
            len(self.tasks),
            "" if len(self.tasks) == 1 else "s",
        )

    async def close_intake(self) -> None:
        """Core mode: stop taking messages, keeping those already received."""
        if self._subscription is None:
            return
        with contextlib.suppress(nats.errors.Error):
            await self._subscription.drain()  # type: ignore[no-untyped-call]

    async def unsubscribe(self) -> None:
        for puller in self._pullers:
            with contextlib.suppress(nats.errors.Error):
                await puller.close()

    async def _run_pull(self, puller: Puller) -> None:
        config = self.broker.config
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        while not self.broker.stopping.is_set():
            started = loop.time()
            try:
                batch = await puller.fetch(config.fetch_batch, config.fetch_timeout_s)
            except PullUnavailableError as exc:
                await self._recover(exc, backoff.next_s())
                continue
            except (nats.errors.Error, OSError) as exc:
                delay_s = backoff.next_s()
                logger.log(
                    logging.WARNING if self.broker.connected else logging.DEBUG,
                    "pull from %s failed (%s: %s); retrying in %.2f s",
                    self.spec.durable,
                    type(exc).__name__,
                    exc,
                    delay_s,
                )
                await self.broker.pause(delay_s)
                continue
            if not batch:
                # An empty pull is the normal idle case; one that ended early (the
                # server refused it, or the consumer is at max_ack_pending) must not
                # turn into a tight loop.
                if loop.time() - started < config.fetch_timeout_s / 2:
                    await self.broker.pause(backoff.next_s())
                continue
            backoff.reset()
            await self._process(batch)

    async def _recover(self, exc: Exception, delay_s: float) -> None:
        """Nobody answered pulls: wait, then make sure the consumer exists again."""
        logger.warning(
            "consumer %s did not answer (%s); recreating it in %.2f s",
            self.spec.durable,
            exc,
            delay_s,
        )
        await self.broker.pause(delay_s)
        js = self.broker.js_context
        if js is None or self.broker.stopping.is_set():
            return
        try:
            await topology.ensure_consumer(
                js, self.spec, self.broker.config.consumer_limits
            )
        except ConfigError as refused:
            logger.error("%s", refused)
        except (nats.errors.Error, OSError) as failed:
            logger.debug("could not recreate %s: %s", self.spec.durable, failed)

    async def _run_core(self) -> None:
        config = self.broker.config
        while not (self.broker.stopping.is_set() and self._inbox.empty()):
            try:
                first = await asyncio.wait_for(
                    self._inbox.get(), config.fetch_timeout_s
                )
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < config.fetch_batch and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            await self._process(batch)

    async def _process(self, batch: list[Msg]) -> None:
        subject = self.spec.subject
        delivered: list[Msg] = []
        messages: list[MessageT] = []
        for msg in batch:
            self.broker.consumed.inc(subject=subject)
            if self.broker.jetstream and msg.metadata.num_delivered > 1:
                self.broker.redelivered.inc(subject=subject)
            try:
                messages.append(contract.decode(msg.data, self.kind))
            except ContractError as exc:
                await self._reject(msg, exc)
                continue
            delivered.append(msg)
        if not messages:
            return

        keep_alive = (
            asyncio.create_task(self._keep_alive(delivered))
            if self.broker.jetstream
            else None
        )
        try:
            settlements = list(await self.handler(messages))
            if len(settlements) != len(messages):
                raise RuntimeError(
                    f"handler for {subject} settled {len(settlements)} of "
                    f"{len(messages)} messages"
                )
        except Exception:
            logger.exception(
                "handling %d messages from %s failed; %s",
                len(messages),
                subject,
                "they will be redelivered"
                if self.broker.jetstream
                else "they are lost (core NATS)",
            )
            settlements = [Settlement.RETRY] * len(messages)
        finally:
            if keep_alive is not None:
                keep_alive.cancel()

        await self._settle(delivered, settlements)

    async def _keep_alive(self, batch: list[Msg]) -> None:
        # Work that nears ack_wait (a slow fault, a stalled disk) would otherwise be
        # redelivered to another worker while still in progress here.
        interval_s = self.broker.config.ack_wait_s / 3
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.gather(
                *(msg.in_progress() for msg in batch), return_exceptions=True
            )

    async def _settle(self, batch: list[Msg], settlements: list[Settlement]) -> None:
        config = self.broker.config
        retries = sum(1 for settlement in settlements if settlement is Settlement.RETRY)
        if retries:
            self.broker.failed.inc(retries, subject=self.spec.subject)
        if not self.broker.jetstream:
            if retries:
                logger.debug(
                    "%d messages from %s lost (core NATS)", retries, self.spec.subject
                )
            return

        results = await asyncio.gather(
            *(
                msg.ack_sync(timeout=config.publish_timeout_s)
                if settlement is Settlement.ACK
                else msg.nak(delay=config.retry_delay_s)
                for msg, settlement in zip(batch, settlements, strict=True)
            ),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        for failure in failures:
            if not isinstance(failure, Exception):
                raise failure
        if failures:
            logger.warning(
                "%d of %d acknowledgements on %s failed (%s); those messages will be "
                "redelivered after ack_wait and absorbed as duplicates",
                len(failures),
                len(batch),
                self.spec.subject,
                type(failures[0]).__name__,
            )

    async def _reject(self, msg: Msg, exc: ContractError) -> None:
        """Move a malformed message to the dead-letter subject, out of the way."""
        reason = _reject_reason(exc)
        logger.warning(
            "malformed message on %s (%s): %s; moving it to %s",
            msg.subject,
            reason,
            exc,
            self._dead_subject,
        )
        self.broker.rejected.inc(subject=self.spec.subject, reason=reason)
        headers = (
            (REJECT_REASON_HEADER, f"{reason}: {exc}"[:512]),
            (REJECT_SUBJECT_HEADER, msg.subject),
        )
        if not self.broker.jetstream:
            await self.broker.publish_many(
                [Outgoing(self._dead_subject, msg.data, "", headers)]
            )
            return

        sequence = msg.metadata.sequence.stream
        msg_id = f"dead:{msg.metadata.stream}:{sequence}"
        try:
            await self.broker.publish(
                Outgoing(self._dead_subject, msg.data, msg_id, headers)
            )
        except PeerError as publish_error:
            logger.warning(
                "could not move the malformed message to %s (%s); it will come again",
                self._dead_subject,
                publish_error,
            )
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=self.broker.config.retry_delay_s)
            return
        with contextlib.suppress(nats.errors.Error):
            await msg.term()


def _reject_reason(exc: ContractError) -> str:
    if exc.field is None:
        return "not_json"
    if exc.field == "$.version":
        return "bad_version"
    return "invalid_field"

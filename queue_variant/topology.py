"""Where messages travel: subjects, JetStream streams and durable consumers.

One exchange crosses three subjects, each captured by a work-queue stream in
`jetstream` mode, so a message is deleted as soon as its consumer acknowledges it:

- `strings.request` (stream `STRING_REQUESTS`): requestor to generators. All
  generators pull from the one durable consumer `generators` and so share the work.
- `strings.reply` (stream `STRING_REPLIES`): generators to the requestor, consumer
  `requestors`.
- `strings.confirm.<generator>` (stream `STRING_CONFIRMATIONS`): requestor to the
  generator that produced the string. Each generator has its own consumer
  `confirm-<generator>` filtered to its own subject; a work-queue stream allows
  several consumers as long as their filters do not overlap.

A malformed message is moved to `strings.dead.<stage>`, which the `DEAD_LETTERS`
stream keeps under limits retention (the oldest go first) for someone to look at.

Work-queue streams discard new messages when full rather than old ones: a publisher
then gets a clear error instead of an accepted message being deleted unseen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

from service_core.errors import ConfigError

logger = logging.getLogger(__name__)

REQUEST_SUBJECT = "strings.request"
REPLY_SUBJECT = "strings.reply"
CONFIRM_SUBJECT_PREFIX = "strings.confirm"
DEAD_LETTER_SUBJECT_PREFIX = "strings.dead"

REQUEST_STREAM = "STRING_REQUESTS"
REPLY_STREAM = "STRING_REPLIES"
CONFIRM_STREAM = "STRING_CONFIRMATIONS"
DEAD_LETTER_STREAM = "DEAD_LETTERS"

# JetStream's answer to adding a stream that exists with other settings.
_STREAM_NAME_IN_USE = 10058


class Stage(StrEnum):
    """Which of the three messages of an exchange a consumer handles."""

    REQUEST = "request"
    REPLY = "reply"
    CONFIRM = "confirm"


def confirm_subject(generator: str) -> str:
    """The subject on which `generator` receives the confirmations for its strings."""
    return f"{CONFIRM_SUBJECT_PREFIX}.{generator}"


def dead_letter_subject(stage: Stage) -> str:
    return f"{DEAD_LETTER_SUBJECT_PREFIX}.{stage.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSpec:
    """Where one consumer reads: a durable consumer (JetStream) or a queue group."""

    stage: Stage
    subject: str
    stream: str
    durable: str

    @property
    def queue_group(self) -> str:
        """Core mode: subscribers of one group share the messages, as a durable does."""
        return self.durable


REQUESTS = ConsumerSpec(
    stage=Stage.REQUEST,
    subject=REQUEST_SUBJECT,
    stream=REQUEST_STREAM,
    durable="generators",
)
REPLIES = ConsumerSpec(
    stage=Stage.REPLY,
    subject=REPLY_SUBJECT,
    stream=REPLY_STREAM,
    durable="requestors",
)


def confirmations_for(generator: str) -> ConsumerSpec:
    """The consumer of one generator instance's confirmations, and no one else's."""
    return ConsumerSpec(
        stage=Stage.CONFIRM,
        subject=confirm_subject(generator),
        stream=CONFIRM_STREAM,
        durable=f"confirm-{generator}",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamLimits:
    """The sizes every stream is created with; see `QueueConfig` for each meaning."""

    max_msgs: int
    max_bytes: int
    duplicate_window_s: float
    dead_letter_max_msgs: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerLimits:
    """How long a delivery may stay unacknowledged, and how many at once."""

    ack_wait_s: float
    max_ack_pending: int


def stream_configs(limits: StreamLimits) -> list[api.StreamConfig]:
    """Every stream of the topology, whichever service asks."""

    def work_queue(name: str, subject: str, about: str) -> api.StreamConfig:
        return api.StreamConfig(
            name=name,
            description=about,
            subjects=[subject],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.NEW,
            max_msgs=limits.max_msgs,
            max_bytes=limits.max_bytes,
            duplicate_window=limits.duplicate_window_s,
            num_replicas=1,
        )

    return [
        work_queue(REQUEST_STREAM, REQUEST_SUBJECT, "string requests for generators"),
        work_queue(REPLY_STREAM, REPLY_SUBJECT, "generated strings for the requestor"),
        work_queue(
            CONFIRM_STREAM,
            f"{CONFIRM_SUBJECT_PREFIX}.*",
            "receipts for the generator that produced each string",
        ),
        api.StreamConfig(
            name=DEAD_LETTER_STREAM,
            description="malformed messages moved out of the consumers' way",
            subjects=[f"{DEAD_LETTER_SUBJECT_PREFIX}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            max_msgs=limits.dead_letter_max_msgs,
            max_bytes=limits.max_bytes,
            duplicate_window=limits.duplicate_window_s,
            num_replicas=1,
        ),
    ]


def consumer_config(spec: ConsumerSpec, limits: ConsumerLimits) -> api.ConsumerConfig:
    # max_deliver=-1: a message is retried until it succeeds, since dropping it after
    # some number of attempts would lose an accepted request. Malformed messages do not
    # loop: they are terminated after being moved to the dead-letter subject.
    return api.ConsumerConfig(
        name=spec.durable,
        durable_name=spec.durable,
        description=f"{spec.stage.value} consumer",
        filter_subject=spec.subject,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=limits.ack_wait_s,
        max_deliver=-1,
        max_ack_pending=limits.max_ack_pending,
    )


async def ensure_streams(js: JetStreamContext, limits: StreamLimits) -> None:
    """Create every stream, or bring an existing one to these limits.

    Adding a stream whose settings match is a no-op on the server, so every service
    can run this at start-up, whichever comes first.
    """
    for stream in stream_configs(limits):
        try:
            await js.add_stream(stream)
            continue
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise _refused(f"stream {stream.name}", exc) from exc
        try:
            await js.update_stream(stream)
        except BadRequestError as exc:
            raise _refused(f"stream {stream.name}", exc) from exc
        logger.info("stream %s existed with other settings; updated", stream.name)


async def ensure_consumer(
    js: JetStreamContext, spec: ConsumerSpec, limits: ConsumerLimits
) -> None:
    """Create the durable consumer, or update it in place to this configuration.

    `pull_subscribe(durable=..., config=...)` would ignore `config` for a consumer
    that already exists, so a changed `ack_wait` would silently not apply; the
    management API's create request updates an existing consumer instead.
    """
    try:
        await js.add_consumer(spec.stream, consumer_config(spec, limits))
    except BadRequestError as exc:
        raise _refused(f"consumer {spec.durable} on {spec.stream}", exc) from exc


def _refused(what: str, exc: BadRequestError) -> ConfigError:
    return ConfigError(
        f"JetStream refused {what}: {exc.description} (error {exc.err_code}); "
        f"it was probably created by another build with settings that cannot be "
        f"changed in place: delete it, or start nats-server on a fresh store"
    )

"""The rows the harness writes and reads, and the version of that format.

Every file of a run folder is described here: the columns of `requests.csv`,
`events.csv` and `samples.csv`, and the classes a request's outcome falls into.
Analysis, report and tests read the same definitions.

Results format history (`RESULTS_SCHEMA_VERSION`, written into every manifest and
summary):
- 1: first version.
"""

from __future__ import annotations

from enum import StrEnum

RESULTS_SCHEMA_VERSION = 1
SUPPORTED_RESULTS_SCHEMAS = frozenset({RESULTS_SCHEMA_VERSION})


class Outcome(StrEnum):
    """What happened to one scheduled request, from the user's side."""

    ACCEPTED = "accepted"  # any 2xx: 201 stored (sync) or 202 accepted (queue)
    BREAKER_OPEN = "breaker_open"  # 503 whose body names the breaker
    TIMEOUT = "timeout"  # 504, or no answer within the client's own timeout
    REFUSED = "refused"  # no HTTP answer at all: connection refused or reset
    SERVER_ERROR = "server_error"  # any other 5xx
    CLIENT_ERROR = "client_error"  # 4xx: a harness bug, never expected
    DROPPED = "dropped"  # never sent: the load generator missed its due time


REJECTED_OUTCOMES = frozenset(
    {Outcome.BREAKER_OPEN, Outcome.TIMEOUT, Outcome.REFUSED, Outcome.SERVER_ERROR}
)

# requests.csv: one row per scheduled request, written by the load generator.
#   seq         user_index * SEQ_USER_BLOCK + i, i the 0-based index in that Locust
#               user's arrival schedule; unique within a cell
#   due_s       when the request was due, epoch seconds
#   sent_s      when it was sent, epoch seconds; empty if dropped
#   done_s      when the answer (or the error) came, epoch seconds; empty if dropped
#   latency_ms  done_s - due_s in milliseconds: latency from the due time
#   status      HTTP status code; 0 when there was no HTTP answer
#   outcome     an `Outcome` value
#   cause       the `error` field of an error body, or the client-side error name
#   request_id  the id the requestor gave the request, from the body; may be empty
SEQ_USER_BLOCK = 1_000_000_000

REQUEST_COLUMNS = (
    "seq",
    "due_s",
    "sent_s",
    "done_s",
    "latency_ms",
    "status",
    "outcome",
    "cause",
    "request_id",
)

# events.csv: what happened to the stack, one row per event.
#   at_s     epoch seconds
#   kind     an `EventKind` value
#   target   process name (requestor, generator-1, nats) or breaker name
#   detail   free text: the action, the exit code, the new breaker state ...
#   planned  1 for a fault's planned time, 0 for something observed
EVENT_COLUMNS = ("at_s", "kind", "target", "detail", "planned")


class EventKind(StrEnum):
    PHASE = "phase"  # warmup, load, fault, recovery, drain started
    FAULT_PLANNED = "fault_planned"
    FAULT_INJECTED = "fault_injected"
    FAULT_CLEARED = "fault_cleared"
    PROCESS_EXIT = "process_exit"
    PROCESS_START = "process_start"
    PROCESS_FROZEN = "process_frozen"
    PROCESS_THAWED = "process_thawed"
    BREAKER = "breaker"  # a breaker changed state; detail is the new state
    NATS_RECONNECT = "nats_reconnect"


# samples.csv: once a second, one row per (process, metric) reading.
#   at_s     epoch seconds
#   source   process name, or "jetstream" for the server's monitoring figures
#   metric   cpu_percent, rss_bytes, pending, ack_pending, redelivered,
#            stream_messages, breaker_state (0 closed, 1 half-open, 2 open) ...
#   key      the stream, consumer or breaker the reading is about; may be empty
#   value    the reading
SAMPLE_COLUMNS = ("at_s", "source", "metric", "key", "value")

BREAKER_STATE_CODES = {"closed": 0, "half-open": 1, "open": 2}

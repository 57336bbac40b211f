"""Which `Outcome` one request fell into, from what the client saw.

The load generator knows three things about a request it sent: the HTTP status (0 when
no HTTP answer came), the `error` field of an error body, and, when no answer came, the
name of the client-side failure. `classify` turns those into one `Outcome`; the names
of client-side failures are the `ClientError` values, which also go into the `cause`
column of `requests.csv` so that a refused connection and a generator that ran out of
file descriptors stay apart even though both are `refused`.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import NamedTuple

from bench.records import Outcome

BREAKER_OPEN_CAUSE = "breaker_open"


class ClientError(StrEnum):
    """Why the client got no HTTP answer."""

    TIMEOUT = "client_timeout"  # nothing within the client's own timeout
    ABANDONED = "abandoned"  # still unanswered when the generator had to stop
    REFUSED = "connection_refused"  # nothing listens: the process is dead
    RESET = "connection_reset"  # the peer reset the connection mid-request
    CLOSED = "connection_closed"  # the peer closed the connection without answering
    BAD_RESPONSE = "bad_response"  # bytes came back, but not an HTTP response
    OS_ERROR = "client_os_error"  # any other socket error, on the generator's side


TIMEOUT_CLIENT_ERRORS = frozenset({ClientError.TIMEOUT, ClientError.ABANDONED})


class DroppedCause(StrEnum):
    """Why a due request was never sent (outcome `dropped`)."""

    LATE = "late"  # it could not go out within the late tolerance of its due time
    CONCURRENCY_CAP = "concurrency_cap"  # the cap on requests in flight was reached
    STOPPED = "stopped"  # the generator was killed before it could send it


def classify(status: int, error_cause: str | None, client_error: str | None) -> Outcome:
    """The outcome of a request that was sent.

    `client_error` is a `ClientError` value (or another client-side failure name) when
    no HTTP answer came, in which case `status` is 0. A request that was never sent
    is `Outcome.DROPPED` and is not classified here.
    """
    if client_error is not None or status == 0:
        if client_error in TIMEOUT_CLIENT_ERRORS:
            return Outcome.TIMEOUT
        return Outcome.REFUSED
    if not 100 <= status <= 599:
        raise ValueError(f"expected an HTTP status in 100..599 or 0, got {status}")
    if 200 <= status <= 299:
        return Outcome.ACCEPTED
    if status == 503 and error_cause == BREAKER_OPEN_CAUSE:
        return Outcome.BREAKER_OPEN
    if status == 504:
        return Outcome.TIMEOUT
    if 400 <= status <= 499:
        return Outcome.CLIENT_ERROR
    # Any other 5xx, and the 1xx or 3xx final answers that the requestor's contract
    # never gives, are the server's failure.
    return Outcome.SERVER_ERROR


class BodyFields(NamedTuple):
    """What the load generator keeps from a response body."""

    error_cause: str | None  # the `error` field of an error body
    request_id: str | None  # the `id` field the requestor gave the request


def read_body(body: bytes) -> BodyFields:
    """The fields of a JSON response body; None for each field that is missing."""
    try:
        document = json.loads(body)
    except ValueError:
        return BodyFields(None, None)
    if not isinstance(document, dict):
        return BodyFields(None, None)
    cause = document.get("error")
    identifier = document.get("id")
    return BodyFields(
        error_cause=cause if isinstance(cause, str) else None,
        request_id=identifier if isinstance(identifier, str) else None,
    )

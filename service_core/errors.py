"""The project's own error hierarchy.

Library exceptions (aiohttp, nats-py, sqlite3) are translated into these where they
enter, so that callers branch on what went wrong rather than on which library said so.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error this project raises on purpose."""


class ContractError(ServiceError, ValueError):
    """A message or request body does not match the contract.

    `field` names the offending field (a JSON path such as `$.length`) when known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(ServiceError, ValueError):
    """A configuration value is out of range or inconsistent."""


class PeerError(ServiceError):
    """A call to the other service, or to the broker, did not succeed.

    `cause` is a short, stable, machine-readable name that ends up in HTTP error
    bodies and metrics labels (for example `breaker_open`, `timeout`).
    """

    cause = "peer_error"
    http_status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message)


class PeerUnavailableError(PeerError):
    """The peer or broker could not be reached at all (connection refused, reset)."""

    cause = "peer_unavailable"


class PeerTimeoutError(PeerError):
    """The peer or broker did not answer within the configured timeout."""

    cause = "timeout"
    http_status = 504


class PeerFailedError(PeerError):
    """The peer answered, but with a server-side failure (5xx)."""

    cause = "peer_failed"


class PeerRejectedError(PeerError):
    """The peer refused the call as malformed (4xx): our bug, not an outage."""

    cause = "peer_rejected"
    http_status = 502


class BreakerOpenError(PeerError):
    """The circuit breaker refused the call without trying it."""

    cause = "breaker_open"


class BrokerFullError(PeerError):
    """The broker refused the message because a stream reached its limits."""

    cause = "stream_full"

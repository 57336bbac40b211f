"""Settings of the sync requestor and generator.

Both services make outbound HTTP calls, so both take the same breaker and client
settings from `PeerCallSettings`; each adds what only it needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from service_core.config import ServiceConfig, setting
from service_core.contract import ConfirmationQuery
from service_core.errors import ConfigError

# The largest batch a `ConfirmationQuery` may carry; the contract enforces it too.
MAX_POLL_BATCH = 10_000

_INSTANCE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Why these defaults:
# - call_timeout_s = 1.0: a healthy generator answers on loopback in about a
#   millisecond, and under the benchmark's heaviest load its p99 stays in the tens of
#   milliseconds, so a second is two orders of magnitude of headroom; it is also the
#   longest a user waits for a dead or frozen generator on a call the breaker let
#   through.
# - fail_max = 5: pybreaker counts consecutive failures, and at the benchmark's 200
#   requests/s five in a row take about 25 ms of a connection-refused outage, or five
#   timed-out calls (at most call_timeout_s, since they overlap) of a frozen peer. A
#   healthy service rarely fails five times in a row, so it does not trip on noise.
# - reset_timeout_s = 2.0: long enough that a dead generator sees one probe every two
#   seconds rather than a steady trickle, short enough that after it returns users
#   wait at most about two seconds (plus one probe) before calls flow again; the
#   benchmark's outages last several seconds, so recovery time stays visible.
DEFAULT_CALL_TIMEOUT_S = 1.0
DEFAULT_FAIL_MAX = 5
DEFAULT_RESET_TIMEOUT_S = 2.0

# aiohttp counts the wait for a pooled connection toward the call's timeout, so a
# peer's pool must hold as many connections as calls are in flight to it: at 200
# requests/s and a 1 ms round trip that is a handful; 200 leaves room for a peer as
# slow as the call timeout (200 requests/s x 1 s) before calls queue for a
# connection and time out waiting. Each peer has a pool of its own.
DEFAULT_CONNECTION_LIMIT = 200


@dataclass(frozen=True, kw_only=True)
class PeerCallSettings:
    """How a sync service calls its peer: the breaker, the timeout, the pool."""

    breaker: bool = setting(
        True,
        "guard outbound calls with a circuit breaker (variant sync-breaker); "
        "--no-breaker calls the peer directly (sync-plain)",
    )
    call_timeout_s: float = setting(
        DEFAULT_CALL_TIMEOUT_S,
        "longest an outbound call may take, waiting for a pooled connection included",
    )
    fail_max: int = setting(
        DEFAULT_FAIL_MAX, "consecutive failed calls that open the breaker"
    )
    reset_timeout_s: float = setting(
        DEFAULT_RESET_TIMEOUT_S,
        "how long an open breaker refuses calls before it lets one probe through",
    )
    connection_limit: int = setting(
        DEFAULT_CONNECTION_LIMIT,
        "most HTTP connections open to one peer at once; a call beyond it waits "
        "for one, and the wait counts toward call_timeout_s",
    )

    def check_peer_call_settings(self) -> None:
        """Raise `ConfigError` for a setting out of range."""
        for name in ("call_timeout_s", "fail_max", "reset_timeout_s"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.connection_limit < 1:
            raise ConfigError(
                f"connection_limit must be at least 1, got {self.connection_limit}"
            )


@dataclass(frozen=True, kw_only=True)
class RequestorConfig(PeerCallSettings, ServiceConfig):
    """`python -m sync_variant.requestor`."""

    db_path: Path = setting(Path("requestor.sqlite3"), "SQLite ledger file")
    instance: str = setting("requestor", "instance name, unique among running peers")
    generator_urls: tuple[str, ...] = setting(
        ("http://127.0.0.1:8081",),
        "comma-separated base URLs of the generators, called in turn",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_peer_call_settings()
        if not self.generator_urls:
            raise ConfigError("generator_urls must name at least one generator")
        if len(set(self.generator_urls)) != len(self.generator_urls):
            raise ConfigError(
                f"generator_urls must not repeat a URL, got {self.generator_urls}"
            )
        for url in self.generator_urls:
            check_base_url("generator_urls", url)


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig(PeerCallSettings, ServiceConfig):
    """`python -m sync_variant.generator`."""

    port: int = setting(8081, "port of the HTTP surface (0 picks a free one)")
    db_path: Path = setting(Path("generator-1.sqlite3"), "SQLite ledger file")
    instance: str = setting(
        "generator-1",
        "instance name, unique among generators; stamped on every string it makes",
    )
    requestor_url: str = setting(
        "http://127.0.0.1:8080", "base URL of the requestor, polled for confirmations"
    )
    poll_interval_s: float = setting(
        0.5, "how often unconfirmed strings are checked with the requestor"
    )
    poll_batch: int = setting(
        1000, f"most ids asked about in one confirmation query (1..{MAX_POLL_BATCH})"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_peer_call_settings()
        check_base_url("requestor_url", self.requestor_url)
        if not _INSTANCE_NAME.fullmatch(self.instance):
            raise ConfigError(
                f"instance must be 1 to 64 letters, digits, '-' or '_', since it is "
                f"stamped on every reply; got {self.instance!r}"
            )
        if self.poll_interval_s <= 0:
            raise ConfigError(
                f"poll_interval_s must be positive, got {self.poll_interval_s}"
            )
        if not 1 <= self.poll_batch <= MAX_POLL_BATCH:
            raise ConfigError(
                f"poll_batch must be within 1..{MAX_POLL_BATCH} (the most a "
                f"{ConfirmationQuery.__name__} carries), got {self.poll_batch}"
            )


def check_base_url(name: str, url: str) -> None:
    """Raise `ConfigError` unless `url` is an http(s) URL with a host and no path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{name} must be a base URL such as http://127.0.0.1:8081, got {url!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"{name} must be a base URL without a path or query, got {url!r}"
        )

"""A circuit breaker around one peer: pybreaker, plus what asyncio callers need.

pybreaker counts consecutive failures, not a failure rate: one success resets the
count, so a dependency that fails half of all calls never trips the breaker. Results
that show the breaker closed under partial failure are reporting that, not health.

What this class adds to `pybreaker.CircuitBreaker`:

- A probe gate. pybreaker lets every caller through while half-open, which under
  concurrency sends a herd at a recovering peer. While the state is not closed,
  exactly one call (the probe) goes through at a time; the rest fail at once with
  `BreakerOpenError`.
- Transitions counted and logged only when the state's name changes. A call that
  entered while closed and fails late re-opens an already open breaker, and
  pybreaker reports that as open -> open; it is not a transition.
- Its own `BreakerState` enum and `/metrics` readings.

pybreaker's open state uses the wall clock and turns half-open only when a call
arrives, so an idle breaker shows "open" long after its reset timeout has passed.

Use it only as `with breaker.calling():` around the awaited call, with the call's
timeout inside the block. `@breaker` on an `async def` sees a coroutine object, records
a success and never sees the failure. With the timeout inside, pybreaker sees a
`TimeoutError`; with it around the block, pybreaker sees the `CancelledError` of the
timeout, indistinguishable from a shutdown cancelling the caller. Cancellation is
still counted as a failure (pybreaker counts any `BaseException`), so a probe cut
short by shutdown re-opens the breaker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from typing import NoReturn

import pybreaker

from service_core.errors import BreakerOpenError
from service_core.metrics import GaugeReading, Registry

logger = logging.getLogger(__name__)


class BreakerState(StrEnum):
    """The three states, named as pybreaker names them."""

    CLOSED = "closed"
    HALF_OPEN = "half-open"
    OPEN = "open"

    @property
    def code(self) -> int:
        """0 closed, 1 half-open, 2 open: the `breaker_state_code` gauge."""
        return _STATE_CODES[self]


_STATE_CODES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class BreakerMetrics:
    """The breaker metrics of one process, over all of its breakers."""

    def __init__(self, registry: Registry) -> None:
        self.breakers: list[Breaker] = []
        self.transitions = registry.counter(
            "breaker_transitions_total",
            "breaker state changes, by breaker and from and to state",
        )
        self.rejections = registry.counter(
            "breaker_rejections_total",
            "calls a breaker refused without trying them, by breaker",
        )
        registry.gauge(
            "breaker_state",
            "1 for each breaker's current state (closed, half-open or open)",
            self._read_state,
        )
        registry.gauge(
            "breaker_state_code",
            "current state of each breaker: 0 closed, 1 half-open, 2 open",
            self._read_state_code,
        )

    def _read_state(self) -> GaugeReading:
        return [
            ({"breaker": breaker.name, "state": breaker.state.value}, 1)
            for breaker in self.breakers
        ]

    def _read_state_code(self) -> GaugeReading:
        return [
            ({"breaker": breaker.name}, breaker.state.code) for breaker in self.breakers
        ]


class Breaker:
    """A circuit breaker named after the peer it guards.

    `excluded` are errors that show the peer is up and answering, such as a 4xx for a
    malformed call: pybreaker counts them as successes, not failures.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_timeout_s: float,
        metrics: BreakerMetrics,
        excluded: Sequence[type[BaseException]] = (),
    ) -> None:
        self.name = name
        self._metrics = metrics
        self._probe_in_flight = False
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            exclude=list(excluded),
            listeners=[_TransitionListener(self._record_transition)],
            name=name,
            # Raise the call's own error when it trips the breaker, not a generic
            # CircuitBreakerError, so the caller can still tell a timeout from a 5xx.
            throw_new_error_on_trip=False,
        )
        metrics.breakers.append(self)

    @property
    def state(self) -> BreakerState:
        return BreakerState(self._breaker.current_state)

    @property
    def fail_count(self) -> int:
        """Consecutive failures counted so far."""
        count: int = self._breaker.fail_counter
        return count

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Run the block as one guarded call, or raise `BreakerOpenError` at once.

        Everything here before the `yield` runs without awaiting, so the gate's check
        and pybreaker's own decision happen together on the event loop.
        """
        is_probe = self.state is not BreakerState.CLOSED
        if is_probe and self._probe_in_flight:
            self._reject("a probe call is already in flight")
        if is_probe:
            self._probe_in_flight = True
        try:
            try:
                with self._breaker.calling():
                    yield
            except pybreaker.CircuitBreakerError as exc:
                # Raised only on entry: open, and the reset timeout not yet passed.
                self._reject("the reset timeout has not passed", exc)
        finally:
            if is_probe:
                self._probe_in_flight = False

    def _reject(self, why: str, cause: BaseException | None = None) -> NoReturn:
        self._metrics.rejections.inc(breaker=self.name)
        error = BreakerOpenError(f"breaker for {self.name} is {self.state}: {why}")
        raise error from cause

    def _record_transition(self, old: BreakerState, new: BreakerState) -> None:
        self._metrics.transitions.inc(
            breaker=self.name, from_state=old.value, to_state=new.value
        )
        logger.info("breaker %s: %s -> %s", self.name, old, new)


class _TransitionListener(pybreaker.CircuitBreakerListener):
    def __init__(self, record: Callable[[BreakerState, BreakerState], None]) -> None:
        self._record = record

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if old_state is None or old_state.name == new_state.name:
            return
        self._record(BreakerState(old_state.name), BreakerState(new_state.name))

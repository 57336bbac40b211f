"""When each request of an open-loop load is due: a seeded arrival schedule.

An open-loop generator sends on a timetable fixed before the run, whatever the system
answers, so that a stalled system cannot slow the load down and hide its own stall.
The timetable is a list of offsets in seconds from the moment the load starts.

Two arrival processes are offered. Poisson arrivals have independent exponential
gaps, as requests from many independent clients do; the sum of several seeded Poisson
streams of rates r1, r2, ... is itself a Poisson stream of rate r1 + r2 + ..., which is
why each load-generator user can run its own stream. Uniform arrivals are exactly
1/rate apart, which makes schedules easy to reason about in tests.

The same rate, seed and process always give the same offsets, bit for bit: the schedule
is drawn from its own `random.Random(seed)` and nothing else.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from enum import StrEnum


class ArrivalProcess(StrEnum):
    POISSON = "poisson"
    UNIFORM = "uniform"


class ScheduleError(ValueError):
    """A schedule was asked for with a rate or duration it cannot have."""


def iter_arrival_offsets(
    rate_per_s: float,
    seed: int,
    *,
    process: ArrivalProcess = ArrivalProcess.POISSON,
) -> Iterator[float]:
    """Offsets in seconds from the start, ascending and without end.

    The form for runs without a fixed duration; `arrival_offsets` is its prefix.
    """
    _check_rate(rate_per_s)
    if process is ArrivalProcess.UNIFORM:
        # k / rate rather than a running sum, so that offsets carry no rounding drift
        return (index / rate_per_s for index in itertools.count())
    return _poisson_offsets(rate_per_s, random.Random(seed))


def arrival_offsets(
    rate_per_s: float,
    duration_s: float,
    seed: int,
    *,
    process: ArrivalProcess = ArrivalProcess.POISSON,
) -> list[float]:
    """Every offset in seconds that falls in `[0, duration_s)`, ascending."""
    if not math.isfinite(duration_s) or duration_s < 0:
        raise ScheduleError(
            f"duration_s must be a finite number >= 0, got {duration_s!r}"
        )
    offsets = iter_arrival_offsets(rate_per_s, seed, process=process)
    return list(itertools.takewhile(lambda offset: offset < duration_s, offsets))


def _poisson_offsets(rate_per_s: float, rng: random.Random) -> Iterator[float]:
    offset = 0.0
    while True:
        offset += rng.expovariate(rate_per_s)
        yield offset


def _check_rate(rate_per_s: float) -> None:
    if not math.isfinite(rate_per_s) or rate_per_s <= 0:
        raise ScheduleError(
            f"rate_per_s must be a finite number > 0, got {rate_per_s!r}"
        )

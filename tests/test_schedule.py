"""The arrival schedule: seeded, deterministic, and as fast as it says."""

from __future__ import annotations

import itertools
import statistics

import pytest

from bench.schedule import (
    ArrivalProcess,
    ScheduleError,
    arrival_offsets,
    iter_arrival_offsets,
)


@pytest.mark.parametrize("process", list(ArrivalProcess))
def test_same_seed_gives_the_same_schedule(process: ArrivalProcess) -> None:
    first = arrival_offsets(250.0, 20.0, seed=7, process=process)
    second = arrival_offsets(250.0, 20.0, seed=7, process=process)

    assert first == second
    assert len(first) > 0


def test_different_seeds_give_different_poisson_schedules() -> None:
    assert arrival_offsets(100.0, 5.0, seed=1) != arrival_offsets(100.0, 5.0, seed=2)


def test_poisson_mean_rate_is_the_asked_rate() -> None:
    rate_per_s, duration_s = 200.0, 500.0

    offsets = arrival_offsets(rate_per_s, duration_s, seed=3)

    # 100 000 arrivals: the count's standard deviation is about 0.3 % of it.
    assert len(offsets) == pytest.approx(rate_per_s * duration_s, rel=0.015)
    gaps = [later - earlier for earlier, later in itertools.pairwise(offsets)]
    assert statistics.fmean(gaps) == pytest.approx(1 / rate_per_s, rel=0.015)
    # Exponential gaps: the standard deviation equals the mean.
    assert statistics.stdev(gaps) == pytest.approx(1 / rate_per_s, rel=0.03)


def test_poisson_offsets_ascend_within_the_duration() -> None:
    offsets = arrival_offsets(1000.0, 3.0, seed=11)

    assert offsets == sorted(offsets)
    assert offsets[0] > 0
    assert offsets[-1] < 3.0


def test_uniform_offsets_are_exactly_one_over_rate_apart() -> None:
    offsets = arrival_offsets(40.0, 2.0, seed=99, process=ArrivalProcess.UNIFORM)

    assert offsets == [index / 40.0 for index in range(80)]


def test_uniform_schedule_ignores_the_seed() -> None:
    uniform = ArrivalProcess.UNIFORM
    assert arrival_offsets(30.0, 1.0, seed=1, process=uniform) == arrival_offsets(
        30.0, 1.0, seed=2, process=uniform
    )


@pytest.mark.parametrize("process", list(ArrivalProcess))
def test_unbounded_form_starts_with_the_bounded_schedule(
    process: ArrivalProcess,
) -> None:
    bounded = arrival_offsets(120.0, 10.0, seed=5, process=process)

    unbounded = iter_arrival_offsets(120.0, 5, process=process)
    prefix = list(itertools.islice(unbounded, len(bounded) + 1))

    assert prefix[: len(bounded)] == bounded
    assert prefix[-1] >= 10.0


def test_zero_duration_gives_an_empty_schedule() -> None:
    assert arrival_offsets(100.0, 0.0, seed=1) == []


@pytest.mark.parametrize("rate_per_s", [0.0, -1.0, float("inf"), float("nan")])
def test_rate_must_be_positive_and_finite(rate_per_s: float) -> None:
    with pytest.raises(ScheduleError, match="rate_per_s"):
        arrival_offsets(rate_per_s, 1.0, seed=1)


@pytest.mark.parametrize("duration_s", [-1.0, float("inf")])
def test_duration_must_be_finite_and_not_negative(duration_s: float) -> None:
    with pytest.raises(ScheduleError, match="duration_s"):
        arrival_offsets(10.0, duration_s, seed=1)

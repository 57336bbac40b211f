"""The analysis of one cell, on small hand-made raw files and real SQLite ledgers."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench.analysis import (
    RECOVERY_HOLD_S,
    CellPlan,
    CellStatus,
    CellSummary,
    FaultWindow,
    PlanError,
    latency_summary,
    per_second,
    summarise,
    summary_row,
    synthetic_cell,
    time_to_recover,
)
from bench.gates import parse_gates
from bench.records import (
    EVENT_COLUMNS,
    REQUEST_COLUMNS,
    SAMPLE_COLUMNS,
    SEQ_USER_BLOCK,
    EventKind,
    Outcome,
)
from bench.stack import Variant
from service_core.contract import Confirmation, StringReply, StringRequest
from service_core.ledger import GeneratorLedger, RequestorLedger

T0 = 1_700_000_000.0  # warm-up start
LOAD_START = T0 + 1.0
LOAD_END = LOAD_START + 10.0
RATE = 10.0

STATUS = {
    Outcome.BREAKER_OPEN: 503,
    Outcome.TIMEOUT: 504,
    Outcome.REFUSED: 0,
    Outcome.SERVER_ERROR: 500,
    Outcome.CLIENT_ERROR: 400,
    Outcome.DROPPED: 0,
}


class Cell:
    """Writes the raw files of one cell the way the harness and services would."""

    def __init__(self, root: Path, variant: Variant = Variant.QUEUE_JETSTREAM):
        self.path = root / "cell"
        self.variant = variant
        self.rows: list[tuple[object, ...]] = []
        self.events: list[tuple[object, ...]] = []
        self.samples: list[tuple[object, ...]] = []
        self.faults: list[FaultWindow] = []
        self.watch_loadgen = True
        self.loadgen_cpu_percent: dict[int, float] = {}  # by second of the load
        self.requestor = RequestorLedger(self.path / "ledgers" / "requestor.sqlite3")
        self.generators: dict[str, GeneratorLedger] = {}
        self._next_index: dict[int, int] = defaultdict(int)

    def generator(self, name: str = "generator-1") -> GeneratorLedger:
        if name not in self.generators:
            path = self.path / "ledgers" / f"{name}.sqlite3"
            self.generators[name] = GeneratorLedger(path)
        return self.generators[name]

    def send(
        self,
        due_s: float,
        outcome: Outcome = Outcome.ACCEPTED,
        *,
        latency_ms: float = 5.0,
        stored: bool | None = None,
        confirmed: bool = True,
        in_ledger: bool = True,
        with_id: bool = True,
        user: int = 0,
        seq: int | None = None,
        request_id: str | None = None,
        value: str | None = None,
        generator: str = "generator-1",
        stored_delay_s: float | None = None,
    ) -> str:
        """One scheduled request and what the ledgers hold for it; returns its id."""
        if seq is None:
            seq = user * SEQ_USER_BLOCK + self._next_index[user]
        self._next_index[user] += 1
        rid = request_id or f"r{seq}"
        if outcome is Outcome.DROPPED:
            self.rows.append((seq, f"{due_s:.6f}", "", "", "", 0, outcome, "late", ""))
            return rid

        done_s = due_s + latency_ms / 1000.0
        if outcome is Outcome.ACCEPTED:
            status = 202 if self.variant.is_queue else 201
        else:
            status = STATUS[outcome]
        self.rows.append(
            (
                seq,
                f"{due_s:.6f}",
                f"{due_s:.6f}",
                f"{done_s:.6f}",
                f"{latency_ms:.6f}",
                status,
                outcome.value,
                "" if outcome is Outcome.ACCEPTED else outcome.value,
                rid if with_id else "",
            )
        )
        if not in_ledger:
            return rid

        request = StringRequest(version=1, id=rid, length=64, requested_at=due_s)
        self.requestor.record_requested(request)
        if outcome is Outcome.ACCEPTED and self.variant.is_queue:
            self.requestor.record_accepted(rid, done_s - 0.0015)
        if outcome is not Outcome.ACCEPTED:
            self.requestor.record_failed(rid, outcome.value)
        if stored is None:
            stored = outcome is Outcome.ACCEPTED
        if stored:
            if stored_delay_s is None:
                stored_delay_s = 0.010 if self.variant.is_queue else -0.001
            self.store(
                rid,
                done_s + stored_delay_s,
                value=value,
                generator=generator,
                confirmed=confirmed,
            )
        return rid

    def store(
        self,
        rid: str,
        at_s: float,
        *,
        value: str | None = None,
        generator: str = "generator-1",
        confirmed: bool = True,
    ) -> None:
        """The generator makes the string, the requestor stores it, and confirms."""
        request = StringRequest(version=1, id=rid, length=64, requested_at=at_s)
        made = self.generator(generator).generate(
            [request],
            generator=generator,
            make_value=lambda length: value or f"{rid:x<{length}}",
            at_s=at_s - 0.001,
        )
        self.requestor.store_replies([made[0].reply], at_s)
        if confirmed:
            self.requestor.record_confirmed([rid], at_s + 0.001)
            confirmation = Confirmation(version=1, id=rid, stored_at=at_s)
            self.generator(generator).mark_confirmed([confirmation], at_s + 0.002)

    def steady(
        self,
        start_s: float,
        end_s: float,
        outcome: Outcome = Outcome.ACCEPTED,
        *,
        rate_per_s: float = RATE,
        latency_ms: float = 5.0,
    ) -> None:
        count = round((end_s - start_s) * rate_per_s)
        for index in range(count):
            self.send(start_s + index / rate_per_s, outcome, latency_ms=latency_ms)

    def fault(
        self, start_s: float, end_s: float | None, target: str = "generator-1"
    ) -> None:
        """A planned fault, injected and cleared on time."""
        self.faults.append(FaultWindow(start_s=start_s, end_s=end_s, target=target))
        self.event(EventKind.FAULT_PLANNED, start_s, target, "kill start", planned=1)
        self.event(EventKind.FAULT_INJECTED, start_s, target, "kill: SIGKILL")
        if end_s is not None:
            self.event(EventKind.FAULT_PLANNED, end_s, target, "kill end", planned=1)
            self.event(EventKind.FAULT_CLEARED, end_s, target, "kill: started")

    def event(
        self,
        kind: EventKind,
        at_s: float,
        target: str = "",
        detail: str = "",
        planned: int = 0,
    ) -> None:
        self.events.append((f"{at_s:.6f}", kind.value, target, detail, planned))

    def sample(
        self, at_s: float, source: str, metric: str, value: float, key: str = ""
    ) -> None:
        self.samples.append((f"{at_s:.6f}", source, metric, key, value))

    def write(self) -> Path:
        self.requestor.close()
        self.generator()  # every cell has at least one generator ledger
        for ledger in self.generators.values():
            ledger.close()
        if self.watch_loadgen:
            for second in range(int(LOAD_END - LOAD_START) + 1):
                percent = self.loadgen_cpu_percent.get(second, 40.0)
                self.sample(LOAD_START + second, "locust", "cpu_percent", percent)
        for name, columns, rows in (
            ("requests.csv", REQUEST_COLUMNS, self.rows),
            ("events.csv", EVENT_COLUMNS, self.events),
            ("samples.csv", SAMPLE_COLUMNS, self.samples),
        ):
            with (self.path / name).open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows(rows)
        return self.path

    def plan(self, **overrides: Any) -> CellPlan:
        fields: dict[str, Any] = {
            "scenario": "hand-made",
            "variant": self.variant,
            "warmup_start_s": T0,
            "load_start_s": LOAD_START,
            "load_end_s": LOAD_END,
            "drain_end_s": LOAD_END + 2.0,
            "offered_rate_per_s": RATE,
            "faults": tuple(self.faults),
        }
        fields.update(overrides)
        return CellPlan(**fields)

    def summarise(self, **overrides: Any) -> CellSummary:
        return summarise(self.write(), self.plan(**overrides))


def figures_of(summary: CellSummary) -> Any:
    assert summary.figures is not None, summary.reasons
    return summary.figures


def test_percentiles_are_observed_values_by_the_inverted_cdf() -> None:
    values = np.random.default_rng(1).permutation(np.arange(1, 1001, dtype=float))

    summary = latency_summary(values)

    assert summary.count == 1000
    assert (summary.p50_ms, summary.p90_ms, summary.p99_ms) == (500.0, 900.0, 990.0)
    assert (summary.p999_ms, summary.max_ms) == (999.0, 1000.0)
    assert latency_summary([3.0, 1.0, 2.0]).p50_ms == 2.0
    assert latency_summary([3.0, 1.0, 2.0]).p99_ms == 3.0


def test_percentiles_of_no_values_are_none_and_nan_is_left_out() -> None:
    assert latency_summary([]).p99_ms is None
    assert latency_summary([math.nan]).count == 0
    assert latency_summary([math.nan, 7.0]).max_ms == 7.0


def test_availability_per_phase_counts_accepted_over_sent(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_START + 4)
    for index in range(30):
        outcome = Outcome.TIMEOUT if index % 2 else Outcome.ACCEPTED
        latency = 1000.0 if index % 2 else 5.0
        cell.send(LOAD_START + 4 + index / RATE, outcome, latency_ms=latency)
    cell.steady(LOAD_START + 7, LOAD_END)
    cell.fault(LOAD_START + 4, LOAD_START + 7)

    summary = cell.summarise()

    phases = figures_of(summary).phases
    assert summary.status is CellStatus.OK, summary.reasons
    assert set(phases) == {"all", "before", "during", "after"}
    assert (phases["before"].sent, phases["before"].availability) == (40, 1.0)
    assert (phases["during"].sent, phases["during"].accepted) == (30, 15)
    assert phases["during"].availability == 0.5
    assert phases["during"].latency.p50_ms == 5.0
    assert phases["during"].latency.p99_ms == 1000.0
    assert phases["during"].latency_accepted.p99_ms == 5.0
    assert phases["during"].latency_by_outcome["timeout"].p50_ms == 1000.0
    assert phases["after"].availability == 1.0
    assert phases["all"].availability == 85 / 100
    assert phases["all"].outcomes["timeout"] == 15


def test_warmup_rows_count_in_no_phase_but_their_loss_counts(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.send(T0 + 0.2, Outcome.TIMEOUT)
    cell.send(T0 + 0.4, stored=False)  # accepted in the warm-up, never stored
    cell.steady(LOAD_START, LOAD_END)

    figures = figures_of(cell.summarise())

    assert figures.load.rows == 102
    assert figures.load.warmup_rows == 2
    assert figures.phases["all"].offered == 100
    assert figures.phases["steady"].availability == 1.0
    assert figures.ledger.silently_lost == 1


def test_scenario_without_faults_has_one_steady_phase(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)

    summary = cell.summarise()

    figures = figures_of(summary)
    assert set(figures.phases) == {"all", "steady"}
    assert figures.faults == ()
    assert figures.time_to_detect_s is None
    assert figures.time_to_recover_s is None
    assert figures.load.achieved_send_rate_per_s == RATE


def test_silently_lost_counts_accepted_ids_without_a_stored_row(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_START + 5)
    cell.send(LOAD_START + 5.0, stored=False)
    cell.send(LOAD_START + 5.1, stored=False)
    cell.send(LOAD_START + 5.2, Outcome.TIMEOUT)  # an error is not a loss
    cell.steady(LOAD_START + 6, LOAD_END)

    ledger = figures_of(cell.summarise()).ledger

    assert ledger.silently_lost == 2
    assert ledger.unconfirmed_accepted == 2
    assert ledger.stored == 50 + 40


def test_late_stored_counts_errors_whose_string_was_stored_anyway(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.send(LOAD_END - 0.05, Outcome.TIMEOUT, latency_ms=1000.0, stored=True)
    cell.send(LOAD_END - 0.04, Outcome.SERVER_ERROR, stored=False)

    ledger = figures_of(cell.summarise()).ledger

    assert ledger.late_stored == 1
    assert ledger.silently_lost == 0


def test_sync_201_without_a_stored_row_at_answer_time_is_counted(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path, Variant.SYNC_PLAIN)
    cell.steady(LOAD_START, LOAD_END)
    cell.send(LOAD_END - 0.05, stored=False)
    cell.send(LOAD_END - 0.04, stored_delay_s=0.5)  # stored after the 201

    ledger = figures_of(cell.summarise()).ledger

    assert ledger.accepted_without_row == 2
    assert ledger.silently_lost == 1


def test_queue_variant_has_no_accepted_without_row_figure(tmp_path: Path) -> None:
    cell = Cell(tmp_path, Variant.QUEUE_CORE)
    cell.steady(LOAD_START, LOAD_END)

    assert figures_of(cell.summarise()).ledger.accepted_without_row is None


def test_an_id_in_two_generator_ledgers_is_a_duplicate(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    rid = cell.send(LOAD_END - 0.05)
    request = StringRequest(version=1, id=rid, length=64, requested_at=LOAD_END)
    cell.generator("generator-2").generate(
        [request], generator="generator-2", make_value=lambda n: "b" * n, at_s=LOAD_END
    )

    ledger = figures_of(cell.summarise()).ledger

    assert ledger.duplicate_ids == 1
    assert ledger.duplicate_values == 0
    assert ledger.duplicates == 1
    assert ledger.generator_rows == {"generator-1": 101, "generator-2": 1}
    assert ledger.stored_untraced == 0


def test_one_value_given_to_two_ids_is_a_duplicate(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    same = "s" * 64
    cell.send(LOAD_END - 0.05, value=same)
    cell.send(LOAD_END - 0.04, value=same)
    cell.send(LOAD_END - 0.03, value="x")  # short values repeat by chance
    cell.send(LOAD_END - 0.02, value="x")

    ledger = figures_of(cell.summarise()).ledger

    assert ledger.duplicate_values == 1
    assert ledger.duplicate_ids == 0
    assert ledger.duplicates == 1


def test_duplicate_deliveries_absorbed_sums_deliveries_beyond_the_first(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    rid = cell.send(LOAD_END - 0.05)
    request = StringRequest(version=1, id=rid, length=64, requested_at=LOAD_END)
    made = cell.generator().generate(
        [request, request], generator="generator-1", make_value=str, at_s=LOAD_END
    )
    cell.requestor.store_replies([made[0].reply], LOAD_END + 0.1)

    ledger = figures_of(cell.summarise()).ledger

    assert ledger.generator_redeliveries == 2
    assert ledger.requestor_redeliveries == 1
    assert ledger.duplicate_deliveries_absorbed == 3
    assert ledger.duplicates == 0


def test_stored_value_no_generator_holds_is_untraced(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    rid = cell.send(LOAD_END - 0.05, stored=False)
    reply = StringReply(
        version=1, id=rid, value="z" * 64, generated_at=LOAD_END, generator="ghost"
    )
    cell.requestor.store_replies([reply], LOAD_END + 0.1)

    ledger = figures_of(cell.summarise()).ledger

    assert ledger.stored_untraced == 1
    assert ledger.silently_lost == 0


def test_end_to_end_latency_joins_generator_confirmations(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)

    ledger = figures_of(cell.summarise()).ledger

    # accepted at done - 1.5 ms, stored at done + 10 ms, confirmed 2 ms later
    assert ledger.accepted_to_stored.count == 100
    assert ledger.accepted_to_stored.p50_ms == pytest.approx(11.5, abs=0.01)
    assert ledger.accepted_to_confirmed.p99_ms == pytest.approx(13.5, abs=0.01)


def test_drain_time_runs_to_the_last_confirmation(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.store(cell.send(LOAD_END - 0.1, stored=False), LOAD_END + 1.5)

    figures = figures_of(cell.summarise())

    assert figures.drain_time_s == pytest.approx(1.502, abs=0.001)
    assert figures.ledger.unconfirmed_accepted == 0


def test_drain_time_is_none_while_an_accepted_request_is_unconfirmed(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.send(LOAD_END - 0.1, confirmed=False)

    figures = figures_of(cell.summarise())

    assert figures.ledger.unconfirmed_accepted == 1
    assert figures.drain_time_s is None


def test_peak_backlog_sums_streams_within_a_second(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.sample(LOAD_START + 1.1, "jetstream", "stream_messages", 30.0, "REQUESTS")
    cell.sample(LOAD_START + 1.2, "jetstream", "stream_messages", 12.0, "REPLIES")
    cell.sample(LOAD_START + 2.1, "jetstream", "stream_messages", 35.0, "REQUESTS")
    cell.sample(LOAD_START + 2.1, "jetstream", "pending", 20.0, "REQUESTS/gen")

    backlog = figures_of(cell.summarise()).backlog

    assert backlog.peak_stream_messages == 42.0
    assert backlog.peak_pending == 20.0
    assert backlog.peak_backlog == 42.0
    assert backlog.peak_ack_pending is None


def test_time_to_detect_is_the_first_error_after_the_fault_starts(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_START + 4)
    cell.send(LOAD_START + 4.1, Outcome.TIMEOUT, latency_ms=500.0)
    cell.send(LOAD_START + 4.3, Outcome.REFUSED, latency_ms=1.0)
    cell.steady(LOAD_START + 6, LOAD_END)
    cell.fault(LOAD_START + 4, LOAD_START + 6)

    figures = figures_of(cell.summarise())

    assert figures.faults[0].time_to_detect_s == pytest.approx(0.301, abs=1e-5)
    assert figures.time_to_detect_s == figures.faults[0].time_to_detect_s
    assert figures.time_to_recover_s == 0.0


def test_per_second_counts_outcomes_and_latency_with_empty_seconds() -> None:
    requests = pd.DataFrame(
        {
            "due_s": [T0 + 0.1, T0 + 0.5, T0 + 0.7, T0 + 2.2],
            "outcome": ["accepted", "timeout", "dropped", "accepted"],
            "latency_ms": [5.0, 1000.0, math.nan, 7.0],
        }
    )

    series = per_second(requests, start_s=T0, end_s=T0 + 3)

    assert list(series.index) == [int(T0), int(T0) + 1, int(T0) + 2]
    first, empty, last = (series.iloc[index] for index in range(3))
    assert (first["accepted"], first["timeout"], first["dropped"]) == (1, 1, 1)
    assert (first["sent"], first["availability"]) == (2, 0.5)
    assert (first["p50_ms"], first["p99_ms"]) == (5.0, 1000.0)
    assert empty["sent"] == 0
    assert math.isnan(empty["availability"])
    assert math.isnan(empty["p99_ms"])
    assert (last["p50_ms"], last["availability"]) == (7.0, 1.0)


def series_of(availability: list[float], p99_ms: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"sent": 10, "availability": availability, "p99_ms": p99_ms},
        index=pd.RangeIndex(100, 100 + len(availability), name="second"),
    )


def test_time_to_recover_waits_for_the_band_to_hold() -> None:
    series = series_of(
        [0.0, 0.5, 1.0, 0.95, 1.0, 1.0, 1.0, 1.0],
        [900, 400, 10, 10, 10, 10, 25, 10],
    )

    # the second at 103 is below the 1-point band, so the run starts at 104
    recovered = time_to_recover(
        series, fault_end_s=100.4, baseline_availability=1.0, baseline_p99_ms=5.0
    )

    assert RECOVERY_HOLD_S == 3
    assert recovered == pytest.approx(3.6)


def test_time_to_recover_is_zero_when_the_fault_never_showed() -> None:
    series = series_of([1.0] * 5, [5.0] * 5)

    recovered = time_to_recover(
        series, fault_end_s=100.4, baseline_availability=1.0, baseline_p99_ms=5.0
    )

    assert recovered == 0.0


def test_time_to_recover_is_none_when_the_band_never_holds() -> None:
    series = series_of([1.0, 1.0, 0.0, 1.0, 1.0, 0.0], [5.0] * 6)

    recovered = time_to_recover(
        series, fault_end_s=100.0, baseline_availability=1.0, baseline_p99_ms=5.0
    )

    assert recovered is None


def test_time_to_recover_uses_the_wider_of_factor_and_margin() -> None:
    slow_baseline = series_of([1.0] * 4, [190.0] * 4)
    fast_baseline = series_of([1.0] * 4, [26.0] * 4)

    assert time_to_recover(
        slow_baseline,
        fault_end_s=100.0,
        baseline_availability=1.0,
        baseline_p99_ms=100.0,
    ) == (0.0)
    assert (
        time_to_recover(
            fast_baseline,
            fault_end_s=100.0,
            baseline_availability=1.0,
            baseline_p99_ms=5.0,
        )
        is None
    )


def test_missing_seq_fails_conservation(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.send(LOAD_END - 0.05, user=1, seq=SEQ_USER_BLOCK + 0)
    cell.send(LOAD_END - 0.04, user=1, seq=SEQ_USER_BLOCK + 2)

    summary = cell.summarise()

    assert summary.status is CellStatus.HARNESS_ERROR
    assert not summary.conservation.ok
    assert any(
        f"1 seqs are missing from the schedule (e.g. {SEQ_USER_BLOCK + 1})" in problem
        for problem in summary.conservation.problems
    )


def test_rows_missing_at_the_end_are_caught_by_the_schedule_length(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)

    summary = cell.summarise(scheduled_requests=101)

    assert summary.status is CellStatus.HARNESS_ERROR
    assert "the schedule had 101 requests" in summary.reasons[0]


def test_duplicated_seq_fails_conservation(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.send(LOAD_END - 0.05, seq=5, request_id="again")

    summary = cell.summarise()

    assert summary.status is CellStatus.HARNESS_ERROR
    assert "1 rows repeat a seq (e.g. 5)" in summary.conservation.problems


def test_accepted_id_missing_from_the_ledger_fails_conservation(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    rid = cell.send(LOAD_END - 0.05, in_ledger=False)

    summary = cell.summarise()

    assert summary.status is CellStatus.HARNESS_ERROR
    assert any(
        problem.startswith("1 accepted rows carry a request_id the requestor ledger")
        and rid in problem
        for problem in summary.conservation.problems
    )
    assert figures_of(summary).ledger.silently_lost == 1


def test_accepted_row_without_an_id_fails_conservation(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.send(LOAD_END - 0.05, with_id=False)

    summary = cell.summarise()

    assert summary.status is CellStatus.HARNESS_ERROR
    assert any("accepted rows have no request_id" in p for p in summary.reasons)


def test_ledger_ids_the_client_never_got_are_counted_not_errors(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.send(LOAD_END - 0.05, Outcome.TIMEOUT, with_id=False, stored=True)
    cell.send(LOAD_END - 0.04, Outcome.REFUSED, with_id=False)

    summary = cell.summarise()

    assert summary.status is CellStatus.OK, summary.reasons
    assert figures_of(summary).ledger.unanswered_in_ledger == 2
    assert figures_of(summary).ledger.unanswered_stored == 1


def test_a_row_without_a_valid_outcome_fails_conservation(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.rows.append((99, f"{LOAD_END - 0.01:.6f}", "", "", "", 0, "ok", "", ""))
    cell.send(LOAD_END - 0.05, seq=100)

    summary = cell.summarise()

    assert summary.status is CellStatus.HARNESS_ERROR
    assert any(
        "1 rows have no valid outcome (e.g. seq 99)" in p for p in summary.reasons
    )


def test_a_fault_without_events_fails_conservation(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.faults.append(
        FaultWindow(start_s=LOAD_START + 4, end_s=LOAD_START + 6, target="nats")
    )

    summary = cell.summarise()

    assert summary.status is CellStatus.HARNESS_ERROR
    assert "has no fault_injected event" in summary.reasons[0]
    assert figures_of(summary).phases["during"].start_s == LOAD_START + 4


def test_an_empty_requests_file_is_a_harness_error(tmp_path: Path) -> None:
    summary = Cell(tmp_path).summarise()

    assert summary.status is CellStatus.HARNESS_ERROR
    assert summary.reasons == ("requests.csv holds no rows",)
    assert summary.honesty is not None
    assert not summary.honesty.valid


def test_two_faults_span_the_during_phase_and_are_timed_apart(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_START + 2)
    cell.send(LOAD_START + 2.0, Outcome.REFUSED, latency_ms=2.0)
    cell.steady(LOAD_START + 2.1, LOAD_START + 6)
    cell.send(LOAD_START + 6.0, Outcome.SERVER_ERROR, latency_ms=20.0)
    cell.steady(LOAD_START + 6.1, LOAD_END)
    cell.fault(LOAD_START + 2, LOAD_START + 3, target="generator-1")
    cell.fault(LOAD_START + 6, LOAD_START + 7, target="requestor")

    figures = figures_of(cell.summarise())

    during = figures.phases["during"]
    assert (during.start_s, during.end_s) == (LOAD_START + 2, LOAD_START + 7)
    first, second = figures.faults
    assert first.time_to_detect_s == pytest.approx(0.002, abs=1e-5)
    assert second.time_to_detect_s == pytest.approx(0.020, abs=1e-5)
    assert figures.time_to_detect_s == second.time_to_detect_s
    assert (first.time_to_recover_s, second.time_to_recover_s) == (0.0, 0.0)


def test_recovery_is_not_judged_across_the_next_fault(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.fault(LOAD_START + 2, LOAD_START + 3, target="generator-1")
    cell.fault(LOAD_START + 5, LOAD_START + 6, target="generator-1")

    first, second = figures_of(cell.summarise()).faults

    assert first.time_to_recover_s is None  # two seconds between the faults
    assert second.time_to_recover_s == 0.0


def test_a_missing_raw_file_is_a_harness_error_not_an_exception(
    tmp_path: Path,
) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    path = cell.write()
    (path / "samples.csv").unlink()

    summary = summarise(path, cell.plan())

    assert summary.status is CellStatus.HARNESS_ERROR
    assert summary.figures is None
    assert "samples.csv" in summary.reasons[0]


def test_dropped_above_one_percent_makes_the_cell_invalid(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END - 0.2)
    cell.send(LOAD_END - 0.2, Outcome.DROPPED)
    cell.send(LOAD_END - 0.1, Outcome.DROPPED)

    summary = cell.summarise()

    assert summary.status is CellStatus.INVALID
    assert summary.honesty is not None
    assert summary.honesty.dropped_fraction == 0.02
    assert "dropped 2 of 100 due requests" in summary.reasons[0]


def test_one_percent_dropped_is_still_valid(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END - 0.1)
    cell.send(LOAD_END - 0.1, Outcome.DROPPED)

    summary = cell.summarise()

    assert summary.status is CellStatus.OK, summary.reasons


def test_sustained_loadgen_cpu_makes_the_cell_invalid(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.loadgen_cpu_percent = {3: 95.0, 4: 90.0, 5: 99.0}

    summary = cell.summarise()

    assert summary.status is CellStatus.INVALID
    assert "for 3 consecutive seconds" in summary.reasons[0]


def test_two_seconds_of_high_loadgen_cpu_are_tolerated(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END)
    cell.loadgen_cpu_percent = {3: 95.0, 4: 95.0, 6: 95.0}

    summary = cell.summarise()

    assert summary.status is CellStatus.OK, summary.reasons
    assert figures_of(summary).load.loadgen_cpu_max_percent == 95.0


def test_an_unwatched_load_generator_makes_the_cell_invalid(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.watch_loadgen = False
    cell.steady(LOAD_START, LOAD_END)

    summary = cell.summarise()

    assert summary.status is CellStatus.INVALID
    assert "was not watched" in summary.reasons[0]


def test_a_slow_sender_makes_the_cell_invalid(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_END, rate_per_s=9.0)

    summary = cell.summarise()

    assert summary.status is CellStatus.INVALID
    assert "90.0% of the offered 10/s" in summary.reasons[0]


def test_a_failed_gate_makes_the_status_gate_failed(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_START + 4)
    cell.steady(LOAD_START + 4, LOAD_END, Outcome.BREAKER_OPEN, latency_ms=1.0)
    cell.fault(LOAD_START + 4, LOAD_START + 6)
    gates = parse_gates(
        [
            {
                "phase": "during",
                "metric": "availability",
                "op": ">=",
                "value": 0.9,
                "why": "the queue absorbs the fault",
            },
            {
                "phase": "during",
                "metric": "p99_ms",
                "outcome": "breaker_open",
                "op": "<",
                "value": 10,
                "why": "an open breaker fails fast",
            },
        ]
    )

    summary = cell.summarise(gates=tuple(gates))

    assert summary.status is CellStatus.GATE_FAILED
    assert [gate.passed for gate in summary.gates] == [False, True]
    assert summary.reasons == ("gate failed: availability during >= 0.9 (observed 0)",)
    assert figures_of(summary).time_to_recover_s is None


def test_summary_is_plain_json_without_nan(tmp_path: Path) -> None:
    cell = Cell(tmp_path)
    cell.steady(LOAD_START, LOAD_START + 4)
    cell.steady(LOAD_START + 4, LOAD_END, Outcome.REFUSED)
    cell.fault(LOAD_START + 4, None)

    document = cell.summarise().to_json()

    text = json.dumps(document, allow_nan=False)
    assert json.loads(text) == document
    assert document["status"] == "ok"
    assert document["variant"] == "queue-jetstream"
    assert document["figures"]["phases"]["after"]["availability"] is None
    assert document["figures"]["faults"][0]["actual_end_s"] is None
    row = summary_row(document)
    assert (row["offered"], row["refused"], row["availability_during"]) == (100, 60, 0)


def test_summary_row_of_a_skipped_cell_has_empty_figures() -> None:
    skipped = CellSummary.skipped(
        scenario="broker-kill", variant=Variant.SYNC_PLAIN, reason="no broker"
    )

    row = summary_row(skipped.to_json())

    assert (row["status"], row["reasons"], row["offered"]) == (
        "skipped",
        "no broker",
        None,
    )


def test_synthetic_cell_summarises_as_ok(tmp_path: Path) -> None:
    plan = synthetic_cell(tmp_path, 5000, variant=Variant.SYNC_BREAKER)

    summary = summarise(tmp_path, plan)

    figures = figures_of(summary)
    assert summary.status is CellStatus.OK, summary.reasons
    assert figures.load.rows == 5000
    assert figures.ledger.silently_lost == 0
    assert figures.ledger.accepted_without_row == 0
    assert figures.phases["during"].availability < figures.phases["before"].availability
    assert figures.faults[0].time_to_detect_s is not None


def test_plan_rejects_times_out_of_order() -> None:
    with pytest.raises(PlanError, match="load_start_s < load_end_s"):
        CellPlan(
            scenario="s",
            variant=Variant.SYNC_PLAIN,
            warmup_start_s=T0,
            load_start_s=LOAD_END,
            load_end_s=LOAD_START,
            drain_end_s=LOAD_END,
            offered_rate_per_s=RATE,
        )


def test_plan_rejects_a_fault_gate_in_a_scenario_without_faults() -> None:
    gates = parse_gates(
        [{"phase": "during", "metric": "sent", "op": ">", "value": 0, "why": "w"}]
    )

    with pytest.raises(ValueError, match="without faults has the phases steady"):
        CellPlan(
            scenario="s",
            variant=Variant.SYNC_PLAIN,
            warmup_start_s=T0,
            load_start_s=LOAD_START,
            load_end_s=LOAD_END,
            drain_end_s=LOAD_END,
            offered_rate_per_s=RATE,
            gates=tuple(gates),
        )

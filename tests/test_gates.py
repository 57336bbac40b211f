"""Gates: parsing the `[[gates]]` tables of scenarios and checking them on a cell."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench.analysis import (
    CellSummary,
    LatencySummary,
    summarise,
    synthetic_cell,
)
from bench.gates import (
    CELL_METRICS,
    METRICS,
    Gate,
    GateError,
    Op,
    Phase,
    evaluate,
    parse_gates,
)
from bench.records import Outcome
from bench.stack import Variant

EXAMPLE = [
    {
        "variants": ["queue-jetstream"],
        "phase": "during",
        "metric": "availability",
        "op": ">=",
        "value": 0.999,
        "why": "the queue absorbs a dead generator",
    },
    {
        "variants": ["sync-breaker"],
        "phase": "during",
        "metric": "p99_ms",
        "outcome": "breaker_open",
        "op": "<",
        "value": 10,
        "why": "an open breaker fails fast",
    },
    {
        "variants": ["queue-core"],
        "metric": "silently_lost",
        "op": ">",
        "value": 0,
        "expected_loss": True,
        "why": "core NATS is at most once: a dead generator loses what was published",
    },
]

SCENARIOS = Path(__file__).resolve().parent.parent / "bench" / "scenarios"


def gate(**fields: Any) -> dict[str, Any]:
    table: dict[str, Any] = {"metric": "sent", "op": ">", "value": 0, "why": "w"}
    table.update(fields)
    return table


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> CellSummary:
    """A sync-breaker cell whose during phase answered some requests breaker_open."""
    directory = tmp_path_factory.mktemp("cell")
    plan = synthetic_cell(
        directory, 3000, variant=Variant.SYNC_BREAKER, rate_per_s=200.0
    )
    cell = summarise(directory, plan)
    assert cell.figures is not None
    during = cell.figures.phases["during"]
    fast = LatencySummary(
        count=40, p50_ms=1.0, p90_ms=2.0, p99_ms=4.0, p999_ms=4.0, max_ms=4.0
    )
    with_breaker = dataclasses.replace(
        during,
        latency_by_outcome={**during.latency_by_outcome, "breaker_open": fast},
        outcomes={**during.outcomes, "breaker_open": 40},
    )
    figures = dataclasses.replace(
        cell.figures, phases={**cell.figures.phases, "during": with_breaker}
    )
    return dataclasses.replace(cell, figures=figures)


def test_parse_reads_every_key_of_the_example() -> None:
    availability, breaker, loss = parse_gates(EXAMPLE)

    assert availability == Gate(
        variants=(Variant.QUEUE_JETSTREAM,),
        phase=Phase.DURING,
        metric="availability",
        op=Op.GE,
        value=0.999,
        why="the queue absorbs a dead generator",
    )
    assert breaker.outcome is Outcome.BREAKER_OPEN
    assert (loss.phase, loss.expected_loss, loss.value) == (Phase.ALL, True, 0.0)


def test_gate_without_variants_applies_to_every_variant() -> None:
    (parsed,) = parse_gates([gate()])

    assert all(parsed.applies_to(variant) for variant in Variant)


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.stem)
def test_every_packaged_scenario_has_valid_gates(path: Path) -> None:
    tables = tomllib.loads(path.read_text()).get("gates", [])

    assert len(parse_gates(tables, source=path.name)) == len(tables)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (gate(phse="during"), "gates[0]: unknown key 'phse': expected one of"),
        (gate(op="=>"), "op: expected one of <, <=, >, >=, ==, got '=>'"),
        (gate(phase="middle"), "phase: expected one of before, during, after"),
        (gate(variants=["sync"]), "variants: expected one of sync-plain, "),
        (gate(variants=[]), "variants: expected a non-empty list, got []"),
        (gate(outcome="ok", metric="p99_ms"), "outcome: expected one of accepted"),
        (gate(value="high"), "value: expected a number, got 'high'"),
        (gate(value=True), "value: expected a number, got True"),
        (gate(why=""), "why: expected a non-empty string"),
        (gate(expected_loss="yes"), "expected_loss: expected true or false"),
        ({"metric": "sent", "op": ">", "why": "w"}, "missing key 'value'"),
        (gate(metric="count"), "metric count needs an outcome"),
        (gate(outcome="timeout"), "outcome applies to the metrics p50_ms"),
        (
            gate(metric="silently_lost", phase="during"),
            "silently_lost is a whole-cell figure: phase must be all, got during",
        ),
    ],
)
def test_parse_names_the_bad_key_and_the_accepted_values(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(GateError) as raised:
        parse_gates([table])

    assert message in str(raised.value)


def test_unknown_metric_error_lists_the_valid_names() -> None:
    with pytest.raises(GateError) as raised:
        parse_gates([gate(), gate(metric="p99")], source="steady.toml")

    message = str(raised.value)
    assert message.startswith("steady.toml: gates[1]: metric: expected one of")
    assert "got 'p99'" in message
    assert all(name in message for name in METRICS)


def test_evaluate_checks_only_the_gates_of_the_variant(summary: CellSummary) -> None:
    gates = parse_gates(
        [
            gate(variants=["queue-jetstream"], metric="accepted"),
            gate(variants=["sync-plain"], metric="accepted", op="<"),
        ]
    )

    results = evaluate(gates, summary, Variant.QUEUE_JETSTREAM)

    assert [result.metric for result in results] == ["accepted"]
    assert results[0].passed
    assert summary.figures is not None
    assert results[0].observed == summary.figures.phases["all"].accepted


def test_evaluate_reads_the_phase_figures(summary: CellSummary) -> None:
    gates = parse_gates(
        [
            gate(phase="during", metric="availability", op=">=", value=0.999),
            gate(phase="before", metric="availability", op=">=", value=0.99),
        ]
    )

    during, before = evaluate(gates, summary, Variant.SYNC_BREAKER)

    assert summary.figures is not None
    assert during.observed == summary.figures.phases["during"].availability
    assert not during.passed
    assert before.passed
    assert during.describe().startswith("availability during >= 0.999 (observed 0.")


def test_outcome_filter_takes_the_latency_of_those_responses_only(
    summary: CellSummary,
) -> None:
    gates = parse_gates(
        [
            gate(
                phase="during",
                metric="p99_ms",
                outcome="breaker_open",
                op="<",
                value=10,
            ),
            gate(phase="during", metric="p99_ms", op="<", value=10),
            gate(
                phase="during",
                metric="count",
                outcome="breaker_open",
                op="==",
                value=40,
            ),
        ]
    )

    breaker, everything, count = evaluate(gates, summary, Variant.SYNC_BREAKER)

    assert (breaker.observed, breaker.passed) == (4.0, True)
    assert breaker.outcome is Outcome.BREAKER_OPEN
    assert everything.observed == 1000.0  # the timeouts of the fault
    assert not everything.passed
    assert count.passed


def test_expected_loss_gate_passes_when_the_loss_is_observed(
    summary: CellSummary,
) -> None:
    assert summary.figures is not None
    lossy_ledger = dataclasses.replace(summary.figures.ledger, silently_lost=17)
    lossy = dataclasses.replace(
        summary, figures=dataclasses.replace(summary.figures, ledger=lossy_ledger)
    )
    gates = parse_gates([EXAMPLE[2]])

    (kept,) = evaluate(gates, summary, Variant.QUEUE_CORE)
    (lost,) = evaluate(gates, lossy, Variant.QUEUE_CORE)

    assert (kept.observed, kept.passed, kept.expected_loss) == (0, False, True)
    assert (lost.observed, lost.passed, lost.expected_loss) == (17, True, True)


def test_a_figure_the_cell_could_not_measure_fails_the_gate(
    summary: CellSummary,
) -> None:
    gates = parse_gates(
        [
            gate(phase="during", metric="p99_ms", outcome="refused", op="<", value=1),
            gate(metric="peak_backlog", op="<", value=100),
        ]
    )

    refused, backlog = evaluate(gates, summary, Variant.SYNC_BREAKER)

    assert (refused.observed, refused.passed) == (None, False)
    assert refused.detail == "no refused responses in the phase"
    assert (backlog.observed, backlog.passed) == (None, False)
    assert backlog.describe().endswith("(observed not measured)")


def test_a_phase_the_cell_does_not_have_is_an_error(summary: CellSummary) -> None:
    gates = parse_gates([gate(phase="steady", metric="availability")])

    with pytest.raises(GateError, match="has all, before, during, after"):
        evaluate(gates, summary, Variant.SYNC_PLAIN)


def test_every_cell_metric_can_be_observed(summary: CellSummary) -> None:
    gates = [Gate(metric=name, op=Op.GE, value=0, why="w") for name in CELL_METRICS]

    results = evaluate(gates, summary, Variant.SYNC_BREAKER)

    assert [result.metric for result in results] == list(CELL_METRICS)
    observed = {result.metric: result.observed for result in results}
    assert observed["duplicates"] == 0
    assert observed["accepted_without_row"] == 0
    assert observed["time_to_recover_s"] is not None
    assert observed["peak_backlog"] is None  # a sync variant has no stream

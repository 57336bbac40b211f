"""Gates: the steady-state hypotheses a scenario states, checked against one cell.

A scenario file lists its gates as `[[gates]]` tables; `parse_gates` turns them into
`Gate` values and refuses anything it does not understand, naming the key and the
accepted values. `evaluate` compares each gate that applies to a variant with the
figures of that variant's cell (`bench.analysis.CellSummary`).

Keys of a `[[gates]]` table:
- `metric` (required): a metric name from the lists below.
- `op` (required): one of `<`, `<=`, `>`, `>=`, `==`.
- `value` (required): a number.
- `why` (required): the hypothesis in words, shown next to the result.
- `variants`: variant names the gate applies to; every variant when left out.
- `phase`: `before`, `during`, `after` (scenarios with faults), `steady` (scenarios
  without), or `all` (the whole measured load, the default).
- `outcome`: an `Outcome` value; for latency metrics, the latency of only those
  responses; required by `count` and `share`.
- `expected_loss`: true when the gate asserts a loss that is the documented behaviour
  of the design (core NATS is at most once), so that a report shows it as expected
  rather than as a defect. It does not change how the gate passes.

Phase metrics, available in every phase (from `PhaseSummary`; rows are assigned to a
phase by their due time):
- `offered`, `sent`, `accepted`, `dropped`, `rejected`: request counts; `rejected` is
  every sent request that was not accepted.
- `availability`: accepted / sent.
- `p50_ms`, `p90_ms`, `p99_ms`, `p999_ms`, `max_ms`: latency from the due time over
  every answered send, or over the `outcome` given.
- `count`: requests of the `outcome` given.
- `share`: `count` / sent (for `dropped`: / offered).

Cell metrics, whole-cell figures, only with phase `all` (the loss figures count every
row of the cell, warm-up included: nothing lost goes uncounted):
- `silently_lost`, `late_stored`, `accepted_without_row`, `stored_after_drain`,
  `unanswered_in_ledger`, `unanswered_stored`, `unconfirmed_accepted`, `stored`,
  `confirmed`, `stored_untraced`: see `bench.analysis.LedgerFigures`.
- `duplicates` (= `duplicate_ids` + `duplicate_values`), `duplicate_ids`,
  `duplicate_values`, `duplicate_deliveries_absorbed`.
- `accepted_to_stored_p50_ms`, `accepted_to_stored_p99_ms`, `accepted_to_stored_max_ms`,
  `accepted_to_confirmed_p50_ms`, `accepted_to_confirmed_p99_ms`,
  `accepted_to_confirmed_max_ms`: end-to-end latency from the ledgers.
- `time_to_detect_s`, `time_to_recover_s`, `drain_time_s`, `peak_backlog`.
- `achieved_rate_fraction`, `loadgen_cpu_max_percent`, `send_lag_p99_ms`.

A figure the cell could not measure (no breaker_open responses in the phase, no
JetStream in the variant, a fault that never recovered) is observed as None, and a gate
on it fails: a hypothesis that could not be checked has not held.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from bench.records import Outcome
from bench.stack import Variant

if TYPE_CHECKING:
    from bench.analysis import CellFigures, CellSummary, LatencySummary, PhaseSummary


class GateError(ValueError):
    """A gate is malformed, or asks for a figure the cell does not have."""


class Phase(StrEnum):
    """A stretch of the measured load, cut at the actual fault times."""

    BEFORE = "before"  # load start to the first fault's start
    DURING = "during"  # first fault's start to the last fault's end
    AFTER = "after"  # last fault's end to load end
    STEADY = "steady"  # the whole load of a scenario without faults
    ALL = "all"  # the whole load, warm-up excluded


FAULT_PHASES = (Phase.BEFORE, Phase.DURING, Phase.AFTER)


class Op(StrEnum):
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    EQ = "=="


_COMPARE: dict[Op, Callable[[float, float], bool]] = {
    Op.LT: operator.lt,
    Op.LE: operator.le,
    Op.GT: operator.gt,
    Op.GE: operator.ge,
    Op.EQ: operator.eq,
}

Observed = float | int | None

_E = TypeVar("_E", bound=StrEnum)

_LATENCY: dict[str, Callable[[LatencySummary], Observed]] = {
    "p50_ms": lambda latency: latency.p50_ms,
    "p90_ms": lambda latency: latency.p90_ms,
    "p99_ms": lambda latency: latency.p99_ms,
    "p999_ms": lambda latency: latency.p999_ms,
    "max_ms": lambda latency: latency.max_ms,
}

_PHASE_COUNTS: dict[str, Callable[[PhaseSummary], Observed]] = {
    "offered": lambda phase: phase.offered,
    "sent": lambda phase: phase.sent,
    "accepted": lambda phase: phase.accepted,
    "dropped": lambda phase: phase.dropped,
    "rejected": lambda phase: phase.rejected,
    "availability": lambda phase: phase.availability,
}

_OUTCOME_METRICS = ("count", "share")

_CELL: dict[str, Callable[[CellFigures], Observed]] = {
    "silently_lost": lambda cell: cell.ledger.silently_lost,
    "late_stored": lambda cell: cell.ledger.late_stored,
    "accepted_without_row": lambda cell: cell.ledger.accepted_without_row,
    "stored_after_drain": lambda cell: cell.ledger.stored_after_drain,
    "unanswered_in_ledger": lambda cell: cell.ledger.unanswered_in_ledger,
    "unanswered_stored": lambda cell: cell.ledger.unanswered_stored,
    "unconfirmed_accepted": lambda cell: cell.ledger.unconfirmed_accepted,
    "stored": lambda cell: cell.ledger.stored,
    "confirmed": lambda cell: cell.ledger.confirmed,
    "stored_untraced": lambda cell: cell.ledger.stored_untraced,
    "duplicates": lambda cell: cell.ledger.duplicates,
    "duplicate_ids": lambda cell: cell.ledger.duplicate_ids,
    "duplicate_values": lambda cell: cell.ledger.duplicate_values,
    "duplicate_deliveries_absorbed": (
        lambda cell: cell.ledger.duplicate_deliveries_absorbed
    ),
    "accepted_to_stored_p50_ms": lambda cell: cell.ledger.accepted_to_stored.p50_ms,
    "accepted_to_stored_p99_ms": lambda cell: cell.ledger.accepted_to_stored.p99_ms,
    "accepted_to_stored_max_ms": lambda cell: cell.ledger.accepted_to_stored.max_ms,
    "accepted_to_confirmed_p50_ms": (
        lambda cell: cell.ledger.accepted_to_confirmed.p50_ms
    ),
    "accepted_to_confirmed_p99_ms": (
        lambda cell: cell.ledger.accepted_to_confirmed.p99_ms
    ),
    "accepted_to_confirmed_max_ms": (
        lambda cell: cell.ledger.accepted_to_confirmed.max_ms
    ),
    "time_to_detect_s": lambda cell: cell.time_to_detect_s,
    "time_to_recover_s": lambda cell: cell.time_to_recover_s,
    "drain_time_s": lambda cell: cell.drain_time_s,
    "peak_backlog": lambda cell: cell.backlog.peak_backlog,
    "achieved_rate_fraction": lambda cell: cell.load.achieved_rate_fraction,
    "loadgen_cpu_max_percent": lambda cell: cell.load.loadgen_cpu_max_percent,
    "send_lag_p99_ms": lambda cell: cell.load.send_lag_p99_ms,
}

PHASE_METRICS = (*_PHASE_COUNTS, *_LATENCY, *_OUTCOME_METRICS)
CELL_METRICS = tuple(_CELL)
METRICS = (*PHASE_METRICS, *CELL_METRICS)

_KEYS = ("variants", "phase", "metric", "outcome", "op", "value", "why")
_OPTIONAL_KEYS = ("expected_loss",)


@dataclass(frozen=True, kw_only=True)
class Gate:
    """One hypothesis: `metric` in `phase` compared by `op` with `value`."""

    metric: str
    op: Op
    value: float
    why: str
    variants: tuple[Variant, ...] = tuple(Variant)
    phase: Phase = Phase.ALL
    outcome: Outcome | None = None
    expected_loss: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise GateError(
                f"metric: expected one of {', '.join(METRICS)}, got {self.metric!r}"
            )
        if self.metric in CELL_METRICS and self.phase is not Phase.ALL:
            raise GateError(
                f"metric {self.metric} is a whole-cell figure: phase must be all, "
                f"got {self.phase.value}"
            )
        if self.outcome is not None and self.metric not in (
            *_LATENCY,
            *_OUTCOME_METRICS,
        ):
            raise GateError(
                f"outcome applies to the metrics "
                f"{', '.join((*_LATENCY, *_OUTCOME_METRICS))}; got it with "
                f"{self.metric}"
            )
        if self.outcome is None and self.metric in _OUTCOME_METRICS:
            raise GateError(f"metric {self.metric} needs an outcome")
        if not math.isfinite(self.value):
            raise GateError(f"value: expected a finite number, got {self.value!r}")

    def applies_to(self, variant: Variant) -> bool:
        return variant in self.variants

    def describe(self) -> str:
        """The gate as one line: `p99_ms[breaker_open] during < 10`."""
        metric = self.metric
        if self.outcome is not None:
            metric = f"{metric}[{self.outcome.value}]"
        return f"{metric} {self.phase.value} {self.op.value} {self.value:g}"


@dataclass(frozen=True, kw_only=True)
class GateResult:
    """A gate checked against one cell."""

    metric: str
    phase: Phase
    outcome: Outcome | None
    op: Op
    value: float
    observed: Observed
    passed: bool
    why: str
    expected_loss: bool
    detail: str | None = None  # why nothing could be observed, when so

    def describe(self) -> str:
        metric = self.metric
        if self.outcome is not None:
            metric = f"{metric}[{self.outcome.value}]"
        observed = "not measured" if self.observed is None else f"{self.observed:g}"
        return (
            f"{metric} {self.phase.value} {self.op.value} {self.value:g} "
            f"(observed {observed})"
        )


def parse_gates(raw: Iterable[Mapping[str, object]], *, source: str = "") -> list[Gate]:
    """The `[[gates]]` tables of a scenario as `Gate` values.

    `source` (a file name) prefixes error messages. Raises `GateError` naming the
    gate, the key and the values it accepts.
    """
    gates = []
    for index, table in enumerate(raw):
        where = f"{source}: gates[{index}]" if source else f"gates[{index}]"
        try:
            gates.append(_parse_gate(table))
        except GateError as exc:
            raise GateError(f"{where}: {exc}") from None
    return gates


def _parse_gate(table: Mapping[str, object]) -> Gate:
    if not isinstance(table, Mapping):
        raise GateError(f"expected a table, got {table!r}")
    unknown = sorted(set(table) - {*_KEYS, *_OPTIONAL_KEYS})
    if unknown:
        raise GateError(
            f"unknown key {unknown[0]!r}: expected one of "
            f"{', '.join((*_KEYS, *_OPTIONAL_KEYS))}"
        )
    for key in ("metric", "op", "value", "why"):
        if key not in table:
            raise GateError(f"missing key {key!r}")

    metric = _text(table, "metric")
    why = _text(table, "why")
    op = _choice(Op, table["op"], "op")
    value = table["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GateError(f"value: expected a number, got {value!r}")
    phase = _choice(Phase, table.get("phase", Phase.ALL.value), "phase")
    outcome_raw = table.get("outcome")
    outcome = None if outcome_raw is None else _choice(Outcome, outcome_raw, "outcome")
    expected_loss = table.get("expected_loss", False)
    if not isinstance(expected_loss, bool):
        raise GateError(f"expected_loss: expected true or false, got {expected_loss!r}")

    variants: tuple[Variant, ...] = tuple(Variant)
    if "variants" in table:
        names = table["variants"]
        if not isinstance(names, list | tuple) or not names:
            raise GateError(f"variants: expected a non-empty list, got {names!r}")
        variants = tuple(_choice(Variant, name, "variants") for name in names)

    return Gate(
        metric=metric,
        op=op,
        value=float(value),
        why=why,
        variants=variants,
        phase=phase,
        outcome=outcome,
        expected_loss=expected_loss,
    )


def _text(table: Mapping[str, object], key: str) -> str:
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise GateError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _choice(kind: type[_E], value: object, key: str) -> _E:
    choices = ", ".join(member.value for member in kind)
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise GateError(f"{key}: expected one of {choices}, got {value!r}")


def check_phases(gates: Iterable[Gate], *, has_faults: bool) -> None:
    """Refuse gates on phases a cell with (or without) faults does not have."""
    for gate in gates:
        if gate.phase is Phase.ALL:
            continue
        if has_faults and gate.phase is Phase.STEADY:
            raise GateError(
                f"gate {gate.describe()}: a scenario with faults has the phases "
                "before, during, after and all, not steady"
            )
        if not has_faults and gate.phase in FAULT_PHASES:
            raise GateError(
                f"gate {gate.describe()}: a scenario without faults has the phases "
                f"steady and all, not {gate.phase.value}"
            )


def evaluate(
    gates: Iterable[Gate], summary: CellSummary, variant: Variant
) -> list[GateResult]:
    """Check every gate that applies to `variant` against `summary`'s figures."""
    results = []
    for gate in gates:
        if not gate.applies_to(variant):
            continue
        observed, detail = _observe(gate, summary.figures)
        passed = observed is not None and _COMPARE[gate.op](observed, gate.value)
        results.append(
            GateResult(
                metric=gate.metric,
                phase=gate.phase,
                outcome=gate.outcome,
                op=gate.op,
                value=gate.value,
                observed=observed,
                passed=passed,
                why=gate.why,
                expected_loss=gate.expected_loss,
                detail=detail,
            )
        )
    return results


def _observe(gate: Gate, figures: CellFigures | None) -> tuple[Observed, str | None]:
    if figures is None:
        return None, "the cell has no figures: its raw files could not be read"

    if gate.metric in _CELL:
        observed = _CELL[gate.metric](figures)
        return observed, None if observed is not None else "not measured in this cell"

    phase = figures.phases.get(gate.phase.value)
    if phase is None:
        raise GateError(
            f"gate {gate.describe()}: the cell has no phase {gate.phase.value}; it "
            f"has {', '.join(figures.phases)}"
        )
    if gate.metric in _PHASE_COUNTS:
        observed = _PHASE_COUNTS[gate.metric](phase)
        return observed, None if observed is not None else "nothing sent in the phase"

    if gate.metric in _OUTCOME_METRICS:
        assert gate.outcome is not None
        count = phase.outcomes.get(gate.outcome.value, 0)
        if gate.metric == "count":
            return count, None
        base = phase.offered if gate.outcome is Outcome.DROPPED else phase.sent
        if base == 0:
            return None, "nothing sent in the phase"
        return count / base, None

    if gate.outcome is None:
        latency = phase.latency
    else:
        found = phase.latency_by_outcome.get(gate.outcome.value)
        if found is None:
            return None, f"no {gate.outcome.value} responses in the phase"
        latency = found
    observed = _LATENCY[gate.metric](latency)
    return observed, None if observed is not None else "no answered sends in the phase"

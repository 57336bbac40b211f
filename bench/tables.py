"""Plain-text tables for the terminal: one row per cell, one row per gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import CellResult


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [
            max(width, len(cell)) for width, cell in zip(widths, row, strict=True)
        ]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for cell, width in zip(cells, widths, strict=True):
            numeric = cell.replace(".", "", 1).replace("-", "", 1).isdigit()
            parts.append(cell.rjust(width) if numeric else cell.ljust(width))
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def summary_table(results: Sequence[CellResult]) -> str:
    from bench.analysis import summary_row

    headers = (
        "scenario",
        "variant",
        "status",
        "offered",
        "accepted",
        "rejected",
        "dropped",
        "rate/s",
        "avail during",
        "p99 ms",
        "lost",
        "dups",
        "recover s",
    )
    rows = []
    for result in results:
        row = summary_row(result.summary or {})
        rejected = sum(
            int(row.get(name) or 0)  # type: ignore[call-overload]
            for name in ("breaker_open", "timeout", "refused", "server_error")
        )
        during = row.get("availability_during")
        if during is None:
            during = row.get("availability_steady")
        offered, achieved = (
            row.get("offered_rate_per_s"),
            row.get("achieved_rate_per_s"),
        )
        rows.append(
            (
                result.scenario,
                result.variant.value,
                result.status.value,
                _number(row.get("offered")),
                _number(row.get("accepted")),
                str(rejected) if row.get("offered") is not None else "-",
                _number(row.get("dropped")),
                f"{_number(achieved)}/{_number(offered, 0)}",
                _percent(during),
                _number(row.get("p99_ms")),
                _number(row.get("silently_lost")),
                _number(row.get("duplicates")),
                _number(row.get("time_to_recover_s")),
            )
        )
    return render(headers, rows)


def gate_table(results: Sequence[CellResult]) -> str:
    headers = ("scenario", "variant", "gate", "observed", "result", "why")
    rows = []
    for result in results:
        for gate in (result.summary or {}).get("gates") or []:
            metric = gate["metric"]
            if gate.get("outcome"):
                metric = f"{metric}[{gate['outcome']}]"
            observed = gate.get("observed")
            verdict = "pass" if gate.get("passed") else "FAIL"
            if gate.get("expected_loss") and gate.get("passed"):
                verdict = "pass (expected loss)"
            rows.append(
                (
                    result.scenario,
                    result.variant.value,
                    f"{metric} {gate['phase']} {gate['op']} {gate['value']:g}",
                    "not measured" if observed is None else f"{observed:g}",
                    verdict,
                    gate.get("why", ""),
                )
            )
    if not rows:
        return "no gates were checked"
    return render(headers, rows)

"""`python -m bench`: run the matrix, list scenarios, report on a run, start a stack.

Exit codes of `run`: 0 when every gate held, 1 when a gate failed, 2 when the harness
itself failed (a cell it could not measure, or one whose load generator fell behind).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.scenario import PROFILES, ScenarioError, load_scenarios
from bench.stack import Variant

logger = logging.getLogger("bench")

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_HARNESS_FAILED = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.command(args)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_HARNESS_FAILED
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load and fault-injection harness comparing sync HTTP with a "
        "circuit breaker against NATS queues.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run scenarios x variants, check gates")
    run.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="default",
        help="cell lengths and rates (quick: every scenario in a few minutes)",
    )
    run.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this scenario (repeatable; default: all)",
    )
    run.add_argument(
        "--variant",
        action="append",
        default=[],
        choices=[variant.value for variant in Variant],
        help="run only this variant (repeatable; default: all four)",
    )
    run.add_argument("--seed", type=int, default=1, help="arrival schedule seed")
    run.add_argument(
        "--rate", type=float, default=None, help="requests per second for every cell"
    )
    run.add_argument(
        "--out", type=Path, default=None, help="run folder (default results/<UTC>)"
    )
    run.add_argument(
        "--scenario-dir", type=Path, default=None, help="read scenarios from here"
    )
    run.add_argument("--no-report", action="store_true", help="skip the report")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(command=_run)

    up = commands.add_parser(
        "up", help="start one variant's stack under load, to break by hand"
    )
    up.add_argument(
        "--variant", required=True, choices=[variant.value for variant in Variant]
    )
    up.add_argument(
        "--rate", type=float, default=100.0, help="requests per second (per user)"
    )
    up.add_argument(
        "--duration", type=float, default=None, help="seconds (default: until Ctrl-C)"
    )
    up.add_argument(
        "--restart-after",
        type=float,
        default=None,
        metavar="S",
        help="start a killed process again S seconds after its exit is seen",
    )
    up.add_argument("--web", action="store_true", help="with Locust's web UI")
    up.add_argument(
        "--out", type=Path, default=None, help="run folder (default results/up-<UTC>)"
    )
    up.add_argument("--generators", type=int, default=1, help="generator processes")
    up.add_argument("--seed", type=int, default=1, help="arrival schedule seed")
    up.add_argument(
        "--headless", action="store_true", help="plain status lines, no live screen"
    )
    up.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    up.set_defaults(command=_up)

    report = commands.add_parser("report", help="write the report of a run folder")
    report.add_argument("run_dir", type=Path, metavar="DIR", help="a run folder")
    report.set_defaults(command=_report)

    perf = commands.add_parser(
        "perf", help="time the report on a fabricated run of a million requests"
    )
    perf.add_argument(
        "--rows", type=int, default=1_000_000, help="request rows in the run"
    )
    perf.add_argument(
        "--keep", type=Path, default=None, help="build the run here and keep it"
    )
    perf.set_defaults(command=_perf)

    scenarios = commands.add_parser("scenarios", help="list scenarios")
    scenarios.add_argument("--scenario-dir", type=Path, default=None)
    scenarios.set_defaults(command=_scenarios)
    return parser


def _run(args: argparse.Namespace) -> int:
    from bench.analysis import CellStatus
    from bench.run import RunOptions, run_matrix

    available = load_scenarios(args.scenario_dir)
    unknown = [name for name in args.scenario if name not in available]
    if unknown:
        raise ScenarioError(
            f"unknown scenario {', '.join(unknown)}; expected one of "
            f"{', '.join(sorted(available))}"
        )
    scenarios = [available[name] for name in (args.scenario or sorted(available))]
    variants = [Variant(name) for name in args.variant] or list(Variant)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out or Path("results") / stamp
    options = RunOptions(
        scenarios=scenarios,
        variants=variants,
        profile=PROFILES[args.profile],
        seed=args.seed,
        out_dir=out_dir,
        rate_per_s=args.rate,
        argv=sys.argv,
    )
    print(f"run folder: {out_dir}", file=sys.stderr)
    started = time.monotonic()
    progress = _Progress()
    try:
        results = run_matrix(options, progress)
    except KeyboardInterrupt:
        progress.done()
        print(f"interrupted; what was collected is in {out_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    progress.done()
    wall_s = time.monotonic() - started

    from bench.tables import gate_table, summary_table

    print(summary_table(results))
    print(gate_table(results))
    print(f"wall time {wall_s:.1f} s; results in {out_dir}")
    if not args.no_report:
        _report_after_run(out_dir)

    statuses = {result.status for result in results}
    if statuses & {CellStatus.HARNESS_ERROR, CellStatus.INVALID}:
        return EXIT_HARNESS_FAILED
    if CellStatus.GATE_FAILED in statuses:
        return EXIT_GATE_FAILED
    return EXIT_OK


def _report_after_run(out_dir: Path) -> None:
    from bench.report import ReportError, write_report

    started = time.monotonic()
    try:
        path = write_report(out_dir)
    except ReportError as exc:
        print(f"the report could not be written: {exc}", file=sys.stderr)
        return
    print(f"report: {path} ({time.monotonic() - started:.1f} s)")


def _report(args: argparse.Namespace) -> int:
    from bench.report import ReportError, write_report

    started = time.monotonic()
    try:
        path = write_report(args.run_dir)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_HARNESS_FAILED
    print(f"report: {path} ({time.monotonic() - started:.1f} s)")
    return EXIT_OK


def _perf(args: argparse.Namespace) -> int:
    import tempfile

    from bench.report import perf_million

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        figures = perf_million(args.keep, rows=args.rows)
    else:
        with tempfile.TemporaryDirectory(prefix="coupling-perf-") as tmp:
            figures = perf_million(Path(tmp), rows=args.rows)
    for key, value in figures.items():
        print(f"{key}: {value}")
    return EXIT_OK if figures.get("within_limits") else EXIT_GATE_FAILED


def _up(args: argparse.Namespace) -> int:
    from bench.up import command

    return command(args)


def _scenarios(args: argparse.Namespace) -> int:
    for name, scenario in sorted(load_scenarios(args.scenario_dir).items()):
        faults = ", ".join(
            f"{step.action.value} {step.target} at {step.at_s:g} s"
            + (f" for {step.duration_s:g} s" if step.duration_s else "")
            for step in scenario.faults
        )
        print(f"{name}\n    {scenario.description}")
        print(
            f"    load {scenario.load.rate_per_s:g}/s for "
            f"{scenario.load.duration_s:g} s; faults: {faults or 'none'}; "
            f"gates: {len(scenario.gates)}"
        )
    return EXIT_OK


class _Progress:
    """One status line, rewritten in place on a terminal, printed every few seconds
    otherwise (so that CI logs stay short)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0
        self._width = 0

    def __call__(self, line: str, *, final: bool = False) -> None:
        if self.tty:
            padded = line.ljust(self._width)
            self._width = 0 if final else len(line)
            sys.stderr.write("\r" + padded + ("\n" if final else ""))
            sys.stderr.flush()
            return
        now = time.monotonic()
        if final or now - self._last_print >= 5:
            self._last_print = now
            print(line, file=sys.stderr)

    def done(self) -> None:
        if self.tty and self._width:
            sys.stderr.write("\n")

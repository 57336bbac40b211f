"""The report of a run folder: its figures, its HTML, and what it refuses to read.

The run folder is fabricated (`bench.report.fabricate_run`) with the exact layout and
columns `bench run` writes, real SQLite ledgers and summaries made by
`bench.analysis.summarise`. `build_run_folder` is the one place that makes it: once
the harness runs quickly enough, it can be replaced by a `bench run` of the quick
profile.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench import plots, report
from bench.records import SUPPORTED_RESULTS_SCHEMAS, Outcome
from bench.report import ReportError, fabricate_run, write_report
from bench.stack import Variant

SCENARIOS = ("steady", "generator-kill", "broker-kill")
INVALID_CELL = ("generator-kill", Variant.QUEUE_CORE)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OUTCOMES = frozenset(outcome.value for outcome in Outcome)


def build_run_folder(directory: Path) -> Path:
    """A small run: three scenarios x four variants, quick profile, one cell invalid.

    broker-kill is not run for the sync variants, so those two cells are skipped.
    """
    return fabricate_run(
        directory, scenarios=SCENARIOS, profile="quick", invalid=[INVALID_CELL]
    )


@pytest.fixture(scope="module")
def columns_drawn() -> dict[str, list[plots.Column]]:
    return {}


@pytest.fixture(scope="module")
def reported_run(
    tmp_path_factory: pytest.TempPathFactory,
    columns_drawn: dict[str, list[plots.Column]],
) -> Path:
    """The run folder with its report written; every timeline's columns recorded."""
    run_dir = build_run_folder(tmp_path_factory.mktemp("run"))
    original = plots.timeline_figure

    def recording(title: str, columns: Any, path: Path, **options: Any) -> Path:
        columns_drawn[path.stem] = list(columns)
        return original(title, columns, path, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "timeline_figure", recording)
        write_report(run_dir)
    return run_dir


def _summary(run_dir: Path, scenario: str, variant: Variant) -> dict[str, Any]:
    path = run_dir / scenario / variant.value / "summary.json"
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def _expected_pngs() -> dict[str, tuple[int, int]]:
    def pixels(size_in: tuple[float, float]) -> tuple[int, int]:
        return round(size_in[0] * plots.DPI), round(size_in[1] * plots.DPI)

    expected = {"matrix.png": pixels(plots.MATRIX_SIZE_IN)}
    for scenario in SCENARIOS:
        expected[f"timeline-{scenario}.png"] = pixels(plots.TIMELINE_SIZE_IN)
        expected[f"percentiles-{scenario}.png"] = pixels(plots.PERCENTILE_SIZE_IN)
    return expected


def test_report_draws_every_figure_as_a_readable_png_of_its_size(
    reported_run: Path,
) -> None:
    found = {path.name for path in (reported_run / "plots").glob("*.png")}
    assert found == set(_expected_pngs())
    for name, size in _expected_pngs().items():
        with Image.open(reported_run / "plots" / name) as image:
            image.load()
            assert image.format == "PNG"
            assert image.size == size, name


def test_html_embeds_every_figure_and_refers_to_nothing_outside(
    reported_run: Path,
) -> None:
    text = (reported_run / "report.html").read_text()

    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(embedded) == len(_expected_pngs())
    pngs = {(reported_run / "plots" / n).read_bytes() for n in _expected_pngs()}
    assert {base64.b64decode(data) for data in embedded} == pngs
    assert all(base64.b64decode(data).startswith(PNG_SIGNATURE) for data in embedded)
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    assert "<link" not in text
    assert "<script" not in text
    assert "http://" not in text
    assert "https://" not in text


def test_markdown_points_at_every_figure(reported_run: Path) -> None:
    text = (reported_run / "report.md").read_text()

    for name in _expected_pngs():
        assert f"](plots/{name})" in text


def test_summary_table_gate_table_and_manifest_are_in_the_report(
    reported_run: Path,
) -> None:
    text = (reported_run / "report.md").read_text()
    manifest = json.loads((reported_run / "manifest.json").read_text())

    assert "## Summary" in text
    assert "## Gates" in text
    assert f"| seed | {manifest['seed']} |" in text
    assert manifest["git"]["commit"] in text
    assert "consecutive" in text  # the breaker's counting, stated as a limit
    assert "Loopback only" in text


def test_unknown_schema_version_is_refused_naming_both_versions(
    tmp_path: Path,
) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))

    with pytest.raises(ReportError) as raised:
        write_report(tmp_path)

    message = str(raised.value)
    assert "99" in message
    for version in SUPPORTED_RESULTS_SCHEMAS:
        assert str(version) in message
    assert not (tmp_path / "report.html").exists()


def test_folder_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no manifest\.json"):
        write_report(tmp_path)


def test_scenario_without_a_fault_is_plotted_without_fault_marks(
    reported_run: Path, columns_drawn: dict[str, list[plots.Column]]
) -> None:
    columns = columns_drawn["timeline-steady"]

    assert [column.variant for column in columns] == list(Variant)
    for column in columns:
        assert column.timeline is not None
        assert column.timeline.fault_windows == ()
        assert not [m for m in column.timeline.marks if "fault" in m.kind.value]
    assert "No fault" in (reported_run / "report.md").read_text()


def test_skipped_variant_column_shows_the_skip_reason(
    reported_run: Path, columns_drawn: dict[str, list[plots.Column]]
) -> None:
    columns = {c.variant: c for c in columns_drawn["timeline-broker-kill"]}
    text = (reported_run / "report.md").read_text()

    for variant in (Variant.SYNC_PLAIN, Variant.SYNC_BREAKER):
        reason = _summary(reported_run, "broker-kill", variant)["reasons"][0]
        assert columns[variant].status == "skipped"
        assert columns[variant].timeline is None
        assert columns[variant].note == reason
        assert reason in text
    assert columns[Variant.QUEUE_JETSTREAM].timeline is not None


def test_invalid_cell_is_flagged_and_none_of_its_numbers_is_shown(
    reported_run: Path, columns_drawn: dict[str, list[plots.Column]]
) -> None:
    scenario, variant = INVALID_CELL
    assert _summary(reported_run, scenario, variant)["status"] == "invalid"
    text = (reported_run / "report.md").read_text()
    html = (reported_run / "report.html").read_text()

    row = next(
        line
        for line in text.splitlines()
        if line.startswith(f"| {scenario} | {variant.value} |")
    )
    assert "INVALID: not a result" in row
    assert "%" not in row
    assert "not judged: cell invalid" in text
    assert "1 cell is not a result" in text
    assert 'class="flag"' in html
    column = next(
        c for c in columns_drawn[f"timeline-{scenario}"] if c.variant is variant
    )
    assert column.flagged


def test_user_percentiles_are_the_analysis_percentiles(reported_run: Path) -> None:
    at_p99 = int(np.argmin(np.abs(report.PERCENTILE_QUANTILES - 0.99)))
    at_p50 = int(np.argmin(np.abs(report.PERCENTILE_QUANTILES - 0.5)))
    run = report.read_run(reported_run)

    for variant in Variant:
        cell = run.cell("generator-kill", variant)
        assert cell is not None
        if cell.flagged:
            continue
        series = report.read_series(cell)
        latency = (cell.phase("all") or {})["latency"]
        assert series.user_curve is not None
        assert series.user_curve.count == latency["count"]
        assert series.user_curve.values_ms[at_p99] == latency["p99_ms"]
        assert series.user_curve.values_ms[at_p50] == latency["p50_ms"]
        assert series.user_curve.max_ms == latency["max_ms"]


def test_timeline_counts_every_request_row_once(reported_run: Path) -> None:
    run = report.read_run(reported_run)
    cell = run.cell("generator-kill", Variant.QUEUE_JETSTREAM)
    assert cell is not None
    series = report.read_series(cell)
    figures = cell.figures or {}

    outcomes = [column for column in series.timeline.user if column in OUTCOMES]
    assert (
        int(series.timeline.user[outcomes].to_numpy().sum())
        == (figures["load"]["rows"])
    )
    stored = int(series.timeline.completions["stored"].sum())
    assert stored == figures["ledger"]["stored"]
    assert series.timeline.backlog is not None
    assert series.timeline.backlog["stream_messages"].max() > 0


def test_cell_with_unreadable_raw_files_is_reported_as_not_a_result(
    tmp_path: Path,
) -> None:
    run_dir = fabricate_run(
        tmp_path / "run", scenarios=("steady",), variants=(Variant.QUEUE_CORE,)
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["cells"][0]["status"] = "harness_error"
    summary["cells"][0]["reason"] = "requests.csv went missing"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "steady" / "queue-core" / "requests.csv").unlink()

    write_report(run_dir)

    text = (run_dir / "report.md").read_text()
    assert "HARNESS_ERROR: not a result" in text
    assert "requests.csv went missing" in text
    assert (run_dir / "plots" / "timeline-steady.png").is_file()


def test_perf_helper_measures_time_and_memory_of_the_report(tmp_path: Path) -> None:
    measured = report.perf_million(tmp_path, rows=2_000)

    assert measured["rows"] == 2_000
    assert measured["report_s"] > 0
    assert measured["peak_rss_bytes"] > 0
    assert measured["within_limits"] is True
    assert Path(measured["report"]).is_file()

"""`python -m bench run` end to end: real stacks, real Locust, real files."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from PIL import Image

from bench import plots
from bench.records import EVENT_COLUMNS, REQUEST_COLUMNS, SAMPLE_COLUMNS

FAILING_SCENARIOS = Path(__file__).parent / "scenarios_failing"
RUN_TIMEOUT_S = 120


@dataclass
class Finished:
    returncode: int
    out_dir: Path
    output: str
    children: set[int]


def run_bench(args: list[str], out_dir: Path) -> Finished:
    """Run the harness, noting every process it starts while it runs."""
    command = [sys.executable, "-m", "bench", "run", "--out", str(out_dir), *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    children = _watch_children(process)
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    return Finished(process.returncode, out_dir, output, children)


def _watch_children(process: subprocess.Popen[str]) -> set[int]:
    seen: set[int] = set()
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        try:
            seen.update(child.pid for child in parent.children(recursive=True))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    return seen


def still_running(pids: set[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(scope="module")
def generator_kill_run(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    out_dir = tmp_path_factory.mktemp("bench") / "run"
    return run_bench(
        [
            "--profile",
            "quick",
            "--scenario",
            "generator-kill",
            "--variant",
            "sync-breaker",
            "--variant",
            "queue-jetstream",
        ],
        out_dir,
    )


def cell_summary(run: Finished, variant: str) -> dict[str, object]:
    path = run.out_dir / "generator-kill" / variant / "summary.json"
    document: dict[str, object] = json.loads(path.read_text())
    return document


def gate(summary: dict[str, object], metric: str) -> dict[str, object]:
    gates = summary["gates"]
    assert isinstance(gates, list)
    matching = [g for g in gates if g["metric"] == metric]
    assert matching, f"no {metric} gate in {[g['metric'] for g in gates]}"
    found: dict[str, object] = matching[0]
    return found


def test_quick_run_writes_manifest_summaries_and_raw_files(
    generator_kill_run: Finished,
) -> None:
    run = generator_kill_run
    assert run.returncode in (0, 1), run.output

    manifest = json.loads((run.out_dir / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["profile"] == "quick"
    assert manifest["complete"] is True
    assert manifest["versions"]["nats-server"]
    assert manifest["machine"]["cpu_count"] >= 1
    assert [s["name"] for s in manifest["scenarios"]] == ["generator-kill"]

    summary = json.loads((run.out_dir / "summary.json").read_text())
    assert [cell["variant"] for cell in summary["cells"]] == [
        "sync-breaker",
        "queue-jetstream",
    ]
    with (run.out_dir / "summary.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2

    for variant in ("sync-breaker", "queue-jetstream"):
        cell = run.out_dir / "generator-kill" / variant
        for name, columns in (
            ("requests.csv", REQUEST_COLUMNS),
            ("events.csv", EVENT_COLUMNS),
            ("samples.csv", SAMPLE_COLUMNS),
        ):
            with (cell / name).open() as handle:
                assert tuple(next(csv.reader(handle))) == columns, name
        assert (cell / "ledgers" / "requestor.sqlite3").is_file()
        assert (cell / "ledgers" / "generator-1.sqlite3").is_file()
        assert (cell / "logs" / "requestor.log").is_file()


def test_quick_run_cells_conserve_every_request(generator_kill_run: Finished) -> None:
    for variant in ("sync-breaker", "queue-jetstream"):
        summary = cell_summary(generator_kill_run, variant)
        assert summary["status"] in ("ok", "gate_failed"), summary["reasons"]
        conservation = summary["conservation"]
        assert isinstance(conservation, dict)
        assert conservation["ok"] is True, conservation["problems"]

        with (
            generator_kill_run.out_dir / "generator-kill" / variant / "requests.csv"
        ).open() as handle:
            rows = list(csv.DictReader(handle))
        figures = summary["figures"]
        assert isinstance(figures, dict)
        assert figures["load"]["rows"] == len(rows)
        assert len({row["seq"] for row in rows}) == len(rows)


def test_quick_run_gates_show_the_two_designs(generator_kill_run: Finished) -> None:
    jetstream = cell_summary(generator_kill_run, "queue-jetstream")
    assert gate(jetstream, "silently_lost")["observed"] == 0
    assert gate(jetstream, "availability")["passed"] is True

    breaker = cell_summary(generator_kill_run, "sync-breaker")
    assert gate(breaker, "accepted_without_row")["observed"] == 0
    during = gate(breaker, "availability")
    assert during["phase"] == "during"
    assert during["passed"] is True
    breaker_open = gate(breaker, "p99_ms")
    assert breaker_open["outcome"] == "breaker_open"
    assert isinstance(breaker_open["observed"], float)


def test_quick_run_ends_with_a_report_drawn_from_its_raw_files(
    generator_kill_run: Finished,
) -> None:
    out_dir = generator_kill_run.out_dir
    html = (out_dir / "report.html").read_text()
    expected = {
        "timeline-generator-kill.png": plots.TIMELINE_SIZE_IN,
        "percentiles-generator-kill.png": plots.PERCENTILE_SIZE_IN,
        "matrix.png": plots.MATRIX_SIZE_IN,
    }
    for name, (width_in, height_in) in expected.items():
        with Image.open(out_dir / "plots" / name) as image:
            image.verify()
        with Image.open(out_dir / "plots" / name) as image:
            assert image.size == (
                round(width_in * plots.DPI),
                round(height_in * plots.DPI),
            ), name
    assert html.count("data:image/png;base64,") >= len(expected)
    assert "sync-breaker" in html
    assert "queue-jetstream" in html
    assert "report:" in generator_kill_run.output


def test_quick_run_leaves_no_process_running(generator_kill_run: Finished) -> None:
    # Locust, nats-server and the services of both cells were seen while it ran.
    assert len(generator_kill_run.children) >= 4
    assert still_running(generator_kill_run.children) == []


def test_a_failed_gate_exits_with_code_1(tmp_path: Path) -> None:
    run = run_bench(
        [
            "--scenario-dir",
            str(FAILING_SCENARIOS),
            "--variant",
            "sync-plain",
            "--no-report",
        ],
        tmp_path / "run",
    )
    assert run.returncode == 1, run.output
    assert "FAIL" in run.output
    summary = json.loads(
        (tmp_path / "run" / "impossible" / "sync-plain" / "summary.json").read_text()
    )
    assert summary["status"] == "gate_failed"
    assert still_running(run.children) == []


def test_an_interrupted_run_stops_everything_and_keeps_what_it_collected(
    tmp_path: Path,
) -> None:
    out_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "--profile",
        "quick",
        "--scenario",
        "steady",
        "--variant",
        "queue-jetstream",
        "--out",
        str(out_dir),
        "--no-report",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    requests = out_dir / "steady" / "queue-jetstream" / "requests.csv"
    deadline = time.monotonic() + 30
    seen: set[int] = set()
    while time.monotonic() < deadline:
        seen.update(c.pid for c in psutil.Process(process.pid).children(recursive=True))
        if requests.exists() and requests.stat().st_size > 200 and len(seen) >= 4:
            break
        time.sleep(0.1)
    assert requests.exists(), "the load never started"

    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)

    assert process.returncode == 130, output
    assert still_running(seen) == []
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["complete"] is False
    with requests.open() as handle:
        assert len(list(csv.DictReader(handle))) > 0
    assert (out_dir / "steady" / "queue-jetstream" / "events.csv").is_file()

"""`python -m bench up` end to end: real processes on loopback, broken by hand.

Each session is started as a subprocess, exactly as a user would start it; the test
finds the processes through `state.json`, kills the generator by its PID the way a
user would (`kill -9`), and reads the run folder once the command has exited. The
two kill sessions (sync-breaker and queue-jetstream) run side by side to keep the
file short.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.records import REQUEST_COLUMNS, EventKind, Outcome
from bench.scenario import FaultAction
from bench.up import ManualFaults, RequestTail

REPO = Path(__file__).resolve().parent.parent
RATE_PER_S = 50
DURATION_S = 14
RESTART_AFTER_S = 2.0
KILL_AT_S = 4.0
NOTICE_LIMIT_S = 1.0
STATE_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 90.0
SIGINT_AFTER_S = 2.0
KILL_VARIANTS = ("sync-breaker", "queue-jetstream")


@dataclass(frozen=True)
class Session:
    variant: str
    out_dir: Path
    returncode: int
    output: str
    killed_pid: int
    killed_at_s: float

    @property
    def cell(self) -> Path:
        return self.out_dir / "manual" / self.variant

    def state(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.out_dir / "state.json").read_text())
        return document

    def summary(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.cell / "summary.json").read_text())
        return document

    def events(self) -> list[dict[str, str]]:
        with (self.cell / "events.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))


def _launch(variant: str, out_dir: Path, *flags: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "bench", "up", "--variant", variant]
    argv += ["--rate", str(RATE_PER_S), "--headless", "--out", str(out_dir), *flags]
    with out_dir.with_suffix(".log").open("wb") as log:
        return subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _read_state(out_dir: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads((out_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return document


def _wait_for_state(
    out_dir: Path,
    process: subprocess.Popen[bytes],
    ready: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    deadline = time.monotonic() + STATE_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _read_state(out_dir)
        if state is not None and ready(state):
            return state
        if process.poll() is not None:
            break
        time.sleep(0.05)
    log = out_dir.with_suffix(".log").read_text(errors="replace")
    raise AssertionError(f"{out_dir}/state.json never got ready; output:\n{log}")


def _loading(state: dict[str, Any]) -> bool:
    return state["phase"] == "running" and state["load_start_s"] is not None


def _pid_of(state: dict[str, Any], name: str) -> int:
    pids = [entry["pid"] for entry in state["processes"] if entry["name"] == name]
    assert pids, f"no process {name} in {state['processes']}"
    pid: int | None = pids[0]
    assert pid is not None, f"{name} has no PID yet"
    return pid


def _every_pid(state: dict[str, Any]) -> set[int]:
    pids = {entry["pid"] for entry in state["pids_seen"]}
    pids |= {entry["pid"] for entry in state["processes"] if entry["pid"]}
    if state["load"]["pid"]:
        pids.add(state["load"]["pid"])
    return pids


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_exit(process: subprocess.Popen[bytes], out_dir: Path) -> int:
    try:
        return process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log = out_dir.with_suffix(".log").read_text(errors="replace")
        raise AssertionError(f"bench up did not exit; output:\n{log}") from None


def _clean_up(process: subprocess.Popen[bytes], out_dir: Path) -> None:
    """After a failed test: stop the session the way a user would, then make sure
    that nothing it started is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    state = _read_state(out_dir)
    for pid in _every_pid(state) if state else set():
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def killed_sessions(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Session]]:
    """Both variants at once: up for DURATION_S, generator-1 SIGKILLed KILL_AT_S into
    the load, started again RESTART_AFTER_S after its exit is seen."""
    root = tmp_path_factory.mktemp("up")
    flags = ("--duration", str(DURATION_S), "--restart-after", str(RESTART_AFTER_S))
    folders = {variant: root / variant for variant in KILL_VARIANTS}
    processes = {
        variant: _launch(variant, folders[variant], *flags) for variant in KILL_VARIANTS
    }
    try:
        starts = {
            variant: _wait_for_state(folders[variant], processes[variant], _loading)[
                "load_start_s"
            ]
            for variant in KILL_VARIANTS
        }
        kills: dict[str, tuple[int, float]] = {}
        for variant in sorted(KILL_VARIANTS, key=starts.__getitem__):
            time.sleep(max(0.0, starts[variant] + KILL_AT_S - time.time()))
            pid = _pid_of(_read_state(folders[variant]) or {}, "generator-1")
            os.kill(pid, signal.SIGKILL)
            kills[variant] = (pid, time.time())
        sessions = {}
        for variant in KILL_VARIANTS:
            code = _wait_for_exit(processes[variant], folders[variant])
            sessions[variant] = Session(
                variant=variant,
                out_dir=folders[variant],
                returncode=code,
                output=folders[variant].with_suffix(".log").read_text(),
                killed_pid=kills[variant][0],
                killed_at_s=kills[variant][1],
            )
        yield sessions
    finally:
        for variant in KILL_VARIANTS:
            _clean_up(processes[variant], folders[variant])


@pytest.fixture(params=KILL_VARIANTS)
def session(
    request: pytest.FixtureRequest, killed_sessions: dict[str, Session]
) -> Session:
    return killed_sessions[request.param]


def test_up_ends_by_itself_after_its_duration_with_exit_code_0(
    session: Session,
) -> None:
    assert session.returncode == 0, session.output
    assert f"stopping: --duration {DURATION_S}" in session.output
    # Headless: plain status lines, no terminal control sequences.
    assert "\x1b[" not in session.output
    assert sum(line.startswith("running") for line in session.output.splitlines()) >= (
        DURATION_S - 2
    )


def test_generator_kill_is_an_event_within_a_second_and_restarts_after_the_delay(
    session: Session,
) -> None:
    events = [row for row in session.events() if row["target"] == "generator-1"]
    exits = [
        row
        for row in events
        if row["kind"] == EventKind.PROCESS_EXIT
        and f"PID {session.killed_pid} " in row["detail"]
    ]
    assert len(exits) == 1, events
    exit_at_s = float(exits[0]["at_s"])
    assert 0 <= exit_at_s - session.killed_at_s <= NOTICE_LIMIT_S

    starts = [
        float(row["at_s"])
        for row in events
        if row["kind"] == EventKind.PROCESS_START and float(row["at_s"]) > exit_at_s
    ]
    assert len(starts) == 1, events
    assert RESTART_AFTER_S <= starts[0] - exit_at_s <= RESTART_AFTER_S + 1.0
    cleared = [row for row in events if row["kind"] == EventKind.FAULT_CLEARED]
    assert len(cleared) == 1, events
    assert "healthy" in cleared[0]["detail"]
    assert float(cleared[0]["at_s"]) > starts[0]


def test_cell_plan_carries_the_manual_kill_as_its_fault_window(
    session: Session,
) -> None:
    faults = session.summary()["figures"]["faults"]
    assert len(faults) == 1, faults
    (fault,) = faults
    assert (fault["target"], fault["action"]) == ("generator-1", FaultAction.KILL)
    assert 0 <= fault["actual_start_s"] - session.killed_at_s <= NOTICE_LIMIT_S
    assert fault["actual_end_s"] - fault["actual_start_s"] >= RESTART_AFTER_S

    manifest = json.loads((session.out_dir / "manifest.json").read_text())
    assert manifest["profile"] == "manual"
    assert manifest["complete"] is True
    (described,) = manifest["scenarios"]
    assert described["name"] == "manual"
    assert [(f["action"], f["target"]) for f in described["faults"]] == [
        ("kill", "generator-1")
    ]
    assert abs(described["faults"][0]["at_s"] - KILL_AT_S) <= NOTICE_LIMIT_S


def test_summary_counts_the_outage_and_the_recovery(session: Session) -> None:
    summary = session.summary()
    phases = summary["figures"]["phases"]
    # Two sessions side by side on a small machine can make Locust miss a few due
    # times (status invalid); the records must agree with each other all the same.
    assert summary["conservation"]["ok"], summary["conservation"]["problems"]
    assert phases["after"]["accepted"] > 0
    if session.variant == "sync-breaker":
        during = phases["during"]
        assert during["offered"] - during["accepted"] > 0
    else:
        # The queue takes the requests while no generator runs: the outage shows as
        # messages held in the stream, not as errors.
        assert summary["figures"]["backlog"]["peak_backlog"] > 0
        assert phases["during"]["accepted"] > 0


def test_run_folder_is_complete_like_a_bench_run_folder(session: Session) -> None:
    top = {"manifest.json", "summary.json", "summary.csv", "state.json"}
    assert top <= {path.name for path in session.out_dir.iterdir()}
    cell_files = {"requests.csv", "events.csv", "samples.csv", "summary.json"}
    assert cell_files <= {path.name for path in session.cell.iterdir()}
    assert (session.cell / "ledgers" / "requestor.sqlite3").is_file()
    assert (session.cell / "logs" / "generator-1.log").is_file()
    run_summary = json.loads((session.out_dir / "summary.json").read_text())
    assert [cell["scenario"] for cell in run_summary["cells"]] == ["manual"]


def test_report_draws_the_timeline_of_the_manual_scenario(session: Session) -> None:
    if importlib.util.find_spec("bench.report") is None:
        pytest.skip("bench.report is not in this tree yet: no report to check")
    timeline = session.out_dir / "plots" / "timeline-manual.png"
    assert timeline.is_file(), session.output
    assert timeline.stat().st_size > 0


def test_no_process_outlives_the_session(session: Session) -> None:
    state = session.state()
    assert state["phase"] == "finished"
    pids = _every_pid(state)
    assert session.killed_pid in pids
    assert [pid for pid in pids if _running(pid)] == []


def test_sigint_stops_every_process_and_still_writes_the_run_folder(
    tmp_path: Path,
) -> None:
    out_dir = tmp_path / "interrupted"
    process = _launch("sync-breaker", out_dir)
    try:
        state = _wait_for_state(out_dir, process, _loading)
        assert state["harness_pid"] == process.pid
        time.sleep(max(0.0, state["load_start_s"] + SIGINT_AFTER_S - time.time()))
        process.send_signal(signal.SIGINT)
        code = _wait_for_exit(process, out_dir)
    finally:
        _clean_up(process, out_dir)

    output = out_dir.with_suffix(".log").read_text()
    assert code == 0, output
    assert "stopping: SIGINT" in output
    final = _read_state(out_dir)
    assert final is not None
    assert final["phase"] == "finished"
    assert [pid for pid in _every_pid(final) if _running(pid)] == []
    cell = out_dir / "manual" / "sync-breaker"
    for name in ("requests.csv", "events.csv", "samples.csv", "summary.json"):
        assert (cell / name).is_file(), name
    for name in ("manifest.json", "summary.json", "summary.csv"):
        assert (out_dir / name).is_file(), name
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["figures"]["phases"]["all"]["accepted"] > 0
    assert summary["figures"]["faults"] == []


# The pieces, without processes


def _row(seq: int, due_s: float, outcome: Outcome, latency_ms: float) -> str:
    values = [seq, due_s, due_s, due_s, latency_ms, 201, outcome.value, "", f"id-{seq}"]
    return ",".join(str(value) for value in values) + "\n"


def test_request_tail_reads_on_from_the_last_row_and_waits_for_a_line_end(
    tmp_path: Path,
) -> None:
    path = tmp_path / "requests.csv"
    first = _row(0, 100.2, Outcome.ACCEPTED, 4.0)
    second = _row(1, 100.7, Outcome.BREAKER_OPEN, 1.0)
    path.write_text(",".join(REQUEST_COLUMNS) + "\n" + first + second[:10])
    tail = RequestTail(path, origin_s=100.0)

    assert tail.read() == 1
    with path.open("a") as handle:
        handle.write(second[10:] + _row(2, 101.5, Outcome.ACCEPTED, 8.0))
    assert tail.read() == 2
    assert tail.read() == 0

    zero, one = tail.second(0), tail.second(1)
    assert zero.counts == {Outcome.ACCEPTED: 1, Outcome.BREAKER_OPEN: 1}
    assert (zero.p50_ms, zero.p99_ms) == (1.0, 4.0)
    assert one.counts == {Outcome.ACCEPTED: 1}
    assert tail.totals[Outcome.ACCEPTED] == 2


def test_manual_faults_in_the_load_start_with_it_and_leave_out_earlier_ones() -> None:
    faults = ManualFaults()
    faults.open("generator-1", FaultAction.FREEZE, 5.0, "PID 1")
    faults.close("generator-1", (FaultAction.FREEZE,), 8.0, "PID 1 running")
    faults.open("generator-1", FaultAction.KILL, 9.0, "PID 1 exit code -9")
    faults.open("requestor", FaultAction.KILL, 12.0, "PID 2 exit code -9")
    faults.close("requestor", (FaultAction.KILL,), 14.0, "healthy")

    chosen = faults.in_load(10.0, 20.0)

    assert [(f.target, f.action, f.start_s, f.end_s) for f in chosen] == [
        ("generator-1", FaultAction.KILL, 10.0, None),
        ("requestor", FaultAction.KILL, 12.0, 14.0),
    ]

"""The figures of one cell, from its raw files, and whether they can be trusted.

A cell is one variant under one scenario: a folder holding `requests.csv`,
`events.csv`, `samples.csv` (columns in `bench.records`) and the SQLite ledgers of the
requestor and of every generator. `summarise` reads them, computes the figures, checks
that nothing was lost uncounted (conservation), that the load generator kept up
(honesty), checks the plan's gates, and returns a `CellSummary` with a status:

- harness_error: the raw records contradict each other or are missing, so no figure
  of the cell can be trusted (a missing seq, an accepted id the ledger never saw ...);
- invalid: the load generator fell behind, so the figures measure it, not the system;
- gate_failed: the figures are sound and at least one hypothesis did not hold;
- ok: every gate held; skipped: the cell was not run, with the reason.

Definitions the figures rest on:
- Rows are assigned to the load window and its phases by their due time. Rows due
  before the load start are the warm-up and count in no phase; the loss and duplicate
  figures cover every row and every ledger row, warm-up included.
- Phases are cut at the actual fault times from `events.csv` (planned times only when
  a fault has no event, which is also a harness error): before (load start to the first
  fault's start), during (to the last fault's end), after (to load end); a scenario
  without faults has one phase, steady. `all` is the whole load window.
- Latency is measured from the due time (`latency_ms`), so a stall that delays sends
  is not hidden (coordinated omission). Percentiles are exact on the raw values, by
  the inverted empirical distribution: the p-quantile is the smallest observed value
  with at least p of all values at or below it (for 1..1000, p99 is 990, p99.9 is 999).
- Silently lost: a 2xx the user received whose id has no stored_at in the requestor
  ledger as read after the drain. Late stored: an error the user received whose id was
  stored anyway. For the sync variants a 201 means stored: a 201 whose id has no
  stored_at at or before the answer's done time is `accepted_without_row`.
- Duplicates: an id stored in more than one generator ledger (two strings generated
  for one request), plus every further id that got a string value already given to
  another id. Values shorter than `DUPLICATE_VALUE_MIN_LENGTH` are left out of the
  value check, because random short strings repeat by chance.
- Duplicate deliveries absorbed: the sum of `deliveries - 1` over every ledger row: the
  redeliveries the idempotent ledgers turned into counters instead of second rows.
- Time to detect: from a fault's actual start to the first answer other than accepted
  (by done time) before the next fault starts. Any error counts, whatever its cause,
  so a stray error just after the start reads as an instant detection.
- Time to recover: see the RECOVERY_* constants. It needs RECOVERY_HOLD_S seconds of
  load after the fault and before the next one; with less it is None, as for a
  system that never recovered. Per-second p99 at low rates is close to the max.
- Peak backlog: the highest JetStream `stream_messages` or consumer `pending` sample,
  summed over streams (consumers) within a second. Drain time: load end to the last
  generator confirmation, only when every accepted request was confirmed.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from bench.gates import Gate, GateResult, Phase, check_phases, evaluate
from bench.records import (
    EVENT_COLUMNS,
    REQUEST_COLUMNS,
    RESULTS_SCHEMA_VERSION,
    SAMPLE_COLUMNS,
    SEQ_USER_BLOCK,
    EventKind,
    Outcome,
)
from bench.stack import Variant
from service_core.ledger import SCHEMA_VERSION as LEDGER_SCHEMA_VERSION

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Honesty: a cell whose load generator fell behind measures the generator.
MAX_DROPPED_FRACTION = 0.01  # of the offered requests
MIN_ACHIEVED_RATE_FRACTION = 0.95  # sends per second over the planned offered rate
LOADGEN_CPU_LIMIT_PERCENT = 90.0  # one core: Locust runs its users on one thread
LOADGEN_CPU_LIMIT_SAMPLES = 3  # consecutive once-a-second samples at or above it
LOADGEN_SOURCE = "locust"

# Recovery: the first moment after a fault ends from which RECOVERY_HOLD_S
# consecutive seconds are all within a band of the before phase: availability no more
# than RECOVERY_AVAILABILITY_BAND below it, and p99 no higher than
# max(RECOVERY_P99_FACTOR x before p99, before p99 + RECOVERY_P99_MARGIN_MS). The
# margin keeps a fast baseline (p99 of 3 ms) from making ordinary jitter look like an
# outage; the factor scales the band for slower variants.
RECOVERY_AVAILABILITY_BAND = 0.01
RECOVERY_P99_FACTOR = 2.0
RECOVERY_P99_MARGIN_MS = 20.0
RECOVERY_HOLD_S = 3

# A fault_injected event is taken for a planned fault from this long before its
# planned start: the injector acts on the planned time, so it is never much early.
FAULT_MATCH_TOLERANCE_S = 1.0
# latency_ms against (done_s - due_s): timestamps are written to the microsecond.
LATENCY_TOLERANCE_MS = 1.0
# stored_at against done_s for a sync 201: both come from one machine's wall clock.
CLOCK_TOLERANCE_S = 0.001
DUPLICATE_VALUE_MIN_LENGTH = 16

QUANTILES = (0.5, 0.9, 0.99, 0.999)
OUTCOMES = tuple(Outcome)
_CODE = {outcome: code for code, outcome in enumerate(OUTCOMES)}
_ACCEPTED = _CODE[Outcome.ACCEPTED]
_DROPPED = _CODE[Outcome.DROPPED]
REJECTED_CLASSES = (
    Outcome.BREAKER_OPEN,
    Outcome.TIMEOUT,
    Outcome.REFUSED,
    Outcome.SERVER_ERROR,
    Outcome.CLIENT_ERROR,
)

REQUESTOR_LEDGER = "requestor.sqlite3"
GENERATOR_LEDGER_GLOB = "generator-*.sqlite3"
_EXAMPLES = 3  # ids or seqs quoted in a problem message


class PlanError(ValueError):
    """A `CellPlan` is inconsistent: times out of order, a fault outside the load."""


class RawFileError(ValueError):
    """A raw file of a cell is missing or cannot be read as its format says."""


class CellStatus(StrEnum):
    """How a cell ended; see the module docstring."""

    OK = "ok"
    GATE_FAILED = "gate_failed"
    INVALID = "invalid"
    HARNESS_ERROR = "harness_error"
    SKIPPED = "skipped"


@dataclass(frozen=True, kw_only=True)
class FaultWindow:
    """A planned fault, epoch seconds; the actual times come from `events.csv`."""

    start_s: float
    end_s: float | None  # None: the fault is not cleared before load end
    target: str | None = None  # match events of this target only (generator-1 ...)
    action: str | None = None  # kill, freeze ...: carried into the figures

    def __post_init__(self) -> None:
        if self.end_s is not None and self.end_s < self.start_s:
            raise PlanError(
                f"fault on {self.target}: planned end {self.end_s} is before "
                f"its start {self.start_s}"
            )


@dataclass(frozen=True, kw_only=True)
class CellPlan:
    """What a cell was meant to be: its times (epoch seconds), rate, faults, gates.

    `drain_end_s` is when the stack was stopped and the ledgers became final.
    `scheduled_requests`, when known, is the length of the arrival schedule: it lets
    the conservation check notice rows missing at the end of a user's block.
    """

    scenario: str
    variant: Variant
    warmup_start_s: float
    load_start_s: float
    load_end_s: float
    drain_end_s: float
    offered_rate_per_s: float
    faults: tuple[FaultWindow, ...] = ()
    gates: tuple[Gate, ...] = ()
    scheduled_requests: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", Variant(self.variant))
        times = (self.warmup_start_s, self.load_start_s, self.load_end_s)
        if not times[0] <= times[1] < times[2] <= self.drain_end_s:
            raise PlanError(
                "expected warmup_start_s <= load_start_s < load_end_s <= drain_end_s, "
                f"got {times[0]}, {times[1]}, {times[2]}, {self.drain_end_s}"
            )
        if not self.offered_rate_per_s > 0:
            raise PlanError(
                f"offered_rate_per_s must be > 0, got {self.offered_rate_per_s}"
            )
        previous_start = self.load_start_s
        for fault in self.faults:
            end = fault.end_s
            if fault.start_s < previous_start or (
                end is not None and end > self.load_end_s
            ):
                raise PlanError(
                    f"fault on {fault.target} planned {fault.start_s} to {end}: "
                    f"faults must lie in the load window [{self.load_start_s}, "
                    f"{self.load_end_s}], in order of their start"
                )
            previous_start = fault.start_s
        check_phases(self.gates, has_faults=bool(self.faults))

    @property
    def duration_s(self) -> float:
        return self.load_end_s - self.load_start_s


@dataclass(frozen=True, kw_only=True)
class LatencySummary:
    """Exact percentiles of a set of latencies in milliseconds; None when empty."""

    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None


@dataclass(frozen=True, kw_only=True)
class PhaseSummary:
    """The requests due in [start_s, end_s)."""

    name: Phase
    start_s: float
    end_s: float
    offered: int  # rows due
    sent: int  # offered - dropped
    accepted: int
    dropped: int
    rejected: int  # sent - accepted
    availability: float | None  # accepted / sent
    outcomes: dict[str, int]  # every Outcome value, with zeros
    latency: LatencySummary  # every answered send
    latency_accepted: LatencySummary
    latency_by_outcome: dict[str, LatencySummary]  # outcomes that occurred


@dataclass(frozen=True, kw_only=True)
class LoadFigures:
    rows: int  # every row of requests.csv
    warmup_rows: int  # due before the load start
    post_load_rows: int  # due at or after the load end
    duration_s: float
    offered_rate_per_s: float  # planned
    scheduled_rate_per_s: float  # rows due in the window per second
    achieved_send_rate_per_s: float
    achieved_rate_fraction: float  # achieved send rate / planned offered rate
    accepted_rate_per_s: float
    send_lag_p99_ms: float | None  # sent_s - due_s
    send_lag_max_ms: float | None
    loadgen_cpu_max_percent: float | None
    loadgen_cpu_mean_percent: float | None
    loadgen_cpu_high_run_samples: int  # longest run at or above the CPU limit


@dataclass(frozen=True, kw_only=True)
class LedgerFigures:
    requestor_rows: int
    generator_rows: dict[str, int]  # by ledger (generator-1 ...)
    stored: int  # requestor rows with stored_at
    confirmed: int  # distinct ids with confirmed_at in a generator ledger
    silently_lost: int
    late_stored: int
    accepted_without_row: int | None  # sync variants only
    stored_after_drain: int  # accepted ids stored after drain_end_s (not lost)
    unanswered_in_ledger: int  # ledger ids no client row carries
    unanswered_stored: int  # ... of which stored
    unconfirmed_accepted: int  # accepted rows with no generator confirmation
    stored_untraced: int  # stored values no generator row holds for that id
    duplicate_ids: int
    duplicate_values: int
    duplicates: int
    requestor_redeliveries: int
    generator_redeliveries: int
    duplicate_deliveries_absorbed: int
    accepted_to_stored: LatencySummary  # ms, ledger accepted_at -> stored_at
    accepted_to_confirmed: LatencySummary  # ms, -> first generator confirmed_at


@dataclass(frozen=True, kw_only=True)
class BacklogFigures:
    """Peaks of the JetStream monitoring samples, summed over streams or consumers."""

    peak_backlog: float | None  # the larger of the next two
    peak_stream_messages: float | None
    peak_pending: float | None
    peak_ack_pending: float | None
    redelivered: float | None  # the consumers' redelivery counters at their peak


@dataclass(frozen=True, kw_only=True)
class FaultFigures:
    target: str | None
    action: str | None
    planned_start_s: float
    planned_end_s: float | None
    actual_start_s: float | None
    actual_end_s: float | None
    time_to_detect_s: float | None  # to the first error the user saw
    time_to_recover_s: float | None  # see RECOVERY_* constants


@dataclass(frozen=True, kw_only=True)
class CellFigures:
    load: LoadFigures
    phases: dict[str, PhaseSummary]  # by Phase value; "all" always present
    ledger: LedgerFigures
    backlog: BacklogFigures
    faults: tuple[FaultFigures, ...]
    time_to_detect_s: float | None  # the largest over the faults that were detected
    time_to_recover_s: float | None  # the largest; None if any fault never recovered
    drain_time_s: float | None  # load end to the last confirmation, if all confirmed
    last_confirmation_s: float | None
    event_counts: dict[str, int]  # observed events by kind


@dataclass(frozen=True, kw_only=True)
class ConservationCheck:
    ok: bool
    problems: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class HonestyCheck:
    valid: bool
    reasons: tuple[str, ...]
    dropped_fraction: float | None
    achieved_rate_fraction: float | None
    loadgen_cpu_high_run_samples: int


@dataclass(frozen=True, kw_only=True)
class CellSummary:
    """Everything known about one cell; `to_json` gives it as plain JSON values."""

    schema_version: int
    scenario: str
    variant: Variant
    status: CellStatus
    reasons: tuple[str, ...]  # why the status is not ok: problems, gates failed ...
    conservation: ConservationCheck
    honesty: HonestyCheck | None
    figures: CellFigures | None
    gates: tuple[GateResult, ...] = ()

    @classmethod
    def skipped(cls, *, scenario: str, variant: Variant, reason: str) -> CellSummary:
        return cls(
            schema_version=RESULTS_SCHEMA_VERSION,
            scenario=scenario,
            variant=variant,
            status=CellStatus.SKIPPED,
            reasons=(reason,),
            conservation=ConservationCheck(ok=True, problems=()),
            honesty=None,
            figures=None,
        )

    def to_json(self) -> dict[str, Any]:
        """The summary as dicts, lists, strings, numbers and None (never NaN)."""
        document = _jsonable(dataclasses.asdict(self))
        assert isinstance(document, dict)
        return document


def _jsonable(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, kw_only=True)
class CellRecords:
    """The raw files of a cell, read but not interpreted."""

    requests: pd.DataFrame  # REQUEST_COLUMNS; outcome categorical over OUTCOMES
    events: pd.DataFrame  # EVENT_COLUMNS
    samples: pd.DataFrame  # SAMPLE_COLUMNS
    requestor: pd.DataFrame  # requestor ledger, indexed by id
    generators: pd.DataFrame  # every generator ledger's rows, with column `ledger`
    generator_rows: dict[str, int] = field(default_factory=dict)


def read_requests(path: Path) -> pd.DataFrame:
    """`requests.csv` with typed columns: times float, `outcome` categorical.

    An outcome that is not an `Outcome` value reads as missing; empty `cause` and
    `request_id` read as empty strings.
    """
    numeric = ("sent_s", "done_s", "latency_ms", "status")
    frame = _read_csv(
        path,
        REQUEST_COLUMNS,
        dtype={
            "seq": "int64",
            "due_s": "float64",
            "sent_s": "float64",
            "done_s": "float64",
            "latency_ms": "float64",
            "status": "float64",
            "outcome": "category",
            "cause": object,
            "request_id": object,
        },
        na_values={column: [""] for column in numeric},
    )
    frame["status"] = frame["status"].fillna(0).astype("int64")
    frame["outcome"] = _as_outcomes(frame["outcome"])
    return frame


def read_events(path: Path) -> pd.DataFrame:
    return _read_csv(
        path,
        EVENT_COLUMNS,
        dtype={
            "at_s": "float64",
            "kind": "str",
            "target": "str",
            "detail": "str",
            "planned": "int64",
        },
    )


def read_samples(path: Path) -> pd.DataFrame:
    return _read_csv(
        path,
        SAMPLE_COLUMNS,
        dtype={
            "at_s": "float64",
            "source": "str",
            "metric": "str",
            "key": "str",
            "value": "float64",
        },
    )


def _read_csv(
    path: Path,
    columns: Sequence[str],
    *,
    dtype: dict[str, Any],
    na_values: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    try:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
    except OSError as exc:
        raise RawFileError(f"{path}: cannot be read: {exc}") from exc
    missing = [column for column in columns if column not in header]
    if missing:
        raise RawFileError(
            f"{path}: expected the columns {', '.join(columns)}; "
            f"missing {', '.join(missing)}"
        )
    try:
        return pd.read_csv(
            path,
            usecols=list(columns),
            dtype=dtype,
            keep_default_na=False,
            na_values=na_values or {},
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise RawFileError(f"{path}: not readable as {path.name}: {exc}") from exc


def open_ledger(path: Path) -> sqlite3.Connection:
    """A read-only connection to a ledger of the schema version this build writes.

    Raises `RawFileError` for a missing or unreadable file, or another version.
    """
    if not path.is_file():
        raise RawFileError(f"ledger {path} does not exist")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise RawFileError(f"ledger {path}: cannot be opened: {exc}") from exc
    if version != LEDGER_SCHEMA_VERSION:
        db.close()
        raise RawFileError(
            f"ledger {path} has schema version {version}; this build reads "
            f"version {LEDGER_SCHEMA_VERSION}"
        )
    return db


def _query(path: Path, sql: str, columns: Sequence[str]) -> pd.DataFrame:
    """The rows of `sql` as a frame: `*_at` and `deliveries` float, the rest str."""
    db = open_ledger(path)
    try:
        rows = db.execute(sql).fetchall()
    except sqlite3.Error as exc:
        raise RawFileError(f"ledger {path}: {exc}") from exc
    finally:
        db.close()
    # One 2-D object array, sliced by column: several times faster than zip(*rows).
    table = np.array(rows, dtype=object).reshape(len(rows), len(columns))
    data: dict[str, Any] = {}
    for index, name in enumerate(columns):
        column = table[:, index]
        if name.endswith("_at") or name == "deliveries":
            data[name] = np.array(column.tolist(), dtype=np.float64)  # None: NaN
        else:
            # Kept as Python strings: a str column would copy each one into Arrow.
            data[name] = pd.Series(column.copy(), dtype=object)
    return pd.DataFrame(data, columns=list(columns))


def read_requestor_ledger(path: Path) -> pd.DataFrame:
    """The requestor's `requests` table, indexed by id; times float, NaN if unset.

    String values stay in the file: `ledger_value_figures` compares them in SQLite.
    """
    columns = ("id", "accepted_at", "stored_at", "deliveries")
    frame = _query(path, f"SELECT {', '.join(columns)} FROM requests", columns)
    return frame.set_index("id")


def read_generator_ledger(path: Path) -> pd.DataFrame:
    """One generator's `strings` table, with its ledger name in column `ledger`.

    String values stay in the file: `ledger_value_figures` compares them in SQLite.
    """
    columns = ("id", "confirmed_at", "deliveries")
    frame = _query(path, f"SELECT {', '.join(columns)} FROM strings", columns)
    frame.insert(0, "ledger", path.name.removesuffix(".sqlite3"))
    return frame


def ledger_paths(cell_dir: Path) -> tuple[Path, list[Path]]:
    """The requestor ledger and the generator ledgers of a cell."""
    ledgers = cell_dir / "ledgers"
    generator_paths = sorted(ledgers.glob(GENERATOR_LEDGER_GLOB))
    if not generator_paths:
        raise RawFileError(
            f"no generator ledger ({GENERATOR_LEDGER_GLOB}) in {ledgers}"
        )
    return ledgers / REQUESTOR_LEDGER, generator_paths


def read_cell(cell_dir: Path) -> CellRecords:
    """Every raw file of a cell; `RawFileError` if one is missing or unreadable."""
    requestor_path, generator_paths = ledger_paths(cell_dir)
    return _records(
        cell_dir,
        requestor_path,
        lambda: {path: read_generator_ledger(path) for path in generator_paths},
    )


def _records(
    cell_dir: Path,
    requestor_path: Path,
    generators: Callable[[], Mapping[Path, pd.DataFrame]],
) -> CellRecords:
    """The raw files; `generators` gives the generator ledgers, read last."""
    requests = read_requests(cell_dir / "requests.csv")
    events = read_events(cell_dir / "events.csv")
    samples = read_samples(cell_dir / "samples.csv")
    requestor = read_requestor_ledger(requestor_path)
    by_path = generators()
    return CellRecords(
        requests=requests,
        events=events,
        samples=samples,
        requestor=requestor,
        generators=pd.concat(by_path.values(), ignore_index=True),
        generator_rows={
            path.name.removesuffix(".sqlite3"): len(frame)
            for path, frame in by_path.items()
        },
    )


@dataclass(frozen=True, kw_only=True)
class ValueFigures:
    duplicate_values: int  # ids beyond the first given a string value already given
    stored_untraced: int  # stored (id, value) pairs no generator ledger row holds


def ledger_value_figures(
    requestor_path: Path, generator_paths: Sequence[Path]
) -> ValueFigures:
    """The figures about string values, computed inside SQLite.

    The values are most of the ledgers' bytes. These queries hand no value to
    Python, and SQLite releases the GIL while it works, so `summarise` runs them on a
    thread of their own, beside the parsing of the other raw files.
    """
    db = open_ledger(requestor_path)
    try:
        limit = db.getlimit(sqlite3.SQLITE_LIMIT_ATTACHED)
        if len(generator_paths) > limit:
            raise RawFileError(
                f"{len(generator_paths)} generator ledgers; SQLite attaches at most "
                f"{limit} at once"
            )
        for index, path in enumerate(generator_paths):
            uri = f"{path.resolve().as_uri()}?mode=ro"
            db.execute(f"ATTACH DATABASE ? AS g{index}", (uri,))
        generated = " UNION ALL ".join(
            f"SELECT id, value FROM g{index}.strings"
            for index in range(len(generator_paths))
        )
        duplicate_values = db.execute(
            "SELECT coalesce(sum(ids - 1), 0) FROM ("
            f"SELECT count(DISTINCT id) AS ids FROM ({generated}) "
            "WHERE length(value) >= ? GROUP BY value HAVING count(DISTINCT id) > 1)",
            (DUPLICATE_VALUE_MIN_LENGTH,),
        ).fetchone()[0]
        held = " OR ".join(
            f"EXISTS (SELECT 1 FROM g{index}.strings AS s "
            "WHERE s.id = r.id AND s.value = r.value)"
            for index in range(len(generator_paths))
        )
        stored_untraced = db.execute(
            "SELECT count(*) FROM main.requests AS r "
            f"WHERE r.stored_at IS NOT NULL AND NOT ({held})"
        ).fetchone()[0]
    except sqlite3.Error as exc:
        raise RawFileError(f"ledgers of {requestor_path.parent}: {exc}") from exc
    finally:
        db.close()
    return ValueFigures(
        duplicate_values=int(duplicate_values), stored_untraced=int(stored_untraced)
    )


def _rank_indices(counts: IntArray | int, q: float) -> IntArray:
    """0-based rank of the q-quantile in sorted groups of `counts` values."""
    # Rounding first keeps 0.999 * 1000 (999.0000000000001) from ceiling to 1000.
    rank = np.ceil(np.round(np.asarray(counts, dtype=np.float64) * q, 6)) - 1
    return np.asarray(np.maximum(rank, 0), dtype=np.int64)


def latency_summary(values_ms: npt.ArrayLike) -> LatencySummary:
    """Exact p50, p90, p99, p99.9 and max of `values_ms`; NaN values are left out."""
    values = np.asarray(values_ms, dtype=np.float64)
    values = values[~np.isnan(values)]
    count = int(values.size)
    if count == 0:
        return LatencySummary(
            count=0, p50_ms=None, p90_ms=None, p99_ms=None, p999_ms=None, max_ms=None
        )
    ranks = [int(_rank_indices(count, q)) for q in QUANTILES]
    ordered = np.partition(values, sorted({*ranks, count - 1}))
    p50, p90, p99, p999 = (float(ordered[rank]) for rank in ranks)
    return LatencySummary(
        count=count,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        p999_ms=p999,
        max_ms=float(ordered[count - 1]),
    )


def _as_outcomes(values: pd.Series) -> pd.Series:
    """`values` as a categorical over OUTCOMES; anything else becomes missing."""
    if not isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype("category")
    return values.cat.set_categories([outcome.value for outcome in OUTCOMES])


def _outcome_codes(requests: pd.DataFrame) -> IntArray:
    """Each row's index in OUTCOMES; -1 for a missing or unknown outcome."""
    outcome = requests["outcome"]
    categories = [o.value for o in OUTCOMES]
    if not (
        isinstance(outcome.dtype, pd.CategoricalDtype)
        and list(outcome.cat.categories) == categories
    ):
        outcome = _as_outcomes(outcome)
    return np.asarray(outcome.cat.codes, dtype=np.int64)


def per_second(
    requests: pd.DataFrame, *, start_s: float | None = None, end_s: float | None = None
) -> pd.DataFrame:
    """Counts by outcome and latency percentiles per second of due time.

    Indexed by `second` (the epoch second, every second from the first to the last,
    so that empty seconds show as zeros); columns: one count per `Outcome` value,
    `sent`, `availability` (accepted / sent, NaN without sends) and `p50_ms`,
    `p99_ms` over the answered sends of the second. Rows due outside
    [start_s, end_s) are left out.
    """
    due = requests["due_s"].to_numpy(dtype=np.float64)
    codes = _outcome_codes(requests)
    latency = requests["latency_ms"].to_numpy(dtype=np.float64)
    keep = codes >= 0
    if start_s is not None:
        keep &= due >= start_s
    if end_s is not None:
        keep &= due < end_s
    second = np.floor(due[keep]).astype(np.int64)
    codes, latency = codes[keep], latency[keep]

    if start_s is not None:
        first = math.floor(start_s)
    else:
        first = int(second.min()) if second.size else 0
    if end_s is not None:
        last = math.ceil(end_s) - 1
    else:
        last = int(second.max()) if second.size else first - 1
    n_seconds = max(last - first + 1, 0)
    offset = second - first

    counts = np.bincount(
        offset * len(OUTCOMES) + codes, minlength=n_seconds * len(OUTCOMES)
    ).reshape(n_seconds, len(OUTCOMES))
    frame = pd.DataFrame(
        counts,
        index=pd.RangeIndex(first, first + n_seconds, name="second"),
        columns=[o.value for o in OUTCOMES],
    )
    sent = counts.sum(axis=1) - counts[:, _DROPPED]
    frame["sent"] = sent
    with np.errstate(invalid="ignore", divide="ignore"):
        frame["availability"] = np.where(sent > 0, counts[:, _ACCEPTED] / sent, np.nan)

    answered = (codes != _DROPPED) & ~np.isnan(latency)
    p50, p99 = _grouped_quantiles(offset[answered], latency[answered], n_seconds)
    frame["p50_ms"] = p50
    frame["p99_ms"] = p99
    return frame


def _grouped_quantiles(
    group: IntArray, values: FloatArray, n_groups: int
) -> tuple[FloatArray, FloatArray]:
    """p50 and p99 of `values` in each group 0 .. n_groups-1 (NaN when empty)."""
    order = np.lexsort((values, group))
    ordered = values[order]
    counts = np.bincount(group, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    results = []
    for q in (0.5, 0.99):
        picked = np.full(n_groups, np.nan)
        present = counts > 0
        index = starts[present] + _rank_indices(counts[present], q)
        picked[present] = ordered[index]
        results.append(picked)
    return results[0], results[1]


def time_to_recover(
    series: pd.DataFrame,
    *,
    fault_end_s: float,
    baseline_availability: float,
    baseline_p99_ms: float,
    until_s: float | None = None,
) -> float | None:
    """Seconds from `fault_end_s` until the series is back within the recovery band.

    `series` is a `per_second` frame. Back means RECOVERY_HOLD_S consecutive seconds,
    each with sends, availability at least `baseline_availability` minus
    RECOVERY_AVAILABILITY_BAND and p99 at most max(RECOVERY_P99_FACTOR x baseline,
    baseline + RECOVERY_P99_MARGIN_MS); the time is measured to the start of the
    first of them (0 when the second the fault ended in already qualifies). Only
    seconds before `until_s` count. None if it never happens.
    """
    seconds = series.index.to_numpy(dtype=np.int64)
    window = seconds >= math.floor(fault_end_s)
    if until_s is not None:
        window &= seconds < until_s
    if not window.any():
        return None
    part = series[window]
    p99_limit = max(
        RECOVERY_P99_FACTOR * baseline_p99_ms, baseline_p99_ms + RECOVERY_P99_MARGIN_MS
    )
    availability = part["availability"].to_numpy(dtype=np.float64)
    p99 = part["p99_ms"].to_numpy(dtype=np.float64)
    in_band = (
        (part["sent"].to_numpy() > 0)
        & (availability >= baseline_availability - RECOVERY_AVAILABILITY_BAND)
        & (p99 <= p99_limit)
    )
    if in_band.size < RECOVERY_HOLD_S:
        return None
    # in_run[k]: how many of the seconds k .. k + RECOVERY_HOLD_S - 1 are in band
    in_run = np.convolve(
        in_band.astype(np.int64), np.ones(RECOVERY_HOLD_S, np.int64), mode="valid"
    )
    starts = np.flatnonzero(in_run == RECOVERY_HOLD_S)
    if starts.size == 0:
        return None
    first_second = int(part.index[starts[0]])
    return max(0.0, first_second - fault_end_s)


def _longest_run(flags: BoolArray) -> int:
    if not flags.any():
        return 0
    padded = np.concatenate(([0], flags.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[0::2]).max())


@dataclass(frozen=True)
class _Identity:
    """Request ids interned once as integer codes shared by the rows and the ledgers.

    Every join after this is an array lookup by code instead of a string hash.
    """

    count: int  # distinct ids
    client: IntArray  # per request row; -1 for a row without an id
    requestor: IntArray  # per requestor ledger row
    generator: IntArray  # per generator ledger row
    requestor_position: IntArray  # per code: requestor ledger row, -1 if none
    generator_copies: IntArray  # per code: generator ledgers holding the id
    first_confirmed: FloatArray  # per code: earliest generator confirmed_at


def _intern_ids(records: CellRecords) -> _Identity:
    client_ids = records.requests["request_id"].to_numpy(dtype=object)
    requestor_ids = records.requestor.index.to_numpy(dtype=object)
    generator_ids = records.generators["id"].to_numpy(dtype=object)
    codes, uniques = pd.factorize(
        np.concatenate([client_ids, requestor_ids, generator_ids])
    )
    codes = codes.astype(np.int64)
    count = len(uniques)
    split = len(client_ids), len(client_ids) + len(requestor_ids)
    client = codes[: split[0]]
    client[client_ids == ""] = -1
    requestor = codes[split[0] : split[1]]
    generator = codes[split[1] :]

    requestor_position = np.full(count, -1, dtype=np.int64)
    requestor_position[requestor] = np.arange(len(requestor))
    first_confirmed = np.full(count, np.nan)
    confirmed_at = records.generators["confirmed_at"].to_numpy(dtype=np.float64)
    known = ~np.isnan(confirmed_at)
    np.fmin.at(first_confirmed, generator[known], confirmed_at[known])
    return _Identity(
        count=count,
        client=client,
        requestor=requestor,
        generator=generator,
        requestor_position=requestor_position,
        generator_copies=np.bincount(generator, minlength=count).astype(np.int64),
        first_confirmed=first_confirmed,
    )


@dataclass(frozen=True)
class _Rows:
    """The request rows as arrays, joined to the ledgers by request id."""

    seq: IntArray
    due: FloatArray
    sent: FloatArray
    done: FloatArray
    latency: FloatArray
    status: IntArray
    code: IntArray
    request_id: npt.NDArray[np.object_]
    has_id: BoolArray
    id_code: IntArray  # _Identity code, -1 without an id
    ledger_position: IntArray  # row in the requestor ledger, -1 if none
    stored_at: FloatArray  # requestor stored_at of the row's id, NaN if none
    accepted_at: FloatArray
    confirmed_at: FloatArray  # first generator confirmed_at of the id, NaN if none

    @property
    def accepted(self) -> BoolArray:
        return np.asarray(self.code == _ACCEPTED)

    @property
    def answered(self) -> BoolArray:
        return np.asarray((self.code >= 0) & (self.code != _DROPPED))


def _join_rows(records: CellRecords, identity: _Identity) -> _Rows:
    requests = records.requests
    ledger = records.requestor
    has_id = identity.client >= 0
    code = np.where(has_id, identity.client, 0)
    position = np.where(has_id, identity.requestor_position[code], -1)
    found = position >= 0

    def pick(values: FloatArray) -> FloatArray:
        picked = np.full(len(position), np.nan)
        picked[found] = values[position[found]]
        return picked

    return _Rows(
        seq=requests["seq"].to_numpy(dtype=np.int64),
        due=requests["due_s"].to_numpy(dtype=np.float64),
        sent=requests["sent_s"].to_numpy(dtype=np.float64),
        done=requests["done_s"].to_numpy(dtype=np.float64),
        latency=requests["latency_ms"].to_numpy(dtype=np.float64),
        status=requests["status"].to_numpy(dtype=np.int64),
        code=_outcome_codes(requests),
        request_id=requests["request_id"].to_numpy(dtype=object),
        has_id=has_id,
        id_code=identity.client,
        ledger_position=position,
        stored_at=pick(ledger["stored_at"].to_numpy(dtype=np.float64)),
        accepted_at=pick(ledger["accepted_at"].to_numpy(dtype=np.float64)),
        confirmed_at=np.where(has_id, identity.first_confirmed[code], np.nan),
    )


def _matched_faults(
    plan: CellPlan, events: pd.DataFrame, problems: list[str]
) -> list[tuple[float | None, float | None]]:
    """The actual (start, end) of each planned fault, from observed events."""
    observed = events[events["planned"] == 0].sort_values("at_s", kind="stable")
    injected = observed[observed["kind"] == EventKind.FAULT_INJECTED.value]
    cleared = observed[observed["kind"] == EventKind.FAULT_CLEARED.value]
    used_injected: set[int] = set()
    used_cleared: set[int] = set()
    actual: list[tuple[float | None, float | None]] = []

    for fault in plan.faults:
        start: float | None = None
        target = fault.target
        for index, at_s, event_target in zip(
            injected.index, injected["at_s"], injected["target"], strict=True
        ):
            if index in used_injected or at_s < (
                fault.start_s - FAULT_MATCH_TOLERANCE_S
            ):
                continue
            if target is not None and event_target != target:
                continue
            used_injected.add(index)
            start, target = float(at_s), event_target
            break
        if start is None:
            problems.append(
                f"the fault on {fault.target or 'any target'} planned at "
                f"{fault.start_s:.3f} has no fault_injected event"
            )
            actual.append((None, None))
            continue

        end: float | None = None
        for index, at_s, event_target in zip(
            cleared.index, cleared["at_s"], cleared["target"], strict=True
        ):
            if index in used_cleared or at_s < start or event_target != target:
                continue
            used_cleared.add(index)
            end = float(at_s)
            break
        if end is None and fault.end_s is not None:
            problems.append(
                f"the fault on {target} injected at {start:.3f} has no "
                "fault_cleared event"
            )
        actual.append((start, end))

    extra = len(injected) - len(used_injected)
    if extra:
        problems.append(f"{extra} fault_injected events match no planned fault")
    return actual


def _phase_bounds(
    plan: CellPlan, actual: list[tuple[float | None, float | None]]
) -> dict[Phase, tuple[float, float]]:
    """Phase limits; a fault without events falls back to its planned times."""
    start_s, end_s = plan.load_start_s, plan.load_end_s
    bounds = {Phase.ALL: (start_s, end_s)}
    if not plan.faults:
        bounds[Phase.STEADY] = (start_s, end_s)
        return bounds

    first_start = actual[0][0]
    fault_start = plan.faults[0].start_s if first_start is None else first_start
    ends = []
    for fault, (_, end) in zip(plan.faults, actual, strict=True):
        if end is None:
            end = end_s if fault.end_s is None else fault.end_s
        ends.append(end)
    fault_start = min(max(fault_start, start_s), end_s)
    fault_end = min(max(max(ends), fault_start), end_s)
    bounds[Phase.BEFORE] = (start_s, fault_start)
    bounds[Phase.DURING] = (fault_start, fault_end)
    bounds[Phase.AFTER] = (fault_end, end_s)
    return bounds


def _phase_summary(
    rows: _Rows, name: Phase, start_s: float, end_s: float
) -> PhaseSummary:
    in_phase = (rows.due >= start_s) & (rows.due < end_s)
    codes = rows.code[in_phase]
    latency = rows.latency[in_phase]
    counts = np.bincount(codes[codes >= 0], minlength=len(OUTCOMES))
    offered = int(in_phase.sum())
    dropped = int(counts[_DROPPED])
    accepted = int(counts[_ACCEPTED])
    sent = offered - dropped
    answered = (codes >= 0) & (codes != _DROPPED)
    by_outcome = {
        outcome.value: latency_summary(latency[codes == code])
        for code, outcome in enumerate(OUTCOMES)
        if outcome is not Outcome.DROPPED and counts[code]
    }
    return PhaseSummary(
        name=name,
        start_s=start_s,
        end_s=end_s,
        offered=offered,
        sent=sent,
        accepted=accepted,
        dropped=dropped,
        rejected=sent - accepted,
        availability=accepted / sent if sent else None,
        outcomes={o.value: int(counts[code]) for code, o in enumerate(OUTCOMES)},
        latency=latency_summary(latency[answered]),
        latency_accepted=latency_summary(latency[codes == _ACCEPTED]),
        latency_by_outcome=by_outcome,
    )


def _examples(values: Iterable[object]) -> str:
    shown = []
    for value in values:
        shown.append(str(value))
        if len(shown) == _EXAMPLES:
            break
    return ", ".join(shown)


def _check_rows(rows: _Rows, plan: CellPlan, problems: list[str]) -> None:
    """The client's own records: schedule complete, outcomes valid, times present."""
    seq = rows.seq
    if seq.size == 0:
        problems.append("requests.csv holds no rows")
        return
    ordered = np.sort(seq)
    repeat = np.concatenate(([False], ordered[1:] == ordered[:-1]))
    unique = ordered[~repeat]
    if repeat.any():
        problems.append(
            f"{int(repeat.sum())} rows repeat a seq "
            f"(e.g. {_examples(np.unique(ordered[repeat]))})"
        )
    if unique[0] < 0:
        problems.append(f"negative seq values (e.g. {_examples(unique[unique < 0])})")
    user, index = np.divmod(unique, SEQ_USER_BLOCK)
    new_user = np.concatenate(([True], user[1:] != user[:-1]))
    expected = np.where(new_user, 0, np.concatenate(([0], index[:-1] + 1)))
    gap = index - expected  # missing seqs just before each present one
    if (gap > 0).any():
        missing = unique[gap > 0] - gap[gap > 0]
        problems.append(
            f"{int(gap[gap > 0].sum())} seqs are missing from the schedule "
            f"(e.g. {_examples(missing)})"
        )
    if plan.scheduled_requests is not None and unique.size != plan.scheduled_requests:
        problems.append(
            f"the schedule had {plan.scheduled_requests} requests; requests.csv "
            f"holds {unique.size} distinct seqs"
        )

    invalid = rows.code < 0
    if invalid.any():
        problems.append(
            f"{int(invalid.sum())} rows have no valid outcome "
            f"(e.g. seq {_examples(seq[invalid])})"
        )
    answered = rows.answered
    untimed = answered & (
        np.isnan(rows.sent) | np.isnan(rows.done) | np.isnan(rows.latency)
    )
    if untimed.any():
        problems.append(
            f"{int(untimed.sum())} sent rows lack sent_s, done_s or latency_ms "
            f"(e.g. seq {_examples(seq[untimed])})"
        )
    dropped_timed = (rows.code == _DROPPED) & ~np.isnan(rows.sent)
    if dropped_timed.any():
        problems.append(
            f"{int(dropped_timed.sum())} dropped rows have a sent_s "
            f"(e.g. seq {_examples(seq[dropped_timed])})"
        )
    with np.errstate(invalid="ignore"):
        skew = np.abs(rows.latency - (rows.done - rows.due) * 1000.0)
        inconsistent = answered & (skew > LATENCY_TOLERANCE_MS)
    if inconsistent.any():
        problems.append(
            f"{int(inconsistent.sum())} rows have a latency_ms that is not "
            f"done_s - due_s (e.g. seq {_examples(seq[inconsistent])})"
        )
    success = (rows.status >= 200) & (rows.status <= 299)
    mismatch = answered & (success != rows.accepted)
    if mismatch.any():
        problems.append(
            f"{int(mismatch.sum())} rows disagree between status and outcome: "
            f"accepted means 2xx (e.g. seq {_examples(seq[mismatch])})"
        )


def _check_ids(rows: _Rows, identity: _Identity, problems: list[str]) -> None:
    """The client's ids against each other and against the requestor ledger."""
    accepted = rows.accepted
    no_id = accepted & ~rows.has_id
    if no_id.any():
        problems.append(
            f"{int(no_id.sum())} accepted rows have no request_id "
            f"(e.g. seq {_examples(rows.seq[no_id])})"
        )
    carried = np.bincount(rows.id_code[rows.has_id], minlength=identity.count)
    repeated = rows.has_id & (carried[np.where(rows.has_id, rows.id_code, 0)] > 1)
    if repeated.any():
        extra = int((carried[carried > 1] - 1).sum())
        shown = _examples(np.unique(rows.request_id[repeated]))
        problems.append(
            f"{extra} rows repeat a request_id another row carries (e.g. {shown})"
        )
    unknown = rows.has_id & (rows.ledger_position < 0)
    for label, mask in (
        ("accepted", unknown & accepted),
        ("error", unknown & ~accepted),
    ):
        if mask.any():
            problems.append(
                f"{int(mask.sum())} {label} rows carry a request_id the requestor "
                f"ledger does not hold (e.g. {_examples(rows.request_id[mask])})"
            )


def _ledger_figures(
    rows: _Rows,
    records: CellRecords,
    plan: CellPlan,
    identity: _Identity,
    values: ValueFigures,
) -> LedgerFigures:
    ledger = records.requestor
    generators = records.generators
    accepted = rows.accepted
    stored = ~np.isnan(rows.stored_at)

    not_stored = accepted & ~stored
    accepted_without_row: int | None = None
    if not plan.variant.is_queue:
        late_row = accepted & stored & (rows.stored_at > rows.done + CLOCK_TOLERANCE_S)
        accepted_without_row = int((not_stored | late_row).sum())

    seen = np.zeros(len(ledger), dtype=bool)
    seen[rows.ledger_position[rows.ledger_position >= 0]] = True
    ledger_stored = ledger["stored_at"].notna().to_numpy()

    duplicate_ids = int((identity.generator_copies > 1).sum())
    duplicate_values = values.duplicate_values

    requestor_deliveries = ledger["deliveries"].to_numpy(dtype=np.float64)
    generator_deliveries = generators["deliveries"].to_numpy(dtype=np.float64)
    requestor_redeliveries = int(np.clip(requestor_deliveries - 1, 0, None).sum())
    generator_redeliveries = int(np.clip(generator_deliveries - 1, 0, None).sum())

    return LedgerFigures(
        requestor_rows=len(ledger),
        generator_rows=dict(records.generator_rows),
        stored=int(ledger_stored.sum()),
        confirmed=int((~np.isnan(identity.first_confirmed)).sum()),
        silently_lost=int(not_stored.sum()),
        late_stored=int((rows.answered & ~accepted & stored).sum()),
        accepted_without_row=accepted_without_row,
        stored_after_drain=int((accepted & (rows.stored_at > plan.drain_end_s)).sum()),
        unanswered_in_ledger=int((~seen).sum()),
        unanswered_stored=int((~seen & ledger_stored).sum()),
        unconfirmed_accepted=int((accepted & np.isnan(rows.confirmed_at)).sum()),
        stored_untraced=values.stored_untraced,
        duplicate_ids=duplicate_ids,
        duplicate_values=duplicate_values,
        duplicates=duplicate_ids + duplicate_values,
        requestor_redeliveries=requestor_redeliveries,
        generator_redeliveries=generator_redeliveries,
        duplicate_deliveries_absorbed=requestor_redeliveries + generator_redeliveries,
        accepted_to_stored=latency_summary(
            (rows.stored_at[accepted] - rows.accepted_at[accepted]) * 1000.0
        ),
        accepted_to_confirmed=latency_summary(
            (rows.confirmed_at[accepted] - rows.accepted_at[accepted]) * 1000.0
        ),
    )


def _load_figures(
    rows: _Rows, records: CellRecords, plan: CellPlan, everything: PhaseSummary
) -> LoadFigures:
    duration = plan.duration_s
    in_window = (rows.due >= plan.load_start_s) & (rows.due < plan.load_end_s)
    lag = (rows.sent - rows.due)[in_window & rows.answered] * 1000.0
    lag_summary = latency_summary(lag)

    samples = records.samples
    cpu_rows = samples[
        (samples["source"] == LOADGEN_SOURCE)
        & (samples["metric"] == "cpu_percent")
        & (samples["at_s"] >= plan.load_start_s)
        & (samples["at_s"] <= plan.load_end_s)
    ].sort_values("at_s", kind="stable")
    cpu = cpu_rows["value"].to_numpy(dtype=np.float64)
    high_run = 0
    for _, process in cpu_rows.groupby("key", sort=False):
        readings = process["value"].to_numpy(dtype=np.float64)
        high_run = max(high_run, _longest_run(readings >= LOADGEN_CPU_LIMIT_PERCENT))

    achieved = everything.sent / duration
    return LoadFigures(
        rows=len(rows.due),
        warmup_rows=int((rows.due < plan.load_start_s).sum()),
        post_load_rows=int((rows.due >= plan.load_end_s).sum()),
        duration_s=duration,
        offered_rate_per_s=plan.offered_rate_per_s,
        scheduled_rate_per_s=everything.offered / duration,
        achieved_send_rate_per_s=achieved,
        achieved_rate_fraction=achieved / plan.offered_rate_per_s,
        accepted_rate_per_s=everything.accepted / duration,
        send_lag_p99_ms=lag_summary.p99_ms,
        send_lag_max_ms=lag_summary.max_ms,
        loadgen_cpu_max_percent=float(cpu.max()) if cpu.size else None,
        loadgen_cpu_mean_percent=float(cpu.mean()) if cpu.size else None,
        loadgen_cpu_high_run_samples=high_run,
    )


def _backlog_figures(samples: pd.DataFrame, plan: CellPlan) -> BacklogFigures:
    jetstream = samples[
        (samples["source"] == "jetstream")
        & (samples["at_s"] >= plan.warmup_start_s)
        & (samples["at_s"] <= plan.drain_end_s)
    ]

    def peak(metric: str) -> float | None:
        readings = jetstream[jetstream["metric"] == metric]
        if readings.empty:
            return None
        second = np.floor(readings["at_s"].to_numpy(dtype=np.float64))
        # The largest reading per stream or consumer in a second, summed over them.
        per_key = readings.assign(second=second).groupby(["second", "key"])["value"]
        return float(per_key.max().groupby(level="second").sum().max())

    messages, pending = peak("stream_messages"), peak("pending")
    peaks = [value for value in (messages, pending) if value is not None]
    return BacklogFigures(
        peak_backlog=max(peaks) if peaks else None,
        peak_stream_messages=messages,
        peak_pending=pending,
        peak_ack_pending=peak("ack_pending"),
        redelivered=peak("redelivered"),
    )


def _fault_figures(
    rows: _Rows,
    plan: CellPlan,
    actual: list[tuple[float | None, float | None]],
    series: pd.DataFrame,
    before: PhaseSummary | None,
) -> list[FaultFigures]:
    errors = rows.answered & ~rows.accepted & (rows.due < plan.load_end_s)
    error_done = np.sort(rows.done[errors & ~np.isnan(rows.done)])
    baseline = before.latency.p99_ms if before is not None else None
    baseline_availability = before.availability if before is not None else None

    figures = []
    for index, (fault, (start, end)) in enumerate(
        zip(plan.faults, actual, strict=True)
    ):
        later_starts = [
            later.start_s if later_start is None else later_start
            for later, (later_start, _) in zip(
                plan.faults[index + 1 :], actual[index + 1 :], strict=True
            )
        ]
        next_start = min([*later_starts, plan.load_end_s])
        # Recovery is judged until another fault begins after this one has ended.
        recover_until = min(
            [at for at in later_starts if end is None or at >= end] + [plan.load_end_s]
        )
        detect: float | None = None
        if start is not None:
            first = np.searchsorted(error_done, start, side="left")
            if first < error_done.size and error_done[first] < next_start:
                detect = float(error_done[first] - start)
        recover: float | None = None
        if (
            end is not None
            and baseline is not None
            and baseline_availability is not None
        ):
            recover = time_to_recover(
                series,
                fault_end_s=end,
                baseline_availability=baseline_availability,
                baseline_p99_ms=baseline,
                until_s=recover_until,
            )
        figures.append(
            FaultFigures(
                target=fault.target,
                action=fault.action,
                planned_start_s=fault.start_s,
                planned_end_s=fault.end_s,
                actual_start_s=start,
                actual_end_s=end,
                time_to_detect_s=detect,
                time_to_recover_s=recover,
            )
        )
    return figures


def _honesty(
    plan: CellPlan, load: LoadFigures, everything: PhaseSummary
) -> HonestyCheck:
    reasons = []
    dropped_fraction = (
        everything.dropped / everything.offered if everything.offered else None
    )
    if everything.offered == 0:
        reasons.append("no request was due in the load window")
    elif dropped_fraction is not None and dropped_fraction > MAX_DROPPED_FRACTION:
        reasons.append(
            f"the load generator dropped {everything.dropped} of "
            f"{everything.offered} due requests ({dropped_fraction:.2%}, limit "
            f"{MAX_DROPPED_FRACTION:.0%})"
        )
    if load.achieved_rate_fraction < MIN_ACHIEVED_RATE_FRACTION:
        reasons.append(
            f"it sent {load.achieved_send_rate_per_s:.1f} requests/s, "
            f"{load.achieved_rate_fraction:.1%} of the offered "
            f"{plan.offered_rate_per_s:g}/s (limit {MIN_ACHIEVED_RATE_FRACTION:.0%})"
        )
    if load.loadgen_cpu_max_percent is None:
        reasons.append(
            f"no cpu_percent samples of {LOADGEN_SOURCE} during the load: the load "
            "generator was not watched"
        )
    elif load.loadgen_cpu_high_run_samples >= LOADGEN_CPU_LIMIT_SAMPLES:
        reasons.append(
            f"{LOADGEN_SOURCE} ran at or above {LOADGEN_CPU_LIMIT_PERCENT:g}% CPU "
            f"for {load.loadgen_cpu_high_run_samples} consecutive seconds "
            f"(limit {LOADGEN_CPU_LIMIT_SAMPLES})"
        )
    return HonestyCheck(
        valid=not reasons,
        reasons=tuple(reasons),
        dropped_fraction=dropped_fraction,
        achieved_rate_fraction=load.achieved_rate_fraction,
        loadgen_cpu_high_run_samples=load.loadgen_cpu_high_run_samples,
    )


def _check_events(events: pd.DataFrame, problems: list[str]) -> None:
    kinds = {kind.value for kind in EventKind}
    unknown = events[~events["kind"].isin(kinds)]
    if not unknown.empty:
        problems.append(
            f"{len(unknown)} events have a kind that is not an EventKind "
            f"(e.g. {_examples(unknown['kind'].unique())})"
        )


def _event_counts(events: pd.DataFrame) -> dict[str, int]:
    """Observed (not planned) events by kind."""
    counts = events.loc[events["planned"] == 0, "kind"].value_counts()
    return {kind.value: int(counts.get(kind.value, 0)) for kind in EventKind}


def _drain(
    rows: _Rows, records: CellRecords, plan: CellPlan, ledger: LedgerFigures
) -> tuple[float | None, float | None]:
    """The last generator confirmation, and the drain time if all were confirmed."""
    confirmations = records.generators["confirmed_at"].to_numpy(dtype=np.float64)
    if np.isnan(confirmations).all():
        return None, None
    last = float(np.nanmax(confirmations))
    if not rows.accepted.any() or ledger.unconfirmed_accepted:
        return last, None
    return last, max(0.0, last - plan.load_end_s)


def _cell_figures(
    rows: _Rows,
    records: CellRecords,
    plan: CellPlan,
    identity: _Identity,
    values: Future[ValueFigures],
    actual: list[tuple[float | None, float | None]],
) -> CellFigures:
    phases = {
        name.value: _phase_summary(rows, name, start, end)
        for name, (start, end) in _phase_bounds(plan, actual).items()
    }
    series = per_second(
        records.requests, start_s=plan.load_start_s, end_s=plan.load_end_s
    )
    faults = _fault_figures(rows, plan, actual, series, phases.get(Phase.BEFORE.value))
    ledger = _ledger_figures(rows, records, plan, identity, values.result())
    last_confirmation, drain_time = _drain(rows, records, plan, ledger)

    detected = [f.time_to_detect_s for f in faults if f.time_to_detect_s is not None]
    recovered = [f.time_to_recover_s for f in faults if f.time_to_recover_s is not None]
    return CellFigures(
        load=_load_figures(rows, records, plan, phases[Phase.ALL.value]),
        phases=phases,
        ledger=ledger,
        backlog=_backlog_figures(records.samples, plan),
        faults=tuple(faults),
        time_to_detect_s=max(detected) if detected else None,
        time_to_recover_s=(
            max(recovered) if faults and len(recovered) == len(faults) else None
        ),
        drain_time_s=drain_time,
        last_confirmation_s=last_confirmation,
        event_counts=_event_counts(records.events),
    )


def _read_on(
    pool: ThreadPoolExecutor, cell_dir: Path
) -> tuple[CellRecords, Future[ValueFigures]]:
    """The raw files, and the value figures still being computed, on two threads.

    SQLite and the CSV parser release the GIL for much of their work: the generator
    ledgers, then the value queries, go to `pool` while this thread parses the CSV
    files and the requestor ledger.
    """
    requestor_path, generator_paths = ledger_paths(cell_dir)
    reading = {
        path: pool.submit(read_generator_ledger, path) for path in generator_paths
    }
    computing = pool.submit(ledger_value_figures, requestor_path, generator_paths)
    try:
        records = _records(
            cell_dir,
            requestor_path,
            lambda: {path: future.result() for path, future in reading.items()},
        )
    except BaseException:
        computing.cancel()
        for future in reading.values():
            future.cancel()
        raise
    return records, computing


def summarise(cell_dir: Path, plan: CellPlan) -> CellSummary:
    """The figures, checks, gate results and status of the cell in `cell_dir`.

    Unreadable or missing raw files give a harness_error summary without figures,
    not an exception.
    """
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledgers") as pool:
        try:
            records, values = _read_on(pool, cell_dir)
            summary = _summarise_records(records, values, plan)
        except RawFileError as exc:
            logger.error("cell %s/%s: %s", plan.scenario, plan.variant, exc)
            return _unreadable(plan, str(exc))
    logger.info(
        "cell %s/%s summarised in %.2f s: %s",
        plan.scenario,
        plan.variant,
        time.perf_counter() - started,
        summary.status,
    )
    return summary


def _summarise_records(
    records: CellRecords, values: Future[ValueFigures], plan: CellPlan
) -> CellSummary:
    identity = _intern_ids(records)
    rows = _join_rows(records, identity)
    problems: list[str] = []
    _check_rows(rows, plan, problems)
    _check_ids(rows, identity, problems)
    _check_events(records.events, problems)
    actual = _matched_faults(plan, records.events, problems)

    figures = _cell_figures(rows, records, plan, identity, values, actual)
    conservation = ConservationCheck(ok=not problems, problems=tuple(problems))
    honesty = _honesty(plan, figures.load, figures.phases[Phase.ALL.value])
    summary = CellSummary(
        schema_version=RESULTS_SCHEMA_VERSION,
        scenario=plan.scenario,
        variant=plan.variant,
        status=CellStatus.OK,
        reasons=(),
        conservation=conservation,
        honesty=honesty,
        figures=figures,
    )
    gates = tuple(evaluate(plan.gates, summary, plan.variant))
    status, reasons = _status(conservation, honesty, gates)
    return dataclasses.replace(summary, status=status, reasons=reasons, gates=gates)


def _status(
    conservation: ConservationCheck,
    honesty: HonestyCheck,
    gates: Sequence[GateResult],
) -> tuple[CellStatus, tuple[str, ...]]:
    if not conservation.ok:
        return CellStatus.HARNESS_ERROR, conservation.problems
    if not honesty.valid:
        return CellStatus.INVALID, honesty.reasons
    failed = tuple(
        f"gate failed: {gate.describe()}" for gate in gates if not gate.passed
    )
    if failed:
        return CellStatus.GATE_FAILED, failed
    return CellStatus.OK, ()


def _unreadable(plan: CellPlan, problem: str) -> CellSummary:
    return CellSummary(
        schema_version=RESULTS_SCHEMA_VERSION,
        scenario=plan.scenario,
        variant=plan.variant,
        status=CellStatus.HARNESS_ERROR,
        reasons=(problem,),
        conservation=ConservationCheck(ok=False, problems=(problem,)),
        honesty=None,
        figures=None,
    )


def summary_row(document: Mapping[str, Any]) -> dict[str, object]:
    """One flat row of a `CellSummary.to_json()` document, for `summary.csv`.

    Works on a document without figures (a skipped or unreadable cell): the figures
    are then empty.
    """
    figures = document.get("figures") or {}
    phases = figures.get("phases") or {}
    everything = phases.get(Phase.ALL.value) or {}
    outcomes = everything.get("outcomes") or {}
    latency = everything.get("latency") or {}
    load = figures.get("load") or {}
    ledger = figures.get("ledger") or {}
    gates = document.get("gates") or []
    row: dict[str, object] = {
        "scenario": document.get("scenario"),
        "variant": document.get("variant"),
        "status": document.get("status"),
        "offered": everything.get("offered"),
        "sent": everything.get("sent"),
        "accepted": everything.get("accepted"),
    }
    for outcome in (*REJECTED_CLASSES, Outcome.DROPPED):
        row[outcome.value] = outcomes.get(outcome.value)
    row["availability"] = everything.get("availability")
    row["offered_rate_per_s"] = load.get("offered_rate_per_s")
    row["achieved_rate_per_s"] = load.get("achieved_send_rate_per_s")
    for name in (
        "stored",
        "confirmed",
        "silently_lost",
        "late_stored",
        "accepted_without_row",
        "duplicates",
        "duplicate_deliveries_absorbed",
    ):
        row[name] = ledger.get(name)
    for name in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"):
        row[name] = latency.get(name)
    for phase in (Phase.STEADY, Phase.BEFORE, Phase.DURING, Phase.AFTER):
        row[f"availability_{phase.value}"] = (phases.get(phase.value) or {}).get(
            "availability"
        )
    for name in ("time_to_detect_s", "time_to_recover_s", "drain_time_s"):
        row[name] = figures.get(name)
    row["peak_backlog"] = (figures.get("backlog") or {}).get("peak_backlog")
    row["gates_passed"] = sum(1 for gate in gates if gate.get("passed"))
    row["gates_failed"] = sum(1 for gate in gates if not gate.get("passed"))
    row["reasons"] = "; ".join(document.get("reasons") or [])
    return row


def synthetic_cell(
    cell_dir: Path,
    rows: int,
    *,
    variant: Variant = Variant.QUEUE_JETSTREAM,
    rate_per_s: float = 1000.0,
    users: int = 4,
    seed: int = 0,
) -> CellPlan:
    """Write a plausible cell of `rows` requests into `cell_dir`; return its plan.

    For timing `summarise` on cells of a million rows, and as a test fixture. A tenth
    of the rows are warm-up; generator-1 has a fault over the middle fifth of the
    load, during which a fifth of the requests time out (504, the id recorded as
    failed); one request in 2,000 is dropped. Every accepted request is stored and
    confirmed, so the cell passes its conservation and honesty checks.
    """
    from service_core.ledger import GeneratorLedger, RequestorLedger

    rng = np.random.default_rng(seed)
    ledgers = cell_dir / "ledgers"
    ledgers.mkdir(parents=True, exist_ok=True)
    warmup_start = 1_700_000_000.0
    index = np.arange(rows, dtype=np.int64)
    due = warmup_start + index / rate_per_s
    load_start = warmup_start + (rows // 10) / rate_per_s
    load_end = warmup_start + rows / rate_per_s
    fault_start = load_start + 0.4 * (load_end - load_start)
    fault_end = load_start + 0.6 * (load_end - load_start)
    drain_end = load_end + 2.0

    in_fault = (due >= fault_start) & (due < fault_end)
    timeout = in_fault & (rng.random(rows) < 0.2)
    dropped = rng.random(rows) < 0.0005
    timeout &= ~dropped
    accepted = ~timeout & ~dropped
    latency = np.where(timeout, 1000.0, rng.lognormal(np.log(4.0), 0.5, rows))
    sent = np.where(dropped, np.nan, due + rng.uniform(0, 0.001, rows))
    done = np.where(dropped, np.nan, due + latency / 1000.0)
    latency = np.where(dropped, np.nan, latency)
    outcome = np.where(
        dropped,
        Outcome.DROPPED.value,
        np.where(timeout, Outcome.TIMEOUT.value, Outcome.ACCEPTED.value),
    )
    success_status = 202 if variant.is_queue else 201
    status = np.where(dropped, 0, np.where(timeout, 504, success_status))
    ids = np.array([f"{value:032x}" for value in index], dtype=object)
    request_id = np.where(dropped, "", ids)
    pd.DataFrame(
        {
            "seq": (index % users) * SEQ_USER_BLOCK + index // users,
            "due_s": due,
            "sent_s": sent,
            "done_s": done,
            "latency_ms": latency,
            "status": status,
            "outcome": outcome,
            "cause": np.where(timeout, "timeout", ""),
            "request_id": request_id,
        },
        columns=list(REQUEST_COLUMNS),
    ).to_csv(cell_dir / "requests.csv", index=False, float_format="%.6f", na_rep="")

    if variant.is_queue:
        accepted_at = done - 0.0005
        stored_at = accepted_at + 0.005
    else:
        stored_at = done - 0.0005
        accepted_at = stored_at
    confirmed_at = stored_at + 0.003
    hexdigits = rng.bytes(32 * rows).hex()
    values = [hexdigits[64 * row : 64 * (row + 1)] for row in range(rows)]
    requestor_rows = [
        (
            ids[row],
            64,
            "confirmed" if accepted[row] else "failed",
            None if accepted[row] else "timeout",
            values[row] if accepted[row] else None,
            "generator-1" if accepted[row] else None,
            due[row],
            accepted_at[row] if accepted[row] else None,
            stored_at[row] - 0.001 if accepted[row] else None,
            stored_at[row] if accepted[row] else None,
            confirmed_at[row] if accepted[row] else None,
            1 if accepted[row] else 0,
        )
        for row in np.flatnonzero(~dropped)
    ]
    generator_rows = [
        (
            ids[row],
            64,
            values[row],
            "generator-1",
            due[row],
            stored_at[row] - 0.001,
            confirmed_at[row],
            1,
            1,
        )
        for row in np.flatnonzero(accepted)
    ]
    for kind, path, sql, table in (
        (
            RequestorLedger,
            ledgers / REQUESTOR_LEDGER,
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            requestor_rows,
        ),
        (
            GeneratorLedger,
            ledgers / "generator-1.sqlite3",
            "INSERT INTO strings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            generator_rows,
        ),
    ):
        kind(path).close()
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN")
        db.executemany(sql, table)
        db.execute("COMMIT")
        db.close()

    with (cell_dir / "events.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(EVENT_COLUMNS)
        writer.writerows(
            [
                (f"{warmup_start:.6f}", EventKind.PHASE.value, "", "warmup", 0),
                (f"{load_start:.6f}", EventKind.PHASE.value, "", "load", 0),
                (
                    f"{fault_start:.6f}",
                    EventKind.FAULT_PLANNED.value,
                    "generator-1",
                    "errors start",
                    1,
                ),
                (
                    f"{fault_end:.6f}",
                    EventKind.FAULT_PLANNED.value,
                    "generator-1",
                    "errors end",
                    1,
                ),
                (
                    f"{fault_start + 0.01:.6f}",
                    EventKind.FAULT_INJECTED.value,
                    "generator-1",
                    "errors: error_rate=0.2",
                    0,
                ),
                (
                    f"{fault_end + 0.02:.6f}",
                    EventKind.FAULT_CLEARED.value,
                    "generator-1",
                    "errors: fault cleared",
                    0,
                ),
                (f"{load_end:.6f}", EventKind.PHASE.value, "", "drain", 0),
            ]
        )

    with (cell_dir / "samples.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SAMPLE_COLUMNS)
        for second in np.arange(math.ceil(warmup_start), drain_end):
            at_s = f"{second + 0.5:.6f}"
            writer.writerow((at_s, LOADGEN_SOURCE, "cpu_percent", "", 45.0))
            writer.writerow((at_s, "requestor", "cpu_percent", "", 30.0))
            if variant is Variant.QUEUE_JETSTREAM:
                backlog = 50.0 if fault_start <= second < fault_end else 2.0
                writer.writerow((at_s, "jetstream", "stream_messages", "REQ", backlog))
                writer.writerow((at_s, "jetstream", "pending", "REQ/gen", backlog))

    return CellPlan(
        scenario="synthetic",
        variant=variant,
        warmup_start_s=warmup_start,
        load_start_s=load_start,
        load_end_s=load_end,
        drain_end_s=drain_end,
        offered_rate_per_s=rate_per_s,
        faults=(
            FaultWindow(
                start_s=fault_start,
                end_s=fault_end,
                target="generator-1",
                action="errors",
            ),
        ),
        scheduled_requests=rows,
    )


def benchmark_summarise(
    directory: Path, rows: int = 1_000_000
) -> tuple[float, CellSummary]:
    """Seconds `summarise` takes on a synthetic cell of `rows` rows in `directory`."""
    plan = synthetic_cell(directory, rows)
    started = time.perf_counter()
    summary = summarise(directory, plan)
    elapsed = time.perf_counter() - started
    logger.info("summarised %d synthetic rows in %.2f s", rows, elapsed)
    return elapsed, summary

"""A thread-safe log of what happened to a stack, written out as `events.csv`."""

from __future__ import annotations

import csv
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.records import EVENT_COLUMNS, SAMPLE_COLUMNS, EventKind


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    kind: EventKind
    target: str
    detail: str = ""
    planned: bool = False


class EventLog:
    """Events from the fault runner, the sampler and the process watcher."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def add(
        self,
        kind: EventKind,
        target: str,
        detail: str = "",
        *,
        at_s: float | None = None,
        planned: bool = False,
    ) -> Event:
        event = Event(
            at_s=time.time() if at_s is None else at_s,
            kind=kind,
            target=target,
            detail=detail,
            planned=planned,
        )
        with self._lock:
            self._events.append(event)
        return event

    def snapshot(self) -> list[Event]:
        with self._lock:
            return sorted(self._events, key=lambda event: event.at_s)

    def write(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(EVENT_COLUMNS)
            for event in self.snapshot():
                writer.writerow(
                    (
                        f"{event.at_s:.6f}",
                        event.kind.value,
                        event.target,
                        event.detail,
                        int(event.planned),
                    )
                )


class SampleWriter:
    """Appends per-second readings to `samples.csv` as they are taken."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("w", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(SAMPLE_COLUMNS)
        self._lock = threading.Lock()

    def add(
        self, at_s: float, source: str, metric: str, key: str, value: float
    ) -> None:
        with self._lock:
            self._writer.writerow((f"{at_s:.6f}", source, metric, key, value))

    def flush(self) -> None:
        with self._lock:
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()

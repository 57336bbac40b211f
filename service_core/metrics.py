"""A small Prometheus text-format registry, enough for one process's `/metrics`.

Counters are kept per label set; gauges are read from callbacks when scraped, so the
number of ledger rows or the breaker state is always current without bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)


GaugeReading = Iterable[tuple[dict[str, str], float]]


@dataclass
class Gauge:
    name: str
    help: str
    read: Callable[[], GaugeReading]


class Registry:
    """The metrics of one service process."""

    def __init__(self, prefix: str = "coupling_") -> None:
        self.prefix = prefix
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}

    def counter(self, name: str, help: str) -> Counter:
        full = self.prefix + name
        if full not in self._counters:
            self._counters[full] = Counter(full, help)
        return self._counters[full]

    def gauge(self, name: str, help: str, read: Callable[[], GaugeReading]) -> None:
        full = self.prefix + name
        self._gauges[full] = Gauge(full, help, read)

    def render(self) -> str:
        lines: list[str] = []
        for counter in self._counters.values():
            lines.append(f"# HELP {counter.name} {counter.help}")
            lines.append(f"# TYPE {counter.name} counter")
            for labels, value in sorted(counter.values.items()):
                lines.append(f"{counter.name}{_labels(labels)} {_number(value)}")
        for gauge in self._gauges.values():
            lines.append(f"# HELP {gauge.name} {gauge.help}")
            lines.append(f"# TYPE {gauge.name} gauge")
            for labels_dict, value in gauge.read():
                labels = tuple(sorted(labels_dict.items()))
                lines.append(f"{gauge.name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def parse(text: str) -> dict[str, float]:
    """Read a Prometheus text page back into `{'name{labels}': value}`.

    Used by the harness and the tests, which see services only through their surfaces.
    """
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        samples[key] = float(value)
    return samples

"""Scenarios: a load profile, a fault schedule and the gates, read from TOML files.

One file per scenario in `bench/scenarios/`. Times in a file are those of the default
profile; a profile such as `quick` scales every duration and fault time by its
`time_scale` (with floors, so that a quick cell still has a warm-up and a fault long
enough to see) and the rate by its `rate_scale`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from bench.gates import Gate, GateError, parse_gates
from bench.stack import Variant


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the key."""


class FaultAction(StrEnum):
    KILL = "kill"  # SIGKILL; started again after duration_s when given
    FREEZE = "freeze"  # SIGSTOP, then SIGCONT after duration_s
    SLOW = "slow"  # POST /admin/fault latency_ms, cleared after duration_s
    ERRORS = "errors"  # POST /admin/fault error_rate, cleared after duration_s
    RESTART = "restart"  # SIGTERM, wait for the exit, start again at once


@dataclass(frozen=True, kw_only=True)
class FaultStep:
    at_s: float  # seconds after the measured load starts (after the warm-up)
    action: FaultAction
    target: str  # requestor, generator-1, nats
    duration_s: float = 0.0
    latency_ms: float = 0.0
    error_rate: float = 0.0

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s


@dataclass(frozen=True, kw_only=True)
class LoadProfile:
    rate_per_s: float
    warmup_s: float
    duration_s: float
    drain_s: float


@dataclass(frozen=True, kw_only=True)
class Profile:
    """How a named profile changes the times and rates written in a scenario."""

    name: str
    time_scale: float = 1.0
    rate_scale: float = 1.0
    min_warmup_s: float = 1.0
    min_fault_s: float = 1.5
    min_drain_s: float = 2.0


PROFILES = {
    "default": Profile(name="default"),
    "quick": Profile(name="quick", time_scale=0.25, rate_scale=0.5),
}


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    description: str
    load: LoadProfile
    faults: tuple[FaultStep, ...] = ()
    gates: tuple[Gate, ...] = ()
    generators: int = 1
    path: Path | None = None
    variants: tuple[Variant, ...] = tuple(Variant)
    service_flags: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def skip_reason(self, variant: Variant) -> str | None:
        """Why `variant` cannot run this scenario, or None if it can."""
        if not variant.is_queue and any(f.target == "nats" for f in self.faults):
            return "the sync variants have no broker to kill"
        if variant not in self.variants:
            return f"scenario {self.name} is not defined for {variant}"
        return None

    def scaled(self, profile: Profile, rate_per_s: float | None = None) -> Scenario:
        """This scenario under `profile`, with an optional fixed rate."""
        scale = profile.time_scale
        load = LoadProfile(
            rate_per_s=rate_per_s or self.load.rate_per_s * profile.rate_scale,
            warmup_s=round(max(self.load.warmup_s * scale, profile.min_warmup_s), 3),
            duration_s=round(self.load.duration_s * scale, 3),
            drain_s=round(max(self.load.drain_s * scale, profile.min_drain_s), 3),
        )
        faults = tuple(
            replace(
                step,
                at_s=round(step.at_s * scale, 3),
                duration_s=round(max(step.duration_s * scale, profile.min_fault_s), 3)
                if step.duration_s
                else 0.0,
            )
            for step in self.faults
        )
        return replace(self, load=load, faults=faults)

    @property
    def fault_window_s(self) -> tuple[float, float] | None:
        """The span from the first fault's start to the last one's end."""
        if not self.faults:
            return None
        start = min(step.at_s for step in self.faults)
        end = max(step.end_s for step in self.faults)
        return start, end


def scenario_dir() -> Path:
    return Path(str(resources.files("bench") / "scenarios"))


def load_scenarios(directory: Path | None = None) -> dict[str, Scenario]:
    """Every scenario in `directory` (the packaged ones by default), by name."""
    directory = directory or scenario_dir()
    scenarios = {}
    for path in sorted(directory.glob("*.toml")):
        scenario = parse_scenario(path)
        scenarios[scenario.name] = scenario
    if not scenarios:
        raise ScenarioError(f"no scenario files (*.toml) in {directory}")
    return scenarios


def parse_scenario(path: Path) -> Scenario:
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from exc

    def need(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
        if key not in table:
            raise ScenarioError(f"{path}: {where} needs '{key}'")
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise ScenarioError(
                f"{path}: {where}.{key} must be {kind.__name__}, got {value!r}"
            )
        return value

    load_raw = need(raw, "load", dict, "the file")
    load = LoadProfile(
        rate_per_s=need(load_raw, "rate_per_s", float, "[load]"),
        warmup_s=need(load_raw, "warmup_s", float, "[load]"),
        duration_s=need(load_raw, "duration_s", float, "[load]"),
        drain_s=need(load_raw, "drain_s", float, "[load]"),
    )
    faults = []
    for index, step in enumerate(raw.get("faults", [])):
        where = f"[[faults]] #{index + 1}"
        action_text = need(step, "action", str, where)
        try:
            action = FaultAction(action_text)
        except ValueError:
            choices = ", ".join(action.value for action in FaultAction)
            raise ScenarioError(
                f"{path}: {where}.action: expected one of {choices}, "
                f"got {action_text!r}"
            ) from None
        fault = FaultStep(
            at_s=need(step, "at_s", float, where),
            action=action,
            target=need(step, "target", str, where),
            duration_s=float(step.get("duration_s", 0.0)),
            latency_ms=float(step.get("latency_ms", 0.0)),
            error_rate=float(step.get("error_rate", 0.0)),
        )
        if fault.end_s > load.duration_s:
            raise ScenarioError(
                f"{path}: {where} ends at {fault.end_s} s, after the load "
                f"({load.duration_s} s); recovery must be measured under load"
            )
        faults.append(fault)
    try:
        gates = tuple(parse_gates(raw.get("gates", []), source=str(path)))
    except GateError as exc:
        raise ScenarioError(str(exc)) from exc
    variants = tuple(Variant(name) for name in raw.get("variants", list(Variant)))
    flags = {
        role: tuple(str(flag) for flag in values)
        for role, values in raw.get("service_flags", {}).items()
    }
    return Scenario(
        name=need(raw, "name", str, "the file"),
        description=need(raw, "description", str, "the file"),
        load=load,
        faults=tuple(faults),
        gates=gates,
        generators=int(raw.get("generators", 1)),
        path=path,
        variants=variants,
        service_flags=flags,
    )

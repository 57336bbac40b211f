"""Faults injected into a generator at run time, through `POST /admin/fault`.

A fault slows the generator's work by `latency_ms` and makes a share `error_rate` of
it fail, so the harness can degrade a live service without restarting it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Annotated

import msgspec


class FaultSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The body of `POST /admin/fault`; unknown fields are refused to catch typos."""

    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=600_000)] = 0.0
    error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class InjectedFailure(Exception):
    """The work failed because a fault said so."""


@dataclass
class FaultInjector:
    """The fault currently in force in one process; none by default."""

    spec: FaultSpec = field(default_factory=FaultSpec)
    rng: random.Random = field(default_factory=random.Random)

    @property
    def active(self) -> bool:
        return self.spec.latency_ms > 0 or self.spec.error_rate > 0

    async def apply(self) -> None:
        """Delay and possibly fail one unit of work, as the current fault says."""
        if self.spec.latency_ms > 0:
            await asyncio.sleep(self.spec.latency_ms / 1000)
        if self.spec.error_rate > 0 and self.rng.random() < self.spec.error_rate:
            raise InjectedFailure(
                f"injected failure (error_rate={self.spec.error_rate})"
            )

"""Fixtures that start real stacks: nats-server, services as processes, SQLite files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.stack import Stack, StackOptions, Variant, build_stack

StartStack = Callable[..., Stack]


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[StartStack]:
    """Start a variant's stack under a temporary folder; every process ends after."""
    stacks: list[Stack] = []

    def start(variant: Variant, **options: Any) -> Stack:
        run_dir = tmp_path / f"{variant.value}-{len(stacks)}"
        stack = build_stack(variant, run_dir, StackOptions(**options))
        stacks.append(stack)
        stack.start()
        return stack

    yield start
    for stack in stacks:
        stack.stop()

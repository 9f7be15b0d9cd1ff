"""The timer wheel against a plain heapq of tuples, side by side.

    python bench/wheel.py                # 10^4, 10^5, 10^6 timers; spans of 1 hour and 1 day
    python bench/wheel.py --quick        # 10^4 timers only (a smoke run)
    python bench/wheel.py --sizes 1000000 --spans hour --repeat 5 --wait-idle 180

Per size and span, both sides get the same random deadlines (uniform over the
span, 1 tick = 1 ms, time starts at 0). The baseline is the cheapest heapq
timer queue there is: ``(deadline, seq, payload)`` tuples, ``heappush`` to
arm, ``heappop`` until empty to expire, nothing else in the loop.

Cancellation is measured apart, on a second run of each side that cancels
the same 10% of the timers: the wheel by ``cancel(handle)``, the heap by
adding the timer's ``seq`` to a set that the pop loop checks (and empties).
That keeps the headline rows free of any cancel machinery on the heap's
side, which only favours the baseline: the set check costs only the
workload that cancels, and a lazily-marked list entry (the heapq docs'
recipe) would make every entry a mutable list, slower to compare and push.

Operations, in ns per timer, median (min-max) of ``--repeat`` runs (3):

- insert / push: arm all N timers.
- expire, one advance: ``wheel.advance(span)`` once, against popping the heap
  until empty.
- expire, driver loop: ``advance(next_deadline())`` until empty, which is what
  the scheduler does when it keeps up with every deadline; against the same
  pop-until-empty (a heap's driver loop pops whatever is due: the same pops).
- insert + expire: the sum, per run; the ratio is of the medians.
- cancel: per cancelled timer; then insert + cancel + expire in the driver
  loop with 10% cancelled, against push + set-add + checked pops.

Then the latency of single calls in the driver loop (the wheel's bounded
``advance``; 10% cancelled), also for the case that made cascades expensive
(bench/scheduler_timers.py's ``--align worst``: 10^5 timers due within 2,000
ticks, nearly all in one level-2 slot, which one advance enters; a classic
wheel re-inserts all of them right then), and the peak memory per armed
timer from tracemalloc on a separate run. The garbage collector stays
enabled, as in an application (at 10^6 live timers its full passes are a
large and noisy share of insert / push); what exists before a timed run is
frozen out of it.
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

from bench._harness import load, percentile, spread, wait_idle
from kernel.time.wheel import TimerWheel

HOUR = 3_600_000
DAY = 24 * HOUR
CANCEL_SHARE = 0.10
#: Ticks of the crowded-slot scenario (bench/scheduler_timers.py's 2 s window).
CROWD_WINDOW = 2_000

Entry = tuple[int, int, int]
"""A heap entry: (deadline, seq, payload); seq breaks ties in insertion order."""


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


def run_heap(deadlines: list[int]) -> tuple[dict[str, int], list[int]]:
    """The baseline: plain ``(deadline, seq, payload)`` tuples, ``heappush``
    all, ``heappop`` until empty; no cancel check in the loop at all."""
    heap: list[Entry] = []

    def arm() -> None:
        push = heapq.heappush
        for i, deadline in enumerate(deadlines):
            push(heap, (deadline, i, i))

    def expire() -> list[int]:
        fired: list[int] = []
        append = fired.append
        pop = heapq.heappop
        while heap:
            append(pop(heap)[2])
        return fired

    settle()
    _, t_push = timed(arm)
    fired, t_pop = timed(expire)
    return {"insert": t_push, "expire": t_pop}, fired


def run_heap_cancelling(
    deadlines: list[int], cancels: list[int]
) -> tuple[dict[str, int], list[int]]:
    """The baseline with cancellation: a cancel adds the timer's ``seq`` to a
    set, and a pop skips the entries whose ``seq`` is in it (the heap keeps
    plain tuples; the set costs only the workloads that cancel)."""
    heap: list[Entry] = []
    cancelled: set[int] = set()

    def arm() -> None:
        push = heapq.heappush
        for i, deadline in enumerate(deadlines):
            push(heap, (deadline, i, i))

    def cancel() -> None:
        add = cancelled.add
        for i in cancels:
            add(i)

    def expire() -> list[int]:
        fired: list[int] = []
        append = fired.append
        pop = heapq.heappop
        while heap:
            _, seq, payload = pop(heap)
            if seq in cancelled:
                cancelled.discard(seq)
            else:
                append(payload)
        return fired

    settle()
    _, t_push = timed(arm)
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
    for i, deadline in enumerate(deadlines):
        heapq.heappush(heap, (deadline, i, i))
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
    for i, deadline in enumerate(deadlines):
        heapq.heappush(heap, (deadline, i, values[i]))
    heap_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return wheel_peak / n, heap_peak / n


def fmt_us(ns: float) -> str:
    return f"{ns / 1000:,.1f}"


def bench_size(n: int, span: int, span_name: str, repeat: int, seed: int) -> None:
    deadlines, cancels = workload(n, span, seed)
    runs: dict[str, list[float]] = {}

    def record(key: str, ns: int, per: int = n) -> None:
        runs.setdefault(key, []).append(ns / max(1, per))

    for _ in range(repeat):
        heap, heap_fired = run_heap(deadlines)
        record("heap insert", heap["insert"])
        record("heap expire", heap["expire"])
        record("heap both", heap["insert"] + heap["expire"])
        once, fired = run_wheel(deadlines, [], span, driven=False)
        record("wheel insert", once["insert"])
        record("wheel expire", once["expire"])
        record("wheel both", once["insert"] + once["expire"])
        driven, driven_fired = run_wheel(deadlines, [], span, driven=True)
        record("wheel driven", driven["expire"])
        record("wheel driven both", driven["insert"] + driven["expire"])
        if not fired == driven_fired == heap_fired:
            raise SystemExit("wheel and heapq disagree on the firing order")
        heap_c, heap_c_fired = run_heap_cancelling(deadlines, cancels)
        record("heap cancel", heap_c["cancel"], len(cancels))
        record("heap c all", heap_c["insert"] + heap_c["cancel"] + heap_c["expire"])
        wheel_c, wheel_c_fired = run_wheel(deadlines, cancels, span, driven=True)
        record("wheel cancel", wheel_c["cancel"], len(cancels))
        record("wheel c all", wheel_c["insert"] + wheel_c["cancel"] + wheel_c["expire"])
        if wheel_c_fired != heap_c_fired:
            raise SystemExit("wheel and heapq disagree on the firing order (with cancels)")

    def cell(key: str) -> str:
        return spread(runs[key]) if len(runs[key]) > 1 else f"{runs[key][0]:,.0f}"

    med = {key: statistics.median(values) for key, values in runs.items()}
    rows = [
        ("insert / push", "wheel insert", "heap insert"),
        ("expire: one advance / pop all", "wheel expire", "heap expire"),
        ("expire: driver loop / pop all", "wheel driven", "heap expire"),
        ("insert + expire (one advance)", "wheel both", "heap both"),
        ("insert + expire (driver loop)", "wheel driven both", "heap both"),
        ("cancel (per cancelled timer)", "wheel cancel", "heap cancel"),
        ("insert + cancel 10% + expire (driver)", "wheel c all", "heap c all"),
    ]
    print(
        f"\nN = {n:,}, deadlines uniform over 1 {span_name} ({span:,} ticks), "
        f"median (min-max) of {repeat}"
    )
    print(f"  {'ns per timer':<38}{'wheel':>24}{'heapq':>24}{'wheel/heapq':>13}")
    for name, wheel_key, heap_key in rows:
        print(
            f"  {name:<38}{cell(wheel_key):>24}{cell(heap_key):>24}"
            f"{med[wheel_key] / med[heap_key]:>13.2f}"
        )


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
            f"  {name:<28}{len(calls):>10,}{fmt_us(percentile(calls, 50)):>8}"
            f"{fmt_us(percentile(calls, 99)):>8}{fmt_us(percentile(calls, 99.9)):>8}"
            f"{fmt_us(calls[-1]):>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 timers only")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--sizes", type=int, nargs="+", help="timer counts to run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median shown)")
    parser.add_argument("--spans", nargs="+", choices=("hour", "day"), default=["hour", "day"])
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, help="seconds to wait for load < 1.0 first"
    )
    args = parser.parse_args()
    if args.wait_idle and not wait_idle(args.wait_idle):
        print(f"(still busy after {args.wait_idle:.0f} s)", file=sys.stderr)
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    spans = [(HOUR, "hour"), (DAY, "day")]
    spans = [(span, name) for span, name in spans if name in args.spans]
    print(f"Python {sys.version.split()[0]}, TimerWheel (8 levels of 64 slots) vs heapq ({load()})")
    for span, span_name in spans:
        for n in sizes:
            bench_size(n, span, span_name, args.repeat, args.seed)
    biggest = sizes[-1]
    for span, span_name in spans:
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

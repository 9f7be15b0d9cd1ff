"""100,000 timers through the kernel scheduler against one trio task per timer.

    python bench/scheduler_timers.py             # n = 100,000 timers over a 2 s window
    python bench/scheduler_timers.py --quick     # n = 10,000 (a smoke run)
    python bench/scheduler_timers.py --n 50000 --window 1.0
    python bench/scheduler_timers.py --align worst --variants kernel-timers

Three variants, each in its own fresh subprocess of this script, so that the
peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is that variant's alone:

- baseline: n trio tasks, each ``await trio.sleep_until(deadline)`` and then
  record the time (trio keeps one deadline per task's cancel scope);
- kernel timers: n ``scheduler.call_at(deadline, callback)``, raw timers in
  the wheel whose callbacks run on the driver task;
- kernel schedules: n ``scheduler.add_schedule(func, At(...))``, full
  one-shot schedules, each fire starting a trio task in the scheduler's
  nursery.

Every variant records ``trio.current_time()`` when its timer fires (the same
recording function for all three); lateness is that minus the deadline.
Deadlines are uniform over a ``--window``-second window (same seed for all)
meant to start 0.5 s after setup (creating the tasks / inserting the timers)
ends. Deadlines must be known while setting up, so the start is planned: a
pilot subprocess sets up n/4 of the same variant, and the window starts at
setup start + 1.5 x 4 x the pilot's setup time + 0.5 s. The table reports
the lead actually left between the end of setup and the first deadline; if a
setup overran its plan (lead under 0.4 s), the variant is re-run with a plan
from its measured setup, so that lateness always measures the firing.

Where the window falls against the wheel's level-2 slots (4.096 s wide)
matters to the kernel: a slot boundary inside the window means one
``advance`` cascades every timer due after it. trio's clock starts at a
random offset, so by default that happens in about half the runs; ``--align
worst`` places a boundary 10 ms into the window every time.

"wall" is from setup start to the end of the run (everything fired, the
nursery or scheduler closed); "ideal" is setup + lead + window, what a
scheduler that fires on time would take. RSS "net" subtracts the RSS before
setup (interpreter, trio, kernel, the deadline and result arrays). The
garbage collector stays enabled, as in an application; its pauses are
reported. ``--profile`` adds a cProfile of each variant's run to stderr
(it slows the run, so its lateness is not comparable).

The goal (from the issue): the kernel fires every timer with p99 lateness
under 10 ms and at most a fifth of the baseline's peak RSS.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import pstats
import random
import resource
import subprocess
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attrs
import trio

import kernel
from kernel.time.clock import TICKS_PER_SECOND
from kernel.time.wheel import SLOTS_PER_LEVEL

VARIANTS = ("baseline", "kernel-timers", "kernel-schedules")
LABELS = {
    "baseline": "trio task per timer",
    "kernel-timers": "kernel call_at",
    "kernel-schedules": "kernel add_schedule(At)",
}
#: Seconds between the end of setup and the start of the deadline window.
LEAD = 0.5
#: A run whose actual lead fell under this is re-run with a longer plan.
MIN_LEAD = 0.4
PILOT_SHARE = 4
PLAN_MARGIN = 1.5
#: Give up waiting this long after the window ends (fired < n is reported).
GIVE_UP_AFTER = 120.0
#: With ``--align worst``: the level-2 boundary falls this long after the window starts.
WORST_BOUNDARY_AFTER = 0.010
GOAL_P99_MS = 10.0
GOAL_RSS_SHARE = 0.2


# -- the child: one variant in this process -----------------------------------


class GcWatch:
    """Pause times of the collector (``gc.callbacks``), split into those in
    setup and those once setup has ended (the ones that can make fires late)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[bool, int, float]] = []  # (firing?, generation, seconds)
        self.firing = False
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            self.pauses.append((self.firing, info["generation"], pause))

    def summary(self, *, firing: bool) -> dict[str, float]:
        pauses = [(gen, pause) for phase, gen, pause in self.pauses if phase is firing]
        return {
            "runs": len(pauses),
            "gen2": sum(1 for gen, _ in pauses if gen == 2),
            "max": max((pause for _, pause in pauses), default=0.0),
            "total": sum(pause for _, pause in pauses),
        }


class FireProbe:
    """Where every variant records its fires: one float per timer, no
    per-fire allocation, so the probe costs all variants the same."""

    __slots__ = ("calls", "done", "expected", "fire_times", "gc_watch", "n", "rss_setup")

    def __init__(self, n: int, gc_watch: GcWatch) -> None:
        self.n = n
        self.expected = n  # less any one-shot schedule whose time had passed when added
        self.calls = 0
        self.fire_times = array("d", bytes(8 * n))  # 0.0 = not fired (trio time is >> 0)
        self.done = trio.Event()
        self.gc_watch = gc_watch
        self.rss_setup = 0.0

    def record(self, i: int) -> None:
        self.fire_times[i] = trio.current_time()
        self.calls += 1
        if self.calls >= self.expected:
            self.done.set()

    def setup_ended(self) -> float:
        self.gc_watch.firing = True
        self.rss_setup = peak_rss_mb()
        if self.calls >= self.expected:
            self.done.set()
        return trio.current_time()


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


@attrs.frozen
class WindowPlan:
    """Where the deadline window starts: ``LEAD`` after the planned end of setup.

    ``worst_aligned`` pushes the start to just before a boundary of the
    wheel's level-2 slots (64 x 64 ticks, 4.096 s at 1 ms), so that nearly
    every timer waits in one level-2 slot and is cascaded in a single
    ``advance`` right after the first deadlines: the worst case for the
    driver's longest stall. With ``random`` alignment (trio's clock starts at
    a random offset) a boundary falls inside a 2 s window about half the time.
    """

    planned_setup: float
    worst_aligned: bool = False

    def window_start(self, setup_start: float) -> float:
        start = setup_start + self.planned_setup + LEAD
        if not self.worst_aligned:
            return start
        span = SLOTS_PER_LEVEL**2 / TICKS_PER_SECOND
        boundary = math.ceil((start + WORST_BOUNDARY_AFTER) / span) * span
        return boundary - WORST_BOUNDARY_AFTER


async def wait_all_fired(probe: FireProbe, window_end: float) -> None:
    with trio.move_on_at(window_end + GIVE_UP_AFTER):
        await probe.done.wait()


async def run_baseline(
    probe: FireProbe, offsets: array[float], plan: WindowPlan, setup_only: bool
) -> dict[str, float]:
    n = probe.n
    record = probe.record
    armed = 0
    all_armed = trio.Event()
    async with trio.open_nursery() as nursery:
        setup_start = trio.current_time()
        start = plan.window_start(setup_start)

        async def sleep_then_record(i: int) -> None:
            nonlocal armed
            deadline = start + offsets[i]
            armed += 1
            if armed == n:
                all_armed.set()
            await trio.sleep_until(deadline)
            record(i)

        for i in range(n):
            nursery.start_soon(sleep_then_record, i)
        # setup ends once every task has run its first step into sleep_until
        await all_armed.wait()
        setup_end = probe.setup_ended()
        if setup_only:
            nursery.cancel_scope.cancel()
        else:
            await wait_all_fired(probe, start + offsets_max(offsets))
            nursery.cancel_scope.cancel()
    return {"setup_start": setup_start, "setup_end": setup_end, "start": start}


async def run_kernel_timers(
    probe: FireProbe, offsets: array[float], plan: WindowPlan, setup_only: bool
) -> dict[str, float]:
    n = probe.n
    record = probe.record
    async with kernel.open_scheduler() as scheduler:
        call_at = scheduler.call_at
        setup_start = trio.current_time()
        start = plan.window_start(setup_start)
        for i in range(n):
            call_at(start + offsets[i], partial(record, i))
        setup_end = probe.setup_ended()
        if not setup_only:
            await wait_all_fired(probe, start + offsets_max(offsets))
    return {"setup_start": setup_start, "setup_end": setup_end, "start": start}


async def run_kernel_schedules(
    probe: FireProbe, offsets: array[float], plan: WindowPlan, setup_only: bool
) -> dict[str, float]:
    n = probe.n
    record = probe.record
    At = kernel.At
    async with kernel.open_scheduler() as scheduler:
        add_schedule = scheduler.add_schedule
        to_wall = scheduler.clock.to_wall
        setup_start = trio.current_time()
        start = plan.window_start(setup_start)
        for i in range(n):
            schedule = add_schedule(partial(record, i), At(to_wall(start + offsets[i])))
            if schedule.next_fire_time is None:
                # At() in the past never fires (the setup overran its plan)
                probe.expected -= 1
        setup_end = probe.setup_ended()
        if not setup_only:
            await wait_all_fired(probe, start + offsets_max(offsets))
    return {"setup_start": setup_start, "setup_end": setup_end, "start": start}


RunVariant = Callable[[FireProbe, "array[float]", WindowPlan, bool], Awaitable[dict[str, float]]]
RUNNERS: dict[str, RunVariant] = {
    "baseline": run_baseline,
    "kernel-timers": run_kernel_timers,
    "kernel-schedules": run_kernel_schedules,
}


def offsets_max(offsets: array[float]) -> float:
    return max(offsets) if offsets else 0.0


def make_offsets(n: int, window: float, seed: int) -> array[float]:
    rng = random.Random(seed)
    return array("d", (rng.random() * window for _ in range(n)))


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def run_child(args: argparse.Namespace) -> None:
    n = args.n // PILOT_SHARE if args.pilot else args.n
    offsets = make_offsets(n, args.window, args.seed)
    gc.collect()
    rss_before = peak_rss_mb()
    watch = GcWatch()
    gc.callbacks.append(watch)

    async def main() -> tuple[FireProbe, dict[str, float]]:
        probe = FireProbe(n, watch)
        plan = WindowPlan(args.planned_setup, worst_aligned=args.align == "worst")
        times = await RUNNERS[args.child](probe, offsets, plan, args.pilot)
        times["end"] = trio.current_time()  # the nursery or scheduler has closed
        return probe, times

    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        probe, times = profiler.runcall(trio.run, main)
    else:
        probe, times = trio.run(main)
    gc.callbacks.remove(watch)
    peak = peak_rss_mb()

    setup = times["setup_end"] - times["setup_start"]
    result: dict[str, Any] = {"variant": args.child, "n": n, "setup": setup}
    if not args.pilot:
        start = times["start"]
        late = sorted(
            fired - (start + offset)
            for fired, offset in zip(probe.fire_times, offsets, strict=True)
            if fired
        )
        result.update(
            lead=start - times["setup_end"],
            wall=times["end"] - times["setup_start"],
            fired=len(late),
            calls=probe.calls,
            p50=percentile(late, 0.50) if late else float("nan"),
            p99=percentile(late, 0.99) if late else float("nan"),
            max=late[-1] if late else float("nan"),
            min=late[0] if late else float("nan"),
            rss_peak=peak,
            rss_before=rss_before,
            rss_setup=probe.rss_setup,
            dropped=n - probe.expected,
            gc_setup=watch.summary(firing=False),
            gc_firing=watch.summary(firing=True),
        )
    if profiler is not None and not args.pilot:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        print(f"==== cProfile: {args.child} ====\n{out.getvalue()}", file=sys.stderr)
    print(json.dumps(result))


# -- the parent: run the variants, print the table -----------------------------


def spawn(args: argparse.Namespace, variant: str, *, planned_setup: float, pilot: bool) -> Any:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        variant,
        "--n",
        str(args.n),
        "--window",
        repr(args.window),
        "--seed",
        str(args.seed),
        "--planned-setup",
        repr(planned_setup),
    ]
    if pilot:
        command.append("--pilot")
    if args.profile:
        command.append("--profile")
    command += ["--align", args.align]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.stderr:
        print(done.stderr, file=sys.stderr, end="")
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    pilot = spawn(args, variant, planned_setup=0.0, pilot=True)
    planned = PLAN_MARGIN * PILOT_SHARE * pilot["setup"]
    result: dict[str, Any] = spawn(args, variant, planned_setup=planned, pilot=False)
    result["planned"] = planned
    result["reruns"] = 0
    if result["lead"] < MIN_LEAD:
        planned = PLAN_MARGIN * result["setup"]
        first_lead = result["lead"]
        result = spawn(args, variant, planned_setup=planned, pilot=False)
        result.update(planned=planned, reruns=1, first_lead=first_lead)
    return result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def ratio(value: float, base: float | None) -> str:
    if base is None or not base:
        return "-"
    return f"{value / base:.3f}"


def print_tables(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    base = next((r for r in results if r["variant"] == "baseline"), None)
    print(
        f"\nn = {args.n:,} timers, deadlines uniform over {args.window:g} s starting "
        f"{LEAD:g} s (or more) after setup ends, {args.align} alignment to the wheel's "
        "level-2 slots; lateness = fire time - deadline"
    )
    head = (
        f"{'variant':<24}{'setup s':>8}{'lead s':>8}{'wall s':>8}{'ideal s':>8}{'fired':>9}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'RSS MB':>8}{'net MB':>8}"
        f"{'RSS/base':>9}{'p99/base':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ideal = r["setup"] + r["lead"] + args.window
        print(
            f"{LABELS[r['variant']]:<24}{r['setup']:>8.3f}{r['lead']:>8.3f}{r['wall']:>8.2f}"
            f"{ideal:>8.2f}{r['fired']:>9,}{ms(r['p50']):>9}{ms(r['p99']):>9}{ms(r['max']):>9}"
            f"{r['rss_peak']:>8.1f}{r['rss_peak'] - r['rss_before']:>8.1f}"
            f"{ratio(r['rss_peak'], base['rss_peak'] if base else None):>9}"
            f"{ratio(r['p99'], base['p99'] if base else None):>9}"
        )
    print(
        f"\n{'details':<24}{'setup µs':>9}{'RSS@setup':>10}{'min ms':>8}{'planned s':>10}"
        f"{'| gc in setup: runs':>19}{'gen2':>5}{'max ms':>8}{'sum ms':>8}"
        f"{'| gc in firing: runs':>20}{'gen2':>5}{'max ms':>8}{'sum ms':>8}"
    )
    for r in results:
        notes = []
        if r["reruns"]:
            notes.append(f"re-run: first lead was {r['first_lead']:.3f} s")
        if r["dropped"]:
            notes.append(f"{r['dropped']:,} At() already past when added")
        if r["calls"] != r["fired"]:
            notes.append(f"{r['calls'] - r['fired']:,} duplicate fires!")
        gs, gf = r["gc_setup"], r["gc_firing"]
        print(
            f"{LABELS[r['variant']]:<24}{r['setup'] / args.n * 1e6:>9.2f}"
            f"{r['rss_setup']:>10.1f}{ms(r['min']):>8}"
            f"{r['planned']:>10.3f}{gs['runs']:>19}{gs['gen2']:>5}{ms(gs['max']):>8}"
            f"{ms(gs['total']):>8}{gf['runs']:>20}{gf['gen2']:>5}{ms(gf['max']):>8}"
            f"{ms(gf['total']):>8}" + (f"  ({'; '.join(notes)})" if notes else "")
        )
    print(
        "setup µs: per timer; RSS@setup: peak RSS (MB) when setup ended; "
        "min ms: the earliest fire relative to its deadline"
    )
    if base is None:
        return
    print(f"\ngoal: all fired, p99 < {GOAL_P99_MS:g} ms, peak RSS <= {GOAL_RSS_SHARE:g} x baseline")
    for r in results:
        if r is base:
            continue
        misses = []
        if r["fired"] != args.n:
            misses.append(f"fired {r['fired']:,} of {args.n:,}")
        if not r["p99"] * 1000 < GOAL_P99_MS:
            misses.append(f"p99 {ms(r['p99'])} ms")
        if r["rss_peak"] > GOAL_RSS_SHARE * base["rss_peak"]:
            misses.append(
                f"RSS {r['rss_peak']:.1f} MB > {GOAL_RSS_SHARE * base['rss_peak']:.1f} MB"
            )
        verdict = "met" if not misses else "MISSED: " + "; ".join(misses)
        print(f"  {LABELS[r['variant']]:<24}{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="timers per variant")
    parser.add_argument("--window", type=float, default=2.0, help="seconds the deadlines span")
    parser.add_argument("--quick", action="store_true", help="n = 10,000 (a smoke run)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="which to run"
    )
    parser.add_argument(
        "--align",
        choices=("random", "worst"),
        default="random",
        help="where the window falls against the wheel's level-2 slots (see WindowPlan)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile each run to stderr")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--planned-setup", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--pilot", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.n = 10_000
    if args.n < PILOT_SHARE or args.window <= 0:
        parser.error("--n must be at least 10 and --window positive")
    if args.child:
        run_child(args)
        return
    cores = os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"Python {sys.version.split()[0]}, trio {trio.__version__}, {cores} cores "
        f"(load average {load}), each variant in a fresh subprocess"
    )
    results = [measure(args, variant) for variant in args.variants]
    print_tables(args, results)


if __name__ == "__main__":
    main()

"""The kernel's work queue (`kernel.jobs.queue.JobQueue`) against bare trio and APScheduler 4.

    python bench/work_queue.py --repeat 3 --wait-idle 300     # the figures in bench/README.md
    python bench/work_queue.py --quick                        # fewer jobs, 10 s schedule runs
    python bench/work_queue.py --only throughput              # or: schedules, durable
    python bench/work_queue.py --only schedules --seconds 60 --counts 10000

Every variant runs in its own fresh subprocess of this script (``--variant``),
so that one variant's garbage, threads or leftover tasks cannot slow the next;
with ``--repeat`` the variants alternate, so drift in the machine's load hits
them alike. The machine is shared: ``--wait-idle`` waits (up to that many
seconds) for the 1-minute load average to fall under 1.0 before each cell,
and the load average is printed with each table.

1. throughput (issue #11): N no-op jobs (default 20,000) through the memory
   store at concurrency 1, 16 and 64, enqueued one by one while the workers
   run (no pre-filling), timed from the first enqueue to the last job done.
   Beside it: the physical limit (a plain loop awaiting the no-op), bare trio
   (a producer that acquires a ``trio.Semaphore(concurrency)`` and
   ``start_soon``\\ s a task that releases it) and APScheduler 4
   (``AsyncScheduler`` on trio via anyio, memory data store, async executor,
   ``max_concurrent_jobs`` and the task's ``max_running_jobs`` equal to the
   concurrency) in two forms: ``add_job("noop")`` by task id after
   ``configure_task``, and ``add_job(func)``, which configures the task from
   the function on every call. Goal at concurrency 64: kernel >= 0.5x bare
   trio, and so >= 5x APScheduler 4's ``add_job`` by task id.
2. schedules (issue #11): 1,000 and 10,000 ``Every(seconds=1)`` schedules
   through ``JobQueue.add_schedule`` (the path a plugin's ``ctx.schedule``
   takes, default overlap ``SkipIfRunning``): each fire enqueues a no-op job
   (queue concurrency 64) carrying its slot. "spread": anchors spread evenly
   over the second (schedule n anchored at the epoch + n/count s); "same":
   the default anchor, so every schedule fires in the same instant.
   Lateness = the job's start (wall time at its ``job.started`` event, just
   before the call) minus its slot, over ``--seconds`` after ``--warmup``;
   "due" is schedules x seconds (each schedule has exactly that many slots in
   the window). GC pauses are timed with ``gc.callbacks`` (start to stop).
   APScheduler 4 at 10,000: ``add_schedule(noop, IntervalTrigger(seconds=1,
   start_time=...))`` with the same two spreads of start times, lateness =
   start minus the job's ``scheduled_fire_time``. Goals at 10,000: spread,
   >= 99% of due runs and p99 lateness < 20 ms; same instant, >= 99% and
   p99 < 300 ms; no GC pause over 50 ms.
3. durable: N/2 no-op jobs through the queue on a `SQLiteStorage` in a temp
   dir, concurrency 1 and 16, and enqueue-to-start latency while idle (an
   older, smaller version of what bench/sqlite_queue.py measures for the
   issue's SQLite goal).

``--profile`` adds a cProfile of the kernel variants to stderr (slower runs).
"""

# (named work_queue.py, not queue.py: a queue.py in bench/ would shadow the
# standard library's queue for every script here)
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from kernel.jobs.queue import JobQueue
from kernel.storage.memory import MemoryJobStore
from kernel.storage.sqlite import SQLiteStorage
from kernel.time.scheduler import open_scheduler
from kernel.time.triggers import Every

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import load, percentile, wait_idle

__all__ = ["main"]

CONCURRENCIES = (1, 16, 64)
SCHEDULE_COUNTS = (1_000, 10_000)
SCHEDULE_CONCURRENCY = 64
GC_PAUSE_LIMIT_MS = 50.0
FREEZE_AFTER_SETUP = False  # set in a variant's process by --gc-freeze
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def noop(*_args: Any) -> None:
    """The job: does nothing, so every figure is the machinery's cost."""


# ---------------------------------------------------------------------------
# 1. throughput
# ---------------------------------------------------------------------------


async def tp_limit(n: int, concurrency: int) -> float:
    del concurrency
    start = time.perf_counter()
    for _ in range(n):
        await noop()
    return time.perf_counter() - start


async def tp_trio(n: int, concurrency: int) -> float:
    sem = trio.Semaphore(concurrency)

    async def run_one() -> None:
        try:
            await noop()
        finally:
            sem.release()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            await sem.acquire()
            nursery.start_soon(run_one)
    return time.perf_counter() - start


class _Countdown:
    """Sets ``done`` when the n-th job has been called."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.done = trio.Event()


_countdown = _Countdown(0)


async def counted_noop() -> None:
    """The throughput job, at module level: APScheduler's ``add_job(func)``
    needs a function it can name."""
    _countdown.left -= 1
    if _countdown.left == 0:
        _countdown.done.set()


def _count_down(n: int) -> _Countdown:
    global _countdown
    _countdown = _Countdown(n)
    return _countdown


async def tp_kernel(n: int, concurrency: int) -> float:
    all_done = _count_down(n).done
    async with open_scheduler() as scheduler:
        queue = JobQueue(MemoryJobStore(), scheduler)
        queue.register("noop", counted_noop, queue="bench")
        queue.configure("bench", concurrency=concurrency)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            start = time.perf_counter()
            for _ in range(n):
                await queue.enqueue("noop")
            await all_done.wait()
            while queue.running("bench"):  # the last completions are recorded
                await trio.lowlevel.checkpoint()
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    return elapsed


async def _tp_apscheduler(n: int, concurrency: int, *, by_id: bool) -> float:
    """APScheduler 4 with the job added by task id (configured once) or as
    a function (its task looked up and re-checked on every ``add_job``).
    Timed to the last job's call: its completion is not awaited."""
    from apscheduler import AsyncScheduler, TaskDefaults
    from apscheduler.executors.async_ import AsyncJobExecutor

    all_done = _count_down(n).done
    async with AsyncScheduler(
        max_concurrent_jobs=concurrency,
        job_executors={"async": AsyncJobExecutor()},
        # add_job(func) re-configures the task from these defaults each call
        task_defaults=TaskDefaults(job_executor="async", max_running_jobs=concurrency),
        cleanup_interval=None,  # type: ignore[arg-type]  # None: no cleanup task
    ) as scheduler:
        target: Any = counted_noop
        if by_id:
            await scheduler.configure_task("noop", func=counted_noop, max_running_jobs=concurrency)
            target = "noop"
        await scheduler.start_in_background()
        start = time.perf_counter()
        for _ in range(n):
            await scheduler.add_job(target)
        await all_done.wait()
        elapsed = time.perf_counter() - start
        await scheduler.stop()
    return elapsed


async def tp_apscheduler_id(n: int, concurrency: int) -> float:
    return await _tp_apscheduler(n, concurrency, by_id=True)


async def tp_apscheduler_func(n: int, concurrency: int) -> float:
    return await _tp_apscheduler(n, concurrency, by_id=False)


THROUGHPUT: dict[str, Callable[[int, int], Any]] = {
    "limit": tp_limit,
    "trio": tp_trio,
    "kernel": tp_kernel,
    "aps4-id": tp_apscheduler_id,
    "aps4-func": tp_apscheduler_func,
}


# ---------------------------------------------------------------------------
# 2. schedules
# ---------------------------------------------------------------------------


class GCPauses:
    """Times every collection from ``gc.callbacks``' start to its stop, so a
    run can say whether the collector stopped the loop longer than a slot
    may be late."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []  # (wall time at stop, seconds, gen)
        self._began = 0.0

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            elapsed = time.perf_counter() - self._began
            self.pauses.append((time.time(), elapsed, info["generation"]))

    def summary(self, window: tuple[float, float]) -> dict[str, Any]:
        lo, hi = window
        inside = [(s, g) for at, s, g in self.pauses if lo <= at < hi]
        durations = [s * 1e3 for s, _ in inside]
        return {
            "gc_count": len(inside),
            "gc_max_ms": max(durations, default=0.0),
            "gc_total_ms": sum(durations),
            "gc_over_limit": sum(d > GC_PAUSE_LIMIT_MS for d in durations),
            "gc_gen2": sum(g == 2 for _, g in inside),
            "gc_max_whole_run_ms": max((s * 1e3 for _, s, _ in self.pauses), default=0.0),
        }


def summarize_lateness(
    runs: list[tuple[float, float]], count: int, window: tuple[float, float]
) -> dict[str, Any]:
    """``runs`` are (due, started) in epoch seconds; keep the slots in the window."""
    lo, hi = window
    lateness = [started - due for due, started in runs if lo <= due < hi]
    due_total = count * round(hi - lo)
    return {
        "due": due_total,
        "ran": len(lateness),
        "seconds": hi - lo,
        "p50_ms": percentile(lateness, 50) * 1e3,
        "p99_ms": percentile(lateness, 99) * 1e3,
        "max_ms": max(lateness, default=float("nan")) * 1e3,
    }


class _StartTimes:
    """A bus that keeps only what the lateness needs: each scheduled job's
    slot and the wall time its ``job.started`` event is published, right
    before the task is called."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float]] = []

    async def publish(self, topic: str, payload: Any = None) -> None:
        if topic == "job.started":
            started = time.time()
            due = datetime.fromisoformat(payload["fire_time"]).timestamp()
            self.runs.append((due, started))


def _offset(n: int, count: int, spread: bool) -> timedelta:
    """Schedule n's place in the second: evenly spread, or all at 0."""
    return timedelta(microseconds=round(n * 1e6 / count)) if spread else timedelta(0)


async def _measure(
    runs: list[tuple[float, float]], count: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """Warm up, then keep the slots due in the next ``seconds`` (whole
    seconds from a whole second, so each schedule has exactly that many),
    waiting a second more for the last ones to start. ``--gc-freeze`` moves
    what setup made out of the collector's sight first (``gc.freeze``), as
    an application can after its start-up."""
    if FREEZE_AFTER_SETUP:
        gc.collect()
        gc.freeze()
    lo = float(math.ceil(time.time() + warmup))
    window = (lo, lo + seconds)
    with GCPauses() as pauses:
        await trio.sleep(lo + seconds + 1.0 - time.time())
    return {**summarize_lateness(runs, count, window), **pauses.summary(window)}


async def sched_kernel(count: int, spread: bool, warmup: float, seconds: float) -> dict[str, Any]:
    bus = _StartTimes()
    async with open_scheduler() as scheduler:
        queue = JobQueue(MemoryJobStore(), scheduler, bus=bus)  # type: ignore[arg-type]
        queue.register("noop", noop, queue="bench")
        queue.configure("bench", concurrency=SCHEDULE_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            setup = time.perf_counter()
            for n in range(count):
                anchor = EPOCH + _offset(n, count, spread) if spread else None
                queue.add_schedule("noop", Every(seconds=1, anchor=anchor), name=f"s{n}")
            setup = time.perf_counter() - setup
            result = await _measure(bus.runs, count, warmup, seconds)
            nursery.cancel_scope.cancel()
    return {"setup_s": setup, **result}


async def sched_apscheduler(
    count: int, spread: bool, warmup: float, seconds: float
) -> dict[str, Any]:
    from apscheduler import AsyncScheduler, current_job
    from apscheduler.executors.async_ import AsyncJobExecutor
    from apscheduler.triggers.interval import IntervalTrigger

    runs: list[tuple[float, float]] = []

    async def job() -> None:
        started = time.time()
        due = current_job.get().scheduled_fire_time
        assert due is not None  # a scheduled job
        runs.append((due.timestamp(), started))

    async with AsyncScheduler(
        max_concurrent_jobs=SCHEDULE_CONCURRENCY,
        job_executors={"async": AsyncJobExecutor()},
        cleanup_interval=None,  # type: ignore[arg-type]  # None: no cleanup task
    ) as scheduler:
        await scheduler.configure_task("noop", func=job, max_running_jobs=None)
        # start times on a whole second just ahead (a start far in the past
        # would make APScheduler step through every missed fire)
        base = datetime.fromtimestamp(math.ceil(time.time()) + 1, UTC)
        setup = time.perf_counter()
        for n in range(count):
            trigger = IntervalTrigger(seconds=1, start_time=base + _offset(n, count, spread))
            await scheduler.add_schedule("noop", trigger)
        setup = time.perf_counter() - setup
        await scheduler.start_in_background()
        result = await _measure(runs, count, warmup, seconds)
        await scheduler.stop()
    return {"setup_s": setup, **result}


SCHEDULES: dict[str, Callable[[int, bool, float, float], Any]] = {
    "kernel": sched_kernel,
    "apscheduler4": sched_apscheduler,
}


# ---------------------------------------------------------------------------
# 3. durable
# ---------------------------------------------------------------------------


async def durable_throughput(n: int, concurrency: int) -> float:
    done = 0
    all_done = trio.Event()

    async def job() -> None:
        nonlocal done
        done += 1
        if done == n:
            all_done.set()

    with tempfile.TemporaryDirectory() as tmp:
        storage = await SQLiteStorage.open(Path(tmp) / "jobs.db")
        async with storage, open_scheduler() as scheduler:
            queue = JobQueue(storage, scheduler)
            queue.register("noop", job, queue="bench")
            queue.configure("bench", concurrency=concurrency)
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.run)
                start = time.perf_counter()
                for _ in range(n):
                    await queue.enqueue("noop")
                await all_done.wait()
                while queue.running("bench"):  # noqa: ASYNC110 - polling a count
                    await trio.sleep(0.0005)
                elapsed = time.perf_counter() - start
                nursery.cancel_scope.cancel()
    return elapsed


async def latency_queue(n: int, store_kind: str) -> list[float]:
    started = trio.Event()
    start_at = 0.0

    async def job() -> None:
        nonlocal start_at
        start_at = time.perf_counter()
        started.set()

    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        store: Any
        if store_kind == "sqlite":
            store = await SQLiteStorage.open(Path(tmp) / "jobs.db")
        else:
            store = MemoryJobStore()
        async with store, open_scheduler() as scheduler:
            queue = JobQueue(store, scheduler)
            queue.register("noop", job, queue="bench")
            queue.configure("bench", concurrency=1)
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.run)
                for _ in range(n):
                    started = trio.Event()
                    t0 = time.perf_counter()
                    await queue.enqueue("noop")
                    await started.wait()
                    latencies.append(start_at - t0)
                    while queue.running("bench"):  # noqa: ASYNC110 - idle before the next
                        await trio.sleep(0.0005)
                    await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
    return latencies


async def latency_trio(n: int) -> list[float]:
    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            started = trio.Event()
            stamp: list[float] = []

            async def job(started: trio.Event = started, stamp: list[float] = stamp) -> None:
                stamp.append(time.perf_counter())
                started.set()

            t0 = time.perf_counter()
            nursery.start_soon(job)
            await started.wait()
            latencies.append(stamp[0] - t0)
            await trio.sleep(0.001)
    return latencies


# ---------------------------------------------------------------------------
# the subprocess side
# ---------------------------------------------------------------------------


def run_variant(spec: dict[str, Any], profile: bool) -> dict[str, Any]:
    part, name = spec["part"], spec["name"]

    async def body() -> dict[str, Any]:
        if part == "throughput":
            elapsed = await THROUGHPUT[name](spec["n"], spec["concurrency"])
            return {"elapsed": elapsed, "per_s": spec["n"] / elapsed}
        if part == "schedules":
            result: dict[str, Any] = await SCHEDULES[name](
                spec["count"], spec["spread"], spec["warmup"], spec["seconds"]
            )
            return result
        if part == "durable":
            elapsed = await durable_throughput(spec["n"], spec["concurrency"])
            return {"elapsed": elapsed, "per_s": spec["n"] / elapsed}
        if part == "latency":
            if name == "trio":
                values = await latency_trio(spec["n"])
            else:
                values = await latency_queue(spec["n"], name)
            return {
                "p50_us": percentile(values, 50) * 1e6,
                "p99_us": percentile(values, 99) * 1e6,
                "max_us": max(values) * 1e6,
            }
        raise SystemExit(f"unknown part {part!r}")

    profiler = cProfile.Profile() if profile and name in ("kernel", "sqlite") else None
    if profiler is not None:
        profiler.enable()
    result = trio.run(body)
    if profiler is not None:
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        print(f"=== profile {spec} ===\n{text.getvalue()}", file=sys.stderr)
    return result


def spawn(spec: dict[str, Any], profile: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--variant", json.dumps(spec)]
    if profile:
        command.append("--profile")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if profile:
        sys.stderr.write(done.stderr)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {done.returncode}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------
# the tables
# ---------------------------------------------------------------------------


def spread(values: list[float], digits: int = 0) -> str:
    """One run's figure, or the median and range of several."""
    if not values:
        return "error"
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    return (
        f"{statistics.median(values):,.{digits}f} "
        f"({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    )


def fmt_rate(result: dict[str, Any]) -> str:
    return "error" if "error" in result else f"{result['per_s']:,.0f}"


def ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    if "error" in a or "error" in b:
        return "-"
    return f"{a['per_s'] / b['per_s']:.2f}x"


def median_ratio(a: list[float], b: list[float]) -> str:
    if not a or not b:
        return "-"
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


def part_throughput(
    n: int, concurrencies: list[int], repeat: int, wait_s: float, profile: bool
) -> None:
    each = "" if repeat == 1 else f"; median (min-max) of {repeat} runs, variants alternating"
    print(f"\n## 1. memory store throughput: {n:,} no-op jobs per run, jobs/s{each}\n")
    print(
        "| concurrency | limit | bare trio | kernel | APS4 add_job(id) | APS4 add_job(func) "
        "| kernel / trio | kernel / APS4 id | kernel / APS4 func | kernel us/job | load |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for concurrency in concurrencies:
        wait_idle(wait_s)
        at_start = os.getloadavg()[0]
        rates: dict[str, list[float]] = {name: [] for name in THROUGHPUT}
        for _ in range(repeat):
            for name in THROUGHPUT:
                if name == "limit" and rates[name]:
                    continue  # the plain loop does not vary: once is enough
                spec = {"part": "throughput", "name": name, "n": n, "concurrency": concurrency}
                result = spawn(spec, profile)
                if "error" in result:
                    print(f"  ({name} @ {concurrency}: {result['error']})", file=sys.stderr)
                else:
                    rates[name].append(result["per_s"])
        kernel = rates["kernel"]
        us = f"{1e6 / statistics.median(kernel):.1f}" if kernel else "-"
        print(
            f"| {concurrency} | {spread(rates['limit'])} | {spread(rates['trio'])} "
            f"| {spread(kernel)} | {spread(rates['aps4-id'])} | {spread(rates['aps4-func'])} "
            f"| {median_ratio(kernel, rates['trio'])} "
            f"| {median_ratio(kernel, rates['aps4-id'])} "
            f"| {median_ratio(kernel, rates['aps4-func'])} | {us} "
            f"| {at_start:.2f} -> {os.getloadavg()[0]:.2f} |",
            flush=True,
        )


SCHEDULE_CELLS = (
    ("kernel", "spread"),
    ("kernel", "same"),
    ("apscheduler4", "spread"),
    ("apscheduler4", "same"),
)


def part_schedules(
    counts: list[int],
    warmup: float,
    seconds: float,
    repeat: int,
    wait_s: float,
    gc_freeze: bool,
    runners: list[str],
    profile: bool,
) -> None:
    each = "" if repeat == 1 else f"; median (min-max) of {repeat} runs"
    each += "; gc.freeze() after setup" if gc_freeze else ""
    print(
        f"\n## 2. 1-second Every schedules, each fire enqueues a no-op job "
        f"({seconds:g} s measured after a {warmup:g} s warm-up{each})\n"
    )
    print(
        "| schedules | runner | anchors | setup s | ran / due % | p50 ms | p99 ms | max ms "
        "| GC pauses | GC total ms | GC max ms | GC > 50 ms | load |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for count in counts:
        for name, mode in SCHEDULE_CELLS:
            if name not in runners or (name == "apscheduler4" and count < max(counts)):
                continue  # the peer only at the size
            wait_idle(wait_s)
            at_start = os.getloadavg()[0]
            results: list[dict[str, Any]] = []
            for _ in range(repeat):
                spec = {
                    "part": "schedules",
                    "name": name,
                    "count": count,
                    "spread": mode == "spread",
                    "warmup": warmup,
                    "seconds": seconds,
                    "gc_freeze": gc_freeze,
                }
                result = spawn(spec, profile)
                if "error" in result:
                    print(f"  ({name} {mode} @ {count}: {result['error']})", file=sys.stderr)
                else:
                    results.append(result)

            def column(key: str, results: list[dict[str, Any]] = results) -> list[float]:
                return [float(r[key]) for r in results]

            ran = [100 * r["ran"] / r["due"] for r in results]
            print(
                f"| {count:,} | {name} | {mode} | {spread(column('setup_s'), 2)} "
                f"| {spread(ran, 2)} | {spread(column('p50_ms'), 1)} "
                f"| {spread(column('p99_ms'), 1)} | {spread(column('max_ms'), 1)} "
                f"| {spread(column('gc_count'))} | {spread(column('gc_total_ms'), 1)} "
                f"| {spread(column('gc_max_ms'), 1)} | {spread(column('gc_over_limit'))} "
                f"| {at_start:.2f} -> {os.getloadavg()[0]:.2f} |",
                flush=True,
            )


def part_durable(n: int, profile: bool) -> None:
    print(f"\n## 3. durable jobs on SQLite: {n:,} no-op jobs per run ({load()})\n")
    print("| concurrency | SQLite jobs/s | us/job | memory store jobs/s | SQLite / memory |")
    print("|---:|---:|---:|---:|---:|")
    for concurrency in (1, 16):
        sqlite = spawn(
            {"part": "durable", "name": "sqlite", "n": n, "concurrency": concurrency}, profile
        )
        memory = spawn(
            {"part": "throughput", "name": "kernel", "n": n, "concurrency": concurrency}, False
        )
        us = "-" if "error" in sqlite else f"{1e6 / sqlite['per_s']:.0f}"
        print(
            f"| {concurrency} | {fmt_rate(sqlite)} | {us} | {fmt_rate(memory)} "
            f"| {ratio(sqlite, memory)} |",
            flush=True,
        )
    samples = max(n // 20, 200)
    print(f"\nenqueue-to-start latency, one job at a time while idle ({samples} samples)\n")
    print("| runner | p50 us | p99 us | max us |")
    print("|---|---:|---:|---:|")
    for name, label in (
        ("sqlite", "kernel, SQLite"),
        ("memory", "kernel, memory"),
        ("trio", "bare trio start_soon"),
    ):
        r = spawn({"part": "latency", "name": name, "n": samples}, profile)
        if "error" in r:
            print(f"| {label} | error: {r['error']} | | |")
            continue
        print(f"| {label} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['max_us']:,.0f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, 10 s schedule runs")
    parser.add_argument("--only", choices=("throughput", "schedules", "durable"))
    parser.add_argument("--n", type=int, default=None, help="jobs per throughput run")
    parser.add_argument(
        "--concurrencies", default=",".join(map(str, CONCURRENCIES)), help="throughput cells"
    )
    parser.add_argument(
        "--counts", default=",".join(map(str, SCHEDULE_COUNTS)), help="schedule counts"
    )
    parser.add_argument("--seconds", type=float, default=None, help="schedule window (30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="before the window (5)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median shown)")
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, help="seconds to wait for load < 1.0 per cell"
    )
    parser.add_argument(
        "--gc-freeze", action="store_true", help="schedules: gc.freeze() after setup"
    )
    parser.add_argument("--runners", default=",".join(SCHEDULES), help="schedule runners")
    parser.add_argument("--profile", action="store_true", help="cProfile kernel variants")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        spec = json.loads(args.variant)
        global FREEZE_AFTER_SETUP
        FREEZE_AFTER_SETUP = bool(spec.get("gc_freeze"))
        print(json.dumps(run_variant(spec, args.profile)))
        return
    seconds = args.seconds if args.seconds is not None else (10.0 if args.quick else 30.0)
    n = args.n if args.n is not None else (5_000 if args.quick else 20_000)
    print(f"# bench/work_queue.py: Python {sys.version.split()[0]}, trio {trio.__version__}")
    try:
        from importlib.metadata import version

        print(f"APScheduler {version('apscheduler')}, anyio {version('anyio')}")
    except Exception as error:
        print(f"APScheduler 4 not available: {error}")
    print(f"start: {load()}")
    if args.only in (None, "throughput"):
        concurrencies = [int(c) for c in args.concurrencies.split(",")]
        part_throughput(n, concurrencies, args.repeat, args.wait_idle, args.profile)
    if args.only in (None, "durable"):
        part_durable(n // 2, args.profile)
    if args.only in (None, "schedules"):
        counts = [int(c) for c in args.counts.split(",")]
        part_schedules(
            counts,
            args.warmup,
            seconds,
            args.repeat,
            args.wait_idle,
            args.gc_freeze,
            args.runners.split(","),
            args.profile,
        )
    print(f"end: {load()}")


if __name__ == "__main__":
    main()

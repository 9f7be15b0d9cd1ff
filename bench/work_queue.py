"""The kernel's work queue (`kernel.jobs.queue.JobQueue`) against bare trio and APScheduler 4.

    python bench/work_queue.py                         # all three parts, 30 s schedule runs
    python bench/work_queue.py --quick                 # fewer jobs, 10 s schedule runs
    python bench/work_queue.py --only throughput       # or: schedules, durable
    python bench/work_queue.py --only schedules --seconds 60

Every variant runs in its own fresh subprocess of this script (``--variant``),
so that one variant's garbage, threads or leftover tasks cannot slow the next.
The machine is shared: the load average is printed before each part.

1. throughput: N no-op jobs through the in-memory queue at concurrency 1, 16
   and 64, timed from the first enqueue to the last job done, beside the
   physical limit (a plain loop awaiting the no-op), bare trio (a producer
   that acquires a ``trio.Semaphore(concurrency)`` and ``start_soon``\\ s a
   task that releases it) and APScheduler 4 (``AsyncScheduler`` on trio via
   anyio, memory data store, ``add_job`` of the no-op, ``max_concurrent_jobs``
   and the task's ``max_running_jobs`` set to the concurrency). Each producer
   enqueues as fast as it can while the workers run (no pre-filling).
   Goal: kernel >= 1/2 of bare trio, >= 10x APScheduler 4.
2. schedules: 1,000 and 10,000 ``Every(seconds=1)`` schedules through
   ``JobQueue.add_schedule`` (the path a plugin's ``ctx.schedule`` takes):
   each fire enqueues a no-op job (queue concurrency 64) carrying its slot;
   lateness = the job's start (wall time at its ``job.started`` event, just
   before the call) minus the slot. Measured over
   ``--seconds`` after a 2 s warm-up; "due" is schedules x seconds (each
   1-second schedule has exactly that many slots in the window). APScheduler
   4: ``add_schedule(noop, IntervalTrigger(seconds=1))``, lateness = start
   minus the job's ``scheduled_fire_time``. Goal at 10,000: >= 99% of due
   runs happen, p99 lateness < 20 ms.
3. durable: N no-op jobs through the queue on a `SQLiteStorage` in a temp
   dir (enqueue + claim + complete, each a transaction), concurrency 1 and
   16; and enqueue-to-start latency, one job at a time while idle, for
   SQLite, the memory store and bare trio. Goal: >= 2,000 durable jobs/s.

``--profile`` adds a cProfile of the kernel variants to stderr (slower runs).
"""

# (named work_queue.py, not queue.py: a queue.py in bench/ would shadow the
# standard library's queue for every script here)
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

from kernel.jobs.queue import JobQueue
from kernel.storage.memory import MemoryJobStore
from kernel.storage.sqlite import SQLiteStorage
from kernel.time.scheduler import open_scheduler
from kernel.time.triggers import Every

__all__ = ["main"]

CONCURRENCIES = (1, 16, 64)
SCHEDULE_COUNTS = (1_000, 10_000)
SCHEDULE_CONCURRENCY = 64
WARMUP_S = 2.0


async def noop(*_args: Any) -> None:
    """The job: does nothing, so every figure is the machinery's cost."""


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


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


async def tp_kernel(n: int, concurrency: int) -> float:
    done = 0
    all_done = trio.Event()

    async def job() -> None:
        nonlocal done
        done += 1
        if done == n:
            all_done.set()

    async with open_scheduler() as scheduler:
        queue = JobQueue(MemoryJobStore(), scheduler)
        queue.register("noop", job, queue="bench")
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


async def tp_apscheduler(n: int, concurrency: int) -> float:
    from apscheduler import AsyncScheduler
    from apscheduler.executors.async_ import AsyncJobExecutor

    done = 0
    all_done = trio.Event()

    async def job() -> None:
        nonlocal done
        done += 1
        if done == n:
            all_done.set()

    async with AsyncScheduler(
        max_concurrent_jobs=concurrency,
        job_executors={"async": AsyncJobExecutor()},
        cleanup_interval=None,
    ) as scheduler:
        await scheduler.configure_task("noop", func=job, max_running_jobs=concurrency)
        await scheduler.start_in_background()
        start = time.perf_counter()
        for _ in range(n):
            await scheduler.add_job("noop")
        await all_done.wait()
        elapsed = time.perf_counter() - start
        await scheduler.stop()
    return elapsed


THROUGHPUT: dict[str, Callable[[int, int], Any]] = {
    "limit": tp_limit,
    "trio": tp_trio,
    "kernel": tp_kernel,
    "apscheduler4": tp_apscheduler,
}


# ---------------------------------------------------------------------------
# 2. schedules
# ---------------------------------------------------------------------------


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
        "ran_any_slot": len(runs),
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


async def sched_kernel(count: int, seconds: float) -> dict[str, Any]:
    bus = _StartTimes()
    async with open_scheduler() as scheduler:
        queue = JobQueue(MemoryJobStore(), scheduler, bus=bus)  # type: ignore[arg-type]
        queue.register("noop", noop, queue="bench")
        queue.configure("bench", concurrency=SCHEDULE_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            setup = time.perf_counter()
            for n in range(count):
                queue.add_schedule("noop", Every(seconds=1), name=f"s{n}")
            setup = time.perf_counter() - setup
            lo = time.time() + WARMUP_S
            await trio.sleep(WARMUP_S + seconds + 0.5)
            nursery.cancel_scope.cancel()
    return {"setup_s": setup, **summarize_lateness(bus.runs, count, (lo, lo + seconds))}


async def sched_apscheduler(count: int, seconds: float) -> dict[str, Any]:
    from apscheduler import AsyncScheduler, current_job
    from apscheduler.executors.async_ import AsyncJobExecutor
    from apscheduler.triggers.interval import IntervalTrigger

    runs: list[tuple[float, float]] = []

    async def job() -> None:
        started = time.time()
        due = current_job.get().scheduled_fire_time
        runs.append((due.timestamp(), started))

    async with AsyncScheduler(
        max_concurrent_jobs=SCHEDULE_CONCURRENCY,
        job_executors={"async": AsyncJobExecutor()},
        cleanup_interval=None,
    ) as scheduler:
        await scheduler.configure_task("noop", func=job, max_running_jobs=None)
        setup = time.perf_counter()
        for _ in range(count):
            await scheduler.add_schedule("noop", IntervalTrigger(seconds=1))
        setup = time.perf_counter() - setup
        await scheduler.start_in_background()
        lo = time.time() + WARMUP_S
        await trio.sleep(WARMUP_S + seconds + 0.5)
        await scheduler.stop()
    return {"setup_s": setup, **summarize_lateness(runs, count, (lo, lo + seconds))}


SCHEDULES: dict[str, Callable[[int, float], Any]] = {
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
            result: dict[str, Any] = await SCHEDULES[name](spec["count"], spec["seconds"])
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
        stats.sort_stats("tottime").print_stats(25)
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


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def fmt_rate(result: dict[str, Any]) -> str:
    return "error" if "error" in result else f"{result['per_s']:,.0f}"


def ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    if "error" in a or "error" in b:
        return "-"
    return f"{a['per_s'] / b['per_s']:.2f}x"


def part_throughput(n: int, profile: bool) -> None:
    print(f"\n## 1. in-memory throughput: {n:,} no-op jobs per run ({load()})\n")
    print(
        "| concurrency | limit /s | bare trio /s | kernel /s | APScheduler 4 /s "
        "| kernel / trio | kernel / APS4 | kernel us/job |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency in CONCURRENCIES:
        row: dict[str, dict[str, Any]] = {}
        for name in THROUGHPUT:
            spec = {"part": "throughput", "name": name, "n": n, "concurrency": concurrency}
            row[name] = spawn(spec, profile)
            if "error" in row[name]:
                print(f"  ({name} @ {concurrency}: {row[name]['error']})", file=sys.stderr)
        kernel = row["kernel"]
        us = "-" if "error" in kernel else f"{1e6 / kernel['per_s']:.1f}"
        print(
            f"| {concurrency} | {fmt_rate(row['limit'])} | {fmt_rate(row['trio'])} "
            f"| {fmt_rate(kernel)} | {fmt_rate(row['apscheduler4'])} "
            f"| {ratio(kernel, row['trio'])} | {ratio(kernel, row['apscheduler4'])} | {us} |",
            flush=True,
        )


def part_schedules(seconds: float, profile: bool) -> None:
    print(
        f"\n## 2. many 1-second interval schedules, each fire enqueues a no-op job "
        f"({seconds:g} s measured after {WARMUP_S:g} s warm-up; {load()})\n"
    )
    print(
        "| schedules | runner | setup s | due | ran | runs/s | ran / due "
        "| lateness p50 ms | p99 ms | max ms |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for count in SCHEDULE_COUNTS:
        for name in SCHEDULES:
            spec = {"part": "schedules", "name": name, "count": count, "seconds": seconds}
            r = spawn(spec, profile)
            if "error" in r:
                print(f"| {count:,} | {name} | error: {r['error']} |||||||||", flush=True)
                continue
            print(
                f"| {count:,} | {name} | {r['setup_s']:.2f} | {r['due']:,} | {r['ran']:,} "
                f"| {r['ran'] / r['seconds']:,.0f} | {r['ran'] / r['due']:.2%} "
                f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} |",
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
    parser.add_argument("--seconds", type=float, default=None, help="schedule run (default 30)")
    parser.add_argument("--n", type=int, default=None, help="jobs per throughput run")
    parser.add_argument("--profile", action="store_true", help="cProfile kernel variants")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(json.loads(args.variant), args.profile)))
        return
    seconds = args.seconds if args.seconds is not None else (10.0 if args.quick else 30.0)
    n = args.n if args.n is not None else (5_000 if args.quick else 20_000)
    print(f"# bench/work_queue.py: Python {sys.version.split()[0]}, trio {trio.__version__}")
    try:
        from importlib.metadata import version

        print(f"APScheduler {version('apscheduler')}, anyio {version('anyio')}")
    except Exception as error:
        print(f"APScheduler 4 not available: {error}")
    if args.only in (None, "throughput"):
        part_throughput(n, args.profile)
    if args.only in (None, "durable"):
        part_durable(n // 2, args.profile)
    if args.only in (None, "schedules"):
        part_schedules(seconds, args.profile)


if __name__ == "__main__":
    main()

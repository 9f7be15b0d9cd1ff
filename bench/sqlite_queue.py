"""Durable jobs on SQLite: `JobQueue` on `SQLiteStorage`, enqueued and completed together.

    python bench/sqlite_queue.py                          # both parts, medians of 3
    python bench/sqlite_queue.py --quick                  # 1 run per cell, 2,000 jobs, 50 samples
    python bench/sqlite_queue.py --only throughput        # or: latency
    python bench/sqlite_queue.py --backlogs 1000 100000 --synchronous normal
    python bench/sqlite_queue.py --repeat 5 --wait-idle 180
    python bench/sqlite_queue.py --profile                # cProfile of the trio thread (stderr)

Every cell runs in a subprocess of its own (this script with ``--cell``),
on a new database file in a temporary directory (``--dir``, default the
system's; ext4 on a virtual disk here). The store is opened with the public
API, ``SQLiteStorage.open(path, synchronous=...)``: WAL always, and
``synchronous=NORMAL`` (the default: the WAL is fsynced at checkpoints only)
or ``FULL`` (an fsync per commit); the same choice as ``?synchronous=`` in a
``sqlite://`` URL. One `JobQueue`, its defaults otherwise (aging on: one
priority level a minute; prefetch a quarter of the concurrency), one queue
worked at concurrency 16, one registered no-op task.

1. throughput, "enqueued and completed concurrently": the database is first
   filled with a backlog of B queued jobs (1,000, 10,000, 100,000) through
   ``JobQueue.enqueue`` itself, 1,000 calls at a time so that the store's
   group commit writes each thousand in one transaction (not timed; the rate
   is printed). Then the workers start, together with a producer of
   ``--producers`` tasks (default 4) that enqueue one job per job started, so
   the backlog stays at B (less the jobs claimed ahead or in flight, 20 at
   most; the queued count when the window closes is printed). The first
   ``--warmup`` jobs (default 1,000) are not counted; the window is the next
   N jobs (default 10,000): jobs/s = N / (time the N-th job's function
   returned - time the window opened). A job's completion is stored by the
   claimer's next round (one transaction with the next claim), at most one
   round after the function returns. Also printed per cell: enqueues per
   second during the window and CPU per job of the trio thread and of the
   other threads (the store's worker thread: ``time.process_time`` minus the
   trio thread's ``time.thread_time``). Flatness = the largest median rate
   across backlogs over the smallest.
2. latency: the queue idle (workers waiting, nothing queued), one job
   enqueued at a time, 10-20 ms apart; enqueue-to-start = ``perf_counter``
   in the job's function minus ``perf_counter`` just before the
   ``JobQueue.enqueue`` call. 20 warm-up jobs, then 200 (``--samples``).

Issue #11's goal: >= 4,000 jobs/s at synchronous=normal, flat within 20%
from 1k to 100k queued. It is a measurement; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench._harness import load, percentile, spread, wait_idle
from kernel.jobs.queue import JobQueue
from kernel.storage.sqlite import SQLiteStorage
from kernel.time.scheduler import open_scheduler

__all__ = ["main"]

QUEUE = "bench"
CONCURRENCY = 16
BACKLOGS = (1_000, 10_000, 100_000)
SYNCHRONOUS = ("normal", "full")
FILL_BATCH = 1_000
WARMUP_JOBS = 20
GAP_S = (0.010, 0.020)
GOAL_PER_S = 4_000
FLAT_WITHIN = 1.20


# ---------------------------------------------------------------------------
# the cell (one subprocess each)
# ---------------------------------------------------------------------------


async def prefill(queue: JobQueue, count: int) -> None:
    """``count`` jobs through ``JobQueue.enqueue``, a thousand concurrent calls
    at a time: the store's group commit writes each thousand in one
    transaction, so filling 100k takes seconds, not minutes."""
    left = count
    while left:
        batch = min(left, FILL_BATCH)
        async with trio.open_nursery() as nursery:
            for _ in range(batch):
                nursery.start_soon(queue.enqueue, "noop")
        left -= batch


def io_bytes() -> tuple[int, int]:
    """Bytes this process has read and written through system calls so far
    (Linux's /proc/self/io ``rchar``, ``wchar``): SQLite's page reads that
    missed its own cache, and its WAL appends and checkpoints."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return (0, 0)
    fields = dict(line.split(": ") for line in text.splitlines() if ": " in line)
    return int(fields["rchar"]), int(fields["wchar"])


def queued_count(path: Path) -> int:
    """Queued jobs in the file, read on a connection of our own (WAL readers
    do not block the writer); called once the window is closed."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        row = connection.execute(
            "SELECT count(*) FROM kernel_jobs WHERE state = 'queued'"
        ).fetchone()
    return int(row[0])


async def throughput_cell(spec: dict[str, Any]) -> dict[str, Any]:
    backlog, n, warmup = spec["backlog"], spec["n"], spec["warmup"]
    last = warmup + n
    calls = 0
    enqueued = 0
    marks: dict[str, float] = {}
    window_open = trio.Event()
    window_closed = trio.Event()
    credits = trio.Semaphore(0)

    async def noop() -> None:
        nonlocal calls
        calls += 1
        credits.release()
        if calls == warmup:
            marks["start"] = time.perf_counter()
            marks["cpu"] = time.process_time()
            marks["trio_cpu"] = time.thread_time()
            marks["enqueued"] = enqueued
            marks["read"], marks["written"] = io_bytes()
            window_open.set()
        elif calls == last:
            marks["end"] = time.perf_counter()
            marks["cpu_end"] = time.process_time()
            marks["trio_cpu_end"] = time.thread_time()
            marks["enqueued_end"] = enqueued
            marks["read_end"], marks["written_end"] = io_bytes()
            window_closed.set()

    async def produce() -> None:
        nonlocal enqueued
        while True:
            await credits.acquire()
            await queue.enqueue("noop")
            enqueued += 1

    with tempfile.TemporaryDirectory(dir=spec["dir"]) as tmp:
        path = Path(tmp) / "jobs.db"
        storage = await SQLiteStorage.open(path, synchronous=spec["synchronous"])
        async with storage, open_scheduler() as scheduler:
            queue = JobQueue(storage, scheduler)
            queue.register("noop", noop, queue=QUEUE)
            queue.configure(QUEUE, concurrency=CONCURRENCY)
            fill_start = time.perf_counter()
            await prefill(queue, backlog)
            fill_s = time.perf_counter() - fill_start
            profiler = cProfile.Profile() if spec["profile"] else None
            async with trio.open_nursery() as nursery:
                for _ in range(spec["producers"]):
                    nursery.start_soon(produce)
                await nursery.start(queue.run)
                await window_open.wait()
                if profiler is not None:
                    profiler.enable()
                await window_closed.wait()
                if profiler is not None:
                    profiler.disable()
                nursery.cancel_scope.cancel()
        left = queued_count(path)
    if profiler is not None:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
        print(f"=== profile {spec} ===\n{text.getvalue()}", file=sys.stderr)
    elapsed = marks["end"] - marks["start"]
    trio_cpu = marks["trio_cpu_end"] - marks["trio_cpu"]
    all_cpu = marks["cpu_end"] - marks["cpu"]
    return {
        "per_s": n / elapsed,
        "enqueue_per_s": (marks["enqueued_end"] - marks["enqueued"]) / elapsed,
        "fill_per_s": backlog / fill_s,
        "queued_at_end": left,
        "trio_us": trio_cpu / n * 1e6,
        "thread_us": (all_cpu - trio_cpu) / n * 1e6,
        "wall_us": elapsed / n * 1e6,
        "read_kib": (marks["read_end"] - marks["read"]) / n / 1024,
        "written_kib": (marks["written_end"] - marks["written"]) / n / 1024,
    }


async def latency_cell(spec: dict[str, Any]) -> dict[str, Any]:
    stamp: list[float] = []
    started = trio.Event()

    async def noop() -> None:
        stamp.append(time.perf_counter())
        started.set()

    rng = random.Random(spec["seed"])
    values: list[float] = []
    with tempfile.TemporaryDirectory(dir=spec["dir"]) as tmp:
        storage = await SQLiteStorage.open(Path(tmp) / "jobs.db", synchronous=spec["synchronous"])
        async with storage, open_scheduler() as scheduler:
            queue = JobQueue(storage, scheduler)
            queue.register("noop", noop, queue=QUEUE)
            queue.configure(QUEUE, concurrency=CONCURRENCY)
            async with trio.open_nursery() as nursery:
                await nursery.start(queue.run)
                await trio.sleep(0.2)
                for index in range(WARMUP_JOBS + spec["samples"]):
                    started = trio.Event()
                    stamp.clear()
                    before = time.perf_counter()
                    await queue.enqueue("noop")
                    await started.wait()
                    if index >= WARMUP_JOBS:
                        values.append(stamp[0] - before)
                    await trio.sleep(rng.uniform(*GAP_S))
                nursery.cancel_scope.cancel()
    return {
        "p50_ms": percentile(values, 50) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "max_ms": max(values) * 1e3,
        "ran": len(values),
    }


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    cell = throughput_cell if spec["part"] == "throughput" else latency_cell
    result: dict[str, Any] = trio.run(cell, spec)
    return result


# ---------------------------------------------------------------------------
# the coordinator
# ---------------------------------------------------------------------------


def spawn(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--cell", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if spec.get("profile"):
        sys.stderr.write(done.stderr)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {done.returncode}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def part_throughput(args: argparse.Namespace) -> None:
    each = f"median (min-max) of {args.repeat}" if args.repeat > 1 else "one run"
    print(
        f"\n## 1. enqueued and completed concurrently: concurrency {CONCURRENCY}, "
        f"{args.producers} producer task(s), {args.warmup:,} warm-up + {args.n:,} measured "
        f"jobs per run, {each} ({load()})\n"
    )
    print(
        "| synchronous | backlog | jobs/s | vs goal | enqueue /s | queued at end "
        "| trio µs/job | store thread µs/job | read KiB/job | written KiB/job | fill /s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for synchronous in args.synchronous:
        medians: dict[int, float] = {}
        for backlog in args.backlogs:
            runs: list[dict[str, Any]] = []
            for _ in range(args.repeat):
                spec = {
                    "part": "throughput",
                    "synchronous": synchronous,
                    "backlog": backlog,
                    "n": args.n,
                    "warmup": args.warmup,
                    "producers": args.producers,
                    "dir": args.dir,
                    "profile": args.profile,
                }
                result = spawn(spec)
                if "error" in result:
                    print(f"  ({synchronous}, {backlog:,}: {result['error']})", file=sys.stderr)
                else:
                    runs.append(result)
            if not runs:
                print(f"| {synchronous} | {backlog:,} | error |" + " |" * 8, flush=True)
                continue

            def of(key: str, runs: list[dict[str, Any]] = runs) -> list[float]:
                return [float(r[key]) for r in runs]

            rate = statistics.median(of("per_s"))
            medians[backlog] = rate
            print(
                f"| {synchronous} | {backlog:,} | {spread(of('per_s'))} "
                f"| {rate / GOAL_PER_S:.2f}x | {spread(of('enqueue_per_s'))} "
                f"| {spread(of('queued_at_end'))} | {spread(of('trio_us'))} "
                f"| {spread(of('thread_us'))} | {spread(of('read_kib'), 1)} "
                f"| {spread(of('written_kib'), 1)} | {spread(of('fill_per_s'))} |",
                flush=True,
            )
        if len(medians) > 1:
            flat = max(medians.values()) / min(medians.values())
            verdict = "within" if flat <= FLAT_WITHIN else "NOT within"
            print(
                f"\nsynchronous={synchronous}: flatness max/min of the medians = {flat:.2f} "
                f"({verdict} {FLAT_WITHIN:.2f}); slowest {min(medians.values()):,.0f} jobs/s "
                f"(goal {GOAL_PER_S:,})\n",
                flush=True,
            )


def part_latency(args: argparse.Namespace) -> None:
    print(
        f"\n## 2. enqueue-to-start latency while idle: {WARMUP_JOBS} warm-up + {args.samples} "
        f"jobs one at a time, {GAP_S[0] * 1e3:.0f}-{GAP_S[1] * 1e3:.0f} ms apart, "
        f"concurrency {CONCURRENCY} ({load()})\n"
    )
    print("| synchronous | run | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for synchronous in args.synchronous:
        for index in range(args.repeat):
            spec = {
                "part": "latency",
                "synchronous": synchronous,
                "samples": args.samples,
                "seed": index,
                "dir": args.dir,
                "profile": False,
            }
            r = spawn(spec)
            if "error" in r:
                print(f"| {synchronous} | {index + 1} | error: {r['error']} | | |", flush=True)
                continue
            print(
                f"| {synchronous} | {index + 1} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['max_ms']:.2f} |",
                flush=True,
            )


def versions() -> str:
    import sqlite3
    from importlib.metadata import version

    return (
        f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, trio {version('trio')}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="one run per cell, 2,000 jobs, 50 samples"
    )
    parser.add_argument("--only", choices=("throughput", "latency"))
    parser.add_argument("--repeat", type=int, default=None, help="runs per cell (default 3)")
    parser.add_argument("--n", type=int, default=None, help="measured jobs per run")
    parser.add_argument("--warmup", type=int, default=1_000, help="jobs before the window")
    parser.add_argument("--producers", type=int, default=64, help="concurrent enqueue tasks")
    parser.add_argument("--backlogs", type=int, nargs="+", default=list(BACKLOGS))
    parser.add_argument("--synchronous", nargs="+", choices=SYNCHRONOUS, default=SYNCHRONOUS)
    parser.add_argument("--samples", type=int, default=None, help="latency samples per run")
    parser.add_argument("--dir", default=None, help="where the database files go")
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, help="seconds to wait for load < 1.0 per part"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the trio thread")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))))
        return
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.n = args.n or (2_000 if args.quick else 10_000)
    args.samples = args.samples or (50 if args.quick else 200)
    print(f"# bench/sqlite_queue.py: {versions()}")
    if args.only in (None, "throughput"):
        if args.wait_idle and not wait_idle(args.wait_idle):
            print(f"(still busy after {args.wait_idle:.0f} s: {load()})", file=sys.stderr)
        part_throughput(args)
    if args.only in (None, "latency"):
        if args.wait_idle and not wait_idle(args.wait_idle):
            print(f"(still busy after {args.wait_idle:.0f} s: {load()})", file=sys.stderr)
        part_latency(args)


if __name__ == "__main__":
    main()

"""Durable jobs on Redis: the kernel's `JobQueue` on `RedisStorage`, beside the
same queue on `PostgresStorage`, and beside arq and SAQ on the same Redis.

    python bench/redis_queue.py                       # both parts, 5,000 jobs, 200 samples
    python bench/redis_queue.py --quick               # 1,000 jobs, 100 samples
    python bench/redis_queue.py --only throughput     # or: latency
    python bench/redis_queue.py --repeat 3            # median (min-max) of 3 throughput runs
    python bench/redis_queue.py --systems kernel-redis,saq
    python bench/redis_queue.py --wait-idle 180       # wait (up to 180 s) for load < 1.0

The servers are ``$KERNEL_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)
and ``$KERNEL_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). The Redis server is shared:
every run works under names of its own (the kernel: a key prefix; arq and
SAQ: a queue name and job ids with the run's token) and deletes exactly
those keys afterwards; nothing is flushed. PostgreSQL runs use the schema
``bench_kernel_redis_cmp``, made anew before each run. A system whose
package is not installed (``pip install -e 'adapters/redis[bench]'``
brings arq and SAQ, ``pip install -e adapters/postgres`` the PostgreSQL
adapter) is left out, with a note.

Every node and producer is a process of its own (this script with
``--role``): the kernel's on trio, arq's and SAQ's on asyncio. Each node
works one queue at concurrency 16: the kernel with ``configure(concurrency=16)``
and its defaults (aging included, pool of 10 connections); arq with
``max_jobs=16`` and its defaults (it polls its queue every ``poll_delay``,
0.5 s); SAQ with ``concurrency=16`` and its defaults (a blocking ``BLMOVE``
wakes it).

1. throughput: N no-op jobs are enqueued first by one producer process, one
   call at a time (the "enqueue /s" column), with no node running. Then 1
   or 3 node processes, connected beforehand, are told "go" together.
   Each node counts the job functions that returned and writes the count
   and the time of the last one to a file every 10 ms; once all N have
   returned, the coordinator checks in the system's own records that every
   job is finished, then stops the nodes. Elapsed = the last function's
   return minus "go", the same definition for every system.
2. latency: 1 or 3 idle nodes (up for 1 s); a producer enqueues one job at
   a time, 30-50 ms apart; each job records ``time.time()`` when its
   function is called; enqueue-to-start = that minus ``time.time()`` just
   before the producer's enqueue call. The first 20 jobs warm up and are
   not counted. The goal of the Redis adapter: p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import load, percentile, wait_idle

__all__ = ["main"]

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
PG_SCHEMA = "bench_kernel_redis_cmp"
SYSTEMS = {
    "kernel-redis": "kernel on Redis",
    "kernel-postgres": "kernel on PostgreSQL",
    "arq": "arq",
    "saq": "SAQ",
}
NEEDS = {
    "kernel-redis": "kernel_redis",
    "kernel-postgres": "kernel_postgres",
    "arq": "arq",
    "saq": "saq",
}
CONCURRENCY = 16
POOL_SIZE = 10
NODE_COUNTS = (1, 3)
PROGRESS_S = 0.01
SETTLE_S = 1.0
GAP_S = (0.030, 0.050)
TIMEOUT_S = 600.0
WARMUP_JOBS = 20


def redis_url() -> str:
    return os.environ.get("KERNEL_BENCH_REDIS_URL", DEFAULT_REDIS)


def postgres_url() -> str:
    return os.environ.get("KERNEL_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)


def with_query(url: str, **options: object) -> str:
    separator = "&" if "?" in url else "?"
    return url + separator + "&".join(f"{name}={value}" for name, value in options.items())


class Progress:
    """Job functions that returned, written to a file every 10 ms (the
    coordinator reads it; nothing is sent to a server per job)."""

    def __init__(self, path: str, record: bool) -> None:
        self.path = path
        self.record = record
        self.count = 0
        self.last = 0.0
        self.starts: dict[str, float] = {}

    def started(self, i: int | None) -> None:
        if self.record:
            self.starts[str(i)] = time.time()

    def returned(self) -> None:
        self.count += 1
        self.last = time.time()

    def write(self) -> None:
        partial_path = f"{self.path}.tmp"
        with open(partial_path, "w") as file:
            file.write(f"{self.count} {self.last}\n")
        os.replace(partial_path, self.path)


# ---------------------------------------------------------------------------
# the kernel (trio), on Redis or PostgreSQL
# ---------------------------------------------------------------------------


async def _open_kernel_storage(spec: dict[str, Any]) -> Any:
    if spec["system"] == "kernel-redis":
        from kernel_redis import open_storage

        url = with_query(spec["redis"], prefix=spec["prefix"], pool_size=POOL_SIZE)
        return await open_storage(url)
    from kernel_postgres import open_storage as open_pg

    return await open_pg(with_query(spec["postgres"], schema=PG_SCHEMA, pool_size=POOL_SIZE))


async def _read_line() -> str:
    line: str = await trio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


async def kernel_node(spec: dict[str, Any]) -> dict[str, Any]:
    from kernel.jobs.queue import JobQueue
    from kernel.time.scheduler import open_scheduler

    progress = Progress(spec["progress"], spec["record"])

    async def noop(i: int | None = None) -> None:
        progress.started(i)
        progress.returned()

    async def report() -> None:
        while True:
            progress.write()
            await trio.sleep(PROGRESS_S)

    storage = await _open_kernel_storage(spec)
    async with storage, open_scheduler() as scheduler:
        queue = JobQueue(storage, scheduler)
        queue.register("noop", noop, queue=spec["queue"])
        queue.configure(spec["queue"], concurrency=CONCURRENCY)
        print("ready", flush=True)
        if await _read_line() != "go":
            raise SystemExit("expected go")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            await nursery.start(queue.run)
            await _read_line()  # "stop"
            nursery.cancel_scope.cancel()
    progress.write()
    return {"starts": progress.starts}


async def kernel_producer(spec: dict[str, Any]) -> dict[str, Any]:
    from kernel.jobs.queue import JobQueue
    from kernel.time.scheduler import open_scheduler

    async def noop(i: int | None = None) -> None:
        del i

    rng = random.Random(5)
    enqueued: dict[str, float] = {}
    storage = await _open_kernel_storage(spec)
    async with storage, open_scheduler() as scheduler:
        queue = JobQueue(storage, scheduler)
        queue.register("noop", noop, queue=spec["queue"])
        start = time.perf_counter()
        for i in range(spec["n"]):
            enqueued[str(i)] = time.time()
            await queue.enqueue("noop", i)
            if spec["gap"]:
                await trio.sleep(rng.uniform(*GAP_S))
        elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "enqueued": enqueued}


# ---------------------------------------------------------------------------
# arq and SAQ (asyncio)
# ---------------------------------------------------------------------------


def _arq_settings(url: str) -> Any:
    from arq.connections import RedisSettings

    return RedisSettings.from_dsn(url)


async def _stdin_line() -> str:
    import asyncio

    line: str = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip()


async def _report_async(progress: Progress) -> None:
    import asyncio

    while True:
        progress.write()
        await asyncio.sleep(PROGRESS_S)


async def arq_node(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio
    import contextlib

    from arq.worker import Worker, func

    progress = Progress(spec["progress"], spec["record"])

    async def noop(ctx: dict[str, Any], i: int | None = None) -> None:
        progress.started(i)
        progress.returned()

    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_settings=_arq_settings(spec["redis"]),
        queue_name=spec["queue"],
        max_jobs=CONCURRENCY,
        handle_signals=False,
    )
    print("ready", flush=True)
    if await _stdin_line() != "go":
        raise SystemExit("expected go")
    reporter = asyncio.create_task(_report_async(progress))
    running = asyncio.create_task(worker.main())
    await _stdin_line()  # "stop"
    running.cancel()
    reporter.cancel()
    for task in (running, reporter):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await worker.close()
    progress.write()
    return {"starts": progress.starts}


async def arq_producer(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from arq.connections import create_pool

    rng = random.Random(5)
    enqueued: dict[str, float] = {}
    pool = await create_pool(_arq_settings(spec["redis"]))
    start = time.perf_counter()
    for i in range(spec["n"]):
        enqueued[str(i)] = time.time()
        await pool.enqueue_job("noop", i, _queue_name=spec["queue"], _job_id=f"{spec['token']}-{i}")
        if spec["gap"]:
            await asyncio.sleep(rng.uniform(*GAP_S))
    elapsed = time.perf_counter() - start
    await pool.aclose()
    return {"elapsed": elapsed, "enqueued": enqueued}


async def saq_node(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio
    import contextlib

    from saq import Queue, Worker

    progress = Progress(spec["progress"], spec["record"])

    async def noop(ctx: Any, *, i: int | None = None) -> None:
        progress.started(i)
        progress.returned()

    queue = Queue.from_url(spec["redis"], name=spec["queue"])
    worker = Worker(queue, functions=[("noop", noop)], concurrency=CONCURRENCY)
    await queue.connect()
    print("ready", flush=True)
    if await _stdin_line() != "go":
        raise SystemExit("expected go")
    reporter = asyncio.create_task(_report_async(progress))
    running = asyncio.create_task(worker.start())
    await _stdin_line()  # "stop"
    await worker.stop()
    reporter.cancel()
    for task in (running, reporter):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await queue.disconnect()
    progress.write()
    return {"starts": progress.starts}


async def saq_producer(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from saq import Queue

    rng = random.Random(5)
    enqueued: dict[str, float] = {}
    queue = Queue.from_url(spec["redis"], name=spec["queue"])
    await queue.connect()
    start = time.perf_counter()
    for i in range(spec["n"]):
        enqueued[str(i)] = time.time()
        await queue.enqueue("noop", i=i)
        if spec["gap"]:
            await asyncio.sleep(rng.uniform(*GAP_S))
    elapsed = time.perf_counter() - start
    await queue.disconnect()
    return {"elapsed": elapsed, "enqueued": enqueued}


def run_role(spec: dict[str, Any]) -> dict[str, Any]:
    """The body of a ``--role`` subprocess: one node or producer."""
    roles: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
        ("kernel", "node"): kernel_node,
        ("kernel", "producer"): kernel_producer,
        ("arq", "node"): arq_node,
        ("arq", "producer"): arq_producer,
        ("saq", "node"): saq_node,
        ("saq", "producer"): saq_producer,
    }
    family = "kernel" if spec["system"].startswith("kernel") else spec["system"]
    body = roles[family, spec["role"]]
    if family == "kernel":
        result: dict[str, Any] = trio.run(body, spec)
        return result
    import asyncio

    return dict(asyncio.run(body(spec)))


# ---------------------------------------------------------------------------
# the servers: what each system left, and whether it finished
# ---------------------------------------------------------------------------


async def _redis_call(work: Callable[[Any], Any]) -> Any:
    import coredis

    parts = redis_url().split("/")
    host, _, port = parts[2].rpartition("@")[2].partition(":")
    client = coredis.Redis(
        host=host, port=int(port or 6379), db=int(parts[3] or 0), decode_responses=True
    )
    async with client:
        return await work(client)


def redis_call(work: Callable[[Any], Any]) -> Any:
    return trio.run(_redis_call, work)


async def _delete_matching(client: Any, patterns: list[str]) -> int:
    deleted = 0
    for pattern in patterns:
        batch: list[str] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(batch)
                batch = []
        if batch:
            deleted += await client.delete(batch)
    return deleted


def cleanup(system: str, spec: dict[str, Any]) -> None:
    """Delete exactly what this run stored on the shared Redis."""
    patterns = {
        "kernel-redis": [f"{spec['prefix']}*"],
        "arq": [f"{spec['queue']}*", f"arq:*{spec['token']}-*"],
        "saq": [f"saq:{spec['queue']}:*", f"saq:job:{spec['queue']}:*"],
    }.get(system, [])
    if patterns:

        async def work(client: Any) -> int:
            return await _delete_matching(client, patterns)

        redis_call(work)


def reset_postgres() -> None:
    import psycopg

    from kernel_postgres.schema import apply_migrations

    with psycopg.connect(postgres_url(), autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
        apply_migrations(admin, PG_SCHEMA, PG_SCHEMA)


def drop_postgres() -> None:
    import psycopg

    with psycopg.connect(postgres_url(), autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")


def unfinished(system: str, spec: dict[str, Any]) -> int:
    """Jobs the system's own records do not show finished."""
    if system == "kernel-redis":

        async def work(client: Any) -> int:
            return int(await client.zcard(f"{spec['prefix']}st:succeeded"))

        return spec["n"] - int(redis_call(work))
    if system == "kernel-postgres":
        import psycopg

        with psycopg.connect(postgres_url()) as connection:
            row = connection.execute(
                f"SELECT count(*) FROM {PG_SCHEMA}.kernel_jobs WHERE state <> 'succeeded'"
            ).fetchone()
        return int(row[0]) if row else 0
    if system == "arq":

        async def queued(client: Any) -> int:
            in_progress = [key async for key in client.scan_iter(match="arq:in-progress:*")]
            return int(await client.zcard(spec["queue"])) + len(in_progress)

        return int(redis_call(queued))

    async def incomplete(client: Any) -> int:
        return int(await client.zcard(f"saq:{spec['queue']}:incomplete"))

    return int(redis_call(incomplete))


# ---------------------------------------------------------------------------
# the coordinator
# ---------------------------------------------------------------------------


class Node:
    """A node subprocess, driven through its stdin ("go", "stop")."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.stderr: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in finish
        self.progress = spec["progress"]
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def _fail(self, what: str) -> RuntimeError:
        self.process.kill()
        self.stderr.seek(0)
        tail = " | ".join(self.stderr.read().strip().splitlines()[-5:])
        return RuntimeError(f"node {what}: {tail or self.process.returncode}")

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise self._fail("did not start")

    def send(self, word: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()

    def read_progress(self) -> tuple[int, float]:
        try:
            with open(self.progress) as file:
                count, last = file.read().split()
        except (OSError, ValueError):
            return 0, 0.0
        return int(count), float(last)

    def finish(self) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate("stop\n", timeout=60)
        except subprocess.TimeoutExpired:
            raise self._fail("did not stop") from None
        if self.process.returncode != 0:
            raise self._fail(f"exited {self.process.returncode}")
        self.stderr.close()
        return dict(json.loads(out.strip().splitlines()[-1]))


def new_spec(system: str, directory: str) -> dict[str, Any]:
    token = f"kb{uuid.uuid4().hex[:10]}"
    return {
        "system": system,
        "redis": redis_url(),
        "postgres": postgres_url(),
        "token": token,
        "prefix": f"bench-{token}:",
        "queue": f"bench-{token}" if system != "arq" else f"arq:queue:bench-{token}",
        "directory": directory,
    }


def start_nodes(spec: dict[str, Any], count: int, record: bool) -> list[Node]:
    nodes = []
    for index in range(count):
        progress = os.path.join(spec["directory"], f"node-{index}.progress")
        nodes.append(Node({**spec, "role": "node", "record": record, "progress": progress}))
    for node in nodes:
        node.wait_ready()
    return nodes


def produce(spec: dict[str, Any], n: int, gap: bool) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--role",
        json.dumps({**spec, "role": "producer", "n": n, "gap": gap}),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{spec['system']} producer failed: {tail}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def fresh(system: str, directory: str) -> dict[str, Any]:
    spec = new_spec(system, directory)
    if system == "kernel-postgres":
        reset_postgres()
    return spec


def measure_throughput(system: str, nodes: int, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        spec = fresh(system, directory)
        try:
            fill = produce(spec, n, gap=False)
            started = start_nodes(spec, nodes, record=False)
            try:
                go = time.time()
                for node in started:
                    node.send("go")
                while True:
                    progress = [node.read_progress() for node in started]
                    done = sum(count for count, _ in progress)
                    if done >= n or time.time() - go > TIMEOUT_S:
                        break
                    time.sleep(PROGRESS_S)
                deadline = time.time() + 30
                while (left := unfinished(system, {**spec, "n": n})) and time.time() < deadline:
                    time.sleep(PROGRESS_S)
            finally:
                for node in started:
                    node.finish()
        finally:
            cleanup(system, spec)
    if done < n:
        return {"error": f"{done} of {n} done after {TIMEOUT_S:g} s"}
    elapsed = max(last for _, last in progress) - go
    note = f" ({left} not finished in its own records)" if left else ""
    if done != n:
        note += f" ({done} runs of {n} jobs)"
    return {"per_s": n / elapsed, "enqueue_per_s": n / fill["elapsed"], "note": note}


def measure_latency(system: str, nodes: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        spec = fresh(system, directory)
        try:
            started = start_nodes(spec, nodes, record=True)
            try:
                for node in started:
                    node.send("go")
                time.sleep(SETTLE_S)
                enqueued = produce(spec, WARMUP_JOBS + samples, gap=True)["enqueued"]
                time.sleep(1.0 if system == "arq" else 0.5)
            finally:
                starts: dict[str, float] = {}
                for node in started:
                    starts.update(node.finish()["starts"])
        finally:
            cleanup(system, spec)
    measured = {i: t for i, t in enqueued.items() if int(i) >= WARMUP_JOBS}
    latencies = [starts[i] - t for i, t in measured.items() if i in starts]
    return {
        "ran": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies, default=float("nan")) * 1e3,
    }


# ---------------------------------------------------------------------------
# the tables
# ---------------------------------------------------------------------------


def attempt(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return measure()
    except Exception as error:  # a peer that fails is a row, not the end of the run
        return {"error": " ".join(str(error).split())[:200]}


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def part_throughput(systems: list[str], n: int, repeat: int, wait_s: float) -> None:
    wait_idle(wait_s)
    each = "" if repeat == 1 else f"; median (min-max) of {repeat} runs, systems alternating"
    print(
        f"\n## 1. throughput: {n:,} pre-enqueued no-op jobs, concurrency {CONCURRENCY} "
        f"per node{each} ({load()})\n"
    )
    print("| nodes | system | jobs/s | vs kernel on Redis | enqueue /s |")
    print("|---:|---|---:|---:|---:|")
    for nodes in NODE_COUNTS:
        runs: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
        for index in range(repeat):
            order = systems if index % 2 == 0 else list(reversed(systems))
            for system in order:
                r = attempt(partial(measure_throughput, system, nodes, n))
                if "error" in r:
                    print(f"  ({system}, {nodes} node(s): {r['error']})", file=sys.stderr)
                elif r["note"]:
                    print(f"  ({system}, {nodes} node(s):{r['note']})", file=sys.stderr)
                runs[system].append(r)
        rates = {s: [r["per_s"] for r in runs[s] if "error" not in r] for s in systems}
        fills = {s: [r["enqueue_per_s"] for r in runs[s] if "error" not in r] for s in systems}
        base = rates.get("kernel-redis") or []
        for system in systems:
            cell = spread(rates[system]) if rates[system] else "error"
            ratio = (
                f"{statistics.median(rates[system]) / statistics.median(base):.2f}x"
                if rates[system] and base
                else "-"
            )
            enqueue = spread(fills[system]) if fills[system] else "-"
            print(f"| {nodes} | {SYSTEMS[system]} | {cell} | {ratio} | {enqueue} |", flush=True)


def part_latency(systems: list[str], samples: int, wait_s: float) -> None:
    wait_idle(wait_s)
    print(
        f"\n## 2. enqueue-to-start latency while idle: {samples} jobs one at a time, "
        f"{GAP_S[0] * 1e3:.0f}-{GAP_S[1] * 1e3:.0f} ms apart ({load()})\n"
    )
    print("| nodes | system | ran | p50 ms | p99 ms | max ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for nodes in NODE_COUNTS:
        for system in systems:
            r = attempt(partial(measure_latency, system, nodes, samples))
            if "error" in r:
                print(f"| {nodes} | {SYSTEMS[system]} | error: {r['error']} | | | |", flush=True)
                continue
            print(
                f"| {nodes} | {SYSTEMS[system]} | {r['ran']} | {r['p50_ms']:.2f} "
                f"| {r['p99_ms']:.2f} | {r['max_ms']:.2f} |",
                flush=True,
            )


def available(wanted: list[str]) -> list[str]:
    chosen = []
    for system in wanted:
        if find_spec(NEEDS[system]) is None:
            print(f"  ({system} left out: {NEEDS[system]} is not installed)", file=sys.stderr)
        else:
            chosen.append(system)
    return chosen


def versions(systems: list[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    async def info(client: Any) -> dict[str, Any]:
        return dict(await client.info("server"))

    try:
        server = redis_call(info).get("redis_version", "?")
    except Exception as error:
        raise SystemExit(f"Redis is not reachable at {redis_url()}: {error}") from None
    parts = [f"Python {sys.version.split()[0]}", f"Redis {server}"]
    for package in ("trio", "coredis", "psycopg", "arq", "saq", "redis"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{package} {version(package)}")
    return ", ".join(parts) + f"; systems: {', '.join(systems)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 100 latency samples")
    parser.add_argument("--only", choices=("throughput", "latency"))
    parser.add_argument("--n", type=int, default=None, help="jobs per throughput run")
    parser.add_argument("--repeat", type=int, default=1, help="throughput runs per cell")
    parser.add_argument("--samples", type=int, default=None, help="latency samples per run")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, help="seconds to wait for load < 1.0 per part"
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        print(json.dumps(run_role(json.loads(args.role))))
        return
    systems = available([name for name in args.systems.split(",") if name in SYSTEMS])
    n = args.n if args.n is not None else (1_000 if args.quick else 5_000)
    samples = args.samples if args.samples is not None else (100 if args.quick else 200)
    print(f"# bench/redis_queue.py: {versions(systems)}")
    try:
        if args.only in (None, "throughput"):
            part_throughput(systems, n, args.repeat, args.wait_idle)
        if args.only in (None, "latency"):
            part_latency(systems, samples, args.wait_idle)
    finally:
        if "kernel-postgres" in systems:
            drop_postgres()


if __name__ == "__main__":
    main()

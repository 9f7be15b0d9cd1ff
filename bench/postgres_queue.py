"""Durable jobs on PostgreSQL: the kernel's `JobQueue` on `PostgresStorage` against Procrastinate.

    python bench/postgres_queue.py                       # both parts, 5,000 jobs, 200 samples
    python bench/postgres_queue.py --quick               # 1,000 jobs, 100 samples
    python bench/postgres_queue.py --only throughput     # or: latency
    python bench/postgres_queue.py --repeat 3            # median (min-max) of 3 throughput runs
    python bench/postgres_queue.py --wait-idle 180       # wait (up to 180 s) for load < 1.0
    python bench/postgres_queue.py --profile             # cProfile of the kernel nodes (stderr)

The server is ``$KERNEL_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Each system works in a schema
of its own (``bench_kernel``, ``bench_procrastinate``), dropped and created
anew before every run, so each run starts on empty tables. Procrastinate
finds its tables through ``search_path``; its NOTIFY channels are
database-wide, which is harmless since only one system runs at a time.

Every node, producer and the coordinator is a process of its own (this
script with ``--role``): the kernel's on trio, Procrastinate's on asyncio,
each with a pool of 10 connections (the kernel's default ``pool_size``;
Procrastinate's pool is told ``min_size=max_size=10``), plus each node's
own LISTEN connection. The machine is shared: the load average is printed
before each part.

1. throughput: N no-op jobs are enqueued first by one producer process, one
   call at a time (the kernel: ``JobQueue.enqueue``; Procrastinate:
   ``task.defer_async``; the "enqueue /s" column), with no node running.
   The jobs table is then ANALYZEd, as autovacuum would do to a table in
   use: on a fresh table without statistics Procrastinate's fetch plans a
   scan and sort of every queued job (11 ms per fetch at 5,000 queued jobs,
   0.7 ms once analyzed), which would measure the planner, not the queue.
   Then 1 or 3 node processes, started and connected beforehand, are told
   "go" together, each working the queue at concurrency 16 (the kernel:
   ``configure(concurrency=16)`` with its defaults, aging included;
   Procrastinate: ``run_worker_async(concurrency=16)``). Elapsed = the last
   job's recorded finish (the kernel's ``finished_at``; Procrastinate's
   ``succeeded`` event) minus "go", the coordinator polling the database
   every 50 ms until all N have succeeded. Goal: kernel >= 2x Procrastinate.
2. latency: 1 or 3 idle nodes (as above, up and listening for 1 s); a
   producer process enqueues one job at a time with 30-50 ms gaps; each job
   records ``time.time()`` when its function is called; enqueue-to-start =
   that minus ``time.time()`` just before the producer's enqueue call (the
   same machine's clock). The first 20 jobs warm up both sides (connections,
   prepared statements) and are not counted. Both wake on LISTEN/NOTIFY (the kernel:
   ``listen_enqueued``; Procrastinate: ``listen_notify=True``, its default,
   with its default 5 s polling as the fallback). Goal: kernel p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any

import psycopg
import trio
from psycopg.conninfo import make_conninfo

from kernel.jobs.queue import JobQueue
from kernel.time.scheduler import open_scheduler
from kernel_postgres import open_storage
from kernel_postgres.schema import apply_migrations

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import load, percentile, wait_idle

__all__ = ["main"]

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMAS = {"kernel": "bench_kernel", "procrastinate": "bench_procrastinate"}
LABELS = {"kernel": "kernel", "procrastinate": "Procrastinate"}
QUEUE = "bench"
CONCURRENCY = 16
POOL_SIZE = 10
NODE_COUNTS = (1, 3)
POLL_S = 0.05
SETTLE_S = 1.0
GAP_S = (0.030, 0.050)
TIMEOUT_S = 600.0
WARMUP_JOBS = 20


def server_url() -> str:
    return os.environ.get("KERNEL_BENCH_POSTGRES_URL", DEFAULT_URL)


# ---------------------------------------------------------------------------
# the kernel's side (trio)
# ---------------------------------------------------------------------------


def kernel_url(base: str) -> str:
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}schema={SCHEMAS['kernel']}&pool_size={POOL_SIZE}"


async def _read_line() -> str:
    line: str = await trio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


async def kernel_node(spec: dict[str, Any]) -> dict[str, Any]:
    """A node: connect, say "ready", work the queue from "go" until "stop"."""
    starts: dict[str, float] = {}
    record = spec["record"]

    async def noop(i: int | None = None) -> None:
        if record:
            starts[str(i)] = time.time()

    storage = await open_storage(kernel_url(spec["url"]))
    async with storage, open_scheduler() as scheduler:
        queue = JobQueue(storage, scheduler)
        queue.register("noop", noop, queue=QUEUE)
        queue.configure(QUEUE, concurrency=spec["concurrency"])
        print("ready", flush=True)
        if await _read_line() != "go":
            raise SystemExit("expected go")
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            await _read_line()  # "stop"
            nursery.cancel_scope.cancel()
    return {"starts": starts}


async def kernel_producer(spec: dict[str, Any]) -> dict[str, Any]:
    """Enqueue ``n`` jobs one call at a time through ``JobQueue.enqueue``
    (a queue that is not running: only its enqueue path is used)."""

    async def noop(i: int | None = None) -> None:
        del i

    rng = random.Random(5)
    enqueued: dict[str, float] = {}
    storage = await open_storage(kernel_url(spec["url"]))
    async with storage, open_scheduler() as scheduler:
        queue = JobQueue(storage, scheduler)
        queue.register("noop", noop, queue=QUEUE)
        start = time.perf_counter()
        for i in range(spec["n"]):
            enqueued[str(i)] = time.time()
            await queue.enqueue("noop", i)
            if spec["gap"]:
                await trio.sleep(rng.uniform(*GAP_S))
        elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "enqueued": enqueued}


# ---------------------------------------------------------------------------
# Procrastinate's side (asyncio)
# ---------------------------------------------------------------------------


def procrastinate_app(url: str, starts: dict[str, float] | None) -> Any:
    import procrastinate

    conninfo = make_conninfo(url, options=f"-c search_path={SCHEMAS['procrastinate']}")
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo, min_size=POOL_SIZE, max_size=POOL_SIZE
    )
    app = procrastinate.App(connector=connector)

    @app.task(name="noop", queue=QUEUE)
    async def noop(i: int | None = None) -> None:
        if starts is not None:
            starts[str(i)] = time.time()

    return app


async def procrastinate_node(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    starts: dict[str, float] = {}
    app = procrastinate_app(spec["url"], starts if spec["record"] else None)
    loop = asyncio.get_running_loop()
    async with app.open_async():
        print("ready", flush=True)
        if (await loop.run_in_executor(None, sys.stdin.readline)).strip() != "go":
            raise SystemExit("expected go")
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[QUEUE],
                concurrency=spec["concurrency"],
                install_signal_handlers=False,
            )
        )
        await loop.run_in_executor(None, sys.stdin.readline)  # "stop"
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    return {"starts": starts}


async def procrastinate_producer(spec: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    rng = random.Random(5)
    enqueued: dict[str, float] = {}
    app = procrastinate_app(spec["url"], None)
    noop = app.tasks["noop"]
    async with app.open_async():
        start = time.perf_counter()
        for i in range(spec["n"]):
            enqueued[str(i)] = time.time()
            await noop.defer_async(i=i)
            if spec["gap"]:
                await asyncio.sleep(rng.uniform(*GAP_S))
        elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "enqueued": enqueued}


def run_role(spec: dict[str, Any], profile: bool) -> dict[str, Any]:
    """The body of a ``--role`` subprocess: one node or producer."""
    roles: dict[tuple[str, str], Callable[[dict[str, Any]], Any]] = {
        ("kernel", "node"): kernel_node,
        ("kernel", "producer"): kernel_producer,
        ("procrastinate", "node"): procrastinate_node,
        ("procrastinate", "producer"): procrastinate_producer,
    }
    body = roles[spec["system"], spec["role"]]
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    if spec["system"] == "kernel":
        result: dict[str, Any] = trio.run(body, spec)
    else:
        import asyncio

        result = asyncio.run(body(spec))
    if profiler is not None:
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(50)
        print(
            f"=== profile {spec['system']} {spec['role']} ===\n{text.getvalue()}", file=sys.stderr
        )
    return result


# ---------------------------------------------------------------------------
# the coordinator
# ---------------------------------------------------------------------------


def role_command(spec: dict[str, Any], profile: bool) -> list[str]:
    command = [sys.executable, __file__, "--role", json.dumps(spec)]
    return [*command, "--profile"] if profile else command


class Node:
    """A node subprocess, driven through its stdin ("go", "stop")."""

    def __init__(self, spec: dict[str, Any], profile: bool) -> None:
        self.stderr: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in finish
        self.process = subprocess.Popen(
            role_command(spec, profile),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.profile = profile

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

    def finish(self) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate("stop\n", timeout=60)
        except subprocess.TimeoutExpired:
            raise self._fail("did not stop") from None
        if self.process.returncode != 0:
            raise self._fail(f"exited {self.process.returncode}")
        if self.profile:
            self.stderr.seek(0)
            sys.stderr.write(self.stderr.read())
        self.stderr.close()
        return dict(json.loads(out.strip().splitlines()[-1]))


def start_nodes(system: str, count: int, record: bool, profile: bool) -> list[Node]:
    spec = {
        "system": system,
        "role": "node",
        "url": server_url(),
        "concurrency": CONCURRENCY,
        "record": record,
    }
    nodes = [Node(spec, profile and system == "kernel") for _ in range(count)]
    for node in nodes:
        node.wait_ready()
    return nodes


def produce(system: str, n: int, gap: bool) -> dict[str, Any]:
    spec = {"system": system, "role": "producer", "url": server_url(), "n": n, "gap": gap}
    done = subprocess.run(role_command(spec, False), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{system} producer failed: {tail}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def reset_schema(admin: psycopg.Connection[Any], system: str) -> None:
    """Drop the system's schema and create it anew, empty."""
    schema = SCHEMAS[system]
    admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    if system == "kernel":
        apply_migrations(admin, schema, schema)
        return
    from procrastinate.schema import SchemaManager

    admin.execute(f"CREATE SCHEMA {schema}")
    with psycopg.connect(
        server_url(), autocommit=True, options=f"-c search_path={schema}"
    ) as connection:
        connection.execute(SchemaManager.get_schema())  # no parameters: % is literal


def done_so_far(admin: psycopg.Connection[Any], system: str) -> tuple[int, float | None]:
    """How many jobs have succeeded, and the wall time of the last success."""
    schema = SCHEMAS[system]
    if system == "kernel":
        row = admin.execute(
            f"SELECT count(*), max(finished_at) / 1e6 FROM {schema}.kernel_jobs "
            "WHERE state = 'succeeded'"
        ).fetchone()
    else:
        row = admin.execute(
            "SELECT count(*), extract(epoch FROM max(at)) "
            f"FROM {schema}.procrastinate_events WHERE type = 'succeeded'"
        ).fetchone()
    assert row is not None
    return int(row[0]), None if row[1] is None else float(row[1])


def check_once(admin: psycopg.Connection[Any], system: str, n: int) -> str:
    """Each job ran exactly once: a note if not."""
    schema = SCHEMAS[system]
    if system == "kernel":
        sql = f"SELECT count(*), max(attempts) FROM {schema}.kernel_jobs"
    else:
        sql = f"SELECT count(*), max(attempts) FROM {schema}.procrastinate_jobs"
    row = admin.execute(sql).fetchone()
    assert row is not None
    total, attempts = row
    if total != n or (system == "kernel" and attempts != 1):
        return f" (check: {total} jobs, max attempts {attempts})"
    return ""


def measure_throughput(
    admin: psycopg.Connection[Any], system: str, nodes: int, n: int, profile: bool
) -> dict[str, Any]:
    reset_schema(admin, system)
    fill = produce(system, n, gap=False)
    table = "kernel_jobs" if system == "kernel" else "procrastinate_jobs"
    admin.execute(f"ANALYZE {SCHEMAS[system]}.{table}")  # as autovacuum would, in time
    started = start_nodes(system, nodes, record=False, profile=profile)
    try:
        go = time.time()
        for node in started:
            node.send("go")
        while True:
            count, last = done_so_far(admin, system)
            if count >= n or time.time() - go > TIMEOUT_S:
                break
            time.sleep(POLL_S)
    finally:
        for node in started:
            node.finish()
    if count < n or last is None:
        return {"error": f"{count} of {n} done after {TIMEOUT_S:g} s"}
    elapsed = last - go
    note = check_once(admin, system, n)
    return {"per_s": n / elapsed, "enqueue_per_s": n / fill["elapsed"], "note": note}


def measure_latency(
    admin: psycopg.Connection[Any], system: str, nodes: int, samples: int, profile: bool
) -> dict[str, Any]:
    reset_schema(admin, system)
    started = start_nodes(system, nodes, record=True, profile=profile)
    try:
        for node in started:
            node.send("go")
        time.sleep(SETTLE_S)
        enqueued = produce(system, WARMUP_JOBS + samples, gap=True)["enqueued"]
        time.sleep(0.5)
    finally:
        starts: dict[str, float] = {}
        for node in started:
            starts.update(node.finish()["starts"])
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
    except RuntimeError as error:
        return {"error": str(error)}


def spread(values: list[float]) -> str:
    """One run's figure, or the median and range of several."""
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def part_throughput(
    admin: psycopg.Connection[Any], n: int, repeat: int, wait_s: float, profile: bool
) -> None:
    wait_idle(wait_s)
    each = "" if repeat == 1 else f"; median (min-max) of {repeat} runs, systems alternating"
    print(
        f"\n## 1. throughput: {n:,} pre-enqueued no-op jobs, concurrency {CONCURRENCY} "
        f"per node{each} ({load()})\n"
    )
    print(
        "| nodes | kernel jobs/s | Procrastinate jobs/s | kernel / Procrastinate "
        "| kernel enqueue /s | Procrastinate enqueue /s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for nodes in NODE_COUNTS:
        runs: dict[str, list[dict[str, Any]]] = {system: [] for system in SCHEMAS}
        for index in range(repeat):
            order = list(SCHEMAS) if index % 2 == 0 else list(reversed(SCHEMAS))
            for system in order:
                r = attempt(partial(measure_throughput, admin, system, nodes, n, profile))
                if "error" in r:
                    print(f"  ({system}, {nodes} node(s): {r['error']})", file=sys.stderr)
                elif r["note"]:
                    print(f"  ({system}, {nodes} node(s):{r['note']})", file=sys.stderr)
                runs[system].append(r)
        rates = {s: [r["per_s"] for r in runs[s] if "error" not in r] for s in SCHEMAS}
        fills = {s: [r["enqueue_per_s"] for r in runs[s] if "error" not in r] for s in SCHEMAS}
        kernel, other = rates["kernel"], rates["procrastinate"]
        ratio = (
            f"{statistics.median(kernel) / statistics.median(other):.2f}x"
            if kernel and other
            else "-"
        )
        cells = [spread(rates[s]) if rates[s] else "error" for s in SCHEMAS]
        enqueue = [spread(fills[s]) if fills[s] else "-" for s in SCHEMAS]
        print(
            f"| {nodes} | {cells[0]} | {cells[1]} | {ratio} | {enqueue[0]} | {enqueue[1]} |",
            flush=True,
        )


def part_latency(
    admin: psycopg.Connection[Any], samples: int, wait_s: float, profile: bool
) -> None:
    wait_idle(wait_s)
    print(
        f"\n## 2. enqueue-to-start latency while idle: {samples} jobs one at a time, "
        f"{GAP_S[0] * 1e3:.0f}-{GAP_S[1] * 1e3:.0f} ms apart ({load()})\n"
    )
    print("| nodes | runner | ran | p50 ms | p99 ms | max ms |")
    print("|---:|---|---:|---:|---:|---:|")
    for nodes in NODE_COUNTS:
        for system, label in LABELS.items():
            r = attempt(partial(measure_latency, admin, system, nodes, samples, profile))
            if "error" in r:
                print(f"| {nodes} | {label} | error: {r['error']} | | | |", flush=True)
                continue
            print(
                f"| {nodes} | {label} | {r['ran']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['max_ms']:.2f} |",
                flush=True,
            )


def versions() -> str:
    from importlib.metadata import version

    server = "?"
    try:
        with psycopg.connect(server_url(), connect_timeout=5) as connection:
            row = connection.execute("SHOW server_version").fetchone()
            server = "?" if row is None else str(row[0])
    except psycopg.Error as error:
        raise SystemExit(f"PostgreSQL is not reachable at {server_url()}: {error}") from None
    parts = [
        f"Python {sys.version.split()[0]}",
        f"PostgreSQL {server}",
        f"psycopg {version('psycopg')}",
        f"trio {version('trio')}",
        f"procrastinate {version('procrastinate')}",
    ]
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 100 latency samples")
    parser.add_argument("--only", choices=("throughput", "latency"))
    parser.add_argument("--n", type=int, default=None, help="jobs per throughput run")
    parser.add_argument(
        "--repeat", type=int, default=1, help="throughput runs per cell (median shown)"
    )
    parser.add_argument("--samples", type=int, default=None, help="latency samples per run")
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, help="seconds to wait for load < 1.0 per part"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the kernel nodes")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        print(json.dumps(run_role(json.loads(args.role), args.profile)))
        return
    n = args.n if args.n is not None else (1_000 if args.quick else 5_000)
    samples = args.samples if args.samples is not None else (100 if args.quick else 200)
    print(f"# bench/postgres_queue.py: {versions()}")
    with psycopg.connect(server_url(), autocommit=True) as admin:
        if args.only in (None, "throughput"):
            part_throughput(admin, n, args.repeat, args.wait_idle, args.profile)
        if args.only in (None, "latency"):
            part_latency(admin, samples, args.wait_idle, args.profile)
        for schema in SCHEMAS.values():
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


if __name__ == "__main__":
    main()

"""Where one node's time goes on PostgreSQL: the claimer's round trips.

    python bench/postgres_rounds.py                  # 5,000 jobs, default prefetch, 3 runs
    python bench/postgres_rounds.py --prefetch 4 16  # compare prefetch sizes, alternating

In one process: 5,000 no-op jobs are enqueued into a fresh schema, then one
`JobQueue` at concurrency 16 works them, with a timer around each
`PostgresStorage.complete_and_claim` (the queue's one round trip per round).
Prints jobs/s, the number of rounds, the round trip's p50 and mean, how many
jobs each round completed and claimed, and how busy the claimer was (time
inside round trips / elapsed): near 100% means the serial claimer is the
bound. The server is ``$KERNEL_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); the schema ``bench_rounds``
is dropped and made anew for each run. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import trio

from kernel.jobs.queue import JobQueue
from kernel.jobs.record import JobRecord
from kernel.time.scheduler import open_scheduler
from kernel_postgres import PostgresStorage, open_storage, upgrade

SERVER = os.environ.get("KERNEL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "bench_rounds"
CONCURRENCY = 16


async def one_run(n: int, prefetch: int | None) -> str:
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    separator = "&" if "?" in SERVER else "?"
    url = f"{SERVER}{separator}schema={SCHEMA}&pool_size=10"
    await upgrade(url)
    rounds: list[tuple[float, int, int]] = []
    original = PostgresStorage.complete_and_claim

    async def timed(self: PostgresStorage, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = await original(self, *args, **kwargs)
        rounds.append((time.perf_counter() - began, len(kwargs["completed"]), len(result[1])))
        return result

    PostgresStorage.complete_and_claim = timed  # type: ignore[method-assign]
    try:
        async with await open_storage(url) as store:
            now = datetime.now(UTC)
            for _ in range(n):
                await store.enqueue(JobRecord(task="noop", queue="q", run_at=now, enqueued_at=now))
            done = 0
            all_done = trio.Event()

            async def noop() -> None:
                nonlocal done
                done += 1
                if done == n:
                    all_done.set()

            async with open_scheduler() as scheduler, trio.open_nursery() as nursery:
                queue = JobQueue(store, scheduler, worker="bench")
                queue.register("noop", noop, queue="q")
                queue.configure("q", concurrency=CONCURRENCY, prefetch=prefetch)
                await nursery.start(queue.run)
                began = time.perf_counter()
                await all_done.wait()
                elapsed = time.perf_counter() - began
                nursery.cancel_scope.cancel()
    finally:
        PostgresStorage.complete_and_claim = original  # type: ignore[method-assign]
    times = [seconds for seconds, _, _ in rounds]
    return (
        f"prefetch {prefetch if prefetch is not None else 'default'}: {n / elapsed:,.0f} jobs/s;"
        f" {len(rounds)} rounds, round trip p50 {statistics.median(times) * 1e3:.2f} ms"
        f" mean {statistics.mean(times) * 1e3:.2f} ms;"
        f" {statistics.mean(c for _, c, _ in rounds):.1f} completed and"
        f" {statistics.mean(k for _, _, k in rounds):.1f} claimed a round;"
        f" claimer busy {sum(times) / elapsed:.0%}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prefetch", type=int, nargs="*", default=None)
    args = parser.parse_args(argv)
    sizes: list[int | None] = list(args.prefetch) if args.prefetch else [None]
    print(f"# load average {os.getloadavg()[0]:.2f}")
    for _ in range(args.repeat):
        for prefetch in sizes:
            print(trio.run(one_run, args.n, prefetch), flush=True)


if __name__ == "__main__":
    main()

"""What the instrumentation seam costs the job path: throughput of no-op jobs.

    python contrib/otel/bench_overhead.py [--jobs 20000] [--repeat 5]

N no-op jobs on the memory store, queue concurrency 8, enqueued one call at
a time by a producer while the workers run, timed from the first enqueue
until every job has run and its success is stored (`JobQueue.wait_idle`).
Each variant runs in a fresh subprocess, variants alternating; a cell is
the median (min-max) of ``--repeat`` runs, with the median CPU time per job
(all threads; less disturbed by other load than wall time):

- ``none``: nothing registered (the kernel's one ``is None`` test per point);
- ``noop``: an `Instrumentation` whose every call does nothing (the seam's
  own cost: the calls and the context managers);
- ``otel``: `kernel_otel.instrument` on an SDK tracer provider (always
  sampled, a batch processor whose exporter drops the spans, its queue
  large enough to hold them all) and meter
  provider (a reader that is never collected): the cost of the spans and
  metrics themselves.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import trio

VARIANTS = ("none", "noop", "otel")


class _NoOp:
    @contextmanager
    def enqueue(self, job: Any) -> Iterator[dict[str, str]]:
        yield {}

    def attempt(self, job: Any) -> _NoOp:
        return self

    @contextmanager
    def running(self) -> Iterator[None]:
        yield

    def finished(self, outcome: Any) -> None:
        pass

    @contextmanager
    def schedule_fire(self, schedule: str, fire_time: datetime | None) -> Iterator[None]:
        yield

    @contextmanager
    def plugin_step(self, plugin: str, step: Any, *, error: Any = None) -> Iterator[None]:
        yield


def _instrument(queue: Any, variant: str) -> Any:
    if variant == "noop":
        queue.instrument(_NoOp())
        return None
    if variant == "otel":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from kernel_otel import OtelInstrumentation

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracer_provider = TracerProvider()
        # a queue that holds every span: none dropped (and logged) when the
        # processor's thread falls behind
        tracer_provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=100_000))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        queue.instrument(
            OtelInstrumentation(tracer_provider=tracer_provider, meter_provider=meter_provider)
        )
        return tracer_provider
    return None


async def _run(variant: str, jobs: int) -> tuple[float, float]:
    from kernel.jobs.queue import JobQueue
    from kernel.storage.memory import MemoryJobStore
    from kernel.time.scheduler import open_scheduler

    done = trio.Event()
    count = 0

    async def noop() -> None:
        nonlocal count
        count += 1
        if count == jobs:
            done.set()

    async with open_scheduler() as scheduler:
        queue = JobQueue(MemoryJobStore(), scheduler, worker="bench")
        queue.register("noop", noop, queue="bench")
        queue.configure("bench", concurrency=8)
        provider = _instrument(queue, variant) if variant != "none" else None
        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            started = time.perf_counter()
            cpu = time.process_time()
            for _ in range(jobs):
                await queue.enqueue("noop")
            await done.wait()
            await queue.wait_idle("bench")
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            nursery.cancel_scope.cancel()
        if provider is not None:
            provider.shutdown()
    return elapsed, cpu


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        elapsed, cpu = trio.run(_run, args.variant, args.jobs)
        print(elapsed, cpu)
        return
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    cpus: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeat):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--jobs", str(args.jobs)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            elapsed, cpu = map(float, out.split())
            times[variant].append(elapsed)
            cpus[variant].append(cpu)
    print(f"{args.jobs} no-op jobs, memory store, concurrency 8, {args.repeat} runs each")
    for variant, seconds in times.items():
        rates = sorted(args.jobs / s for s in seconds)
        cpu_us = statistics.median(cpus[variant]) / args.jobs * 1e6
        print(
            f"  {variant:5} {statistics.median(rates):8.0f} jobs/s"
            f"  ({rates[0]:.0f}-{rates[-1]:.0f})  {cpu_us:5.1f} CPU us/job"
        )


if __name__ == "__main__":
    main()

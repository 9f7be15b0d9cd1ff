"""The priority work queue: named tasks, run from a `JobStore` by bounded workers.

`JobQueue` is what users hold: register tasks, `enqueue` jobs, add schedules
whose slots become jobs, cancel, retry dead letters, and `run` the workers.
Its shape follows Oban, Hangfire and Celery: tasks are registered by name, a
job is one call of a task with JSON arguments, and workers claim jobs under
a lease they renew by heartbeat, so a crashed process's jobs are reclaimed.
It is a facade over the pieces, each in its own module: the task registry
(`kernel.jobs.registry`), the workers (`kernel.jobs.workers`), the schedule
feeder (`kernel.jobs.feeder`), job events (`kernel.jobs.events`) and rate
limits (`kernel.jobs.rate`).
"""

from __future__ import annotations

import math
import os
import random
import secrets
import socket
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import trio

from kernel.errors import InvalidJob
from kernel.jobs._checks import utc_datetime, validate_name
from kernel.jobs._observed import enqueue_observed
from kernel.jobs.attempt import UNKNOWN_TASK_GRACE
from kernel.jobs.events import JobEvents
from kernel.jobs.feeder import ScheduleFeeder
from kernel.jobs.queue_state import QueueConfig
from kernel.jobs.rate import RateLimit
from kernel.jobs.record import JobRecord, JobState, check_fields, derive_record, new_job_id
from kernel.jobs.registry import TaskRegistry, TaskSpec, positive_seconds
from kernel.jobs.workers import Workers
from kernel.observe.instrument import Instrumentation, checked_instrumentation
from kernel.observe.metrics import Metrics
from kernel.observe.storage_watch import StorageWatch
from kernel.ports import JSON, Bus, JobStore
from kernel.resilience.breaker import CircuitBreaker
from kernel.resilience.retry import RetryPolicy
from kernel.serialization import DEFAULT_MAX_PAYLOAD, dump_arguments
from kernel.time.clock import Clock
from kernel.time.policies import MisfirePolicy, OverlapPolicy
from kernel.time.scheduler import Schedule, Scheduler
from kernel.time.triggers import Trigger

__all__ = ["JobQueue"]

F = TypeVar("F", bound=Callable[..., Any])


def _default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class JobQueue:
    """Register tasks, `enqueue` jobs, and `run` the workers of every queue.

    ``lease`` is how long a claimed job is ours without a heartbeat;
    ``heartbeat`` how often the leases of running jobs are renewed (keep it
    well under ``lease``); ``reap_every`` how often expired leases (of
    crashed workers, ours included) are put back in the queue. ``rng`` makes
    retry jitter reproducible. A job whose task no worker here knows waits
    (put back, its attempt not spent) and is buried only once the task has
    stayed unknown for ``unknown_task_grace``.
    """

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        *,
        bus: Bus | None = None,
        metrics: Metrics | None = None,
        worker: str | None = None,
        lease: timedelta = timedelta(seconds=30),
        heartbeat: timedelta = timedelta(seconds=10),
        reap_every: timedelta = timedelta(seconds=15),
        rng: random.Random | None = None,
        unknown_task_grace: timedelta = UNKNOWN_TASK_GRACE,
        watch: StorageWatch | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if max_payload_bytes is not None and (
            not isinstance(max_payload_bytes, int) or max_payload_bytes <= 0
        ):
            raise InvalidJob("max_payload_bytes", max_payload_bytes, "must be bytes > 0, or None")
        for field, value in (("lease", lease), ("heartbeat", heartbeat)):
            positive_seconds(field, value)
        positive_seconds("reap_every", reap_every)
        positive_seconds("unknown_task_grace", unknown_task_grace)
        if heartbeat >= lease:
            raise InvalidJob("heartbeat", heartbeat, f"must be shorter than the lease ({lease})")
        self.store = store
        self.scheduler = scheduler
        self.bus = bus
        self.metrics = metrics
        self.worker = validate_name("worker", worker if worker is not None else _default_worker())
        self.lease = lease
        self.heartbeat = heartbeat
        self.reap_every = reap_every
        self.rng = rng if rng is not None else random.Random()
        self.max_payload_bytes = max_payload_bytes
        self.storage_watch = watch if watch is not None else StorageWatch(store.next_due)
        self._registry = TaskRegistry()
        self._events = JobEvents(bus)
        self._workers = Workers(
            store,
            scheduler,
            self._registry,
            self._events,
            metrics=metrics,
            worker=self.worker,
            lease=lease,
            heartbeat=heartbeat,
            reap_every=reap_every,
            rng=self.rng,
            stats_of=self._stats_of,
            unknown_task_grace=unknown_task_grace,
            watch=self.storage_watch,
        )
        self._feeder = ScheduleFeeder(
            scheduler,
            store,
            self._registry,
            self._workers,
            self._events,
            metrics,
            watch=self.storage_watch,
            max_payload_bytes=max_payload_bytes,
        )
        self._running = False
        self._instrumentation: Instrumentation | None = None

    @property
    def clock(self) -> Clock:
        return self.scheduler.clock

    @property
    def instrumentation(self) -> Instrumentation | None:
        return self._instrumentation

    def instrument(self, instrumentation: Instrumentation | None) -> None:
        """Report enqueues, attempts and schedule fires to
        ``instrumentation`` (`kernel.observe.instrument`), from now on; None
        stops it. A `Kernel` does this for its queue (`Kernel.instrument`)."""
        instrumentation = checked_instrumentation(instrumentation)
        self._instrumentation = instrumentation
        self._workers.runner.instrumentation = instrumentation
        self._feeder.instrumentation = instrumentation

    # -- registry ------------------------------------------------------------

    def register(
        self,
        name: str,
        func: Callable[..., Any],
        *,
        queue: str = "default",
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        blocking: bool = False,
    ) -> TaskSpec:
        """Register ``func`` (async or sync, called with the job's JSON
        args/kwargs) as task ``name``. A sync function runs on the trio
        thread unless ``blocking=True``: then it runs in a worker thread,
        which a timeout or a cancellation abandons (recorded as such). Code
        that blocks the event loop stops every other job and delays its
        lease renewals; the kernel's watchdog names it in the log."""
        spec = self._registry.register(
            name,
            func,
            queue=queue,
            retry=retry,
            timeout=timeout,
            breaker=breaker,
            rate_limit=rate_limit,
            blocking=blocking,
        )
        self._workers.ensure(queue)  # this worker serves the queues of the tasks it knows
        return spec

    def unregister(self, name: str) -> None:
        """Forget task ``name`` (a stopped plugin's); its queued jobs wait
        for a worker that knows it. Unknown names are ignored."""
        self._registry.unregister(name)

    def task(
        self,
        name: str | None = None,
        *,
        queue: str = "default",
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
        blocking: bool = False,
    ) -> Callable[[F], F]:
        """Decorator form of `register`; the name defaults to the function's
        ``module.qualname``. The function is returned unchanged, and may be
        passed to `enqueue` in place of its name."""

        def decorate(func: F) -> F:
            self.register(
                name or f"{func.__module__}.{func.__qualname__}",
                func,
                queue=queue,
                retry=retry,
                timeout=timeout,
                breaker=breaker,
                rate_limit=rate_limit,
                blocking=blocking,
            )
            return func

        return decorate

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return {spec.name: spec for spec in self._registry}

    # -- queues --------------------------------------------------------------

    def configure(
        self,
        queue_name: str,
        *,
        concurrency: int = 1,
        rate_limit: RateLimit | None = None,
        aging: timedelta | None = timedelta(seconds=60),
        prefetch: int | None = None,
    ) -> QueueConfig:
        """Set how ``queue_name`` is worked (also while running): at most
        ``concurrency`` jobs at once, ``prefetch`` more claimed ahead (None:
        a quarter of ``concurrency``; 0 for strict priority order, or long
        jobs shared by several machines: `QueueConfig`), starts within
        ``rate_limit``, priorities aged by one every ``aging``. A queue that
        is enqueued to without being configured gets the defaults."""
        return self._workers.configure(
            queue_name,
            concurrency=concurrency,
            rate_limit=rate_limit,
            aging=aging,
            prefetch=prefetch,
        )

    def pause(self, queue_name: str) -> None:
        """Claim nothing more from ``queue_name``; running jobs go on."""
        self._workers.pause(queue_name)

    def resume(self, queue_name: str) -> None:
        self._workers.resume(queue_name)

    def running(self, queue_name: str) -> int:
        """How many jobs of ``queue_name`` this worker runs now."""
        return self._workers.running(queue_name)

    def interrupt(self, queue_name: str) -> None:
        """Pause ``queue_name`` and cancel its running jobs, giving their
        attempts back (a plugin being stopped)."""
        self._workers.interrupt(queue_name)

    async def wait_idle(self, queue_name: str) -> None:
        """Until no job of ``queue_name`` runs here."""
        await self._workers.wait_idle(queue_name)

    async def stop_queue(self, queue_name: str) -> None:
        """`interrupt`, then wait until the interrupted jobs are put back."""
        await self._workers.stop_queue(queue_name)

    def describe(self) -> list[dict[str, JSON]]:
        """Each queue this worker serves: concurrency, prefetch, running and
        buffered jobs, paused (for ``kernel status``)."""
        return self._workers.describe()

    def describe_unknown_tasks(self) -> dict[str, dict[str, object]]:
        """Tasks whose jobs wait because no task of that name is registered
        here, since when, and when they will be buried (``kernel status``)."""
        return self._workers.runner.describe_unknown()

    def in_flight(self) -> list[JobRecord]:
        """The jobs running here now."""
        return self._workers.in_flight()

    def stop_intake(self) -> None:
        """The first step of a graceful stop: no schedule slot is stored any
        more, no job is claimed, prefetched jobs go back; running jobs go on."""
        self._feeder.stop()
        self._workers.stop_intake()

    async def drain(self, grace: float) -> bool:
        """The second step: wait up to ``grace`` seconds for the running
        jobs (the log says which), then interrupt what is left, giving the
        attempts back. True if all finished in time."""
        return await self._workers.drain(grace)

    # -- schedules -----------------------------------------------------------

    def add_schedule(
        self,
        task: str | Callable[..., Any],
        trigger: Trigger,
        *,
        name: str | None = None,
        args: list[Any] | tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        priority: int = 0,
        misfire: MisfirePolicy | None = None,
        overlap: OverlapPolicy | None = None,
    ) -> Schedule:
        """Enqueue a job of ``task`` at each fire of ``trigger``, so the runs
        get the task's retries, timeout, breaker and metrics, and run on
        whichever worker sharing the store claims them (`kernel.jobs.feeder`).

        The store claims each slot with its job: a slot becomes one job
        across every process running the same schedule. The last fire is
        stored; a schedule added again (a restart) re-plans from it, and the
        slots missed meanwhile meet ``misfire``. ``overlap`` is
        ``SkipIfRunning()`` (the default: no new job while one of this
        schedule is queued or running, anywhere) or ``AllowOverlap()`` (the
        queue's concurrency is the limit). Catching up several slots
        enqueues each.
        """
        return self._feeder.add(
            task,
            trigger,
            name=name,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            misfire=misfire,
            overlap=overlap,
        )

    # -- enqueue and cancel --------------------------------------------------

    async def enqueue(
        self,
        task: str | Callable[..., Any],
        *args: Any,
        queue: str | None = None,
        priority: int = 0,
        delay: timedelta | float | None = None,
        run_at: datetime | None = None,
        dedup_key: str | None = None,
        timeout: float | timedelta | None = None,  # noqa: ASYNC109 - the job's timeout, not ours
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> JobRecord:
        """Store a job of ``task`` (a registered name or function) and wake its
        queue. Everything is checked first (`UnknownTask`, `InvalidJob`,
        `kernel.errors.NotJSONSerializable` naming the bad part of the
        arguments): a refused job stores nothing. With a ``dedup_key`` held by
        a queued or running job, that job is returned and nothing is stored.
        """
        spec = self._registry.spec(task)
        checked_args, checked_kwargs = dump_arguments(
            args, kwargs, max_bytes=self.max_payload_bytes
        )
        if delay is not None and run_at is not None:
            raise InvalidJob("delay", delay, "give delay or run_at, not both")
        now = self.clock.now()
        when = now
        if delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
            if (
                not isinstance(seconds, int | float)
                or isinstance(seconds, bool)
                or not math.isfinite(seconds)
                or seconds < 0
            ):
                raise InvalidJob("delay", delay, "must be a timedelta or seconds >= 0")
            when = now + (delay if isinstance(delay, timedelta) else timedelta(seconds=seconds))
        elif run_at is not None:
            when = utc_datetime(run_at, field="run_at")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        # the id, the times and the arguments are made here, so only what the
        # caller gave needs checking (dump_arguments made the arguments the
        # job's own JSON)
        changes: dict[str, object] = {
            "id": new_job_id(),
            "run_at": when,
            "enqueued_at": now,
            "args": checked_args,
            "kwargs": checked_kwargs,
        }
        given: dict[str, object] = {}
        if priority != 0:
            given["priority"] = priority
        if queue is not None:
            given["queue"] = queue
        if dedup_key is not None:
            given["dedup_key"] = dedup_key
        if timeout is not None:
            given["timeout"] = positive_seconds("timeout", timeout)
        if retry is not None:
            given["retry"] = retry.to_json()
        if given:
            changes.update(check_fields(**given))
        record = derive_record(self._registry.template(spec.name), changes)
        self._workers.ensure(record.queue)  # a new queue gets a worker before the job exists
        instrumentation = self._instrumentation
        if instrumentation is None:
            stored, created = await self.store.enqueue(record)
        else:
            stored, created = await enqueue_observed(self.store, record, instrumentation)
        if created:
            self._workers.enqueued(stored.queue, stored.run_at)
            if self._events.wants("job.enqueued"):
                await self._events.publish("job.enqueued", stored)
        return stored

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job, or a running one (its task is cancelled);
        the cancelled record, or None if it had already finished."""
        record = await self.store.cancel(job_id, now=self.clock.now())
        self._workers.cancel_running(job_id)
        if record is not None:
            await self._events.publish("job.cancelled", record)
        return record

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self.store.get_job(job_id)

    # -- dead letters --------------------------------------------------------

    async def dead_letters(self, limit: int = 100, after_id: str | None = None) -> list[JobRecord]:
        """Dead jobs in id order (pass the last id of a page as ``after_id``)."""
        return await self.store.list_jobs(state=JobState.dead, limit=limit, after_id=after_id)

    async def retry_dead(self, job_id: str) -> JobRecord | None:
        """Put a dead job back in its queue with its attempts reset."""
        record = await self.store.retry_dead(job_id, now=self.clock.now())
        if record is not None:
            self._workers.ensure(record.queue)
            self._workers.wake(record.queue)
            await self._events.publish("job.enqueued", record)
        return record

    async def purge_dead(self, older_than: timedelta | datetime | None = None) -> int:
        """Delete dead jobs (those that died more than ``older_than`` ago, or
        before that datetime; all if None); how many."""
        cutoff = self.clock.now() - older_than if isinstance(older_than, timedelta) else older_than
        return await self.store.purge_dead(older_than=cutoff)

    # -- the workers ---------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Work every queue until cancelled; then release the running jobs
        without spending their attempts. Needs the scheduler's driver running."""
        if self._running:
            raise RuntimeError("this job queue is already running")
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feeder.run)
                await self._workers.start(nursery)
                task_status.started()
        finally:
            self._running = False
            self._workers.stopped()

    def _stats_of(self, job: JobRecord) -> Any:
        return self._feeder.stats_of(job)

"""The priority work queue: named tasks, run from a `JobStore` by bounded workers.

`JobQueue` is the plumbing around three pieces of pure policy: the store's
claim order (priority with aging, `kernel.jobs.record.claim_order`), the retry
policy (`kernel.resilience.retry.RetryPolicy`) and the circuit breaker
(`kernel.resilience.breaker.CircuitBreaker`). Its shape follows Oban, Hangfire and
Celery: tasks are registered by name, a job is one call of a task with JSON
arguments, and workers claim jobs under a lease they renew by heartbeat, so
a crashed process's jobs are reclaimed (`JobStore.reap_expired`).

Time lives on the scheduler's timer wheel, as everywhere in the kernel: each
queue keeps at most one wheel timer (at the store's ``next_due`` or when its
rate limit frees a slot), and one wheel-driven loop renews every lease and
one reaps expired ones. No task here sleeps with ``trio.sleep``.

`RateLimit` and `RateWindow` are the pure rate arithmetic: a sliding log
(at most ``count`` starts in any interval of length ``per``), exact rather
than the approximate token bucket, so "10 per minute" means exactly that.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import random
import secrets
import socket
import traceback
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import attrs
import trio

from kernel.errors import (
    DuplicateTask,
    InvalidJob,
    JobTimedOut,
    PayloadError,
    StorageError,
    UnknownTask,
)
from kernel.jobs._checks import utc_datetime, validate_name
from kernel.jobs.feeder import ScheduleFeeder
from kernel.jobs.record import JobRecord, JobState, check_fields, derive_record, new_job_id
from kernel.observe.metrics import Metrics
from kernel.ports import JSON, Bus, EnqueueListener, JobStore
from kernel.resilience.breaker import CircuitBreaker
from kernel.resilience.retry import Backoff, Outcome, RetryPolicy
from kernel.serialization import dump_arguments, load_arguments
from kernel.time.clock import Clock
from kernel.time.scheduler import Schedule, Scheduler
from kernel.time.triggers import MisfirePolicy, OverlapPolicy, Trigger
from kernel.time.wheel import Timer

__all__ = ["BREAKER_FLOOR", "JobQueue", "QueueConfig", "RateLimit", "RateWindow", "TaskSpec"]

log = logging.getLogger("kernel.queue")

F = TypeVar("F", bound=Callable[..., Any])

#: The least a job waits when its task's breaker rejects it: a half-open
#: breaker whose probes are all taken says ``retry_after == 0``, and waiting
#: zero would spin.
BREAKER_FLOOR: Final = timedelta(seconds=1)

_DEFAULT_POLICY: Final = RetryPolicy()
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: How long claimed schedule slots are remembered (`JobStore.prune_slots`):
#: a restarted schedule re-plans from its stored last fire, so older slots
#: are never asked for again.
SLOT_RETENTION: Final = timedelta(days=1)
_PRUNE_EVERY: Final = 3600.0


def _default_worker() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------
# Rate limits (pure)
# ---------------------------------------------------------------------------


def _check_count(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidJob("rate_limit.count", value, "must be an int >= 1")


def _check_per(_instance: object, _attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidJob("rate_limit.per", value, "must be a positive timedelta")


@attrs.frozen
class RateLimit:
    """At most ``count`` job starts in any interval of length ``per``."""

    count: int = attrs.field(validator=_check_count)
    per: timedelta = attrs.field(validator=_check_per)


@attrs.define
class RateWindow:
    """The state of one `RateLimit`: a sliding log of start times (seconds on
    any monotonic clock, trio's here). A start at ``t`` occupies a slot during
    ``[t, t + per)``; memory is at most ``count`` floats.

    Pure: no trio, the caller passes ``now``. Times must not go backwards.
    """

    limit: RateLimit
    _starts: deque[float] = attrs.field(factory=deque, init=False)

    def _forget(self, now: float) -> None:
        per = self.limit.per.total_seconds()
        starts = self._starts
        while starts and starts[0] + per <= now:
            starts.popleft()

    def available(self, now: float) -> int:
        """How many starts are allowed at ``now``."""
        self._forget(now)
        return self.limit.count - len(self._starts)

    def next_free(self, now: float) -> float:
        """The earliest time (>= ``now``) at which a start is allowed."""
        if self.available(now) > 0:
            return now
        return self._starts[0] + self.limit.per.total_seconds()

    def acquire(self, now: float) -> bool:
        """Record a start at ``now`` if one is allowed; whether it was."""
        if self.available(now) <= 0:
            return False
        self._starts.append(now)
        return True


# ---------------------------------------------------------------------------
# Registry and per-queue state
# ---------------------------------------------------------------------------


@attrs.frozen
class TaskSpec:
    """A registered task: the function and how its jobs run."""

    name: str
    func: Callable[..., Any]
    queue: str = "default"
    retry: RetryPolicy | None = None
    timeout: float | None = None
    breaker: CircuitBreaker | None = None
    rate_limit: RateLimit | None = None


@attrs.frozen
class QueueConfig:
    """How one queue is worked: concurrency, rate limit and aging."""

    name: str
    concurrency: int = 1
    rate_limit: RateLimit | None = None
    aging: timedelta | None = timedelta(seconds=60)


@attrs.define(eq=False)
class _Running:
    job: JobRecord
    scope: trio.CancelScope
    cancelled_by_user: bool = False
    release: bool = False  # stopped by `stop_queue`: give the attempt back
    settling: bool = False  # the call is over; its outcome is being stored


@attrs.define(eq=False)
class _QueueState:
    config: QueueConfig
    window: RateWindow | None
    paused: bool = False
    running: dict[str, _Running] = attrs.field(factory=dict)
    wake: trio.Event = attrs.field(factory=trio.Event)
    timer: Timer[Callable[[], None]] | None = None
    timer_at: float = math.inf
    due_hint: datetime | None = None
    serving: bool = False
    idle: trio.Event | None = None  # made while `stop_queue` waits


def _positive_seconds(field: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidJob(field, value, "must be seconds (a float) or a timedelta")
    if not math.isfinite(value) or value <= 0:
        raise InvalidJob(field, value, "must be a positive, finite number of seconds")
    return float(value)


# ---------------------------------------------------------------------------
# The queue
# ---------------------------------------------------------------------------


class JobQueue:
    """Register tasks, `enqueue` jobs, and `run` the workers of every queue.

    ``lease`` is how long a claimed job is ours without a heartbeat;
    ``heartbeat`` how often the leases of running jobs are renewed (keep it
    well under ``lease``); ``reap_every`` how often expired leases (of
    crashed workers, ours included) are put back in the queue. ``rng`` makes
    retry jitter reproducible.
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
    ) -> None:
        for field, value in (("lease", lease), ("heartbeat", heartbeat)):
            _positive_seconds(field, value)
        _positive_seconds("reap_every", reap_every)
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
        self._tasks: dict[str, TaskSpec] = {}
        self._names_by_func: dict[int, str] = {}
        self._task_windows: dict[str, RateWindow | None] = {}
        self._templates: dict[str, JobRecord] = {}  # a checked job of each task
        self._queues: dict[str, _QueueState] = {}
        self._nursery: trio.Nursery | None = None
        self._schedules = ScheduleFeeder(self)

    @property
    def clock(self) -> Clock:
        return self.scheduler.clock

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
    ) -> TaskSpec:
        """Register ``func`` (async or sync, called with the job's JSON
        args/kwargs) as task ``name``. A sync function runs on the trio
        thread: make it quick, or make it async and use ``trio.to_thread``."""
        validate_name("task", name)
        validate_name("queue", queue)
        if not callable(func):
            raise TypeError(f"register needs a callable, got {func!r}")
        if name in self._tasks:
            raise DuplicateTask(name)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker must be a CircuitBreaker, got {breaker!r}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit, got {rate_limit!r}")
        spec = TaskSpec(
            name,
            func,
            queue=queue,
            retry=retry,
            timeout=_positive_seconds("timeout", timeout),
            breaker=breaker,
            rate_limit=rate_limit,
        )
        self._tasks[name] = spec
        self._names_by_func[id(func)] = name
        self._task_windows[name] = None if rate_limit is None else RateWindow(rate_limit)
        self._templates[name] = JobRecord(task=name, queue=queue, run_at=_EPOCH, enqueued_at=_EPOCH)
        self._queue(queue)  # this worker serves the queues of the tasks it knows
        return spec

    def unregister(self, name: str) -> None:
        """Forget task ``name`` (a stopped plugin's); its queued jobs wait
        for a worker that knows it. Unknown names are ignored."""
        spec = self._tasks.pop(name, None)
        if spec is not None:
            self._names_by_func.pop(id(spec.func), None)
            self._task_windows.pop(name, None)
            self._templates.pop(name, None)

    def task(
        self,
        name: str | None = None,
        *,
        queue: str = "default",
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        breaker: CircuitBreaker | None = None,
        rate_limit: RateLimit | None = None,
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
            )
            return func

        return decorate

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return dict(self._tasks)

    # -- queues --------------------------------------------------------------

    def configure(
        self,
        queue_name: str,
        *,
        concurrency: int = 1,
        rate_limit: RateLimit | None = None,
        aging: timedelta | None = timedelta(seconds=60),
    ) -> QueueConfig:
        """Set how ``queue_name`` is worked (also while running). A queue that
        is enqueued to without being configured gets the defaults."""
        validate_name("queue", queue_name)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise InvalidJob("concurrency", concurrency, "must be an int >= 1")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit, got {rate_limit!r}")
        if aging is not None:
            _positive_seconds("aging", aging)
        config = QueueConfig(queue_name, concurrency, rate_limit, aging)
        state = self._queues.get(queue_name)
        window = None if rate_limit is None else RateWindow(rate_limit)
        if state is None:
            state = self._queues[queue_name] = _QueueState(config, window)
        else:
            if state.config.rate_limit != rate_limit:
                state.window = window
            state.config = config
        self._start_serving(state)
        self._wake(queue_name)
        return config

    def _queue(self, name: str) -> _QueueState:
        state = self._queues.get(name)
        if state is None:
            self.configure(name)
            state = self._queues[name]
        return state

    def pause(self, queue_name: str) -> None:
        """Claim nothing more from ``queue_name``; running jobs go on."""
        self._queue(queue_name).paused = True

    def resume(self, queue_name: str) -> None:
        self._queue(queue_name).paused = False
        self._wake(queue_name)

    def running(self, queue_name: str) -> int:
        """How many jobs of ``queue_name`` this worker runs now."""
        state = self._queues.get(queue_name)
        return 0 if state is None else len(state.running)

    def interrupt(self, queue_name: str) -> None:
        """Pause ``queue_name`` and cancel its running jobs, giving their
        attempts back (a plugin being stopped)."""
        state = self._queue(queue_name)
        state.paused = True
        for run in state.running.values():
            run.release = True
            run.scope.cancel()

    async def wait_idle(self, queue_name: str) -> None:
        """Until no job of ``queue_name`` runs here."""
        state = self._queues.get(queue_name)
        if state is not None and state.running:
            if state.idle is None:
                state.idle = trio.Event()
            await state.idle.wait()

    def describe(self) -> list[dict[str, JSON]]:
        """Each queue this worker serves: concurrency, running jobs, paused
        (for ``kernel status``)."""
        return [
            {
                "name": name,
                "concurrency": state.config.concurrency,
                "running": len(state.running),
                "paused": state.paused,
            }
            for name, state in sorted(self._queues.items())
        ]

    async def stop_queue(self, queue_name: str) -> None:
        """`interrupt`, then wait until the interrupted jobs are put back."""
        self.interrupt(queue_name)
        await self.wait_idle(queue_name)

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
        return self._schedules.add(
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
        spec = self._spec(task)
        checked_args, checked_kwargs = dump_arguments(args, kwargs)
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
        changes: dict[str, object] = {
            "id": new_job_id(),
            "run_at": when,
            "enqueued_at": now,
            "priority": priority,
        }
        if queue is not None:
            changes["queue"] = queue
        if dedup_key is not None:
            changes["dedup_key"] = dedup_key
        if timeout is not None:
            changes["timeout"] = _positive_seconds("timeout", timeout)
        if retry is not None:
            changes["retry"] = retry.to_json()
        record = derive_record(
            self._templates[spec.name],
            # dump_arguments made the arguments the job's own JSON
            {**check_fields(**changes), "args": checked_args, "kwargs": checked_kwargs},
        )
        self._queue(record.queue)  # a new queue gets a worker before the job exists
        stored, created = await self.store.enqueue(record)
        if created:
            self._wake(stored.queue)
            await self._publish("job.enqueued", stored)
        return stored

    def _spec(self, task: str | Callable[..., Any]) -> TaskSpec:
        name = task if isinstance(task, str) else self._names_by_func.get(id(task))
        spec = None if name is None else self._tasks.get(name)
        if spec is None:
            raise UnknownTask(task if isinstance(task, str) else repr(task), sorted(self._tasks))
        return spec

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job, or a running one (its task is cancelled);
        the cancelled record, or None if it had already finished."""
        record = await self.store.cancel(job_id, now=self.clock.now())
        for state in self._queues.values():
            running = state.running.get(job_id)
            if running is not None:
                running.cancelled_by_user = True
                running.scope.cancel()
        if record is not None:
            await self._publish("job.cancelled", record)
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
            self._queue(record.queue)
            self._wake(record.queue)
            await self._publish("job.enqueued", record)
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
        if self._nursery is not None:
            raise RuntimeError("this job queue is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for state in self._queues.values():
                    self._start_serving(state)
                nursery.start_soon(self._renew_leases)
                nursery.start_soon(self._reap_expired)
                nursery.start_soon(self._schedules.run)
                if isinstance(self.store, EnqueueListener):
                    await nursery.start(self._listen, self.store)
                task_status.started()
        finally:
            self._nursery = None
            for state in self._queues.values():
                state.serving = False
                self._disarm(state)

    def _start_serving(self, state: _QueueState) -> None:
        if self._nursery is not None and not state.serving:
            state.serving = True
            self._nursery.start_soon(self._serve, state, name=f"queue {state.config.name}")

    def _wake(self, queue_name: str) -> None:
        state = self._queues.get(queue_name)
        if state is not None:
            state.wake.set()

    def _disarm(self, state: _QueueState) -> None:
        if state.timer is not None:
            self.scheduler.cancel_timer(state.timer)
            state.timer = None
            state.timer_at = math.inf

    def _arm(self, state: _QueueState, deadline: float, due: datetime | None) -> None:
        """Keep one wheel timer per queue, at the earliest thing it waits for."""
        if state.timer is not None and state.timer_at <= deadline:
            return
        self._disarm(state)

        def fire() -> None:
            state.timer = None
            state.timer_at = math.inf
            if due is not None:
                state.due_hint = due
            state.wake.set()

        state.timer = self.scheduler.call_at(deadline, fire)
        state.timer_at = deadline

    async def _listen(
        self,
        store: EnqueueListener,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Wake our queues when another process enqueues into them. Each time
        listening (re)starts every queue claims once, for what was enqueued
        before; `run` reports started once the first attempt is over."""
        backoff = Backoff()
        reported = False
        while True:
            try:
                async with trio.open_nursery() as listening:
                    await listening.start(functools.partial(store.listen_enqueued, self._wake))
                    self._wake_all()
                    if not reported:
                        reported = True
                        task_status.started()
            except* StorageError as failed:
                if not reported:
                    reported = True
                    task_status.started()
                wait = backoff.next()
                log.warning(
                    "listening for new jobs failed (%s); retrying in %.1f s",
                    failed.exceptions[0],
                    wait,
                )
                await self.scheduler.sleep(wait)

    def _wake_all(self) -> None:
        for state in self._queues.values():
            state.wake.set()

    async def _serve(self, state: _QueueState) -> None:
        backoff = Backoff()
        async with trio.open_nursery() as jobs:
            while True:
                state.wake = trio.Event()
                try:
                    await self._claim_and_start(state, jobs)
                    backoff.reset()
                except StorageError as exc:
                    wait = backoff.next()
                    log.warning(
                        "queue %s: claiming failed (%s); retrying in %.1f s",
                        state.config.name,
                        exc,
                        wait,
                    )
                    self._arm(state, trio.current_time() + wait, None)
                await state.wake.wait()

    async def _claim_and_start(self, state: _QueueState, jobs: trio.Nursery) -> None:
        """Claim in batches up to the free capacity until it is full or
        nothing more is due (a burst drains at full speed), then put the
        queue's one timer at its next due job."""
        while True:
            config = state.config
            if state.paused:
                return
            capacity = config.concurrency - len(state.running)
            if capacity <= 0:
                return
            mono = trio.current_time()
            if state.window is not None:
                allowed = state.window.available(mono)
                if allowed <= 0:
                    self._arm(state, state.window.next_free(mono), None)
                    return
                capacity = min(capacity, allowed)
            now = self.clock.now()
            hint, state.due_hint = state.due_hint, None
            if hint is not None and hint > now:
                now = hint  # the wheel fired for it: trust the wheel over float rounding
            claimed = await self.store.claim(
                config.name,
                worker=self.worker,
                now=now,
                lease=self.lease,
                limit=capacity,
                aging=config.aging,
            )
            if state.paused:  # paused while the claim was in flight: put them back
                for job in claimed:
                    await self.store.release(job.id, worker=self.worker, run_at=job.run_at)
                return
            for job in claimed:
                if state.window is not None:
                    state.window.acquire(mono)
                scope = trio.CancelScope()
                state.running[job.id] = _Running(job, scope)
                jobs.start_soon(self._run_job, state, job, scope, name=f"job {job.task} {job.id}")
            self._set_gauge(state)
            if len(claimed) < capacity:
                break  # nothing more is due now
        due = await self.store.next_due(config.name)
        if due is not None:
            deadline = Clock.tick_deadline(self.clock.wall_to_tick(due))
            if deadline <= trio.current_time():
                # came due while we were claiming (a store in a thread takes time)
                state.due_hint = due
                state.wake.set()
            else:
                self._arm(state, deadline, due)

    def _policy(self, job: JobRecord, spec: TaskSpec | None) -> RetryPolicy:
        if job.retry is not None:
            return RetryPolicy.from_json(job.retry)
        if spec is not None and spec.retry is not None:
            return spec.retry
        return _DEFAULT_POLICY

    async def _run_job(self, state: _QueueState, job: JobRecord, scope: trio.CancelScope) -> None:
        try:
            await self._attempt(state, job, scope)
        except Exception:
            # the store failed to record the outcome: the lease runs out and
            # the job is reaped, so log and keep the queue running
            log.exception("job %s: could not record its outcome", job.id)
        except BaseException:
            # shutdown: the attempt was interrupted, not failed
            with trio.CancelScope(shield=True):
                try:
                    await self.store.release(job.id, worker=self.worker, run_at=self.clock.now())
                except StorageError:
                    log.warning("job %s: could not release it; its lease will run out", job.id)
            raise
        finally:
            state.running.pop(job.id, None)
            self._set_gauge(state)
            state.wake.set()
            if not state.running and state.idle is not None:
                state.idle.set()
                state.idle = None

    async def _attempt(self, state: _QueueState, job: JobRecord, scope: trio.CancelScope) -> None:
        spec = self._tasks.get(job.task)
        if spec is None:
            unknown = UnknownTask(job.task, sorted(self._tasks))
            await self._bury(job, str(unknown), unknown)
            return
        try:
            args, kwargs = load_arguments(spec.func, job.args, job.kwargs)
        except PayloadError as unfit:
            await self._bury(job, str(unfit), None)  # no attempt can make it fit
            return
        policy = self._policy(job, spec)
        if job.attempts > policy.max_attempts:
            # put back by reap_expired after its last attempt: nothing is left
            reason = f"max attempts ({policy.max_attempts}) reached: {job.last_error}"
            await self._bury(job, reason, None)
            return
        breaker = spec.breaker
        if breaker is not None and not breaker.allow():
            wait = max(timedelta(seconds=breaker.retry_after()), BREAKER_FLOOR)
            await self.store.release(job.id, worker=self.worker, run_at=self.clock.now() + wait)
            return
        window = self._task_windows.get(spec.name)
        if window is not None and not window.acquire(trio.current_time()):
            now = self.clock.now()
            wait_s = window.next_free(trio.current_time()) - trio.current_time()
            await self.store.release(
                job.id, worker=self.worker, run_at=now + timedelta(seconds=wait_s)
            )
            if breaker is not None:
                breaker.release()
            return
        timeout = job.timeout if job.timeout is not None else spec.timeout
        if job.fire_time is not None and self.metrics is not None:
            late = (self.clock.now() - job.fire_time).total_seconds()
            self.metrics.histogram("schedule_lateness_seconds", task=job.task).observe(late)
        await self._publish("job.started", job)
        stats = self._schedules.stats_of(job)
        if stats is not None:
            stats.started += 1
        started = trio.current_time()
        error: BaseException | None = None
        try:
            with scope:
                if timeout is None:
                    await _call(spec.func, args, kwargs)
                else:
                    with trio.move_on_after(timeout) as deadline:
                        await _call(spec.func, args, kwargs)
                    if deadline.cancelled_caught:
                        raise JobTimedOut(job.id, job.task, timeout)
        except Exception as exc:
            error = exc
        except BaseException:
            if breaker is not None:
                breaker.release()
            raise
        finally:
            run = state.running.get(job.id)
            if run is not None:
                run.settling = True
        if stats is not None:
            if scope.cancelled_caught:
                stats.cancelled += 1
            elif error is None:
                stats.succeeded += 1
            else:
                stats.failed += 1
        elapsed = trio.current_time() - started
        if self.metrics is not None:
            self.metrics.histogram("job_run_seconds", task=job.task).observe(elapsed)
        if scope.cancelled_caught:
            if breaker is not None:
                breaker.release()
            run = state.running.get(job.id)
            if run is not None and run.release:  # stop_queue: not the job's fault
                await self.store.release(job.id, worker=self.worker, run_at=self.clock.now())
            # else queue.cancel, or a lost lease: the store already says so
            return
        if error is None:
            if breaker is not None:
                breaker.record_success()
            if await self.store.complete(job.id, worker=self.worker, now=self.clock.now()):
                await self._publish("job.succeeded", job)
            return
        if breaker is not None:
            verdict = breaker.is_failure(error)
            if verdict is None:
                breaker.release()
            elif verdict:
                breaker.record_failure()
            else:
                breaker.record_success()
        await self._failed(state, job, policy, error)

    async def _failed(
        self, state: _QueueState, job: JobRecord, policy: RetryPolicy, error: BaseException
    ) -> None:
        if self.metrics is not None:
            self.metrics.counter("job_failures", task=job.task).inc()
        decision = policy.decide(job.attempts, error)
        now = self.clock.now()
        if decision.outcome is Outcome.RETRY:
            run_at = now + policy.delay(job.attempts, self.rng)
            text = f"{decision.reason}\n{_format(error)}"
            if await self.store.retry_later(job.id, worker=self.worker, error=text, run_at=run_at):
                if self.metrics is not None:
                    self.metrics.counter("job_retries", task=job.task).inc()
                await self._publish("job.retrying", job, error=str(error), run_at=run_at)
        elif decision.outcome is Outcome.GIVE_UP:
            await self._bury(job, decision.reason, error)
        else:  # pragma: no cover - only BaseExceptions are not failures, handled above
            await self.store.release(job.id, worker=self.worker, run_at=now)

    async def _bury(self, job: JobRecord, reason: str, error: BaseException | None) -> None:
        text = reason if error is None else f"{reason}\n{_format(error)}"
        if await self.store.bury(job.id, worker=self.worker, error=text, now=self.clock.now()):
            if self.metrics is not None:
                self.metrics.counter("job_dead", task=job.task).inc()
            await self._publish("job.dead", job, error=reason if error is None else str(error))

    def _set_gauge(self, state: _QueueState) -> None:
        if self.metrics is not None:
            self.metrics.gauge("jobs_running", queue=state.config.name).set(len(state.running))

    async def _publish(self, topic: str, job: JobRecord, **extra: Any) -> None:
        if self.bus is None:
            return
        payload: dict[str, JSON] = {
            "id": job.id,
            "task": job.task,
            "queue": job.queue,
            "attempts": job.attempts,
        }
        if job.fire_time is not None:
            payload["schedule"] = job.schedule
            payload["fire_time"] = job.fire_time.isoformat()
        for key, value in extra.items():
            payload[key] = value.isoformat() if isinstance(value, datetime) else value
        try:
            await self.bus.publish(topic, payload)
        except Exception:  # an event lost must not lose the job's outcome
            log.exception("could not publish %s for job %s", topic, job.id)

    # -- leases ----------------------------------------------------------------

    async def _renew_leases(self) -> None:
        """One loop renews every running job's lease; a job the store says we
        no longer hold (reaped, or cancelled by another process) is cancelled."""
        every = self.heartbeat.total_seconds()
        while True:
            await self.scheduler.sleep(every)
            running = {
                job_id: run
                for state in self._queues.values()
                for job_id, run in state.running.items()
            }
            if not running:
                continue
            try:
                held = await self.store.heartbeat(
                    list(running), worker=self.worker, lease_until=self.clock.now() + self.lease
                )
            except StorageError as exc:
                # the next beat may still be in time; if not, the jobs are reaped
                log.warning("renewing %d lease(s) failed: %s", len(running), exc)
                continue
            for job_id, run in running.items():
                if (
                    job_id not in held
                    and not run.settling
                    and any(state.running.get(job_id) is run for state in self._queues.values())
                ):
                    log.warning("job %s: lease lost, cancelling its run", job_id)
                    run.cancelled_by_user = True
                    run.scope.cancel()

    async def _reap_expired(self) -> None:
        """Put back the jobs of workers that stopped renewing their leases;
        the next claim buries those with no attempt left."""
        every = self.reap_every.total_seconds()
        pruned_at = trio.current_time()
        while True:
            await self.scheduler.sleep(every)
            try:
                reaped = await self.store.reap_expired(self.clock.now())
                if trio.current_time() - pruned_at >= _PRUNE_EVERY:
                    pruned_at = trio.current_time()
                    await self.store.prune_slots(older_than=self.clock.now() - SLOT_RETENTION)
            except StorageError as exc:
                log.warning("reaping expired leases failed: %s", exc)
                continue
            if reaped:
                log.warning("reaped %d job(s) with expired leases", len(reaped))
                self._wake_all()


async def _call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run ``func`` on the job's arguments, awaiting it if it is async."""
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        await result


def _format(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))

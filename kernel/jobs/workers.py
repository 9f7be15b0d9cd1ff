"""The workers of a `JobQueue`: claim jobs from the store, run them, record
how they went.

Each queue is served by one loop that claims up to its free capacity and
starts each job in the queue's nursery; time lives on the scheduler's timer
wheel, as everywhere in the kernel: each queue keeps at most one wheel timer
(at the store's ``next_due`` or when its rate limit frees a slot), and one
wheel-driven loop renews every lease and one reaps expired ones. No task
here sleeps with ``trio.sleep``.

The pure policy lives elsewhere: the claim order in the store
(`kernel.storage.base.claim_order`), retries in
`kernel.resilience.retry.RetryPolicy`, breakers in
`kernel.resilience.breaker.CircuitBreaker`; this module is the plumbing
that applies them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import random
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import attrs
import trio

from kernel.errors import InvalidJob, JobTimedOut, PayloadError, StorageError, UnknownTask
from kernel.jobs._checks import validate_name
from kernel.jobs.events import JobEvents
from kernel.jobs.rate import RateLimit, RateWindow
from kernel.jobs.record import JobRecord
from kernel.jobs.registry import TaskRegistry, TaskSpec, positive_seconds
from kernel.observe.metrics import Metrics
from kernel.ports import JSON, EnqueueListener, JobStore
from kernel.resilience.retry import Backoff, Outcome, RetryPolicy
from kernel.serialization import load_arguments
from kernel.time.clock import Clock
from kernel.time.scheduler import Scheduler, ScheduleStats
from kernel.time.wheel import Timer

__all__ = ["BREAKER_FLOOR", "SLOT_RETENTION", "QueueConfig", "Workers"]

log = logging.getLogger("kernel.queue")

#: The least a job waits when its task's breaker rejects it: a half-open
#: breaker whose probes are all taken says ``retry_after == 0``, and waiting
#: zero would spin.
BREAKER_FLOOR: Final = timedelta(seconds=1)

_DEFAULT_POLICY: Final = RetryPolicy()

#: How long claimed schedule slots are remembered (`JobStore.prune_slots`):
#: a restarted schedule re-plans from its stored last fire, so older slots
#: are never asked for again.
SLOT_RETENTION: Final = timedelta(days=1)
_PRUNE_EVERY: Final = 3600.0


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


class Workers:
    """The queues this process serves and the loops that serve them; made
    and driven by `JobQueue` (see the module docstring)."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        registry: TaskRegistry,
        events: JobEvents,
        *,
        metrics: Metrics | None,
        worker: str,
        lease: timedelta,
        heartbeat: timedelta,
        reap_every: timedelta,
        rng: random.Random,
        stats_of: Callable[[JobRecord], ScheduleStats | None],
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.metrics = metrics
        self.worker = worker
        self.lease = lease
        self.heartbeat = heartbeat
        self.reap_every = reap_every
        self.rng = rng
        self._registry = registry
        self._events = events
        self._stats_of = stats_of
        self._queues: dict[str, _QueueState] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def clock(self) -> Clock:
        return self.scheduler.clock

    async def start(self, nursery: trio.Nursery) -> None:
        """Serve every queue, renew leases and reap expired ones in
        ``nursery``; returns once listening for other processes' jobs (when
        the store offers it)."""
        self._nursery = nursery
        for state in self._queues.values():
            self._start_serving(state)
        nursery.start_soon(self._renew_leases)
        nursery.start_soon(self._reap_expired)
        if isinstance(self.store, EnqueueListener):
            await nursery.start(self._listen, self.store)

    def stopped(self) -> None:
        """The nursery of `start` is closed: nothing serves any more."""
        self._nursery = None
        for state in self._queues.values():
            state.serving = False
            self._disarm(state)

    def cancel_running(self, job_id: str) -> None:
        """Cancel the run of ``job_id`` here, if it runs here (its outcome is
        the store's: cancelled)."""
        for state in self._queues.values():
            running = state.running.get(job_id)
            if running is not None:
                running.cancelled_by_user = True
                running.scope.cancel()

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
            positive_seconds("aging", aging)
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
        self.wake(queue_name)
        return config

    def ensure(self, name: str) -> _QueueState:
        state = self._queues.get(name)
        if state is None:
            self.configure(name)
            state = self._queues[name]
        return state

    def pause(self, queue_name: str) -> None:
        """Claim nothing more from ``queue_name``; running jobs go on."""
        self.ensure(queue_name).paused = True

    def resume(self, queue_name: str) -> None:
        self.ensure(queue_name).paused = False
        self.wake(queue_name)

    def running(self, queue_name: str) -> int:
        """How many jobs of ``queue_name`` this worker runs now."""
        state = self._queues.get(queue_name)
        return 0 if state is None else len(state.running)

    def interrupt(self, queue_name: str) -> None:
        """Pause ``queue_name`` and cancel its running jobs, giving their
        attempts back (a plugin being stopped)."""
        state = self.ensure(queue_name)
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

    def _start_serving(self, state: _QueueState) -> None:
        if self._nursery is not None and not state.serving:
            state.serving = True
            self._nursery.start_soon(self._serve, state, name=f"queue {state.config.name}")

    def wake(self, queue_name: str) -> None:
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
                    await listening.start(functools.partial(store.listen_enqueued, self.wake))
                    self.wake_all()
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

    def wake_all(self) -> None:
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
        spec = self._registry.get(job.task)
        if spec is None:
            unknown = UnknownTask(job.task, self._registry.names())
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
        window = self._registry.window(spec.name)
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
        await self._events.publish("job.started", job)
        stats = self._stats_of(job)
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
                await self._events.publish("job.succeeded", job)
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
            run_at = now + policy.delay(job.attempts, self.rng, error)
            text = f"{decision.reason}\n{_format(error)}"
            if await self.store.retry_later(job.id, worker=self.worker, error=text, run_at=run_at):
                if self.metrics is not None:
                    self.metrics.counter("job_retries", task=job.task).inc()
                await self._events.publish("job.retrying", job, error=str(error), run_at=run_at)
        elif decision.outcome is Outcome.GIVE_UP:
            await self._bury(job, decision.reason, error)
        else:  # pragma: no cover - only BaseExceptions are not failures, handled above
            await self.store.release(job.id, worker=self.worker, run_at=now)

    async def _bury(self, job: JobRecord, reason: str, error: BaseException | None) -> None:
        text = reason if error is None else f"{reason}\n{_format(error)}"
        if await self.store.bury(job.id, worker=self.worker, error=text, now=self.clock.now()):
            if self.metrics is not None:
                self.metrics.counter("job_dead", task=job.task).inc()
            await self._events.publish(
                "job.dead", job, error=reason if error is None else str(error)
            )

    def _set_gauge(self, state: _QueueState) -> None:
        if self.metrics is not None:
            self.metrics.gauge("jobs_running", queue=state.config.name).set(len(state.running))

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
                self.wake_all()


async def _call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run ``func`` on the job's arguments, awaiting it if it is async."""
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        await result


def _format(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))

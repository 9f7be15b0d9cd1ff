"""One attempt of one job: the checks before the call, the call, and what to
store after it.

`JobRunner` does what a worker does with a claimed job, in three steps
(`prepare`, `call`, `finish`) so that the call alone runs under the
worker's cancel scope (one per worker, not one per job). Before the
call: is the task known here (a job of a task this process does not know
*yet* waits for it; only one that stays unknown past a documented grace is
buried), do its arguments still fit, does its stored retry policy still
read (a policy read from a row never imports anything: exception classes
are matched by name), are attempts left, does the breaker or the task's rate
limit allow a start. The call runs under a cancel scope with the job's
timeout. After it: a success is handed back to the worker (completions are
stored in batches with the next claim); a failure becomes a retry or a dead
letter per the `RetryPolicy`; an interrupted attempt is given back.

Storing an outcome is retried with backoff while our lease on the job lasts
(`record`), so a database busy for a moment does not make a finished job run
again. A write the store refuses because we no longer hold the job (our
lease ran out and another worker took it, or it was cancelled) is logged
and counted, never forced.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import random
import traceback
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Final

import attrs
import trio

from kernel.errors import (
    InvalidRetryPolicy,
    JobTimedOut,
    PayloadError,
    StorageError,
    StorageLost,
    UnknownTask,
)
from kernel.jobs.events import JobEvents
from kernel.jobs.leases import LeaseKeeper
from kernel.jobs.record import JobRecord
from kernel.jobs.registry import TaskRegistry, TaskSpec
from kernel.observe.instrument import (
    AttemptObserver,
    AttemptOutcome,
    AttemptResult,
    Instrumentation,
)
from kernel.observe.metrics import Metrics
from kernel.observe.storage_watch import StorageWatch
from kernel.ports import JobStore
from kernel.resilience.retry import Backoff, Outcome, RetryPolicy
from kernel.serialization import load_arguments
from kernel.time.scheduler import Scheduler, ScheduleStats

__all__ = ["BREAKER_FLOOR", "UNKNOWN_TASK_GRACE", "JobRunner", "Plan", "Run", "Verdict"]

log = logging.getLogger("kernel.queue")

#: The least a job waits when its task's breaker rejects it: a half-open
#: breaker whose probes are all taken says ``retry_after == 0``, and waiting
#: zero would spin.
BREAKER_FLOOR: Final = timedelta(seconds=1)

#: How long a task may stay unknown to this process before its jobs are
#: buried (a task removed in a deploy); until then they are put back to wait.
UNKNOWN_TASK_GRACE: Final = timedelta(hours=1)

_DEFAULT_POLICY: Final = RetryPolicy()
_UNKNOWN_WAIT_MAX: Final = 30.0


class Verdict(enum.Enum):
    """How an attempt ended, for the worker that ran it."""

    SUCCEEDED = "succeeded"  # the worker stores it, batched with its next claim
    RECORDED = "recorded"  # the outcome is stored (or could not be, and was given up)
    DROPPED = "dropped"  # cancelled or lease lost: the store already says what happened


@attrs.define(eq=False)
class Run:
    """A claimed job on its way through a worker. ``scope`` is the worker's
    cancel scope while the job's call runs in it, else None."""

    job: JobRecord
    scope: trio.CancelScope | None = None
    lost: bool = False  # cancelled, or our lease was lost: store nothing for it
    release: bool = False  # interrupted by a stop: give the attempt back

    def cancel(self, *, release: bool) -> None:
        """Stop the run: ``release`` to give the attempt back (a stop),
        otherwise to forget it (cancelled, or lease lost)."""
        if release:
            self.release = True
        else:
            self.lost = True
        if self.scope is not None:
            self.scope.cancel()


@attrs.define(eq=False)
class _TaskMetrics:
    run_seconds: Any
    lateness: Any


@attrs.define(eq=False)
class Plan:
    """What `JobRunner.prepare` found for a job about to be called."""

    spec: TaskSpec
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    policy: RetryPolicy
    timeout: float | None
    stats: ScheduleStats | None
    metrics: _TaskMetrics | None
    started: float = 0.0
    observer: AttemptObserver | None = None  # with an instrumentation only
    run: Run | None = None  # with an instrumentation only


@attrs.define(eq=False)
class _Unknown:
    since: float  # trio time this process first met the task unknown
    seen: int = 0  # jobs put back so far


class JobRunner:
    """Runs attempts for the workers of one `JobQueue`; see the module docstring."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        registry: TaskRegistry,
        events: JobEvents,
        leases: LeaseKeeper,
        *,
        worker: str,
        metrics: Metrics | None,
        rng: random.Random,
        stats_of: Callable[[JobRecord], ScheduleStats | None],
        unknown_task_grace: timedelta = UNKNOWN_TASK_GRACE,
        watch: StorageWatch | None = None,
    ) -> None:
        self.store = store
        self.watch = watch if watch is not None else StorageWatch(store.next_due)
        self.scheduler = scheduler
        self.registry = registry
        self.events = events
        self.leases = leases
        self.worker = worker
        self.metrics = metrics
        self.rng = rng
        self.unknown_task_grace = unknown_task_grace
        self._stats_of = stats_of
        self._unknown: dict[str, _Unknown] = {}
        self._task_metrics: dict[str, _TaskMetrics] = {}
        self.instrumentation: Instrumentation | None = None

    # -- one attempt -------------------------------------------------------------

    async def prepare(self, run: Run) -> Plan | Verdict:
        """The checks before the call (see the module docstring): a `Plan` to
        call, or the `Verdict` of a job that is not to run now (its outcome
        stored here)."""
        job = run.job
        spec = self.registry.get(job.task)
        if spec is None:
            return await self._unknown_task(job)
        if self._unknown:
            self._unknown.pop(job.task, None)
        try:
            args, kwargs = load_arguments(spec.func, job.args, job.kwargs)
        except PayloadError as unfit:
            return await self.bury(job, str(unfit), None)  # no attempt can make it fit
        try:
            policy = self._policy(job, spec)
        except InvalidRetryPolicy as unreadable:
            reason = f"its stored retry policy does not read: {unreadable}"
            return await self.bury(job, reason, None)
        if job.attempts > policy.max_attempts:
            # put back by reap_expired after its last attempt: nothing is left
            reason = f"max attempts ({policy.max_attempts}) reached: {job.last_error}"
            return await self.bury(job, reason, None)
        breaker = spec.breaker
        if breaker is not None and not breaker.allow():
            # spread the waiting jobs a little, so a different one gets the
            # half-open probe each time (and the herd does not return at once)
            wait = max(timedelta(seconds=breaker.retry_after()), BREAKER_FLOOR)
            return await self.release(job, wait * (1 + 0.2 * self.rng.random()))
        window = self.registry.window(spec.name)
        if window is not None and not window.acquire(trio.current_time()):
            wait_s = window.next_free(trio.current_time()) - trio.current_time()
            if breaker is not None:
                breaker.release()
            return await self.release(job, timedelta(seconds=wait_s))
        task_metrics = self._metrics_of(job.task)
        if job.fire_time is not None and task_metrics is not None:
            late = (self.scheduler.clock.now() - job.fire_time).total_seconds()
            task_metrics.lateness.observe(late)
        if self.events.wants("job.started"):
            await self.events.publish("job.started", job)
        stats = self._stats_of(job) if job.schedule is not None else None
        if stats is not None:
            stats.started += 1
        timeout = job.timeout if job.timeout is not None else spec.timeout
        plan = Plan(spec, args, kwargs, policy, timeout, stats, task_metrics)
        if self.instrumentation is not None:
            plan.observer = self.instrumentation.attempt(job)
            plan.run = run
        return plan

    async def call(self, plan: Plan) -> None:
        """The call itself: run under the worker's cancel scope, which carries
        the timeout and a cancellation (`Run.cancel`)."""
        if plan.observer is not None:
            return await self._observed_call(plan, plan.observer)
        plan.started = trio.current_time()
        spec = plan.spec
        if spec.blocking:
            result = await trio.to_thread.run_sync(
                functools.partial(spec.func, *plan.args, **plan.kwargs), abandon_on_cancel=True
            )
        else:
            result = spec.func(*plan.args, **plan.kwargs)
        if inspect.isawaitable(result):
            await result

    async def _observed_call(self, plan: Plan, observer: AttemptObserver) -> None:
        """`call` with the attempt's context current (a ``blocking`` task's
        thread gets a copy of it): `call` again, the observer set aside
        meanwhile, so the plain path stays as it is. A cancellation that is
        not the worker's own (its scope: a timeout, `Run.cancel`) tears the
        queue down past every grace: `finish` will not run, so the attempt
        ends here, put back as the worker's last act puts it back."""
        plan.observer = None
        try:
            with observer.running():
                await self.call(plan)
        except BaseException as exc:
            scope = None if plan.run is None else plan.run.scope
            if not isinstance(exc, Exception) and (scope is None or not scope.cancel_called):
                observer.finished(AttemptOutcome(AttemptResult.RELEASED))
                raise
            plan.observer = observer
            raise
        plan.observer = observer

    async def finish(
        self, run: Run, plan: Plan, error: BaseException | None, *, cut_short: bool
    ) -> Verdict:
        """Judge the call and store what must be (a success is the caller's
        to store, batched): ``cut_short`` when the worker's scope cancelled it
        (a timeout, or `Run.cancel`)."""
        job = run.job
        elapsed = trio.current_time() - plan.started
        if plan.metrics is not None:
            plan.metrics.run_seconds.observe(elapsed)
        breaker = plan.spec.breaker
        interrupted = run.release or run.lost
        timeout = plan.timeout
        overran = timeout is not None and (cut_short or elapsed > timeout)
        timed_out = False
        if overran and not interrupted and error is None:
            # cut short at the deadline, or it could not be cancelled and ran
            # over (a thread it did not let be abandoned): timed out either way
            assert timeout is not None
            error = JobTimedOut(job.id, job.task, timeout)
            timed_out = True
            if elapsed > timeout + max(0.05, timeout / 10):  # it could not be cut short
                error.add_note(_overran(plan.spec, elapsed, timeout))
        stats = plan.stats
        if stats is not None:
            if interrupted:
                stats.cancelled += 1
            elif error is None:
                stats.succeeded += 1
            else:
                stats.failed += 1
        observer = plan.observer
        if interrupted:
            if breaker is not None:
                breaker.release()
            if run.release:  # a stop: not the job's fault
                released = await self.release(job, timedelta(0))
                if observer is not None:
                    observer.finished(AttemptOutcome(AttemptResult.RELEASED))
                return released
            if observer is not None:
                observer.finished(AttemptOutcome(AttemptResult.CANCELLED))
            return Verdict.DROPPED  # cancelled, or the lease was lost: the store says so
        if error is None:
            if breaker is not None:
                breaker.record_success()
            if observer is not None:
                observer.finished(AttemptOutcome(AttemptResult.SUCCEEDED))
            return Verdict.SUCCEEDED
        if breaker is not None:
            verdict = breaker.is_failure(error)
            if verdict is None:
                breaker.release()
            elif verdict:
                breaker.record_failure()
            else:
                breaker.record_success()
        return await self._failed(job, plan.policy, error, observer, timed_out)

    def _policy(self, job: JobRecord, spec: TaskSpec | None) -> RetryPolicy:
        if job.retry is not None:
            return RetryPolicy.from_json(job.retry)
        if spec is not None and spec.retry is not None:
            return spec.retry
        return _DEFAULT_POLICY

    async def _failed(
        self,
        job: JobRecord,
        policy: RetryPolicy,
        error: BaseException,
        observer: AttemptObserver | None,
        timed_out: bool,
    ) -> Verdict:
        if self.metrics is not None:
            self.metrics.counter("job_failures", task=job.task).inc()
        decision = policy.decide(job.attempts, error)
        if decision.outcome is Outcome.RETRY:
            now = self.scheduler.clock.now()
            delay = policy.delay(job.attempts, self.rng, error)
            run_at = now + delay
            text = f"{decision.reason}\n{_format(error)}"
            stored = await self.record(
                job,
                "retry",
                lambda: self.store.retry_later(
                    job.id, worker=self.worker, error=text, run_at=run_at
                ),
            )
            if observer is not None:
                observer.finished(
                    AttemptOutcome(AttemptResult.RETRY, error, delay, timed_out=timed_out)
                )
            if stored:
                if self.metrics is not None:
                    self.metrics.counter("job_retries", task=job.task).inc()
                if self.events.wants("job.retrying"):
                    await self.events.publish("job.retrying", job, error=str(error), run_at=run_at)
            return Verdict.RECORDED
        if decision.outcome is Outcome.GIVE_UP:
            buried = await self.bury(job, decision.reason, error)
            if observer is not None:
                observer.finished(AttemptOutcome(AttemptResult.DEAD, error, timed_out=timed_out))
            return buried
        return await self.release(job, timedelta(0))  # pragma: no cover - handled above

    # -- outcomes ---------------------------------------------------------------------

    async def bury(self, job: JobRecord, reason: str, error: BaseException | None) -> Verdict:
        """Make ``job`` a dead letter with ``reason`` (and ``error``'s traceback)."""
        text = reason if error is None else f"{reason}\n{_format(error)}"
        now = self.scheduler.clock.now()
        if await self.record(
            job,
            "dead letter",
            lambda: self.store.bury(job.id, worker=self.worker, error=text, now=now),
        ):
            if self.metrics is not None:
                self.metrics.counter("job_dead", task=job.task).inc()
            if self.events.wants("job.dead"):
                await self.events.publish(
                    "job.dead", job, error=reason if error is None else str(error)
                )
        return Verdict.RECORDED

    async def release(self, job: JobRecord, wait: timedelta) -> Verdict:
        """Put ``job`` back to run after ``wait``, without spending its attempt."""
        run_at = self.scheduler.clock.now() + wait
        await self.record(
            job,
            "release",
            functools.partial(self.store.release, job.id, worker=self.worker, run_at=run_at),
        )
        return Verdict.RECORDED

    async def record(self, job: JobRecord, what: str, write: Callable[[], Awaitable[bool]]) -> bool:
        """Store an outcome of ``job``, retrying with backoff while our lease
        lasts; whether the store took it. Shielded: an outcome is worth the
        wait even when the queue is being stopped."""
        backoff = Backoff(first=0.05, cap=2.0)
        with trio.CancelScope(shield=True):
            try:
                while True:
                    try:
                        stored = await write()
                    except StorageError as exc:
                        self.watch.failed(exc)
                        wait = backoff.next()
                        if isinstance(exc, StorageLost) or self.leases.lease_left(job.id) <= wait:
                            log.error(
                                "job %s (%s): could not store its %s before our lease ends (%s);"
                                " it will run again",
                                job.id,
                                job.task,
                                what,
                                exc,
                            )
                            return False
                        log.warning(
                            "job %s: storing its %s failed (%s); retrying in %.2f s",
                            job.id,
                            what,
                            exc,
                            wait,
                        )
                        await self.scheduler.sleep(wait)
                        continue
                    self.watch.succeeded()
                    if not stored:
                        self.outcome_refused(job, what)
                    return stored
            finally:
                self.leases.drop(job.id)
        raise AssertionError("unreachable")  # pragma: no cover - the shield never cancels

    def outcome_refused(self, job: JobRecord, what: str) -> None:
        """The store refused an outcome: we no longer held the job."""
        log.warning(
            "job %s (%s): its %s was not stored: this worker no longer holds the job"
            " (its lease ran out and another worker took it, or it was cancelled)",
            job.id,
            job.task,
            what,
        )
        if self.metrics is not None:
            self.metrics.counter("job_outcomes_refused", task=job.task).inc()

    # -- tasks this process does not know --------------------------------------------

    async def _unknown_task(self, job: JobRecord) -> Verdict:
        now = trio.current_time()
        unknown = self._unknown.get(job.task)
        if unknown is None:
            unknown = self._unknown[job.task] = _Unknown(now)
        if self.metrics is not None:
            self.metrics.counter("jobs_unknown_task", task=job.task).inc()
        waited = now - unknown.since
        if waited >= self.unknown_task_grace.total_seconds():
            error = UnknownTask(job.task, self.registry.names())
            grace = _format_seconds(self.unknown_task_grace.total_seconds())
            return await self.bury(job, f"{error} for longer than the grace of {grace}", None)
        if unknown.seen == 0 or unknown.seen % 100 == 0:
            log.warning(
                "job %s: no task %r is registered here (yet); putting it back to wait"
                " (buried if still unknown after %s)",
                job.id,
                job.task,
                _format_seconds(self.unknown_task_grace.total_seconds() - waited),
            )
        wait = min(2.0**unknown.seen, _UNKNOWN_WAIT_MAX)
        unknown.seen += 1
        return await self.release(job, timedelta(seconds=wait))

    def describe_unknown(self) -> dict[str, dict[str, object]]:
        """The tasks whose jobs wait because no task of that name is
        registered here (for ``kernel status``)."""
        now = trio.current_time()
        wall = self.scheduler.clock.now()
        return {
            task: {
                "since": (wall - timedelta(seconds=now - unknown.since)).isoformat(),
                "jobs_put_back": unknown.seen,
                "buried_after": (
                    wall + timedelta(seconds=unknown.since + self._grace_s() - now)
                ).isoformat(),
            }
            for task, unknown in sorted(self._unknown.items())
            if task not in self.registry
        }

    def _grace_s(self) -> float:
        return self.unknown_task_grace.total_seconds()

    def _metrics_of(self, task: str) -> _TaskMetrics | None:
        if self.metrics is None:
            return None
        found = self._task_metrics.get(task)
        if found is None:
            found = self._task_metrics[task] = _TaskMetrics(
                self.metrics.histogram("job_run_seconds", task=task),
                self.metrics.histogram("schedule_lateness_seconds", task=task),
            )
        return found


def _overran(spec: TaskSpec, elapsed: float, timeout: float) -> str:
    how = (
        "blocking code on the event loop"
        if not inspect.iscoroutinefunction(spec.func)
        else "code that cannot be cancelled, such as trio.to_thread.run_sync without"
        " abandon_on_cancel=True"
    )
    return (
        f"it ran {elapsed:.1f} s, past its timeout of {timeout:g} s: {how} kept it going;"
        " register blocking functions with blocking=True so a timeout can abandon their thread"
    )


def _format(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def _format_seconds(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds >= 3600:
        return f"{seconds / 3600:.3g}h"
    if seconds >= 60:
        return f"{seconds / 60:.3g}m"
    return f"{seconds:.3g}s"

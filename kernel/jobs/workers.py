"""The workers of a `JobQueue`: a pool per queue, fed by one claimer.

Each queue this process serves has ``concurrency`` long-lived worker tasks
and one claimer task (the shape of Sidekiq's and Oban's producers). The
claimer talks to the store; the workers only run jobs:

- the claimer claims up to the free capacity plus a prefetch into a local
  buffer, so a worker that finishes finds its next job waiting instead of
  waiting for a claim in flight;
- a worker takes a job from the buffer, runs the attempt
  (`kernel.jobs.attempt`) and hands a success back to the claimer, which
  stores every success since the last round together with the next claim in
  one round trip (`JobStore.complete_and_claim`); failures and retries,
  rarer and each different, are stored one by one as they happen;
- a woken claimer first yields while more keeps arriving (`_gather`), so
  a burst of enqueues or of finishing workers shares one round trip;
- time lives on the scheduler's timer wheel, as everywhere in the kernel:
  each queue keeps at most one wheel timer (at the store's ``next_due`` or
  when its rate limit frees a slot).

There is no task and no cancel scope per job beyond the attempt's own scope
(which a timeout or a cancellation needs), and the store is asked once per
round, not once per job. Leases are kept by `kernel.jobs.leases`, a
worker's loop is `kernel.jobs.worker_loop`, and other processes' enqueues
wake the claimers through `kernel.jobs.listening`.

Stopping takes two steps (`stop_intake`, then `drain`): nothing more is
claimed and prefetched jobs go back at once; the jobs already running get
the grace period, and what is still running after it is interrupted with
its attempt given back.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime, timedelta

import trio

from kernel.errors import InvalidJob, StorageError
from kernel.jobs._checks import validate_name
from kernel.jobs.attempt import UNKNOWN_TASK_GRACE, JobRunner, Run, Verdict
from kernel.jobs.events import JobEvents
from kernel.jobs.leases import LeaseKeeper, reap_expired
from kernel.jobs.listening import listen_for_enqueues
from kernel.jobs.queue_state import QueueConfig, QueueState
from kernel.jobs.rate import RateLimit, RateWindow
from kernel.jobs.record import JobRecord
from kernel.jobs.registry import TaskRegistry, positive_seconds
from kernel.jobs.worker_loop import run_worker
from kernel.observe.metrics import Metrics
from kernel.observe.storage_watch import StorageWatch
from kernel.ports import JSON, EnqueueListener, JobStore
from kernel.resilience.retry import Backoff
from kernel.time.clock import Clock
from kernel.time.scheduler import Scheduler, ScheduleStats

__all__ = ["Workers"]

log = logging.getLogger("kernel.queue")

_DRAIN_REPORT_EVERY = 5.0
_GATHER_MAX = 16
_POLL_FIRST = 1.0
_POLL_MAX = 30.0


class Workers:
    """The queues this process serves and the tasks that serve them; made
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
        unknown_task_grace: timedelta = UNKNOWN_TASK_GRACE,
        watch: StorageWatch | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.metrics = metrics
        self.watch = watch if watch is not None else StorageWatch(store.next_due)
        self.worker = worker
        self.lease = lease
        self.reap_every = reap_every
        self._events = events
        self.leases = LeaseKeeper(
            store,
            scheduler,
            worker=worker,
            lease=lease,
            heartbeat=heartbeat,
            lost=self._leases_lost,
            watch=self.watch,
        )
        self.runner = JobRunner(
            store,
            scheduler,
            registry,
            events,
            self.leases,
            worker=worker,
            metrics=metrics,
            rng=rng,
            stats_of=stats_of,
            unknown_task_grace=unknown_task_grace,
            watch=self.watch,
        )
        self._queues: dict[str, QueueState] = {}
        self._nursery: trio.Nursery | None = None
        self._intake = True
        self._listening = isinstance(store, EnqueueListener)
        self._process_local = bool(getattr(store, "process_local", False))

    @property
    def clock(self) -> Clock:
        return self.scheduler.clock

    # -- queues ------------------------------------------------------------------

    def configure(
        self,
        queue_name: str,
        *,
        concurrency: int = 1,
        rate_limit: RateLimit | None = None,
        aging: timedelta | None = timedelta(seconds=60),
        prefetch: int | None = None,
    ) -> QueueConfig:
        """`JobQueue.configure`: checked first, then applied (also while running)."""
        validate_name("queue", queue_name)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise InvalidJob("concurrency", concurrency, "must be an int >= 1")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a RateLimit, got {rate_limit!r}")
        if aging is not None:
            positive_seconds("aging", aging)
        config = QueueConfig(queue_name, concurrency, rate_limit, aging, prefetch)
        state = self._queues.get(queue_name)
        window = None if rate_limit is None else RateWindow(rate_limit)
        if state is None:
            state = self._queues[queue_name] = QueueState(config, window)
            if self.metrics is not None:
                state.gauge = self.metrics.gauge("jobs_running", queue=queue_name)
        else:
            if state.config.rate_limit != rate_limit:
                state.window = window
            state.config = config
        self._start_serving(state)
        self._spawn_workers(state)
        self.wake(queue_name)
        return config

    def ensure(self, name: str) -> QueueState:
        """The state of queue ``name``, configured with the defaults if new."""
        state = self._queues.get(name)
        if state is None:
            self.configure(name)
            state = self._queues[name]
        return state

    def pause(self, queue_name: str) -> None:
        """Claim nothing more; prefetched jobs go back; running jobs go on."""
        state = self.ensure(queue_name)
        state.paused = True
        self._give_back_buffer(state)

    def resume(self, queue_name: str) -> None:
        self.ensure(queue_name).paused = False
        self.wake(queue_name)

    def running(self, queue_name: str) -> int:
        state = self._queues.get(queue_name)
        return 0 if state is None else len(state.running)

    def interrupt(self, queue_name: str) -> None:
        """Pause and cancel the running jobs, giving their attempts back."""
        state = self.ensure(queue_name)
        self.pause(queue_name)
        for run in state.running.values():
            run.cancel(release=True)

    async def wait_idle(self, queue_name: str) -> None:
        """Until no job of ``queue_name`` runs, waits or is being stored here."""
        state = self._queues.get(queue_name)
        while state is not None and state.busy:
            if state.idle is None:
                state.idle = trio.Event()
            await state.idle.wait()

    async def stop_queue(self, queue_name: str) -> None:
        self.interrupt(queue_name)
        await self.wait_idle(queue_name)

    def describe(self) -> list[dict[str, JSON]]:
        return [
            {
                "name": name,
                "concurrency": state.config.concurrency,
                "prefetch": state.config.ahead,
                "running": len(state.running),
                "buffered": len(state.buffer),
                "paused": state.paused,
            }
            for name, state in sorted(self._queues.items())
        ]

    def in_flight(self) -> list[JobRecord]:
        """The jobs running here now, across queues."""
        return [run.job for state in self._queues.values() for run in state.running.values()]

    def wake(self, queue_name: str) -> None:
        """Something changed that this process did not do itself (a resume,
        another process's job, a reaped lease): claim, and ask the store
        again when the next job is due."""
        state = self._queues.get(queue_name)
        if state is not None:
            state.check_due = True
            state.wake.set()

    def wake_all(self) -> None:
        for state in self._queues.values():
            state.check_due = True
            state.wake.set()

    def enqueued(self, queue_name: str, run_at: datetime) -> None:
        """This process stored a job due at ``run_at``: claim it now, or put
        the queue's timer at it; the store need not be asked."""
        state = self._queues.get(queue_name)
        if state is None:
            return
        if run_at <= self.clock.now():
            state.wake.set()
        else:
            state.arm(self.scheduler, Clock.tick_deadline(self.clock.wall_to_tick(run_at)), run_at)

    def cancel_running(self, job_id: str) -> None:
        """Stop the run of ``job_id`` if it runs here (its outcome is the
        store's: cancelled), or drop it from the buffer."""
        for state in self._queues.values():
            running = state.running.get(job_id)
            if running is not None:
                running.cancel(release=False)
            if any(job.id == job_id for job in state.buffer):
                state.buffer = deque(job for job in state.buffer if job.id != job_id)
                self.leases.drop(job_id)
                state.check_idle()

    # -- stopping ------------------------------------------------------------------

    def stop_intake(self) -> None:
        """Claim nothing more on any queue, give prefetched jobs back; the
        running ones go on (`drain` waits for them)."""
        self._intake = False
        for state in self._queues.values():
            self._give_back_buffer(state)

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` seconds for the running jobs, saying what is
        waited for; then interrupt what is left (attempts given back). True
        if every job finished in time."""
        with trio.move_on_after(grace) as waiting:
            while True:
                busy = [state for state in self._queues.values() if state.busy]
                if not busy:
                    return True
                running = Counter(job.task for job in self.in_flight())
                if running:
                    what = ", ".join(
                        f"{task} x{count}" if count > 1 else task
                        for task, count in running.most_common()
                    )
                    log.info("stopping: waiting for %d job(s): %s", running.total(), what)
                with trio.move_on_after(_DRAIN_REPORT_EVERY):
                    await self.wait_idle(busy[0].config.name)
        if waiting.cancelled_caught:
            left = self.in_flight()
            if left:
                log.warning(
                    "stopping: %d job(s) still running after %g s; interrupting them"
                    " (their attempts are given back): %s",
                    len(left),
                    grace,
                    ", ".join(sorted({job.task for job in left})),
                )
            for name in self._queues:
                self.interrupt(name)
            with trio.move_on_after(max(grace, 1.0)):
                for name in list(self._queues):
                    await self.wait_idle(name)
        return False

    # -- running -----------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Serve every queue, keep leases and reap expired ones in
        ``nursery``; returns once listening for other processes' jobs (when
        the store offers it)."""
        self._nursery = nursery
        self._intake = True
        for state in self._queues.values():
            self._start_serving(state)
        nursery.start_soon(self.leases.run)
        nursery.start_soon(
            functools.partial(
                reap_expired,
                self.store,
                self.scheduler,
                every=self.reap_every,
                woke=self.wake_all,
                watch=self.watch,
            )
        )
        if isinstance(self.store, EnqueueListener):
            await nursery.start(
                functools.partial(
                    listen_for_enqueues, self.store, self.scheduler, self.wake, self.wake_all
                )
            )

    def stopped(self) -> None:
        """The nursery of `start` is closed: nothing serves any more."""
        self._nursery = None
        for state in self._queues.values():
            state.serving = False
            state.workers = 0
            state.disarm(self.scheduler)

    def _start_serving(self, state: QueueState) -> None:
        if self._nursery is not None and not state.serving:
            state.serving = True
            self._nursery.start_soon(self._serve, state, name=f"queue {state.config.name}")

    def _spawn_workers(self, state: QueueState) -> None:
        if state.nursery is None:
            return
        while state.workers < state.config.concurrency:
            state.nursery.start_soon(
                run_worker,
                state,
                state.workers,
                self.runner,
                self._done,
                name=f"queue {state.config.name} worker",
            )
            state.workers += 1

    async def _serve(self, state: QueueState) -> None:
        """The claimer of one queue, and its workers' nursery."""
        backoff = Backoff()
        try:
            async with trio.open_nursery() as nursery:
                state.nursery = nursery
                self._spawn_workers(state)
                while True:
                    state.wake = trio.Event()
                    try:
                        await self._round(state)
                        backoff.reset()
                        self.watch.succeeded()
                    except StorageError as exc:
                        self.watch.failed(exc)
                        wait = backoff.next()
                        log.warning(
                            "queue %s: the store failed (%s); retrying in %.1f s",
                            state.config.name,
                            exc,
                            wait,
                        )
                        state.arm(self.scheduler, trio.current_time() + wait, None)
                    await state.wake.wait()
                    await _gather(state)
        finally:
            state.nursery = None
            with trio.CancelScope(shield=True):
                await self._settle(state)

    def _capacity(self, state: QueueState) -> int:
        if state.paused or not self._intake:
            return 0
        config = state.config
        capacity = config.concurrency + config.ahead - len(state.buffer) - len(state.running)
        if capacity > 0 and state.window is not None:
            mono = trio.current_time()
            allowed = state.window.available(mono)
            if allowed <= 0:
                state.arm(self.scheduler, state.window.next_free(mono), None)
                return 0
            capacity = min(capacity, allowed)
        return max(capacity, 0)

    async def _round(self, state: QueueState) -> None:
        """Store the successes since the last round and claim up to the free
        capacity, in one round trip each time, until the capacity is full or
        nothing more is due; then put the queue's one timer at its next due
        job."""
        config = state.config
        asked = 0
        claimed: list[JobRecord] = []
        while True:
            if state.to_release:
                await self._give_back(state)
            capacity = self._capacity(state)
            completed, state.completed = state.completed, []
            if not completed and capacity <= 0:
                state.check_idle()
                break
            now = self.clock.now()
            hint, state.due_hint = state.due_hint, None
            if hint is not None and hint > now:
                now = hint  # the wheel fired for it: trust the wheel over float rounding
            with state.in_flight():
                try:
                    done, claimed = await self.store.complete_and_claim(
                        config.name,
                        worker=self.worker,
                        now=now,
                        completed=[job.id for job in completed],
                        lease=self.lease,
                        limit=capacity,
                        aging=config.aging,
                    )
                except StorageError:
                    self._keep_completions(state, completed)
                    raise
                await self._completions_stored(completed, done)
            if log.isEnabledFor(logging.DEBUG):
                _log_round(config.name, completed, done, claimed)
            asked = capacity
            if claimed:
                self.leases.hold([job.id for job in claimed])
                if state.paused or not self._intake:
                    state.to_release += claimed  # paused while the claim was in flight
                    continue
                window = state.window
                if window is not None:
                    mono = trio.current_time()
                    for _ in claimed:
                        window.acquire(mono)
                state.buffer.extend(claimed)
                state.ready.unpark(count=len(claimed))
            state.check_idle()
            if len(claimed) < capacity or capacity <= 0:
                break
        if asked > 0 and len(claimed) < asked:
            # drained: put the timer at the next job due, if anything but our
            # own enqueues (which set it themselves) may have changed that
            if state.check_due:
                state.check_due = False
                await self._arm_next_due(state)
            self._poll_later(state, found=bool(claimed))

    def _poll_later(self, state: QueueState, *, found: bool) -> None:
        """A store shared by several processes that cannot wake us (SQLite)
        is asked again now and then, for jobs other processes enqueued: every
        second while there is work, backing off to half a minute when idle."""
        if self._listening or self._process_local:
            return
        state.poll = _POLL_FIRST if found or not state.poll else min(state.poll * 2, _POLL_MAX)
        state.arm(self.scheduler, trio.current_time() + state.poll, None)

    async def _arm_next_due(self, state: QueueState) -> None:
        due = await self.store.next_due(state.config.name)
        if due is not None:
            deadline = Clock.tick_deadline(self.clock.wall_to_tick(due))
            if deadline <= trio.current_time():
                # came due while we were claiming (a store in a thread takes time)
                state.due_hint = due
                state.wake.set()
            else:
                state.arm(self.scheduler, deadline, due)

    def _done(self, state: QueueState, run: Run, verdict: Verdict) -> None:
        job = run.job
        del state.running[job.id]
        if state.gauge is not None:
            state.gauge.set(len(state.running))
        if verdict is Verdict.SUCCEEDED:
            state.completed.append(job)
        elif verdict is Verdict.DROPPED:
            self.leases.drop(job.id)
        else:
            state.check_due = True  # a retry or a release: due again later
        state.wake.set()
        if state.idle is not None:
            state.check_idle()

    # -- outcomes ---------------------------------------------------------------

    async def _completions_stored(self, completed: list[JobRecord], done: set[str]) -> None:
        for job in completed:
            self.leases.drop(job.id)
            if job.id not in done:
                self.runner.outcome_refused(job, "success")
        if completed and self._events.wants("job.succeeded"):
            for job in completed:
                if job.id in done:
                    await self._events.publish("job.succeeded", job)

    def _keep_completions(self, state: QueueState, completed: list[JobRecord]) -> None:
        """The store failed: try the successes again next round, those whose
        lease is not over (the others will run again elsewhere)."""
        kept = []
        for job in completed:
            if self.leases.lease_left(job.id) > 0:
                kept.append(job)
            else:
                self.leases.drop(job.id)
                log.error(
                    "job %s (%s): could not store its success before our lease ended;"
                    " it will run again",
                    job.id,
                    job.task,
                )
        state.completed = kept + state.completed

    def _give_back_buffer(self, state: QueueState) -> None:
        if state.buffer:
            state.to_release += state.buffer
            state.buffer.clear()
        state.wake.set()

    async def _give_back(self, state: QueueState) -> None:
        """Release the prefetched jobs of a paused or stopping queue, their
        attempts given back."""
        jobs, state.to_release = state.to_release, []
        with trio.CancelScope(shield=True), state.in_flight():
            for job in jobs:
                await self.runner.release(job, timedelta(0))

    async def _settle(self, state: QueueState) -> None:
        """The queue stops serving: store its last successes and give its
        prefetched jobs back (shielded by the caller)."""
        self._give_back_buffer(state)
        await self._give_back(state)
        completed, state.completed = state.completed, []
        if completed:
            with state.in_flight():
                try:
                    done, _ = await self.store.complete_and_claim(
                        state.config.name,
                        worker=self.worker,
                        now=self.clock.now(),
                        completed=[job.id for job in completed],
                        lease=self.lease,
                    )
                except StorageError as exc:
                    self.watch.failed(exc)
                    log.error(
                        "queue %s: could not store %d success(es) at stop (%s);"
                        " they will run again",
                        state.config.name,
                        len(completed),
                        exc,
                    )
                    for job in completed:
                        self.leases.drop(job.id)
                else:
                    await self._completions_stored(completed, done)
        state.check_idle()

    def _leases_lost(self, job_ids: set[str]) -> None:
        """The store says we no longer hold these (reaped after our lease
        ran out, or cancelled elsewhere): stop them, store nothing for them."""
        for state in self._queues.values():
            for job_id in job_ids & state.running.keys():
                run = state.running[job_id]
                log.warning("job %s (%s): lease lost, cancelling its run", job_id, run.job.task)
                run.cancel(release=False)
            if state.buffer and any(job.id in job_ids for job in state.buffer):
                state.buffer = deque(job for job in state.buffer if job.id not in job_ids)
            if state.completed and any(job.id in job_ids for job in state.completed):
                state.completed = [job for job in state.completed if job.id not in job_ids]
            state.check_idle()
        for job_id in job_ids:
            self.leases.drop(job_id)
        if self.metrics is not None:
            self.metrics.counter("job_leases_lost").inc(len(job_ids))


def _log_round(
    queue: str, completed: list[JobRecord], done: set[str], claimed: list[JobRecord]
) -> None:
    """What ``--log-level debug`` shows of a round: each success stored and
    each job claimed (built only when debug is on)."""
    for job in completed:
        if job.id in done:
            log.debug("queue %r: job %s (%s) succeeded", queue, job.id, job.task)
    for job in claimed:
        log.debug(
            "queue %r: claimed job %s (%s), attempt %d", queue, job.id, job.task, job.attempts
        )


async def _gather(state: QueueState) -> None:
    """Let what arrives together be stored together: while each yield to
    the other tasks brings more (a producer enqueuing in a loop, workers
    finishing one after another), yield again, up to `_GATHER_MAX` times,
    so one round trip claims and completes many jobs instead of one each.
    A lone wake-up costs one yield."""
    for _ in range(_GATHER_MAX):
        state.wake = trio.Event()
        await trio.lowlevel.checkpoint()
        if not state.wake.is_set():
            return

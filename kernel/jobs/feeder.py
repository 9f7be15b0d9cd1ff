"""Schedules whose slots become jobs: the time core feeding the queue.

A queued schedule is a normal `kernel.time.scheduler.Schedule` with an ``emit``
hook: when slots come due (after the misfire policy) the scheduler's driver
hands them over as data, with no task per fire, and one feeder task stores
them in order as jobs that carry their slot (``schedule``, ``fire_time``).
The store claims the slot with the job, so a slot is one job across every
process running the schedule. The last fire is stored; a schedule added
again (a restart) re-plans from it, so the slots missed meanwhile meet the
misfire policy. `JobQueue.add_schedule` is the way in.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from kernel.errors import InvalidJob, StorageError
from kernel.jobs._checks import utc_datetime, validate_name
from kernel.jobs._observed import enqueue_observed
from kernel.jobs.events import JobEvents
from kernel.jobs.record import JobRecord, clone_json, derive_record, new_job_id
from kernel.jobs.registry import TaskRegistry
from kernel.jobs.workers import Workers
from kernel.observe.instrument import Instrumentation
from kernel.observe.metrics import Metrics
from kernel.observe.storage_watch import StorageWatch
from kernel.ports import JobStore
from kernel.resilience.retry import Backoff
from kernel.serialization import dump_arguments
from kernel.time.policies import AllowOverlap, MisfirePolicy, OverlapPolicy, SkipIfRunning
from kernel.time.scheduler import Schedule, Scheduler, ScheduleStats, anchor_every
from kernel.time.triggers import Trigger

__all__ = ["ScheduleFeeder"]

log = logging.getLogger("kernel.queue")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _never() -> None:  # pragma: no cover - a queued schedule emits, never calls
    raise AssertionError("a queued schedule's function is never called")


@attrs.define(eq=False)
class _QueuedSchedule:
    """A schedule whose slots become copies of ``template``, a checked job."""

    trigger: Trigger  # as given: re-anchored when restored from the store
    template: JobRecord
    added_at: datetime  # when this process added it
    schedule: Schedule | None = None
    restored: bool = False  # its stored last fire has been read
    held: list[JobRecord] = attrs.field(factory=list)  # fired before that


class ScheduleFeeder:
    """The queued schedules of one `JobQueue`, and the task that stores
    their fired slots (`run`, started by the queue).

    It is handed what it uses (the scheduler, the store, the task registry,
    the workers to wake, the events to publish) rather than the queue itself,
    as APScheduler's data stores are: no import cycle, and a test can give it
    fakes."""

    def __init__(
        self,
        scheduler: Scheduler,
        store: JobStore,
        registry: TaskRegistry,
        workers: Workers,
        events: JobEvents,
        metrics: Metrics | None = None,
        *,
        watch: StorageWatch | None = None,
        max_payload_bytes: int | None = None,
    ) -> None:
        self._max_payload_bytes = max_payload_bytes
        self._scheduler = scheduler
        self._watch = watch if watch is not None else StorageWatch(store.next_due)
        self._store = store
        self._registry = registry
        self._workers = workers
        self._events = events
        self._metrics = metrics
        self._schedules: dict[str, _QueuedSchedule] = {}
        self._fired: deque[JobRecord] = deque()
        self._restoring: list[_QueuedSchedule] = []
        self._feed = trio.Event()
        self._stopped = False
        self.instrumentation: Instrumentation | None = None  # set by `JobQueue.instrument`

    def add(
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
        """`JobQueue.add_schedule`."""
        spec = self._registry.spec(task)
        label = validate_name("schedule", name if name is not None else spec.name)
        current = self._schedules.get(label)
        if current is not None and current.schedule is not None and not current.schedule.finished:
            raise InvalidJob("name", label, "a schedule of that name is already active")
        overlap = overlap if overlap is not None else SkipIfRunning()
        if not isinstance(overlap, SkipIfRunning | AllowOverlap):
            raise InvalidJob(
                "overlap",
                overlap,
                "a queued schedule takes SkipIfRunning() or AllowOverlap(); "
                "the queue, not the schedule, holds its waiting runs",
            )
        now = self._scheduler.clock.now()
        dumped_args, dumped_kwargs = dump_arguments(
            args, kwargs or {}, max_bytes=self._max_payload_bytes
        )
        # every process computes the same slots, whenever it started: an
        # interval schedule without an anchor counts from the Unix epoch
        trigger = anchor_every(trigger, _EPOCH)
        entry = _QueuedSchedule(
            trigger,
            JobRecord(  # every field checked now, not at the first fire
                task=spec.name,
                args=dumped_args,
                kwargs=dumped_kwargs,
                queue=queue if queue is not None else spec.queue,
                priority=priority,
                run_at=now,
                enqueued_at=now,
                dedup_key=f"schedule:{label}" if isinstance(overlap, SkipIfRunning) else None,
                schedule=label,
            ),
            now,
        )
        entry.schedule = self._scheduler.add_schedule(
            _never,
            trigger,
            name=label,
            misfire=misfire,
            overlap=overlap,
            emit=lambda schedule, slots: self._emit(entry, slots),
        )
        self._schedules[label] = entry
        self._workers.ensure(entry.template.queue)
        self._restoring.append(entry)
        self._feed.set()
        return entry.schedule

    def _emit(self, entry: _QueuedSchedule, slots: list[datetime]) -> None:
        """The scheduler's hand-off, on its driver task: no I/O here, the
        feeder stores the jobs."""
        if self._stopped:
            return  # stopping: not stored, so a restart meets them as missed
        now = self._scheduler.clock.now()
        template = entry.template
        for index, slot in enumerate(slots):
            changes: dict[str, object] = {
                "id": new_job_id(),
                "args": clone_json(template.args),
                "kwargs": clone_json(template.kwargs),
                "run_at": now,
                "enqueued_at": now,
                "fire_time": utc_datetime(slot, field="fire_time"),
            }
            if index:  # caught-up slots after the first are enqueued whatever the overlap
                changes["dedup_key"] = None
            fired = derive_record(template, changes)
            (self._fired if entry.restored else entry.held).append(fired)
        self._feed.set()

    async def run(self) -> None:
        """Store the fired slots' jobs and the schedules' last fires, in
        order; while the store fails, keep them and retry with backoff
        (storing a slot twice is harmless: the store claims it once)."""
        backoff = Backoff()
        self._stopped = False
        while True:
            await self._feed.wait()
            self._feed = trio.Event()
            try:
                await self._restore_schedules()
                await self._store_fired()
                backoff.reset()
                self._watch.succeeded()
            except StorageError as exc:
                self._watch.failed(exc)
                wait = backoff.next()
                log.warning("storing schedule runs failed (%s); retrying in %.1f s", exc, wait)
                await self._scheduler.sleep(wait)
                self._feed.set()

    async def _store_fired(self) -> None:
        last: dict[str, datetime] = {}
        while self._fired:
            job = self._fired[0]
            instrumentation = self.instrumentation
            if instrumentation is None:
                stored, created = await self._store.enqueue(job)
            else:
                with instrumentation.schedule_fire(job.schedule or "", job.fire_time):
                    stored, created = await enqueue_observed(self._store, job, instrumentation)
            if self._fired and self._fired[0] is job:  # `stop` may have cleared it meanwhile
                self._fired.popleft()
            if job.schedule is not None and job.fire_time is not None:
                previous = last.get(job.schedule)
                if previous is None or job.fire_time > previous:
                    last[job.schedule] = job.fire_time
            if created:
                self._workers.enqueued(stored.queue, stored.run_at)
                await self._events.publish("job.enqueued", stored)
            elif stored.id != job.id:  # held back by the overlap policy
                stats = self.stats_of(job)
                if stats is not None:
                    stats.skipped += 1
                log.info(
                    "schedule %r: slot %s skipped: its previous run (job %s) is still %s",
                    job.schedule,
                    job.fire_time.isoformat() if job.fire_time else "?",
                    stored.id,
                    stored.state.value,
                )
                if self._metrics is not None:
                    self._metrics.counter(
                        "schedule_slots_skipped", schedule=job.schedule or "?"
                    ).inc()
        for name, fire_time in last.items():
            entry = self._schedules.get(name)
            next_fire = (
                None if entry is None or entry.schedule is None else entry.schedule.next_fire_time
            )
            await self._store.put_schedule_state(
                name,
                {
                    "last_fire_time": fire_time.isoformat(),
                    "next_fire_time": None if next_fire is None else next_fire.isoformat(),
                },
            )

    async def _restore_schedules(self) -> None:
        """Re-plan each new schedule from its stored last fire. Slots fired
        before that are held back; the missed slots are emitted at once,
        before the fired jobs are stored, so the stored last fire never
        passes a slot that is not stored yet.

        A schedule never stored before is stored first, with the time it
        started (``since``) and no last fire, before any of its jobs: a
        crash between its first job and its first stored last fire then
        restarts from that time, and the slots missed meanwhile meet the
        misfire policy instead of being taken for a first start's."""
        while self._restoring:
            entry = self._restoring[0]
            schedule = entry.schedule
            assert schedule is not None
            state = await self._store.get_schedule_state(schedule.name)
            if state is None:
                await self._store.put_schedule_state(
                    schedule.name,
                    {
                        "last_fire_time": None,
                        "next_fire_time": None,
                        "since": entry.added_at.isoformat(),
                    },
                )
            self._restoring.pop(0)
            entry.restored = True
            held, entry.held = entry.held, []
            last = None if state is None else state.get("last_fire_time") or state.get("since")
            if isinstance(last, str) and not schedule.finished and not schedule.paused:
                # what fired meanwhile was planned on a provisional grid: drop
                # it and re-plan from the last fire on the schedule's own grid
                schedule.restart_from(utc_datetime(datetime.fromisoformat(last)), entry.trigger)
            else:
                self._fired.extend(held)  # a first start: its grid is the grid

    def stop(self) -> None:
        """Store no more slots (a stop): what fires from now on is met as
        missed after a restart, per each schedule's misfire policy."""
        self._stopped = True
        self._fired.clear()
        for entry in self._schedules.values():
            entry.held.clear()

    def stats_of(self, job: JobRecord) -> ScheduleStats | None:
        """The stats of the local schedule that enqueued ``job``, if any."""
        entry = None if job.schedule is None else self._schedules.get(job.schedule)
        return None if entry is None or entry.schedule is None else entry.schedule.stats

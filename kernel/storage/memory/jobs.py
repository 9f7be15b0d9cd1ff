"""The `JobStore` in process memory: the reference every durable store is
tested against (the contract runs against it first).

Each method checks its arguments, passes one checkpoint, then completes
without yielding, so each is atomic with respect to other trio tasks.
Queued jobs live in a `QueuedIndex` (per queue, per priority level), so a
claim never scans the backlog.

Memory is bounded, so a kernel embedded for a month does not grow: finished
jobs are kept for ``kernel jobs`` only as a recent history (the last
``keep_finished`` succeeded or cancelled jobs and the last ``keep_dead``
dead letters; older ones are forgotten as new ones finish), and each
schedule remembers its last ``keep_slots`` claimed slots (a memory store
lives as long as its process, whose feeder never re-sends an older one).
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, cast

import attrs
import trio

from kernel.errors import JobConflict, StorageClosed
from kernel.jobs.record import LIVE_STATES, JobRecord, JobState, clone_json, derive_record
from kernel.ports import JSON, JobStore, JSONLike
from kernel.storage.base import (
    MAX_CLAIM_LIMIT,
    MAX_LIST_LIMIT,
    check_enqueue,
    checked_name,
    clean_error_text,
    dedup_conflict_reason,
    finished_state,
    lease_expired_error,
    now_or_wall_clock,
    schedule_state_object,
    slot_of,
    utc_datetime,
    validate_aging,
    validate_job_id,
    validate_job_ids,
    validate_lease,
    validate_limit,
    validate_name,
    validate_state,
)
from kernel.storage.memory._index import QueuedIndex

__all__ = ["MemoryJobStore"]

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _fresh(record: JobRecord) -> JobRecord:
    """A copy of a stored record to hand out: its JSON is the caller's own.
    A record without JSON is shared as it is (frozen, nothing to mutate)."""
    if not (record.args or record.kwargs or record.headers) and record.retry is None:
        return record
    return derive_record(
        record,
        {
            "args": clone_json(record.args) if record.args else [],
            "kwargs": clone_json(record.kwargs) if record.kwargs else {},
            "retry": None if record.retry is None else clone_json(record.retry),
            "headers": dict(record.headers) if record.headers else {},
        },
    )


def _positive_count(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be an int >= 1, got {value!r}")


@attrs.define(eq=False)
class MemoryJobStore:
    """The `JobStore` in process memory, gone when the process ends; see the
    module docstring for what it keeps.

    Kept apart from `MemoryStorage` so the two can be composed into one
    object that satisfies both ports.
    """

    process_local: ClassVar[bool] = True
    """Nothing outside this process changes the store: the workers need not
    poll it for other processes' jobs."""

    keep_finished: int = attrs.field(default=1000, validator=_positive_count)
    """How many succeeded or cancelled jobs are kept for inspection."""
    keep_dead: int = attrs.field(default=10_000, validator=_positive_count)
    """How many dead letters are kept (the oldest are forgotten first)."""
    keep_slots: int = attrs.field(default=1000, validator=_positive_count)
    """How many claimed slots each schedule remembers."""

    _jobs: dict[str, JobRecord] = attrs.field(factory=dict, init=False)
    _order: dict[str, int] = attrs.field(factory=dict, init=False)
    _queued: QueuedIndex = attrs.field(factory=QueuedIndex, init=False)
    _running: set[str] = attrs.field(factory=set, init=False)
    _live_dedup: dict[str, str] = attrs.field(factory=dict, init=False)
    _finished: deque[JobRecord] = attrs.field(factory=deque, init=False)
    _dead: deque[JobRecord] = attrs.field(factory=deque, init=False)
    _slots: dict[str, dict[datetime, None]] = attrs.field(factory=dict, init=False)
    _schedule_states: dict[str, str] = attrs.field(factory=dict, init=False)
    _counter: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    async def __aenter__(self) -> MemoryJobStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StorageClosed("the memory job store is closed")

    # -- bookkeeping: every state change goes through _replace ---------------

    def _replace(self, old: JobRecord, **changes: object) -> JobRecord:
        """Store ``old`` with ``changes`` (already checked) and keep the
        indexes; returns the stored record (hand out `_fresh` copies)."""
        new = derive_record(old, changes)
        self._jobs[new.id] = new
        if old.state is JobState.queued:
            self._queued.remove(old)
        elif old.state is JobState.running:
            self._running.discard(old.id)
        state = new.state
        if state is JobState.queued:
            self._queued.add(new, self._order[new.id])
        elif state is JobState.running:
            self._running.add(new.id)
        else:
            self._remember_finished(new)
        if new.dedup_key is not None:
            if state in LIVE_STATES:
                self._live_dedup[new.dedup_key] = new.id
            elif self._live_dedup.get(new.dedup_key) == new.id:
                del self._live_dedup[new.dedup_key]
        return new

    def _remember_finished(self, job: JobRecord) -> None:
        """Keep ``job`` in the recent history of its kind, forgetting the
        oldest job of that kind past the bound (unless it changed since)."""
        if job.state is JobState.dead:
            history, keep = self._dead, self.keep_dead
        else:
            history, keep = self._finished, self.keep_finished
        history.append(job)
        while len(history) > keep:
            oldest = history.popleft()
            if self._jobs.get(oldest.id) is oldest:  # still as it finished
                self._delete(oldest)

    def _held(self, job_id: str, worker: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.running or job.worker != worker:
            return None
        return job

    def _delete(self, job: JobRecord) -> None:
        del self._jobs[job.id]
        del self._order[job.id]

    def _claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        slots = self._slots.get(schedule)
        if slots is None:
            slots = self._slots[schedule] = {}
        elif fire_time in slots:
            return False
        slots[fire_time] = None
        if len(slots) > self.keep_slots:
            for oldest in sorted(slots)[: len(slots) - self.keep_slots]:
                del slots[oldest]
        return True

    def _claim(
        self,
        queue: str,
        worker: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        aging: timedelta | None,
    ) -> list[JobRecord]:
        jobs = self._jobs
        taken = self._queued.pop_due(
            queue, now=now, aging=aging, limit=limit, jobs=jobs, order=self._order
        )
        lease_expires_at = now + lease
        claimed = []
        for job_id in taken:
            job = jobs[job_id]
            stored = self._replace(
                job,
                state=JobState.running,
                worker=worker,
                lease_expires_at=lease_expires_at,
                attempts=job.attempts + 1,
            )
            claimed.append(_fresh(stored))
        return claimed

    def _complete(self, job_id: str, worker: str, finished_at: datetime) -> bool:
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(job, state=JobState.succeeded, lease_expires_at=None, finished_at=finished_at)
        return True

    # -- the port -----------------------------------------------------------

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        check_enqueue(job)
        await self._enter()
        if job.id in self._jobs:
            raise JobConflict(job.id, "a job with this id is already stored")
        slot = slot_of(job)
        if slot is not None and not self._claim_slot(*slot):
            return _fresh(job), False
        if job.dedup_key is not None:
            holder = self._live_dedup.get(job.dedup_key)
            if holder is not None:
                return _fresh(self._jobs[holder]), False
        stored = _fresh(job)
        seq = next(self._counter)
        self._jobs[stored.id] = stored
        self._order[stored.id] = seq
        self._queued.add(stored, seq)
        if stored.dedup_key is not None:
            self._live_dedup[stored.dedup_key] = stored.id
        return job, True  # the caller's own record: the store keeps a copy

    async def claim(
        self,
        queue: str,
        *,
        worker: str,
        now: datetime,
        lease: timedelta,
        limit: int = 1,
        aging: timedelta | None = None,
    ) -> list[JobRecord]:
        checked_name("queue", queue)
        checked_name("worker", worker)
        now = utc_datetime(now, field="now")
        validate_lease(lease)
        validate_limit(limit, maximum=MAX_CLAIM_LIMIT)
        validate_aging(aging)
        await self._enter()
        return self._claim(queue, worker, now, lease, limit, aging)

    async def complete_and_claim(
        self,
        queue: str,
        *,
        worker: str,
        now: datetime,
        completed: Sequence[str] = (),
        lease: timedelta,
        limit: int = 0,
        aging: timedelta | None = None,
    ) -> tuple[set[str], list[JobRecord]]:
        checked_name("queue", queue)
        checked_name("worker", worker)
        ids = validate_job_ids(completed)
        now = utc_datetime(now, field="now")
        validate_lease(lease)
        validate_limit(limit, minimum=0, maximum=MAX_CLAIM_LIMIT)
        validate_aging(aging)
        await self._enter()
        done = {job_id for job_id in ids if self._complete(job_id, worker, now)}
        claimed = self._claim(queue, worker, now, lease, limit, aging) if limit else []
        return done, claimed

    async def heartbeat(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        ids = validate_job_ids(job_ids)
        checked_name("worker", worker)
        lease_until = utc_datetime(lease_until, field="lease_until")
        await self._enter()
        held: set[str] = set()
        for job_id in ids:
            job = self._held(job_id, worker)
            if job is not None:
                self._replace(job, lease_expires_at=lease_until)
                held.add(job_id)
        return held

    async def complete(self, job_id: str, *, worker: str, now: datetime | None = None) -> bool:
        validate_job_id(job_id)
        checked_name("worker", worker)
        finished_at = now_or_wall_clock(now)
        await self._enter()
        return self._complete(job_id, worker, finished_at)

    async def retry_later(self, job_id: str, *, worker: str, error: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        checked_name("worker", worker)
        error = clean_error_text(error)
        run_at = utc_datetime(run_at, field="run_at")
        await self._enter()
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(
            job,
            state=JobState.queued,
            run_at=run_at,
            worker=None,
            lease_expires_at=None,
            last_error=error,
        )
        return True

    async def release(self, job_id: str, *, worker: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        checked_name("worker", worker)
        run_at = utc_datetime(run_at, field="run_at")
        await self._enter()
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(
            job,
            state=JobState.queued,
            run_at=run_at,
            worker=None,
            lease_expires_at=None,
            attempts=max(job.attempts - 1, 0),
        )
        return True

    async def bury(
        self, job_id: str, *, worker: str, error: str, now: datetime | None = None
    ) -> bool:
        validate_job_id(job_id)
        checked_name("worker", worker)
        error = clean_error_text(error)
        finished_at = now_or_wall_clock(now)
        await self._enter()
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(
            job,
            state=JobState.dead,
            lease_expires_at=None,
            last_error=error,
            finished_at=finished_at,
        )
        return True

    async def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        finished_at = now_or_wall_clock(now)
        await self._enter()
        job = self._jobs.get(job_id)
        if job is None or job.state not in LIVE_STATES:
            return None
        return _fresh(
            self._replace(
                job, state=JobState.cancelled, lease_expires_at=None, finished_at=finished_at
            )
        )

    async def reap_expired(self, now: datetime) -> list[str]:
        now = utc_datetime(now, field="now")
        await self._enter()
        expired = [
            job
            for job in map(self._jobs.__getitem__, self._running)
            if job.lease_expires_at is not None and job.lease_expires_at <= now
        ]
        expired.sort(key=lambda job: self._order[job.id])
        for job in expired:
            self._replace(
                job,
                state=JobState.queued,
                worker=None,
                lease_expires_at=None,
                last_error=clean_error_text(lease_expired_error(job.worker)),
            )
        return [job.id for job in expired]

    async def get_job(self, job_id: str) -> JobRecord | None:
        validate_job_id(job_id)
        await self._enter()
        job = self._jobs.get(job_id)
        return None if job is None else _fresh(job)

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: str | None = None,
        payloads: bool = True,
    ) -> list[JobRecord]:
        state = None if state is None else validate_state(state)
        if queue is not None:
            validate_name("queue", queue)
        validate_limit(limit, maximum=MAX_LIST_LIMIT)
        if after_id is not None:
            validate_job_id(after_id)
        await self._enter()
        matching = sorted(
            job_id
            for job_id, job in self._jobs.items()
            if (state is None or job.state is state)
            and (queue is None or job.queue == queue)
            and (after_id is None or job_id > after_id)
        )
        chosen = [self._jobs[job_id] for job_id in matching[:limit]]
        if payloads:
            return [_fresh(job) for job in chosen]
        return [_fresh(derive_record(job, {"args": [], "kwargs": {}})) for job in chosen]

    async def retry_dead(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        run_at = now_or_wall_clock(now)
        await self._enter()
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.dead:
            return None
        if job.dedup_key is not None and job.dedup_key in self._live_dedup:
            raise JobConflict(job_id, dedup_conflict_reason(job.dedup_key))
        stored = self._replace(
            job,
            state=JobState.queued,
            run_at=run_at,
            attempts=0,
            worker=None,
            finished_at=None,
        )
        return _fresh(stored)

    async def purge_dead(self, *, older_than: datetime | None = None) -> int:
        return await self.purge(state=JobState.dead, older_than=older_than)

    async def purge(self, *, state: JobState, older_than: datetime | None = None) -> int:
        state = finished_state(state)
        cutoff = None if older_than is None else utc_datetime(older_than, field="older_than")
        await self._enter()
        doomed = [
            job
            for job in self._jobs.values()
            if job.state is state
            and (cutoff is None or (job.finished_at is not None and job.finished_at < cutoff))
        ]
        for job in doomed:
            self._delete(job)
        return len(doomed)

    async def next_due(self, queue: str | None = None) -> datetime | None:
        if queue is not None:
            checked_name("queue", queue)
        await self._enter()
        return self._queued.next_due(queue, self._jobs)

    async def claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        validate_name("schedule", schedule)
        fire_time = utc_datetime(fire_time, field="fire_time")
        await self._enter()
        return self._claim_slot(schedule, fire_time)

    async def prune_slots(self, *, older_than: datetime) -> int:
        cutoff = utc_datetime(older_than, field="older_than")
        await self._enter()
        pruned = 0
        for schedule, slots in list(self._slots.items()):
            doomed = [fire_time for fire_time in slots if fire_time < cutoff]
            for fire_time in doomed:
                del slots[fire_time]
            pruned += len(doomed)
            if not slots:
                del self._slots[schedule]
        return pruned

    async def get_schedule_state(self, schedule: str) -> dict[str, JSON] | None:
        validate_name("schedule", schedule)
        await self._enter()
        text = self._schedule_states.get(schedule)
        return None if text is None else cast("dict[str, JSON]", json.loads(text))

    async def put_schedule_state(self, schedule: str, state: Mapping[str, JSONLike]) -> None:
        validate_name("schedule", schedule)
        text = _encode(schedule_state_object(state))
        await self._enter()
        self._schedule_states[schedule] = text

    async def aclose(self) -> None:
        """Forget everything; later calls raise `StorageClosed`. Idempotent."""
        self._closed = True
        self._jobs.clear()
        self._order.clear()
        self._queued.clear()
        self._running.clear()
        self._live_dedup.clear()
        self._finished.clear()
        self._dead.clear()
        self._slots.clear()
        self._schedule_states.clear()
        await trio.lowlevel.checkpoint()


if TYPE_CHECKING:

    def _keeps_the_job_store_port(store: MemoryJobStore) -> JobStore:
        return store  # mypy proves MemoryJobStore satisfies the JobStore protocol

"""The ``memory://`` storage: a dict per namespace, gone when the process ends.

The default for tests and for kernels with nothing worth keeping. It keeps
every rule of the `kernel.ports.Storage` contract, so code tested against it
behaves the same on SQLite or PostgreSQL: values are validated and stored as
JSON text (``json.dumps`` on write, ``json.loads`` on read), which gives
copy-on-read for free and makes a float come back exactly as a durable
adapter would return it.

Every method completes without yielding once past its checkpoint, so each is
atomic with respect to other trio tasks; there are no threads.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, cast

import attrs
import trio

from kernel._exports import fixup_module_metadata
from kernel.errors import JobConflict, StorageClosed
from kernel.jobs.record import (
    LIVE_STATES,
    JobRecord,
    JobState,
    clone_json,
    derive_record,
    validate_state,
)
from kernel.ports import JSON, JobStore, JSONLike, Storage, copy_json
from kernel.storage.base import (
    MAX_CLAIM_LIMIT,
    MAX_LIST_LIMIT,
    check_enqueue,
    checked_name,
    claim_order,
    clean_error_text,
    dedup_conflict_reason,
    effective_priority,
    finished_state,
    lease_expired_error,
    now_or_wall_clock,
    schedule_state_object,
    slot_of,
    utc_datetime,
    validate_aging,
    validate_job_id,
    validate_job_ids,
    validate_key,
    validate_keys,
    validate_lease,
    validate_limit,
    validate_name,
    validate_namespace,
    validate_prefix,
)
from kernel.urls import url_options

__all__ = [
    "MemoryJobStore",
    "MemoryStorage",
    "open_memory_storage",
    "upgrade_memory_storage",
]

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


@attrs.define(eq=False)
class MemoryStorage:
    """Key-value storage in process memory; see `kernel.ports.Storage`.

    Usable as ``async with MemoryStorage() as storage:``.
    """

    _namespaces: dict[str, dict[str, str]] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    async def __aenter__(self) -> MemoryStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _enter(self) -> None:
        """The checkpoint every operation starts with (trio's rule that every
        async call can be cancelled and lets others run), then the closed check."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StorageClosed("the memory storage is closed")

    async def get(self, namespace: str, key: str, default: JSON = None) -> JSON:
        validate_namespace(namespace)
        validate_key(key)
        await self._enter()
        text = self._namespaces.get(namespace, {}).get(key)
        return default if text is None else _decode(text)

    async def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, JSON]:
        validate_namespace(namespace)
        wanted = validate_keys(keys)
        await self._enter()
        stored = self._namespaces.get(namespace, {})
        return {key: _decode(stored[key]) for key in wanted if key in stored}

    async def put(self, namespace: str, key: str, value: JSONLike) -> None:
        validate_namespace(namespace)
        validate_key(key)
        text = _encode(copy_json(value))
        await self._enter()
        self._namespaces.setdefault(namespace, {})[key] = text

    async def delete(self, namespace: str, key: str) -> bool:
        validate_namespace(namespace)
        validate_key(key)
        await self._enter()
        stored = self._namespaces.get(namespace)
        if stored is None or key not in stored:
            return False
        del stored[key]
        if not stored:
            del self._namespaces[namespace]
        return True

    async def keys(self, namespace: str, prefix: str = "") -> list[str]:
        validate_namespace(namespace)
        validate_prefix(prefix)
        await self._enter()
        stored = self._namespaces.get(namespace, {})
        return sorted(key for key in stored if key.startswith(prefix))

    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, JSON]]:
        validate_namespace(namespace)
        validate_prefix(prefix)
        await self._enter()
        stored = self._namespaces.get(namespace, {})
        return [(key, _decode(stored[key])) for key in sorted(stored) if key.startswith(prefix)]

    async def clear(self, namespace: str) -> int:
        validate_namespace(namespace)
        await self._enter()
        return len(self._namespaces.pop(namespace, {}))

    async def aclose(self) -> None:
        """Forget everything; later calls raise `StorageClosed`. Idempotent."""
        self._closed = True
        self._namespaces.clear()
        await trio.lowlevel.checkpoint()


def _decode(text: str) -> JSON:
    return cast("JSON", json.loads(text))


def open_memory_storage(url: str) -> MemoryStorage:
    """The factory for ``memory://`` (no host, path or options): a new,
    empty storage on every call."""
    url_options(url, allowed=())
    return MemoryStorage()


if TYPE_CHECKING:

    def _keeps_the_port(storage: MemoryStorage) -> Storage:
        return storage  # mypy proves MemoryStorage satisfies the Storage protocol


def upgrade_memory_storage(url: str) -> list[int]:
    """``kernel db upgrade`` for ``memory://``: there is no schema to upgrade."""
    return []


# ---------------------------------------------------------------------------
# The job store
# ---------------------------------------------------------------------------

_encode_state = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _fresh(record: JobRecord) -> JobRecord:
    """A copy of a stored record to hand out: its JSON is the caller's own."""
    return derive_record(
        record,
        {
            "args": clone_json(record.args),
            "kwargs": clone_json(record.kwargs),
            "retry": None if record.retry is None else clone_json(record.retry),
        },
    )


_Entry = tuple[datetime, datetime, int, str]
"""A queued job in its priority level's heap: (run_at, enqueued_at,
insertion order, id)."""


@attrs.define(eq=False)
class MemoryJobStore:
    """The `JobStore` in process memory, gone when the process ends.

    The reference for durable stores: the contract runs against it. Each
    method checks its arguments, passes one checkpoint, then completes
    without yielding, so each is atomic with respect to other trio tasks.

    Queued jobs are indexed per queue and per priority level, each level a
    heap by (``run_at``, ``enqueued_at``, insertion order). Within a level a
    job with ``run_at >= enqueued_at`` became due at ``run_at``, so the head
    of the heap has both the earliest ``run_at`` and the highest aged
    priority of its level: a claim compares the heads of the levels only,
    O(levels + limit x log n), exact for any ``now`` and ``aging`` (the
    levels play the part of Sidekiq's or Oban's per-priority queues). The
    rare job with ``run_at`` before ``enqueued_at`` (enqueued for a time
    already past) became due at ``enqueued_at``, which the heap order does
    not follow, so those wait in a side set that each claim scans. Entries
    of jobs that left the queue are dropped lazily, when they reach a head.

    Kept apart from `kernel.storage.memory.MemoryStorage` so the two can be
    composed into one object that satisfies both ports.
    """

    _jobs: dict[str, JobRecord] = attrs.field(factory=dict, init=False)
    _order: dict[str, int] = attrs.field(factory=dict, init=False)
    _levels: dict[str, dict[int, list[_Entry]]] = attrs.field(factory=dict, init=False)
    _entries: dict[str, _Entry] = attrs.field(factory=dict, init=False)
    _early: dict[str, set[str]] = attrs.field(factory=dict, init=False)
    _running: set[str] = attrs.field(factory=set, init=False)
    _live_dedup: dict[str, str] = attrs.field(factory=dict, init=False)
    _slots: set[tuple[str, datetime]] = attrs.field(factory=set, init=False)
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

    # -- the queued-job index --------------------------------------------------

    def _index(self, job: JobRecord) -> None:
        if job.run_at >= job.enqueued_at:
            entry = (job.run_at, job.enqueued_at, self._order[job.id], job.id)
            levels = self._levels.get(job.queue)
            if levels is None:
                levels = self._levels[job.queue] = {}
            heap = levels.get(job.priority)
            if heap is None:
                levels[job.priority] = [entry]
            else:
                heapq.heappush(heap, entry)
            self._entries[job.id] = entry
        else:
            self._early.setdefault(job.queue, set()).add(job.id)

    def _unindex(self, job: JobRecord) -> None:
        if self._entries.pop(job.id, None) is None:
            early = self._early.get(job.queue)
            if early is not None:
                early.discard(job.id)
                if not early:
                    del self._early[job.queue]

    def _head(self, heap: list[_Entry]) -> _Entry | None:
        """The live entry at the top of ``heap``, dropping stale ones."""
        entries = self._entries
        while heap:
            head = heap[0]
            if entries.get(head[3]) is head:
                return head
            heapq.heappop(heap)
        return None

    def _heads(self, queue: str) -> list[tuple[int, _Entry]]:
        """(priority, head) of each non-empty level of ``queue``."""
        levels = self._levels.get(queue)
        if not levels:
            return []
        heads = []
        for priority, heap in list(levels.items()):
            head = self._head(heap)
            if head is None:
                del levels[priority]
            else:
                heads.append((priority, head))
        if not levels:
            del self._levels[queue]
        return heads

    # -- bookkeeping: every state change goes through _replace ---------------

    def _replace(self, old: JobRecord, **changes: object) -> JobRecord:
        """Store ``old`` with ``changes`` (already checked) and keep the
        indexes; returns the stored record (hand out `_fresh` copies)."""
        new = derive_record(old, changes)
        self._jobs[new.id] = new
        if old.state is JobState.queued:
            self._unindex(old)
        elif old.state is JobState.running:
            self._running.discard(old.id)
        if new.state is JobState.queued:
            self._index(new)
        elif new.state is JobState.running:
            self._running.add(new.id)
        if new.dedup_key is not None:
            if new.state in LIVE_STATES:
                self._live_dedup[new.dedup_key] = new.id
            elif self._live_dedup.get(new.dedup_key) == new.id:
                del self._live_dedup[new.dedup_key]
        return new

    def _held(self, job_id: str, worker: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.running or job.worker != worker:
            return None
        return job

    def _delete(self, job: JobRecord) -> None:
        del self._jobs[job.id]
        del self._order[job.id]

    # -- the port -----------------------------------------------------------

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        check_enqueue(job)
        await self._enter()
        if job.id in self._jobs:
            raise JobConflict(job.id, "a job with this id is already stored")
        slot = slot_of(job)
        if slot is not None:
            if slot in self._slots:
                return _fresh(job), False
            self._slots.add(slot)
        if job.dedup_key is not None:
            holder = self._live_dedup.get(job.dedup_key)
            if holder is not None:
                return _fresh(self._jobs[holder]), False
        stored = _fresh(job)
        self._jobs[stored.id] = stored
        self._order[stored.id] = next(self._counter)
        self._index(stored)
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
        jobs = self._jobs
        # one candidate per level (its head) plus the early jobs, keyed by
        # claim_order and insertion order; the level (None: early) last
        candidates: list[tuple[int, datetime, datetime, int, str, int | None]] = []
        for level, (run_at, enqueued_at, seq, job_id) in self._heads(queue):
            if run_at <= now:
                rank = -effective_priority(jobs[job_id], now, aging)
                candidates.append((rank, run_at, enqueued_at, seq, job_id, level))
        for job_id in self._early.get(queue, ()):
            job = jobs[job_id]
            if job.run_at <= now:
                rank, run_at, enqueued_at = claim_order(job, now, aging)
                candidates.append((rank, run_at, enqueued_at, self._order[job_id], job_id, None))
        heapq.heapify(candidates)
        levels = self._levels.get(queue, {})
        lease_expires_at = now + lease
        claimed: list[JobRecord] = []
        while candidates and len(claimed) < limit:
            _rank, _run_at, _enqueued_at, _seq, job_id, priority = heapq.heappop(candidates)
            job = jobs[job_id]
            stored = self._replace(
                job,
                state=JobState.running,
                worker=worker,
                lease_expires_at=lease_expires_at,
                attempts=job.attempts + 1,
            )
            claimed.append(_fresh(stored))
            if priority is None:
                continue
            heap = levels[priority]
            head = self._head(heap)  # pops the claimed entry, now stale
            if head is None:
                del levels[priority]
            elif head[0] <= now:
                run_at, enqueued_at, seq, next_id = head
                rank = -effective_priority(jobs[next_id], now, aging)
                heapq.heappush(candidates, (rank, run_at, enqueued_at, seq, next_id, priority))
        if not levels:
            self._levels.pop(queue, None)
        return claimed

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
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(job, state=JobState.succeeded, lease_expires_at=None, finished_at=finished_at)
        return True

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
        return [_fresh(self._jobs[job_id]) for job_id in matching[:limit]]

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
        names = [queue] if queue is not None else list(self._levels.keys() | self._early.keys())
        earliest: datetime | None = None
        for name in names:
            for _priority, head in self._heads(name):
                if earliest is None or head[0] < earliest:
                    earliest = head[0]
            for job_id in self._early.get(name, ()):
                run_at = self._jobs[job_id].run_at
                if earliest is None or run_at < earliest:
                    earliest = run_at
        return earliest

    async def claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        validate_name("schedule", schedule)
        fire_time = utc_datetime(fire_time, field="fire_time")
        await self._enter()
        if (schedule, fire_time) in self._slots:
            return False
        self._slots.add((schedule, fire_time))
        return True

    async def prune_slots(self, *, older_than: datetime) -> int:
        cutoff = utc_datetime(older_than, field="older_than")
        await self._enter()
        doomed = {slot for slot in self._slots if slot[1] < cutoff}
        self._slots -= doomed
        return len(doomed)

    async def get_schedule_state(self, schedule: str) -> dict[str, JSON] | None:
        validate_name("schedule", schedule)
        await self._enter()
        text = self._schedule_states.get(schedule)
        return None if text is None else cast("dict[str, JSON]", json.loads(text))

    async def put_schedule_state(self, schedule: str, state: Mapping[str, JSONLike]) -> None:
        validate_name("schedule", schedule)
        text = _encode_state(schedule_state_object(state))
        await self._enter()
        self._schedule_states[schedule] = text

    async def aclose(self) -> None:
        """Forget everything; later calls raise `StorageClosed`. Idempotent."""
        self._closed = True
        self._jobs.clear()
        self._order.clear()
        self._levels.clear()
        self._entries.clear()
        self._early.clear()
        self._running.clear()
        self._live_dedup.clear()
        self._slots.clear()
        self._schedule_states.clear()
        await trio.lowlevel.checkpoint()


if TYPE_CHECKING:

    def _keeps_the_job_store_port(store: MemoryJobStore) -> JobStore:
        return store  # mypy proves MemoryJobStore satisfies the JobStore protocol


fixup_module_metadata(__name__, globals())

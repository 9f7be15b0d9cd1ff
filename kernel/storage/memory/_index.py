"""The queued jobs of the memory store, indexed so a claim never scans them.

Queued jobs are indexed per queue and per priority level, each level a heap
by (``run_at``, ``enqueued_at``, insertion order). Within a level a job
with ``run_at >= enqueued_at`` became due at ``run_at``, so the head of the
heap has both the earliest ``run_at`` and the highest aged priority of its
level: a claim compares the heads of the levels only, O(levels + limit x log
n), exact for any ``now`` and ``aging`` (the levels play the part of
Sidekiq's or Oban's per-priority queues). The rare job with ``run_at``
before ``enqueued_at`` (enqueued for a time already past) became due at
``enqueued_at``, which the heap order does not follow, so those wait in a
side set that each claim scans. Entries of jobs that left the queue are
dropped lazily, when they reach a head.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from datetime import datetime, timedelta

from kernel.jobs.record import JobRecord
from kernel.storage.base import claim_order, effective_priority

__all__ = ["QueuedIndex"]

_Entry = tuple[datetime, datetime, int, str]
"""A queued job in its priority level's heap: (run_at, enqueued_at,
insertion order, id)."""


class QueuedIndex:
    """The queued jobs of every queue; the store keeps the records."""

    def __init__(self) -> None:
        self._levels: dict[str, dict[int, list[_Entry]]] = {}
        self._entries: dict[str, _Entry] = {}
        self._early: dict[str, set[str]] = {}

    def add(self, job: JobRecord, seq: int) -> None:
        """Index ``job`` (queued), stored as the ``seq``-th job."""
        if job.run_at >= job.enqueued_at:
            entry = (job.run_at, job.enqueued_at, seq, job.id)
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

    def remove(self, job: JobRecord) -> None:
        """Forget ``job`` (it left the queue); a job not indexed is ignored."""
        if self._entries.pop(job.id, None) is None:
            early = self._early.get(job.queue)
            if early is not None:
                early.discard(job.id)
                if not early:
                    del self._early[job.queue]

    def pop_due(
        self,
        queue: str,
        *,
        now: datetime,
        aging: timedelta | None,
        limit: int,
        jobs: Mapping[str, JobRecord],
        order: Mapping[str, int],
    ) -> list[str]:
        """Take the ids of up to ``limit`` jobs of ``queue`` due at ``now``,
        best first (`kernel.storage.base.claim_order`, then insertion order),
        out of the index."""
        # one candidate per level (its head) plus the early jobs, keyed by
        # claim_order and insertion order; the level (None: early) last
        candidates: list[tuple[int, datetime, datetime, int, str, int | None]] = []
        for level, (run_at, enqueued_at, seq, job_id) in self._heads(queue):
            if run_at <= now:
                rank = -effective_priority(jobs[job_id], now, aging)
                candidates.append((rank, run_at, enqueued_at, seq, job_id, level))
        early = self._early.get(queue, ())
        for job_id in early:
            job = jobs[job_id]
            if job.run_at <= now:
                rank, run_at, enqueued_at = claim_order(job, now, aging)
                candidates.append((rank, run_at, enqueued_at, order[job_id], job_id, None))
        heapq.heapify(candidates)
        levels = self._levels.get(queue, {})
        taken: list[str] = []
        while candidates and len(taken) < limit:
            _rank, _run_at, _enqueued_at, _seq, job_id, priority = heapq.heappop(candidates)
            taken.append(job_id)
            if priority is None:
                self.remove(jobs[job_id])
                continue
            del self._entries[job_id]
            heap = levels[priority]
            head = self._head(heap)  # pops the taken entry, now stale
            if head is None:
                del levels[priority]
            elif head[0] <= now:
                run_at, enqueued_at, seq, next_id = head
                rank = -effective_priority(jobs[next_id], now, aging)
                heapq.heappush(candidates, (rank, run_at, enqueued_at, seq, next_id, priority))
        if not levels:
            self._levels.pop(queue, None)
        return taken

    def next_due(self, queue: str | None, jobs: Mapping[str, JobRecord]) -> datetime | None:
        """The earliest ``run_at`` of the queued jobs (of ``queue``), or None."""
        names = [queue] if queue is not None else list(self._levels.keys() | self._early.keys())
        earliest: datetime | None = None
        for name in names:
            for _priority, head in self._heads(name):
                if earliest is None or head[0] < earliest:
                    earliest = head[0]
            for job_id in self._early.get(name, ()):
                run_at = jobs[job_id].run_at
                if earliest is None or run_at < earliest:
                    earliest = run_at
        return earliest

    def clear(self) -> None:
        self._levels.clear()
        self._entries.clear()
        self._early.clear()

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

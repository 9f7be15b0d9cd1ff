"""The memory job store's own promises beyond the contract: bounded memory
(a recent history of finished jobs, a bounded set of slots per schedule)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kernel.jobs.record import JobState
from kernel.storage.memory import MemoryJobStore
from kernel.testing.jobstore_contract import LEASE, T0, make_job


async def finish(store: MemoryJobStore, count: int, *, dead: bool = False) -> list[str]:
    ids = []
    for n in range(count):
        job = make_job(at=timedelta(microseconds=n))
        await store.enqueue(job)
        [claimed] = await store.claim(
            "default", worker="w", now=T0 + timedelta(seconds=1), lease=LEASE
        )
        if dead:
            assert await store.bury(claimed.id, worker="w", error="no", now=T0)
        else:
            assert await store.complete(claimed.id, worker="w", now=T0)
        ids.append(job.id)
    return ids


async def test_only_the_most_recent_finished_jobs_are_kept() -> None:
    store = MemoryJobStore(keep_finished=10, keep_dead=5)
    succeeded = await finish(store, 25)
    dead = await finish(store, 8, dead=True)
    kept = [job.id for job in await store.list_jobs(state=JobState.succeeded, limit=100)]
    assert sorted(kept) == sorted(succeeded[-10:])
    kept_dead = [job.id for job in await store.list_jobs(state=JobState.dead, limit=100)]
    assert sorted(kept_dead) == sorted(dead[-5:])


async def test_a_dead_letter_retried_since_is_not_forgotten_by_the_history() -> None:
    store = MemoryJobStore(keep_dead=2)
    [first] = await finish(store, 1, dead=True)
    # requeued for tomorrow, so the next claims do not take it again
    assert await store.retry_dead(first, now=T0 + timedelta(days=1)) is not None
    await finish(store, 3, dead=True)
    job = await store.get_job(first)
    assert job is not None
    assert job.state is JobState.queued


async def test_each_schedule_remembers_a_bounded_number_of_slots() -> None:
    store = MemoryJobStore(keep_slots=3)
    for n in range(5):
        assert await store.claim_slot("s", T0 + timedelta(seconds=n))
    assert not await store.claim_slot("s", T0 + timedelta(seconds=4))
    assert not await store.claim_slot("s", T0 + timedelta(seconds=2))
    # the oldest were forgotten: a memory store's feeder never sends them again
    assert await store.claim_slot("s", T0)


@pytest.mark.parametrize("field", ["keep_finished", "keep_dead", "keep_slots"])
def test_bounds_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MemoryJobStore(**{field: 0})

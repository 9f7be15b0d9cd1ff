"""The claim order in SQL against the reference: the memory store, fed the
same random jobs and calls, must hand out the same jobs in the same order
(with and without aging, jobs enqueued early or late, retried and released)."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from kernel.ports import JobRecord
from kernel.storage.memory import MemoryJobStore
from kernel.testing.jobstore_contract import LEASE, T0
from kernel_postgres import open_storage


def random_job(rng: random.Random, index: int) -> JobRecord:
    run_at = T0 + timedelta(seconds=rng.randint(-600, 600), microseconds=rng.randint(0, 9))
    # most jobs are enqueued before they are due; some with a run_at already
    # past (a late schedule fire), which an aged claim orders differently
    shift = rng.choice([0, 0, -rng.randint(1, 900), rng.randint(1, 900)])
    return JobRecord(
        id=f"job-{index:04d}",
        task="t",
        queue=rng.choice(["a", "a", "b"]),
        priority=rng.randint(-2, 2),
        run_at=run_at,
        enqueued_at=run_at + timedelta(seconds=shift),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_claims_follow_the_memory_store(pg_url: str, seed: int) -> None:
    rng = random.Random(seed)
    async with await open_storage(pg_url) as postgres, MemoryJobStore() as memory:
        for index in range(150):
            job = random_job(rng, index)
            assert (await postgres.enqueue(job))[1]
            assert (await memory.enqueue(job))[1]
        running: list[tuple[str, str]] = []
        for step in range(60):
            now = T0 + timedelta(seconds=-650 + step * 25)
            queue = rng.choice(["a", "b"])
            limit = rng.randint(1, 6)
            aging = rng.choice([None, timedelta(seconds=7), timedelta(seconds=90)])
            worker = f"w{step}"
            expected = await memory.claim(
                queue, worker=worker, now=now, lease=LEASE, limit=limit, aging=aging
            )
            got = await postgres.claim(
                queue, worker=worker, now=now, lease=LEASE, limit=limit, aging=aging
            )
            assert [job.id for job in got] == [job.id for job in expected], (step, now, aging)
            assert got == expected
            running += [(job.id, worker) for job in got]
            if running and rng.random() < 0.5:
                job_id, holder = running.pop(rng.randrange(len(running)))
                later = now + timedelta(seconds=rng.randint(-100, 300))
                if rng.random() < 0.5:
                    assert await postgres.retry_later(
                        job_id, worker=holder, error="e", run_at=later
                    )
                    assert await memory.retry_later(job_id, worker=holder, error="e", run_at=later)
                else:
                    assert await postgres.release(job_id, worker=holder, run_at=later)
                    assert await memory.release(job_id, worker=holder, run_at=later)
            for name in ("a", "b"):
                assert await postgres.next_due(name) == await memory.next_due(name)
        assert await postgres.next_due() == await memory.next_due()

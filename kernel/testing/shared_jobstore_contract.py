"""The shared job-store contract: what a job store that several processes
share must keep across them, checked through two handles on one backend.

Subclass `SharedJobStoreContract` and provide ``node_a`` and ``node_b``
fixtures: two stores opened separately (two connection pools, as two
processes would have) on the same, empty backend::

    class TestSharedPostgres(SharedJobStoreContract):
        @pytest.fixture
        async def node_a(self, pg_url):
            async with await open_storage(pg_url) as store:
                yield store

        node_b = node_a

A store that offers `kernel.ports.EnqueueListener` is also checked for
wake-ups across nodes; set ``listens_across_nodes = False`` for one that
cannot notify (nodes poll it, as they do SQLite). ``wait`` bounds, in real seconds, what must happen
(a hang guard, not a speed claim). `kernel.testing.cluster` goes further,
with real processes killed mid-run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import trio

from kernel.errors import JobConflict
from kernel.jobs.queue import JobQueue
from kernel.ports import EnqueueListener, JobRecord, JobState, JobStore
from kernel.testing._jobstore_base import LEASE, T0, make_job
from kernel.time.scheduler import open_scheduler

__all__ = ["SharedJobStoreContract", "Wakes"]


class Wakes:
    """A ``wake`` callback for `EnqueueListener.listen_enqueued` that
    remembers which queues were woken, in order."""

    def __init__(self, wait: float = 10.0) -> None:
        self.queues: list[str] = []
        self.wait = wait
        self._changed = trio.Event()

    def __call__(self, queue: str) -> None:
        self.queues.append(queue)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, queue: str) -> None:
        with trio.fail_after(self.wait):
            while queue not in self.queues:
                await self._changed.wait()


class SharedJobStoreContract:
    """Subclass it and define ``node_a`` and ``node_b`` fixtures."""

    wait: ClassVar[float] = 10.0
    listens_across_nodes: ClassVar[bool] = True

    @pytest.fixture
    def listens(self) -> None:
        """The wake-up checks skip for a store that cannot notify (its
        subclass sets ``listens = False``; other processes poll it)."""
        if not self.listens_across_nodes:
            pytest.skip(f"{type(self).__name__}: the store cannot notify, nodes poll it")

    @pytest.mark.parametrize("aging", [None, timedelta(seconds=60)])
    async def test_two_nodes_never_claim_the_same_job(
        self, node_a: JobStore, node_b: JobStore, aging: timedelta | None
    ) -> None:
        count = 300
        for index in range(count):
            await (node_a if index % 2 else node_b).enqueue(
                make_job(priority=index % 5, at=-timedelta(seconds=index))
            )
        taken: dict[str, list[str]] = {}

        async def worker(node: JobStore, name: str) -> None:
            while batch := await node.claim(
                "default", worker=name, now=T0, lease=LEASE, limit=7, aging=aging
            ):
                for job in batch:
                    taken.setdefault(job.id, []).append(name)

        with trio.fail_after(self.wait * 3):
            async with trio.open_nursery() as nursery:
                for index in range(6):
                    nursery.start_soon(worker, node_a if index % 2 else node_b, f"w{index}")
        assert len(taken) == count
        assert all(len(workers) == 1 for workers in taken.values())
        assert len(await node_a.list_jobs(state=JobState.running, limit=1000)) == count

    async def test_a_slot_enqueued_from_two_nodes_is_stored_once(
        self, node_a: JobStore, node_b: JobStore
    ) -> None:
        results: list[bool] = []

        async def fire(node: JobStore) -> None:
            _, stored = await node.enqueue(make_job(schedule="nightly", fire_time=T0))
            results.append(stored)

        async with trio.open_nursery() as nursery:
            for index in range(16):
                nursery.start_soon(fire, node_a if index % 2 else node_b)
        assert sorted(results) == [False] * 15 + [True]
        assert len(await node_b.list_jobs()) == 1
        assert await node_a.claim_slot("nightly", T0) is False

    async def test_a_dedup_key_enqueued_from_two_nodes_is_held_once(
        self, node_a: JobStore, node_b: JobStore
    ) -> None:
        results: list[tuple[str, bool]] = []

        async def enqueue(node: JobStore, index: int) -> None:
            job, stored = await node.enqueue(make_job(dedup_key="sync", args=[index]))
            results.append((job.id, stored))

        async with trio.open_nursery() as nursery:
            for index in range(16):
                nursery.start_soon(enqueue, node_a if index % 2 else node_b, index)
        assert sum(stored for _, stored in results) == 1
        assert len({job_id for job_id, _ in results}) == 1

    async def test_a_reused_id_with_a_held_dedup_key_is_a_conflict(self, node_a: JobStore) -> None:
        job, _ = await node_a.enqueue(make_job(dedup_key="k"))
        with pytest.raises(JobConflict):
            await node_a.enqueue(make_job(id=job.id, dedup_key="k"))
        with pytest.raises(JobConflict):
            await node_a.enqueue(make_job(id=job.id, dedup_key="k", schedule="s", fire_time=T0))
        assert await node_a.claim_slot("s", T0) is True

    @pytest.mark.usefixtures("listens")
    async def test_a_node_wakes_when_another_enqueues(
        self, node_a: JobStore, node_b: JobStore
    ) -> None:
        assert isinstance(node_a, EnqueueListener), "a store that listens is an EnqueueListener"
        listener = node_a
        wakes = Wakes(self.wait)
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.listen_enqueued, wakes)
            await node_b.enqueue(make_job(queue="mail"))
            await wakes.wait_for("mail")
            # due-time changes wake too; claims and completions do not
            (job,) = await node_b.claim("mail", worker="w", now=T0, lease=LEASE)
            assert await node_b.retry_later(job.id, worker="w", error="x", run_at=T0)
            (job,) = await node_b.claim("mail", worker="w", now=T0, lease=LEASE)
            assert await node_b.release(job.id, worker="w", run_at=T0)
            (job,) = await node_b.claim("mail", worker="w", now=T0, lease=LEASE)
            assert await node_b.reap_expired(T0 + LEASE) == [job.id]
            (job,) = await node_b.claim("mail", worker="w", now=T0, lease=LEASE)
            assert await node_b.bury(job.id, worker="w", error="x", now=T0)
            assert await node_b.retry_dead(job.id, now=T0) is not None
            await node_b.enqueue(make_job(queue="sentinel"))
            await wakes.wait_for("sentinel")
            assert wakes.queues == ["mail"] * 5 + ["sentinel"]
            nursery.cancel_scope.cancel()

    @pytest.mark.usefixtures("listens")
    async def test_an_idle_kernel_queue_runs_a_job_another_node_enqueued(
        self, node_a: JobStore, node_b: JobStore
    ) -> None:
        ran = trio.Event()
        seen: list[Any] = []

        async def hello(name: str) -> None:
            seen.append(name)
            ran.set()

        async with open_scheduler() as scheduler, trio.open_nursery() as nursery:
            queue = JobQueue(node_a, scheduler, worker="node-a")
            queue.register("hello", hello, queue="mail")
            await nursery.start(queue.run)
            await trio.sleep(0.2)  # idle: nothing due, no timer armed
            now = datetime.now(UTC)
            job, _ = await node_b.enqueue(
                JobRecord(task="hello", args=["from b"], queue="mail", run_at=now, enqueued_at=now)
            )
            with trio.fail_after(self.wait):
                await ran.wait()
            outcome: tuple[JobState, str | None] | None = None
            for _ in range(500):  # the outcome is stored just after the task returns
                done = await node_b.get_job(job.id)
                assert done is not None
                outcome = (done.state, done.worker)
                if done.state is JobState.succeeded:
                    break
                await trio.sleep(0.02)
            assert seen == ["from b"]
            assert outcome == (JobState.succeeded, "node-a")
            nursery.cancel_scope.cancel()

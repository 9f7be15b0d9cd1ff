"""The job-store contract: the tests every `kernel.jobs.record.JobStore` passes.

Subclass `JobStoreContract` in a test module and provide a ``job_store``
fixture yielding an open store (and closing it afterwards)::

    class TestSQLiteJobStore(JobStoreContract):
        @pytest.fixture
        async def job_store(self, tmp_path):
            async with await SQLiteStorage.open(tmp_path / "jobs.db") as store:
                yield store

Unlike the storage contract, these tests expect an **empty** store: they
count jobs, page through all of them and ask for the earliest due time.
Every time is passed in explicitly (a fixed `T0` plus offsets), so the suite
neither sleeps nor reads a clock; ``timeout`` only bounds the concurrent
tests, in real seconds, in case a store hangs.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
import trio

from kernel.errors import InvalidJob, JobConflict, NotJSONSerializable, StorageClosed
from kernel.jobs.record import JobRecord, JobState
from kernel.ports import JSON, JobStore

__all__ = ["LEASE", "T0", "JobStoreContract", "make_job"]

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
"""The contract's "now": every time in the suite is an offset from it."""

LEASE = timedelta(seconds=30)
"""The lease the suite's claims take unless a test says otherwise."""


def make_job(*, at: timedelta = timedelta(0), **fields: Any) -> JobRecord:
    """A queued job of task ``"contract.task"`` due at ``T0 + at`` (and
    enqueued then), with ``fields`` overriding any field."""
    fields.setdefault("task", "contract.task")
    fields.setdefault("run_at", T0 + at)
    fields.setdefault("enqueued_at", fields["run_at"])
    return JobRecord(**fields)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


StoreCall = Callable[[JobStore], Awaitable[object]]


class JobStoreContract:
    """The job-store contract; subclass it and define a ``job_store`` fixture."""

    timeout: ClassVar[float] = 30.0
    """Seconds before a concurrent test is failed as hung."""

    @pytest.fixture
    def job_store(self) -> JobStore:
        pytest.fail(
            f"{type(self).__name__} must define a `job_store` fixture yielding an empty "
            "store under test (see kernel.testing.jobstore_contract)"
        )

    async def snapshot(self, store: JobStore) -> list[dict[str, JSON]]:
        """Every job, as JSON, in id order: what "nothing changed" compares."""
        jobs: list[dict[str, JSON]] = []
        after: str | None = None
        while True:
            page = await store.list_jobs(limit=1000, after_id=after)
            if not page:
                return jobs
            jobs += [job.to_json() for job in page]
            after = page[-1].id

    async def claim_one(
        self, store: JobStore, *, worker: str = "w1", now: datetime = T0, queue: str = "default"
    ) -> JobRecord:
        claimed = await store.claim(queue, worker=worker, now=now, lease=LEASE)
        assert len(claimed) == 1, f"expected one job to claim, got {claimed}"
        return claimed[0]

    # -- enqueue and read back ------------------------------------------------

    async def test_satisfies_the_protocol(self, job_store: JobStore) -> None:
        assert isinstance(job_store, JobStore)

    async def test_an_enqueued_job_reads_back_equal(self, job_store: JobStore) -> None:
        job = make_job(
            args=[1, "two", [3.0], {"four": None}],
            kwargs={"k": {"nested": [True]}, "☃": "snow"},
            queue="mail",
            priority=-7,
            at=seconds(90),
            enqueued_at=T0,
            dedup_key="mail:42",
            timeout=12.5,
            retry={"max_attempts": 5, "backoff": "exponential"},
            schedule="nightly",
            fire_time=T0 - timedelta(hours=1),
        )
        stored, created = await job_store.enqueue(job)
        assert created is True
        assert stored == job
        assert await job_store.get_job(job.id) == job
        assert await job_store.get_job(uuid.uuid4().hex) is None

    async def test_datetimes_in_other_zones_read_back_as_utc(self, job_store: JobStore) -> None:
        plus_two = timezone(timedelta(hours=2))
        job = make_job(run_at=T0.astimezone(plus_two), enqueued_at=T0.astimezone(plus_two))
        await job_store.enqueue(job)
        got = await job_store.get_job(job.id)
        assert got is not None
        assert got.run_at == T0
        assert got.run_at.utcoffset() == timedelta(0)
        assert got.enqueued_at.tzinfo is not None

    async def test_microseconds_are_kept(self, job_store: JobStore) -> None:
        job = make_job(at=timedelta(microseconds=123_457))
        await job_store.enqueue(job)
        got = await job_store.get_job(job.id)
        assert got is not None
        assert got.run_at == T0 + timedelta(microseconds=123_457)

    async def test_records_are_copies(self, job_store: JobStore) -> None:
        args: list[object] = [[1, 2]]
        job = make_job(args=args, kwargs={"list": [1]})
        await job_store.enqueue(job)
        args[0] = "changed after making the record"
        job.args.append("changed after enqueue")
        job.kwargs["list"].append(2)  # type: ignore[union-attr]
        got = await job_store.get_job(job.id)
        assert got is not None
        assert got.args == [[1, 2]]
        assert got.kwargs == {"list": [1]}
        got.args.append("changed after reading")
        assert (await job_store.list_jobs())[0].args == [[1, 2]]

    async def test_a_stored_id_cannot_be_enqueued_again(self, job_store: JobStore) -> None:
        job = make_job()
        await job_store.enqueue(job)
        before = await self.snapshot(job_store)
        with pytest.raises(JobConflict):
            await job_store.enqueue(make_job(id=job.id, task="other.task"))
        assert await self.snapshot(job_store) == before

    @pytest.mark.parametrize(
        "fields",
        [
            {"state": JobState.running},
            {"state": JobState.dead},
            {"worker": "w1"},
            {"lease_expires_at": T0},
            {"finished_at": T0},
        ],
        ids=["running", "dead", "worker", "lease", "finished"],
    )
    async def test_only_a_fresh_queued_job_is_enqueued(
        self, job_store: JobStore, fields: dict[str, Any]
    ) -> None:
        with pytest.raises(InvalidJob):
            await job_store.enqueue(make_job(**fields))
        assert await self.snapshot(job_store) == []

    # -- dedup ---------------------------------------------------------------

    async def test_a_live_dedup_key_returns_the_existing_job(self, job_store: JobStore) -> None:
        first, created = await job_store.enqueue(make_job(dedup_key="sync:7"))
        assert created
        again, created = await job_store.enqueue(make_job(dedup_key="sync:7", args=["other"]))
        assert created is False
        assert again == first
        _other, created = await job_store.enqueue(make_job(dedup_key="sync:8"))
        assert created
        _no_key, created = await job_store.enqueue(make_job())
        assert created
        assert len(await self.snapshot(job_store)) == 3

    async def test_a_running_job_keeps_its_dedup_key(self, job_store: JobStore) -> None:
        first, _ = await job_store.enqueue(make_job(dedup_key="k"))
        running = await self.claim_one(job_store)
        again, created = await job_store.enqueue(make_job(dedup_key="k"))
        assert created is False
        assert again == running
        assert again.id == first.id

    @pytest.mark.parametrize("outcome", ["complete", "bury", "cancel"])
    async def test_a_finished_job_frees_its_dedup_key(
        self, job_store: JobStore, outcome: str
    ) -> None:
        first, _ = await job_store.enqueue(make_job(dedup_key="k"))
        await self.claim_one(job_store)
        if outcome == "complete":
            assert await job_store.complete(first.id, worker="w1", now=T0)
        elif outcome == "bury":
            assert await job_store.bury(first.id, worker="w1", error="boom", now=T0)
        else:
            assert await job_store.cancel(first.id, now=T0) is not None
        second, created = await job_store.enqueue(make_job(dedup_key="k"))
        assert created
        assert second.id != first.id
        again, created = await job_store.enqueue(make_job(dedup_key="k"))
        assert (again.id, created) == (second.id, False)

    async def test_concurrent_enqueues_with_one_dedup_key_store_one_job(
        self, job_store: JobStore
    ) -> None:
        results: list[tuple[JobRecord, bool]] = []

        async def enqueue(index: int) -> None:
            results.append(await job_store.enqueue(make_job(dedup_key="once", args=[index])))

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for index in range(20):
                    nursery.start_soon(enqueue, index)
        assert sum(created for _, created in results) == 1
        assert len({job.id for job, _ in results}) == 1
        assert len(await self.snapshot(job_store)) == 1

    # -- claim order ---------------------------------------------------------

    async def test_claim_takes_the_highest_priority_first(self, job_store: JobStore) -> None:
        low, _ = await job_store.enqueue(make_job(priority=-1, at=seconds(-30)))
        mid_late, _ = await job_store.enqueue(make_job(priority=5, at=seconds(-10)))
        mid_early, _ = await job_store.enqueue(make_job(priority=5, at=seconds(-20)))
        zero, _ = await job_store.enqueue(make_job(priority=0, at=seconds(-40)))
        claimed = await job_store.claim("default", worker="w1", now=T0, lease=LEASE, limit=10)
        assert [job.id for job in claimed] == [mid_early.id, mid_late.id, zero.id, low.id]

    async def test_ties_go_to_the_earlier_run_at_then_enqueued_at_then_first_stored(
        self, job_store: JobStore
    ) -> None:
        later_enqueued, _ = await job_store.enqueue(make_job(enqueued_at=T0 - seconds(5)))
        earlier_enqueued, _ = await job_store.enqueue(make_job(enqueued_at=T0 - seconds(9)))
        first_stored, _ = await job_store.enqueue(make_job(enqueued_at=T0 - seconds(1)))
        second_stored, _ = await job_store.enqueue(make_job(enqueued_at=T0 - seconds(1)))
        earlier_run_at, _ = await job_store.enqueue(make_job(at=seconds(-1)))
        claimed = await job_store.claim("default", worker="w1", now=T0, lease=LEASE, limit=10)
        assert [job.id for job in claimed] == [
            earlier_run_at.id,
            earlier_enqueued.id,
            later_enqueued.id,
            first_stored.id,
            second_stored.id,
        ]

    async def test_claim_respects_the_limit_and_never_hands_out_a_job_twice(
        self, job_store: JobStore
    ) -> None:
        jobs = [(await job_store.enqueue(make_job(at=seconds(-index))))[0] for index in range(5)]
        first = await job_store.claim("default", worker="w1", now=T0, lease=LEASE, limit=2)
        second = await job_store.claim("default", worker="w2", now=T0, lease=LEASE, limit=2)
        third = await job_store.claim("default", worker="w3", now=T0, lease=LEASE, limit=2)
        fourth = await job_store.claim("default", worker="w4", now=T0, lease=LEASE, limit=2)
        assert [len(batch) for batch in (first, second, third, fourth)] == [2, 2, 1, 0]
        claimed = [job.id for batch in (first, second, third) for job in batch]
        assert claimed == [job.id for job in reversed(jobs)]

    async def test_a_claimed_job_is_running_under_a_lease(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job(at=seconds(-5)))
        (claimed,) = await job_store.claim(
            "default", worker="worker-a", now=T0, lease=seconds(45), limit=5
        )
        expected = {
            "state": JobState.running,
            "worker": "worker-a",
            "lease_expires_at": T0 + seconds(45),
            "attempts": 1,
        }
        for record in (claimed, await job_store.get_job(job.id)):
            assert record is not None
            assert {name: getattr(record, name) for name in expected} == expected
            assert (record.id, record.task, record.run_at) == (job.id, job.task, job.run_at)

    async def test_a_job_is_not_claimed_before_run_at(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job(at=seconds(60)))
        assert await job_store.claim("default", worker="w1", now=T0, lease=LEASE) == []
        early = T0 + seconds(60) - timedelta(microseconds=1)
        assert await job_store.claim("default", worker="w1", now=early, lease=LEASE) == []
        (claimed,) = await job_store.claim(
            "default", worker="w1", now=T0 + seconds(60), lease=LEASE
        )
        assert claimed.id == job.id

    async def test_a_due_low_priority_job_goes_before_a_future_high_one(
        self, job_store: JobStore
    ) -> None:
        await job_store.enqueue(make_job(priority=100, at=seconds(1)))
        low, _ = await job_store.enqueue(make_job(priority=-100))
        claimed = await job_store.claim("default", worker="w1", now=T0, lease=LEASE, limit=5)
        assert [job.id for job in claimed] == [low.id]

    async def test_claim_takes_only_its_queue(self, job_store: JobStore) -> None:
        mail, _ = await job_store.enqueue(make_job(queue="mail"))
        await job_store.enqueue(make_job(queue="reports", priority=9))
        claimed = await job_store.claim("mail", worker="w1", now=T0, lease=LEASE, limit=5)
        assert [job.id for job in claimed] == [mail.id]
        assert await job_store.claim("missing", worker="w1", now=T0, lease=LEASE) == []

    async def test_without_aging_a_low_priority_waits_forever(self, job_store: JobStore) -> None:
        old_low, _ = await job_store.enqueue(make_job(priority=0, at=-timedelta(days=365)))
        fresh_high, _ = await job_store.enqueue(make_job(priority=1))
        claimed = await job_store.claim("default", worker="w1", now=T0, lease=LEASE, limit=1)
        assert [job.id for job in claimed] == [fresh_high.id]
        assert old_low.id != fresh_high.id

    async def test_aging_lets_a_waiting_low_priority_overtake(self, job_store: JobStore) -> None:
        aging = seconds(10)
        # Due for 3 full agings: effective priority 0 + 3 = 3 > 2.
        old_low, _ = await job_store.enqueue(make_job(priority=0, at=seconds(-35)))
        fresh_high, _ = await job_store.enqueue(make_job(priority=2))
        claimed = await job_store.claim(
            "default", worker="w1", now=T0, lease=LEASE, limit=2, aging=aging
        )
        assert [job.id for job in claimed] == [old_low.id, fresh_high.id]

    async def test_aging_counts_whole_periods(self, job_store: JobStore) -> None:
        aging = seconds(10)
        # Due for 2.5 agings: floor -> 0 + 2 = 2, a tie with the fresh priority 2,
        # which then wins on its earlier run_at (it was enqueued late with a past run_at).
        waited, _ = await job_store.enqueue(make_job(priority=0, at=seconds(-25)))
        tie, _ = await job_store.enqueue(
            make_job(priority=2, run_at=T0 - seconds(60), enqueued_at=T0)
        )
        claimed = await job_store.claim(
            "default", worker="w1", now=T0, lease=LEASE, limit=2, aging=aging
        )
        assert [job.id for job in claimed] == [tie.id, waited.id]

    async def test_aging_counts_from_when_a_job_became_due(self, job_store: JobStore) -> None:
        aging = seconds(10)
        # Enqueued an hour ago but due only now: it has not waited, so no bonus.
        delayed, _ = await job_store.enqueue(
            make_job(priority=0, run_at=T0, enqueued_at=T0 - timedelta(hours=1))
        )
        higher, _ = await job_store.enqueue(make_job(priority=1, at=seconds(-1)))
        claimed = await job_store.claim(
            "default", worker="w1", now=T0, lease=LEASE, limit=2, aging=aging
        )
        assert [job.id for job in claimed] == [higher.id, delayed.id]

    async def test_concurrent_claims_hand_out_each_job_once(self, job_store: JobStore) -> None:
        for index in range(40):
            await job_store.enqueue(make_job(priority=index % 3))
        taken: dict[str, list[str]] = {}

        async def worker(name: str) -> None:
            while batch := await job_store.claim(
                "default", worker=name, now=T0, lease=LEASE, limit=3
            ):
                for job in batch:
                    taken.setdefault(job.id, []).append(name)
                await trio.lowlevel.checkpoint()

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for index in range(8):
                    nursery.start_soon(worker, f"w{index}")
        assert len(taken) == 40
        assert all(len(workers) == 1 for workers in taken.values())
        for job in await self.snapshot(job_store):
            assert job["state"] == "running"
            assert [job["worker"]] == taken[str(job["id"])]

    # -- leases --------------------------------------------------------------

    async def test_an_expired_lease_is_reaped_and_its_attempt_spent(
        self, job_store: JobStore
    ) -> None:
        job, _ = await job_store.enqueue(make_job())
        await self.claim_one(job_store, worker="crashed")
        assert await job_store.reap_expired(T0 + LEASE - timedelta(microseconds=1)) == []
        assert await job_store.reap_expired(T0 + LEASE) == [job.id]
        reaped = await job_store.get_job(job.id)
        assert reaped is not None
        assert reaped.state is JobState.queued
        assert (reaped.worker, reaped.lease_expires_at, reaped.attempts) == (None, None, 1)
        assert reaped.last_error is not None
        assert "lease" in reaped.last_error
        assert "crashed" in reaped.last_error
        assert await job_store.reap_expired(T0 + LEASE * 10) == []
        again = await self.claim_one(job_store, worker="w2", now=T0 + LEASE)
        assert (again.id, again.attempts) == (job.id, 2)
        assert await job_store.complete(job.id, worker="crashed", now=T0) is False
        assert await job_store.complete(job.id, worker="w2", now=T0 + LEASE) is True

    async def test_reaping_leaves_other_jobs_alone(self, job_store: JobStore) -> None:
        short, _ = await job_store.enqueue(make_job(queue="a"))
        long, _ = await job_store.enqueue(make_job(queue="b"))
        done, _ = await job_store.enqueue(make_job(queue="c"))
        waiting, _ = await job_store.enqueue(make_job(queue="d"))
        await job_store.claim("a", worker="w1", now=T0, lease=seconds(10))
        await job_store.claim("b", worker="w1", now=T0, lease=seconds(100))
        await job_store.claim("c", worker="w1", now=T0, lease=seconds(10))
        assert await job_store.complete(done.id, worker="w1", now=T0)
        before = {job["id"]: job for job in await self.snapshot(job_store)}
        assert await job_store.reap_expired(T0 + seconds(50)) == [short.id]
        after = {job["id"]: job for job in await self.snapshot(job_store)}
        for unchanged in (long.id, done.id, waiting.id):
            assert after[unchanged] == before[unchanged]

    async def test_a_heartbeat_keeps_the_lease(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job())
        other, _ = await job_store.enqueue(make_job())
        await job_store.claim("default", worker="w1", now=T0, lease=LEASE, limit=1)
        await job_store.claim("default", worker="w2", now=T0, lease=LEASE, limit=1)
        held = await job_store.heartbeat(
            [job.id, other.id, uuid.uuid4().hex], worker="w1", lease_until=T0 + seconds(80)
        )
        assert held == {job.id}
        renewed = await job_store.get_job(job.id)
        untouched = await job_store.get_job(other.id)
        assert renewed is not None
        assert untouched is not None
        assert renewed.lease_expires_at == T0 + seconds(80)
        assert untouched.lease_expires_at == T0 + LEASE
        assert await job_store.reap_expired(T0 + seconds(60)) == [other.id]
        assert await job_store.reap_expired(T0 + seconds(80)) == [job.id]
        assert (
            await job_store.heartbeat([job.id], worker="w1", lease_until=T0 + seconds(99)) == set()
        )
        assert await job_store.heartbeat([], worker="w1", lease_until=T0) == set()

    async def test_a_heartbeat_of_many_ids_renews_the_held_ones(self, job_store: JobStore) -> None:
        for _ in range(3):
            await job_store.enqueue(make_job())
        held = {
            job.id
            for job in await job_store.claim("default", worker="w1", now=T0, lease=LEASE, limit=3)
        }
        # More ids than one SQL statement binds, the held ones among them.
        ids = [uuid.uuid4().hex for _ in range(1200)] + sorted(held) + sorted(held)
        assert await job_store.heartbeat(ids, worker="w1", lease_until=T0 + LEASE * 3) == held
        for job in await job_store.list_jobs(state=JobState.running):
            assert job.lease_expires_at == T0 + LEASE * 3

    async def test_a_worker_that_lost_its_job_cannot_report_on_it(
        self, job_store: JobStore
    ) -> None:
        job, _ = await job_store.enqueue(make_job())
        await self.claim_one(job_store, worker="slow")
        await job_store.reap_expired(T0 + LEASE)
        await self.claim_one(job_store, worker="fast", now=T0 + LEASE)
        before = await self.snapshot(job_store)
        assert await job_store.complete(job.id, worker="slow", now=T0) is False
        assert await job_store.retry_later(job.id, worker="slow", error="x", run_at=T0) is False
        assert await job_store.release(job.id, worker="slow", run_at=T0) is False
        assert await job_store.bury(job.id, worker="slow", error="x", now=T0) is False
        assert await job_store.heartbeat([job.id], worker="slow", lease_until=T0) == set()
        assert await self.snapshot(job_store) == before

    # -- outcomes ------------------------------------------------------------

    async def test_complete_finishes_once(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job())
        await self.claim_one(job_store)
        assert await job_store.complete(job.id, worker="w1", now=T0 + seconds(3)) is True
        done = await job_store.get_job(job.id)
        assert done is not None
        assert done.state is JobState.succeeded
        assert (done.finished_at, done.lease_expires_at, done.attempts) == (
            T0 + seconds(3),
            None,
            1,
        )
        assert await job_store.complete(job.id, worker="w1", now=T0) is False
        assert await job_store.claim("default", worker="w1", now=T0, lease=LEASE) == []

    async def test_complete_of_a_queued_job_is_refused(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job())
        assert await job_store.complete(job.id, worker="w1", now=T0) is False
        assert await job_store.bury(job.id, worker="w1", error="x", now=T0) is False
        got = await job_store.get_job(job.id)
        assert got is not None
        assert got.state is JobState.queued

    async def test_retry_later_requeues_with_the_error_and_spends_the_attempt(
        self, job_store: JobStore
    ) -> None:
        job, _ = await job_store.enqueue(make_job())
        await self.claim_one(job_store)
        retry_at = T0 + seconds(120)
        assert await job_store.retry_later(
            job.id, worker="w1", error="ValueError: nope", run_at=retry_at
        )
        waiting = await job_store.get_job(job.id)
        assert waiting is not None
        assert waiting.state is JobState.queued
        assert (waiting.run_at, waiting.attempts, waiting.worker) == (retry_at, 1, None)
        assert waiting.last_error == "ValueError: nope"
        assert await job_store.next_due() == retry_at
        assert (
            await job_store.claim("default", worker="w1", now=T0 + seconds(60), lease=LEASE) == []
        )
        again = await self.claim_one(job_store, worker="w2", now=retry_at)
        assert (again.attempts, again.last_error) == (2, "ValueError: nope")

    async def test_release_gives_the_attempt_back(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job(attempts=2))
        claimed = await self.claim_one(job_store)
        assert claimed.attempts == 3
        assert await job_store.release(job.id, worker="w1", run_at=T0 + seconds(1))
        released = await job_store.get_job(job.id)
        assert released is not None
        assert released.state is JobState.queued
        assert (released.attempts, released.run_at, released.worker) == (2, T0 + seconds(1), None)
        assert released.lease_expires_at is None
        again = await self.claim_one(job_store, now=T0 + seconds(1))
        assert again.attempts == 3

    async def test_error_text_is_stored_even_when_awkward(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job())
        await self.claim_one(job_store)
        error = "Traceback:\n  File 'caf\udce9.py'\x00\nOSError: ☃ " + "x" * 20_000
        assert await job_store.bury(job.id, worker="w1", error=error, now=T0)
        dead = await job_store.get_job(job.id)
        assert dead is not None
        assert dead.last_error is not None
        assert dead.last_error.startswith("Traceback:\n  File 'caf")
        assert "\x00" not in dead.last_error
        assert dead.last_error.endswith("OSError: ☃ " + "x" * 20_000)
        dead.last_error.encode("utf-8")  # storable everywhere

    # -- cancel --------------------------------------------------------------

    async def test_cancel_a_queued_job(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job())
        cancelled = await job_store.cancel(job.id, now=T0 + seconds(2))
        assert cancelled is not None
        assert (cancelled.id, cancelled.state, cancelled.finished_at) == (
            job.id,
            JobState.cancelled,
            T0 + seconds(2),
        )
        assert await job_store.get_job(job.id) == cancelled
        assert await job_store.claim("default", worker="w1", now=T0, lease=LEASE) == []
        assert await job_store.next_due() is None
        assert await job_store.cancel(job.id, now=T0) is None

    async def test_cancel_a_running_job_refuses_its_outcome(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job())
        await self.claim_one(job_store)
        cancelled = await job_store.cancel(job.id, now=T0)
        assert cancelled is not None
        assert cancelled.state is JobState.cancelled
        assert cancelled.lease_expires_at is None
        assert await job_store.heartbeat([job.id], worker="w1", lease_until=T0 + LEASE) == set()
        assert await job_store.complete(job.id, worker="w1", now=T0) is False
        assert await job_store.retry_later(job.id, worker="w1", error="x", run_at=T0) is False
        assert await job_store.release(job.id, worker="w1", run_at=T0) is False
        assert await job_store.reap_expired(T0 + LEASE * 2) == []
        assert await job_store.get_job(job.id) == cancelled

    async def test_a_finished_or_unknown_job_is_not_cancelled(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job())
        await self.claim_one(job_store)
        await job_store.complete(job.id, worker="w1", now=T0)
        before = await self.snapshot(job_store)
        assert await job_store.cancel(job.id, now=T0) is None
        assert await job_store.cancel(uuid.uuid4().hex, now=T0) is None
        assert await self.snapshot(job_store) == before

    # -- dead letters ----------------------------------------------------------

    async def test_bury_makes_a_dead_letter_that_can_be_retried(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job(attempts=4))
        await self.claim_one(job_store)
        assert await job_store.bury(
            job.id, worker="w1", error="RuntimeError: gave up\nTraceback...", now=T0
        )
        (dead,) = await job_store.list_jobs(state=JobState.dead)
        assert (dead.id, dead.state, dead.attempts, dead.finished_at) == (
            job.id,
            JobState.dead,
            5,
            T0,
        )
        assert dead.last_error == "RuntimeError: gave up\nTraceback..."
        assert await job_store.claim("default", worker="w1", now=T0, lease=LEASE) == []
        retried = await job_store.retry_dead(job.id, now=T0 + seconds(9))
        assert retried is not None
        assert retried.state is JobState.queued
        assert (retried.attempts, retried.run_at, retried.finished_at) == (
            0,
            T0 + seconds(9),
            None,
        )
        assert await job_store.get_job(job.id) == retried
        assert await job_store.retry_dead(job.id, now=T0) is None
        again = await self.claim_one(job_store, now=T0 + seconds(9))
        assert again.attempts == 1

    async def test_retry_dead_refuses_to_duplicate_a_live_dedup_key(
        self, job_store: JobStore
    ) -> None:
        job, _ = await job_store.enqueue(make_job(dedup_key="k"))
        await self.claim_one(job_store)
        await job_store.bury(job.id, worker="w1", error="boom", now=T0)
        await job_store.enqueue(make_job(dedup_key="k"))
        before = await self.snapshot(job_store)
        with pytest.raises(JobConflict):
            await job_store.retry_dead(job.id, now=T0)
        assert await self.snapshot(job_store) == before

    async def test_purge_dead_deletes_dead_letters(self, job_store: JobStore) -> None:
        ids = []
        for index in range(3):
            job, _ = await job_store.enqueue(make_job())
            await self.claim_one(job_store)
            await job_store.bury(job.id, worker="w1", error="x", now=T0 + seconds(index * 10))
            ids.append(job.id)
        kept, _ = await job_store.enqueue(make_job())
        assert await job_store.purge_dead(older_than=T0 + seconds(10)) == 1
        assert {job.id for job in await job_store.list_jobs(state=JobState.dead)} == set(ids[1:])
        assert await job_store.purge_dead() == 2
        assert await job_store.purge_dead() == 0
        assert [job.id for job in await job_store.list_jobs()] == [kept.id]

    async def test_purge_deletes_finished_jobs_of_one_state(self, job_store: JobStore) -> None:
        done, _ = await job_store.enqueue(make_job())
        await self.claim_one(job_store)
        await job_store.complete(done.id, worker="w1", now=T0)
        cancelled, _ = await job_store.enqueue(make_job())
        await job_store.cancel(cancelled.id, now=T0)
        queued, _ = await job_store.enqueue(make_job())
        assert await job_store.purge(state=JobState.succeeded, older_than=T0) == 0
        assert await job_store.purge(state=JobState.succeeded) == 1
        assert await job_store.purge(state=JobState.cancelled, older_than=T0 + seconds(1)) == 1
        assert [job.id for job in await job_store.list_jobs()] == [queued.id]
        for live in (JobState.queued, JobState.running):
            with pytest.raises(InvalidJob):
                await job_store.purge(state=live)
        assert [job.id for job in await job_store.list_jobs()] == [queued.id]

    # -- listing and the next due time -------------------------------------------

    async def test_list_jobs_pages_in_a_stable_order(self, job_store: JobStore) -> None:
        ids = {(await job_store.enqueue(make_job(at=seconds(index))))[0].id for index in range(25)}
        pages: list[list[str]] = []
        after: str | None = None
        while page := await job_store.list_jobs(limit=10, after_id=after):
            pages.append([job.id for job in page])
            after = page[-1].id
            # A job enqueued meanwhile never makes a page repeat or skip a job
            # (a few of them: ids that grow, as `new_job_id`'s do, always land
            # after the cursor, so enqueueing on every page would never end).
            if len(pages) <= 3:
                await job_store.enqueue(make_job(queue="other"))
        listed = [job_id for page in pages for job_id in page]
        # full pages until the original 25 are through; jobs enqueued meanwhile
        # may land after the cursor and add short pages at the end
        assert [len(page) for page in pages[:2]] == [10, 10]
        assert all(1 <= len(page) <= 10 for page in pages)
        assert listed == sorted(listed)
        assert len(listed) == len(set(listed))
        assert ids <= set(listed)

    async def test_list_jobs_filters(self, job_store: JobStore) -> None:
        mail, _ = await job_store.enqueue(make_job(queue="mail"))
        mail_running, _ = await job_store.enqueue(make_job(queue="mail"))
        other, _ = await job_store.enqueue(make_job(queue="other"))
        await job_store.claim("mail", worker="w1", now=T0, lease=LEASE)
        (running,) = await job_store.list_jobs(state=JobState.running)
        queued_mail = await job_store.list_jobs(state=JobState.queued, queue="mail")
        assert running.id in {mail.id, mail_running.id}
        assert [job.id for job in queued_mail] == [
            ({mail.id, mail_running.id} - {running.id}).pop()
        ]
        assert [job.id for job in await job_store.list_jobs(queue="other")] == [other.id]
        assert await job_store.list_jobs(state=JobState.dead) == []
        assert len(await job_store.list_jobs(limit=1)) == 1

    async def test_next_due_is_the_earliest_queued_run_at(self, job_store: JobStore) -> None:
        assert await job_store.next_due() is None
        await job_store.enqueue(make_job(queue="a", at=seconds(50)))
        await job_store.enqueue(make_job(queue="b", at=seconds(20)))
        soonest, _ = await job_store.enqueue(make_job(queue="a", at=seconds(10)))
        assert await job_store.next_due() == T0 + seconds(10)
        assert await job_store.next_due("b") == T0 + seconds(20)
        assert await job_store.next_due("c") is None
        await job_store.claim("a", worker="w1", now=T0 + seconds(10), lease=LEASE)
        assert await job_store.next_due("a") == T0 + seconds(50)
        assert await job_store.next_due() == T0 + seconds(20)
        assert soonest.id

    # -- schedules -------------------------------------------------------------

    async def test_a_slot_is_claimed_once(self, job_store: JobStore) -> None:
        assert await job_store.claim_slot("nightly", T0) is True
        assert await job_store.claim_slot("nightly", T0) is False
        assert (
            await job_store.claim_slot("nightly", T0.astimezone(timezone(timedelta(hours=-5))))
            is False
        )
        assert await job_store.claim_slot("nightly", T0 + timedelta(days=1)) is True
        assert await job_store.claim_slot("hourly", T0) is True

    async def test_concurrent_slot_claims_have_one_winner(self, job_store: JobStore) -> None:
        results: list[bool] = []

        async def claim() -> None:
            results.append(await job_store.claim_slot("every-minute", T0))

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for _ in range(25):
                    nursery.start_soon(claim)
        assert sorted(results) == [False] * 24 + [True]

    async def test_a_slot_job_is_enqueued_once(self, job_store: JobStore) -> None:
        first = make_job(schedule="nightly", fire_time=T0)
        assert (await job_store.enqueue(first))[1] is True
        again = make_job(schedule="nightly", fire_time=T0.astimezone(timezone(timedelta(hours=2))))
        record, stored = await job_store.enqueue(again)
        assert (record.id, stored) == (again.id, False)
        assert await job_store.get_job(again.id) is None
        # the slot is the one claim_slot knows, both ways round
        assert await job_store.claim_slot("nightly", T0) is False
        assert await job_store.claim_slot("nightly", T0 + timedelta(days=1)) is True
        late = make_job(schedule="nightly", fire_time=T0 + timedelta(days=1))
        assert await job_store.enqueue(late) == (late, False)
        # a job of a schedule with no fire time claims nothing
        assert (await job_store.enqueue(make_job(schedule="nightly")))[1] is True
        assert (await job_store.enqueue(make_job(schedule="nightly")))[1] is True

    async def test_a_slot_held_back_by_dedup_stays_claimed(self, job_store: JobStore) -> None:
        running = make_job(schedule="s", fire_time=T0, dedup_key="schedule:s")
        await job_store.enqueue(running)
        overlapping = make_job(
            schedule="s", fire_time=T0 + timedelta(minutes=1), dedup_key="schedule:s"
        )
        record, stored = await job_store.enqueue(overlapping)
        assert (record.id, stored) == (running.id, False)
        assert await job_store.claim_slot("s", T0 + timedelta(minutes=1)) is False

    async def test_a_conflicting_id_claims_no_slot(self, job_store: JobStore) -> None:
        job = make_job()
        await job_store.enqueue(job)
        with pytest.raises(JobConflict):
            await job_store.enqueue(make_job(id=job.id, schedule="s", fire_time=T0))
        assert await job_store.claim_slot("s", T0) is True

    async def test_concurrent_slot_enqueues_have_one_winner(self, job_store: JobStore) -> None:
        results: list[bool] = []

        async def fire() -> None:
            _, stored = await job_store.enqueue(make_job(schedule="every-minute", fire_time=T0))
            results.append(stored)

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for _ in range(25):
                    nursery.start_soon(fire)
        assert sorted(results) == [False] * 24 + [True]
        assert len(await job_store.list_jobs(state=JobState.queued)) == 1

    async def test_pruned_slots_can_be_claimed_again(self, job_store: JobStore) -> None:
        for minute in range(5):
            assert await job_store.claim_slot("s", T0 + timedelta(minutes=minute))
        assert await job_store.prune_slots(older_than=T0 + timedelta(minutes=3)) == 3
        assert await job_store.claim_slot("s", T0 + timedelta(minutes=3)) is False
        assert await job_store.claim_slot("s", T0) is True

    async def test_schedule_state_round_trips(self, job_store: JobStore) -> None:
        assert await job_store.get_schedule_state("nightly") is None
        state = {"last_fire": T0.isoformat(), "next_fire": None, "runs": 3, "tags": ["a"]}
        await job_store.put_schedule_state("nightly", state)
        state["runs"] = 99
        got = await job_store.get_schedule_state("nightly")
        assert got == {"last_fire": T0.isoformat(), "next_fire": None, "runs": 3, "tags": ["a"]}
        assert got is not None
        got["tags"].append("b")  # type: ignore[union-attr]
        assert await job_store.get_schedule_state("nightly") == {
            "last_fire": T0.isoformat(),
            "next_fire": None,
            "runs": 3,
            "tags": ["a"],
        }
        await job_store.put_schedule_state("nightly", {"runs": 4})
        assert await job_store.get_schedule_state("nightly") == {"runs": 4}
        assert await job_store.get_schedule_state("other") is None

    async def test_bad_schedule_state_changes_nothing(self, job_store: JobStore) -> None:
        await job_store.put_schedule_state("s", {"kept": True})
        with pytest.raises(NotJSONSerializable):
            await job_store.put_schedule_state("s", {"when": T0})  # type: ignore[dict-item]
        with pytest.raises(NotJSONSerializable):
            await job_store.put_schedule_state("s", {"x": math.nan})
        with pytest.raises(InvalidJob):
            await job_store.put_schedule_state("s", [1, 2])  # type: ignore[arg-type]
        with pytest.raises(InvalidJob):
            await job_store.put_schedule_state("", {"x": 1})
        assert await job_store.get_schedule_state("s") == {"kept": True}

    # -- bad input changes nothing ---------------------------------------------

    @pytest.mark.parametrize(
        "call",
        [
            "claim-naive-now",
            "claim-zero-lease",
            "claim-zero-limit",
            "claim-huge-limit",
            "claim-zero-aging",
            "claim-empty-queue",
            "claim-empty-worker",
            "heartbeat-naive",
            "heartbeat-str-ids",
            "complete-naive",
            "complete-int-id",
            "retry-later-naive",
            "release-naive",
            "bury-naive",
            "bury-bytes-error",
            "cancel-naive",
            "cancel-empty-id",
            "reap-naive",
            "reap-not-a-datetime",
            "get-job-none",
            "list-zero-limit",
            "list-bad-state",
            "retry-dead-naive",
            "purge-dead-naive",
            "purge-running",
            "next-due-empty-queue",
            "claim-slot-naive",
            "claim-slot-empty",
            "prune-slots-naive",
            "enqueue-not-a-record",
        ],
    )
    async def test_bad_input_is_refused_and_changes_nothing(
        self, job_store: JobStore, call: str
    ) -> None:
        naive = datetime(2030, 1, 1, 12, 0)
        queued, _ = await job_store.enqueue(make_job(dedup_key="d"))
        running, _ = await job_store.enqueue(make_job(at=seconds(-1)))
        await self.claim_one(job_store)
        assert await job_store.claim_slot("s", T0)
        before = await self.snapshot(job_store)
        rid = running.id
        calls: dict[str, StoreCall] = {
            "claim-naive-now": lambda s: s.claim("default", worker="w", now=naive, lease=LEASE),
            "claim-zero-lease": lambda s: s.claim(
                "default", worker="w", now=T0, lease=timedelta(0)
            ),
            "claim-zero-limit": lambda s: s.claim(
                "default", worker="w", now=T0, lease=LEASE, limit=0
            ),
            "claim-huge-limit": lambda s: s.claim(
                "default", worker="w", now=T0, lease=LEASE, limit=10**9
            ),
            "claim-zero-aging": lambda s: s.claim(
                "default", worker="w", now=T0, lease=LEASE, aging=timedelta(0)
            ),
            "claim-empty-queue": lambda s: s.claim("", worker="w", now=T0, lease=LEASE),
            "claim-empty-worker": lambda s: s.claim("default", worker="", now=T0, lease=LEASE),
            "heartbeat-naive": lambda s: s.heartbeat([rid], worker="w1", lease_until=naive),
            "heartbeat-str-ids": lambda s: s.heartbeat(rid, worker="w1", lease_until=T0),
            "complete-naive": lambda s: s.complete(rid, worker="w1", now=naive),
            "complete-int-id": lambda s: s.complete(7, worker="w1", now=T0),  # type: ignore[arg-type]
            "retry-later-naive": lambda s: s.retry_later(rid, worker="w1", error="x", run_at=naive),
            "release-naive": lambda s: s.release(rid, worker="w1", run_at=naive),
            "bury-naive": lambda s: s.bury(rid, worker="w1", error="x", now=naive),
            "bury-bytes-error": lambda s: s.bury(rid, worker="w1", error=b"x", now=T0),  # type: ignore[arg-type]
            "cancel-naive": lambda s: s.cancel(queued.id, now=naive),
            "cancel-empty-id": lambda s: s.cancel("", now=T0),
            "reap-naive": lambda s: s.reap_expired(naive + timedelta(days=1)),
            "reap-not-a-datetime": lambda s: s.reap_expired(1e12),  # type: ignore[arg-type]
            "get-job-none": lambda s: s.get_job(None),  # type: ignore[arg-type]
            "list-zero-limit": lambda s: s.list_jobs(limit=0),
            "list-bad-state": lambda s: s.list_jobs(state="sleeping"),  # type: ignore[arg-type]
            "retry-dead-naive": lambda s: s.retry_dead(rid, now=naive),
            "purge-dead-naive": lambda s: s.purge_dead(older_than=naive),
            "purge-running": lambda s: s.purge(state=JobState.running),
            "next-due-empty-queue": lambda s: s.next_due(""),
            "claim-slot-naive": lambda s: s.claim_slot("s2", naive),
            "claim-slot-empty": lambda s: s.claim_slot("", T0),
            "prune-slots-naive": lambda s: s.prune_slots(older_than=naive),
            "enqueue-not-a-record": lambda s: s.enqueue(make_job().to_json()),  # type: ignore[arg-type]
        }
        with pytest.raises(InvalidJob) as refused:
            await calls[call](job_store)
        assert isinstance(refused.value, ValueError)
        assert await self.snapshot(job_store) == before
        assert await job_store.claim_slot("s", T0) is False
        assert await job_store.claim_slot("s2", T0) is True

    async def test_unknown_ids_are_answered_not_raised(self, job_store: JobStore) -> None:
        await job_store.enqueue(make_job())
        await self.claim_one(job_store)
        before = await self.snapshot(job_store)
        unknown = uuid.uuid4().hex
        assert await job_store.get_job(unknown) is None
        assert await job_store.complete(unknown, worker="w1", now=T0) is False
        assert await job_store.retry_later(unknown, worker="w1", error="x", run_at=T0) is False
        assert await job_store.release(unknown, worker="w1", run_at=T0) is False
        assert await job_store.bury(unknown, worker="w1", error="x", now=T0) is False
        assert await job_store.cancel(unknown, now=T0) is None
        assert await job_store.retry_dead(unknown, now=T0) is None
        assert await job_store.heartbeat([unknown], worker="w1", lease_until=T0) == set()
        assert await job_store.list_jobs(after_id="f" * 32) == []
        assert await self.snapshot(job_store) == before

    # -- closing -----------------------------------------------------------------

    async def test_a_closed_store_refuses_every_call(self, job_store: JobStore) -> None:
        job, _ = await job_store.enqueue(make_job())
        await job_store.aclose()
        await job_store.aclose()  # idempotent
        calls: list[StoreCall] = [
            lambda s: s.enqueue(make_job()),
            lambda s: s.claim("default", worker="w", now=T0, lease=LEASE),
            lambda s: s.heartbeat([job.id], worker="w", lease_until=T0),
            lambda s: s.complete(job.id, worker="w", now=T0),
            lambda s: s.retry_later(job.id, worker="w", error="x", run_at=T0),
            lambda s: s.release(job.id, worker="w", run_at=T0),
            lambda s: s.bury(job.id, worker="w", error="x", now=T0),
            lambda s: s.cancel(job.id, now=T0),
            lambda s: s.reap_expired(T0),
            lambda s: s.get_job(job.id),
            lambda s: s.list_jobs(),
            lambda s: s.retry_dead(job.id, now=T0),
            lambda s: s.purge_dead(),
            lambda s: s.purge(state=JobState.succeeded),
            lambda s: s.next_due(),
            lambda s: s.claim_slot("s", T0),
            lambda s: s.prune_slots(older_than=T0),
            lambda s: s.get_schedule_state("s"),
            lambda s: s.put_schedule_state("s", {}),
        ]
        for call in calls:
            with pytest.raises(StorageClosed):
                await call(job_store)

"""The job-store contract, part one: enqueue, dedup keys, claims and
leases (private to `kernel.testing`; use `JobStoreContract`)."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta, timezone
from typing import Any

import pytest
import trio

from kernel.errors import InvalidJob, JobConflict
from kernel.jobs.record import JobRecord, JobState
from kernel.ports import JobStore
from kernel.storage.base import MAX_CLAIM_LIMIT
from kernel.testing._jobstore_base import LEASE, T0, ContractBase, StoreCall, make_job, seconds

__all__ = ["QueueContract"]


class QueueContract(ContractBase):
    """Getting jobs in and handing them out."""

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

    # -- complete and claim in one round trip ---------------------------------

    async def test_complete_and_claim_completes_held_jobs_then_claims(
        self, job_store: JobStore
    ) -> None:
        first, second, third, theirs = (make_job(at=seconds(n)) for n in range(4))
        for job in (first, second, third, theirs):
            await job_store.enqueue(job)
        mine = await job_store.claim(
            "default", worker="w1", now=T0 + seconds(5), lease=LEASE, limit=2
        )
        other = await job_store.claim("default", worker="w2", now=T0 + seconds(5), lease=LEASE)
        now = T0 + seconds(6)
        done, claimed = await job_store.complete_and_claim(
            "default",
            worker="w1",
            now=now,
            completed=[mine[0].id, mine[1].id, other[0].id, "no-such-job"],
            lease=LEASE,
            limit=5,
        )
        assert done == {first.id, second.id}
        assert [job.id for job in claimed] == [theirs.id]
        assert claimed[0].state is JobState.running
        assert claimed[0].worker == "w1"
        assert claimed[0].lease_expires_at == now + LEASE
        for job in (first, second):
            stored = await job_store.get_job(job.id)
            assert stored is not None
            assert (stored.state, stored.finished_at) == (JobState.succeeded, now)
        stolen = await job_store.get_job(third.id)
        assert stolen is not None
        assert (stolen.state, stolen.worker) == (JobState.running, "w2")

    async def test_complete_and_claim_with_no_limit_only_completes(
        self, job_store: JobStore
    ) -> None:
        for n in range(2):
            await job_store.enqueue(make_job(at=seconds(n)))
        running = await self.claim_one(job_store, now=T0 + seconds(1))
        done, claimed = await job_store.complete_and_claim(
            "default", worker="w1", now=T0 + seconds(2), completed=[running.id], lease=LEASE
        )
        assert (done, claimed) == ({running.id}, [])
        assert len(await job_store.list_jobs(state=JobState.queued)) == 1

    async def test_complete_and_claim_claims_in_claim_order_with_aging(
        self, job_store: JobStore
    ) -> None:
        old_low = make_job(priority=0)
        new_high = make_job(priority=2, at=seconds(250))
        await job_store.enqueue(old_low)
        await job_store.enqueue(new_high)
        now = T0 + seconds(300)
        _, aged = await job_store.complete_and_claim(
            "default", worker="w1", now=now, lease=LEASE, limit=2, aging=seconds(60)
        )
        # old_low waited 300 s: 0 + 5 beats 2 + 0
        assert [job.id for job in aged] == [old_low.id, new_high.id]

    async def test_concurrent_complete_and_claims_hand_out_each_job_once(
        self, job_store: JobStore
    ) -> None:
        ids = set()
        for n in range(40):
            job = make_job(at=seconds(n % 7), priority=n % 3)
            ids.add(job.id)
            await job_store.enqueue(job)
        claimed: list[str] = []

        async def worker(name: str) -> None:
            done: list[str] = []
            while True:
                _, jobs = await job_store.complete_and_claim(
                    "default",
                    worker=name,
                    now=T0 + seconds(10),
                    completed=done,
                    lease=LEASE,
                    limit=3,
                    aging=seconds(1),
                )
                if not jobs:
                    return
                done = [job.id for job in jobs]
                claimed.extend(done)

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for name in ("w1", "w2", "w3", "w4"):
                    nursery.start_soon(worker, name)
        assert sorted(claimed) == sorted(ids)

    async def test_complete_and_claim_refuses_bad_input_and_changes_nothing(
        self, job_store: JobStore
    ) -> None:
        await job_store.enqueue(make_job())
        running = await self.claim_one(job_store)
        before = await self.snapshot(job_store)
        naive = T0.replace(tzinfo=None)
        bad: list[StoreCall] = [
            lambda s: s.complete_and_claim("default", worker="w1", now=naive, lease=LEASE),
            lambda s: s.complete_and_claim("default", worker="w1", now=T0, lease=LEASE, limit=-1),
            lambda s: s.complete_and_claim(
                "default", worker="w1", now=T0, lease=LEASE, limit=MAX_CLAIM_LIMIT + 1
            ),
            lambda s: s.complete_and_claim(
                "default", worker="w1", now=T0, lease=LEASE, completed=running.id
            ),
            lambda s: s.complete_and_claim(
                "default", worker="w1", now=T0, lease=timedelta(0), completed=[running.id]
            ),
            lambda s: s.complete_and_claim("", worker="w1", now=T0, lease=LEASE),
        ]
        for call in bad:
            with pytest.raises(InvalidJob):
                await call(job_store)
        assert await self.snapshot(job_store) == before

    # -- headers -----------------------------------------------------------------

    async def test_headers_travel_with_the_job(self, job_store: JobStore) -> None:
        headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        job = make_job(headers=headers)
        await job_store.enqueue(job)
        stored = await job_store.get_job(job.id)
        assert stored is not None
        assert stored.headers == headers
        claimed = await self.claim_one(job_store)
        assert claimed.headers == headers
        claimed.headers["traceparent"] = "changed"
        again = await job_store.get_job(job.id)
        assert again is not None
        assert again.headers == headers

    # -- the claim order, against the reference -------------------------------

    @pytest.mark.parametrize("seed", [1, 2])
    async def test_claims_follow_the_reference_store(self, job_store: JobStore, seed: int) -> None:
        """Fed the same random jobs and calls as `MemoryJobStore` (the
        reference), the store hands out the same jobs in the same order: with
        and without aging, jobs enqueued early or late, retried, released and
        completed in the same round trip as the next claim."""
        from kernel.storage.memory import MemoryJobStore  # the reference

        rng = random.Random(seed)
        async with MemoryJobStore() as reference:
            for index in range(120):
                run_at = T0 + timedelta(
                    seconds=rng.randint(-600, 600), microseconds=rng.randint(0, 9)
                )
                shift = rng.choice([0, 0, -rng.randint(1, 900), rng.randint(1, 900)])
                job = make_job(
                    id=f"job-{index:04d}",
                    queue=rng.choice(["a", "a", "b"]),
                    priority=rng.randint(-2, 2),
                    run_at=run_at,
                    enqueued_at=run_at + timedelta(seconds=shift),
                )
                assert (await job_store.enqueue(job))[1]
                assert (await reference.enqueue(job))[1]
            running: list[tuple[str, str]] = []
            for step in range(50):
                now = T0 + timedelta(seconds=-650 + step * 30)
                queue = rng.choice(["a", "b"])
                limit = rng.randint(1, 6)
                aging = rng.choice([None, timedelta(seconds=7), timedelta(seconds=90)])
                worker = f"w{step}"
                done = [running.pop(rng.randrange(len(running)))[0] for _ in running[:2]]
                answers = [
                    await store.complete_and_claim(
                        queue,
                        worker=worker,
                        now=now,
                        completed=done,
                        lease=LEASE,
                        limit=limit,
                        aging=aging,
                    )
                    for store in (reference, job_store)
                ]
                expected, got = answers
                assert [job.id for job in got[1]] == [job.id for job in expected[1]], (step, aging)
                assert got == expected
                running += [(job.id, worker) for job in got[1]]
                if running and rng.random() < 0.5:
                    job_id, holder = running.pop(rng.randrange(len(running)))
                    later = now + timedelta(seconds=rng.randint(-100, 300))
                    retry = rng.random() < 0.5
                    for store in (job_store, reference):
                        if retry:
                            assert await store.retry_later(
                                job_id, worker=holder, error="e", run_at=later
                            )
                        else:
                            assert await store.release(job_id, worker=holder, run_at=later)
                for name in ("a", "b"):
                    assert await job_store.next_due(name) == await reference.next_due(name)

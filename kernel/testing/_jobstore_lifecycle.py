"""The job-store contract, part two: outcomes, cancelling, dead letters,
listing, schedule slots, bad input and closing (private to
`kernel.testing`; use `JobStoreContract`)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import trio

from kernel.errors import InvalidJob, JobConflict, NotJSONSerializable, StorageClosed
from kernel.jobs.record import JobState
from kernel.ports import JobStore
from kernel.testing._jobstore_base import LEASE, T0, ContractBase, StoreCall, make_job, seconds

__all__ = ["LifecycleContract"]


class LifecycleContract(ContractBase):
    """What happens to jobs once handed out, and what every call refuses."""

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

    async def test_list_jobs_without_payloads_leaves_out_only_the_arguments(
        self, job_store: JobStore
    ) -> None:
        job = make_job(args=[1, "two"], kwargs={"big": "x" * 1000}, headers={"h": "v"})
        await job_store.enqueue(job)
        [full] = await job_store.list_jobs()
        [bare] = await job_store.list_jobs(payloads=False)
        assert (full.args, full.kwargs) == ([1, "two"], {"big": "x" * 1000})
        assert (bare.args, bare.kwargs) == ([], {})
        expected = {**full.to_json(), "args": [], "kwargs": {}}
        assert bare.to_json() == expected

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

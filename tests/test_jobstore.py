"""The job records and the job-store contract against the memory and the
SQLite stores, the two stores against each other, several SQLite
connections on one file (the shared job-store contract among them), and
checks that the contract catches broken stores."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.errors import InvalidJob, JobConflict, NotJSONSerializable
from kernel.jobs.record import JobRecord, JobState
from kernel.ports import JobStore
from kernel.storage.base import clean_error_text, effective_priority
from kernel.storage.memory import MemoryJobStore
from kernel.storage.sqlite import MEMORY, SQLiteStorage
from kernel.testing.jobstore_contract import LEASE, T0, JobStoreContract, make_job
from kernel.testing.shared_jobstore_contract import SharedJobStoreContract


class TestMemoryJobStore(JobStoreContract):
    @pytest.fixture
    async def job_store(self) -> AsyncIterator[MemoryJobStore]:
        async with MemoryJobStore() as store:
            yield store


class TestSQLiteJobStore(JobStoreContract):
    @pytest.fixture
    async def job_store(self, tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
        async with await SQLiteStorage.open(tmp_path / "jobs.db") as store:
            yield store


class TestSQLiteSharedFile(SharedJobStoreContract):
    """Two handles on one SQLite file, as two processes on one host have."""

    listens_across_nodes = False

    @pytest.fixture
    async def node_a(self, tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
        async with await SQLiteStorage.open(tmp_path / "jobs.db") as store:
            yield store

    @pytest.fixture
    async def node_b(self, tmp_path: Path, node_a: SQLiteStorage) -> AsyncIterator[SQLiteStorage]:
        async with await SQLiteStorage.open(tmp_path / "jobs.db") as store:
            yield store


# -- the record -----------------------------------------------------------------


def test_a_record_has_useful_defaults() -> None:
    job = JobRecord(task="mail.send", run_at=T0, enqueued_at=T0)
    assert len(job.id) == 32
    int(job.id, 16)
    assert (job.args, job.kwargs, job.queue, job.priority, job.attempts) == (
        [],
        {},
        "default",
        0,
        0,
    )
    assert job.state is JobState.queued
    assert JobRecord(task="t", run_at=T0, enqueued_at=T0).id != job.id


def test_aware_datetimes_are_normalised_to_utc() -> None:
    local = T0.astimezone(timezone(timedelta(hours=-7)))
    job = JobRecord(task="t", run_at=local, enqueued_at=local, fire_time=local)
    assert job.run_at == T0
    assert job.run_at.tzinfo is UTC
    assert job.fire_time is not None
    assert job.fire_time.tzinfo is UTC


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"run_at": datetime(2030, 1, 1)}, "run_at", "is naive"),
        ({"enqueued_at": "2030-01-01"}, "enqueued_at", "must be a datetime, not str"),
        ({"lease_expires_at": datetime(2030, 1, 1)}, "lease_expires_at", "is naive"),
        ({"task": ""}, "task", "must not be empty"),
        ({"task": "a\nb"}, "task", "contains U+000A"),
        ({"queue": 3}, "queue", "must be a str, not int"),
        ({"priority": 1.5}, "priority", "must be an int"),
        ({"priority": True}, "priority", "must be an int"),
        ({"priority": 2**31}, "priority", "32 bits"),
        ({"attempts": -1}, "attempts", ">= 0"),
        ({"timeout": 0}, "timeout", "positive"),
        ({"timeout": float("inf")}, "timeout", "positive, finite"),
        ({"args": "abc"}, "args", "must be a list, not str"),
        ({"kwargs": [1]}, "kwargs", "must be a dict, not list"),
        ({"retry": 3}, "retry", "must be a dict or None"),
        ({"state": "sleeping"}, "state", "must be a JobState"),
        ({"dedup_key": "k" * 1025}, "dedup_key", "more than 1024"),
        ({"id": ""}, "job_id", "must not be empty"),
    ],
)
def test_bad_fields_are_refused_by_name(fields: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        make_job(**fields)
    assert refused.value.field == field
    assert reason in refused.value.reason
    assert isinstance(refused.value, ValueError)
    assert str(refused.value).startswith(f"invalid job {field} ")


def test_arguments_must_be_json() -> None:
    with pytest.raises(NotJSONSerializable, match=r"^args\[1\]: set is not JSON"):
        make_job(args=[1, {2}])
    with pytest.raises(NotJSONSerializable, match=r"^kwargs: key 1 is int"):
        make_job(kwargs={1: "x"})
    assert make_job(args=(1, (2, 3))).args == [1, [2, 3]]


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=15,
)
names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20)
aware = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
)
records = st.builds(
    JobRecord,
    task=names,
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(text, json_values, max_size=4),
    queue=names,
    priority=st.integers(-(2**31), 2**31 - 1),
    run_at=aware,
    enqueued_at=aware,
    dedup_key=st.none() | names,
    timeout=st.none() | st.floats(min_value=0.001, max_value=1e9),
    retry=st.none() | st.dictionaries(text, json_values, max_size=3),
    attempts=st.integers(0, 1000),
    state=st.sampled_from(JobState),
    worker=st.none() | names,
    lease_expires_at=st.none() | aware,
    last_error=st.none() | st.text(),
    finished_at=st.none() | aware,
    schedule=st.none() | names,
    fire_time=st.none() | aware,
)


@given(records)
@settings(max_examples=150)
def test_a_record_round_trips_through_json_text(job: JobRecord) -> None:
    data = job.to_json()
    assert JobRecord.from_json(json.loads(json.dumps(data))) == job


@given(records)
@settings(max_examples=40, deadline=None)
async def test_a_record_round_trips_through_sqlite(job: JobRecord) -> None:
    fresh = {"state": "queued", "worker": None, "lease_expires_at": None, "finished_at": None}
    queued = JobRecord.from_json({**job.to_json(), **fresh})
    async with await SQLiteStorage.open(MEMORY) as store:
        await store.enqueue(queued)
        assert await store.get_job(queued.id) == queued


def test_from_json_ignores_unknown_keys_and_defaults_optional_ones() -> None:
    data = {"id": "a" * 32, "task": "t", "run_at": T0.isoformat(), "enqueued_at": T0.isoformat()}
    job = JobRecord.from_json({**data, "added_in_a_later_release": 1})
    assert job == JobRecord(id="a" * 32, task="t", run_at=T0, enqueued_at=T0)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([1], "record"),
        ({"task": "t", "run_at": "2030-01-01T00:00:00+00:00", "enqueued_at": "x"}, "id"),
        ({"id": "a", "task": "t", "run_at": "2030-01-01T00:00:00", "enqueued_at": "x"}, "run_at"),
        ({"id": "a", "task": "t", "run_at": "soon", "enqueued_at": "x"}, "run_at"),
        ({"id": "a", "task": "t", "run_at": 1234, "enqueued_at": "x"}, "run_at"),
    ],
)
def test_from_json_names_what_is_wrong(data: object, field: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        JobRecord.from_json(data)
    assert refused.value.field == field


def test_error_text_is_made_storable() -> None:
    assert clean_error_text("plain\ntext") == "plain\ntext"
    assert clean_error_text("nul\x00here") == "nul\\x00here"
    assert clean_error_text("caf\udce9 ☃") == "caf\\udce9 ☃"
    with pytest.raises(InvalidJob):
        clean_error_text(None)


@pytest.mark.parametrize(
    ("priority", "run_at", "enqueued_at", "now", "aging", "expected"),
    [
        (3, T0, T0, T0 + timedelta(hours=5), None, 3),
        (0, T0, T0, T0 + timedelta(seconds=29), timedelta(seconds=10), 2),
        (0, T0, T0, T0 + timedelta(seconds=30), timedelta(seconds=10), 3),
        (-5, T0, T0 - timedelta(hours=1), T0 + timedelta(seconds=10), timedelta(seconds=10), -4),
        # clock skew: enqueued "in the future" never lowers a priority
        (2, T0, T0 + timedelta(hours=1), T0, timedelta(seconds=1), 2),
    ],
)
def test_effective_priority(
    priority: int,
    run_at: datetime,
    enqueued_at: datetime,
    now: datetime,
    aging: timedelta | None,
    expected: int,
) -> None:
    job = make_job(priority=priority, run_at=run_at, enqueued_at=enqueued_at)
    assert effective_priority(job, now, aging) == expected


# -- the two stores against each other ------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("enqueue"),
            st.sampled_from(["a", "b"]),
            st.integers(-2, 2),
            st.integers(-5, 5),
            st.sampled_from([None, "x", "y"]),
        ),
        st.tuples(
            st.just("claim"),
            st.sampled_from(["a", "b"]),
            st.sampled_from(["w1", "w2"]),
            st.integers(0, 60),
            st.integers(1, 3),
            st.sampled_from([None, 5]),
        ),
        st.tuples(
            st.sampled_from(["complete", "retry_later", "release", "bury", "heartbeat"]),
            st.integers(0, 15),
            st.sampled_from(["w1", "w2"]),
            st.integers(0, 60),
        ),
        st.tuples(
            st.sampled_from(["cancel", "retry_dead", "reap", "purge_dead", "slot"]),
            st.integers(0, 15),
            st.integers(0, 90),
        ),
    ),
    max_size=40,
)

Call = Callable[[JobStore], Awaitable[object]]


def _call_for(op: tuple[Any, ...], ids: list[str], serial: int) -> Call:
    kind = op[0]
    if kind == "enqueue":
        _, queue, priority, at, dedup_key = op
        job = make_job(
            id=f"{serial:032x}",
            queue=queue,
            priority=priority,
            at=timedelta(seconds=at),
            dedup_key=dedup_key,
        )
        return lambda store: store.enqueue(job)
    if kind == "claim":
        _, queue, worker, now, limit, aging = op
        aging_delta = None if aging is None else timedelta(seconds=aging)
        return lambda store: store.claim(
            queue,
            worker=worker,
            now=T0 + timedelta(seconds=now),
            lease=LEASE,
            limit=limit,
            aging=aging_delta,
        )
    job_id = ids[op[1] % len(ids)] if ids else "0" * 32
    if kind in ("complete", "retry_later", "release", "bury", "heartbeat"):
        _, _, worker, at = op
        when = T0 + timedelta(seconds=at)
        calls: dict[str, Call] = {
            "complete": lambda store: store.complete(job_id, worker=worker, now=when),
            "retry_later": lambda store: store.retry_later(
                job_id, worker=worker, error="e", run_at=when
            ),
            "release": lambda store: store.release(job_id, worker=worker, run_at=when),
            "bury": lambda store: store.bury(job_id, worker=worker, error="e", now=when),
            "heartbeat": lambda store: store.heartbeat(
                [job_id], worker=worker, lease_until=when + LEASE
            ),
        }
        return calls[kind]
    _, _, at = op
    when = T0 + timedelta(seconds=at)
    others: dict[str, Call] = {
        "cancel": lambda store: store.cancel(job_id, now=when),
        "retry_dead": lambda store: store.retry_dead(job_id, now=when),
        "reap": lambda store: store.reap_expired(when),
        "purge_dead": lambda store: store.purge_dead(older_than=when),
        "slot": lambda store: store.claim_slot("s", T0 + timedelta(seconds=at % 3)),
    }
    return others[kind]


async def _outcome(call: Call, store: JobStore) -> object:
    try:
        return await call(store)
    except JobConflict as error:
        return ("JobConflict", error.job_id)


@given(operations)
@settings(max_examples=100, deadline=None)
async def test_sqlite_behaves_like_the_memory_store(ops: list[tuple[Any, ...]]) -> None:
    memory = MemoryJobStore()
    async with await SQLiteStorage.open(MEMORY) as sqlite:
        ids: list[str] = []
        for serial, op in enumerate(ops):
            call = _call_for(op, ids, serial)
            expected = await _outcome(call, memory)
            assert await _outcome(call, sqlite) == expected, op
            if op[0] == "enqueue":
                ids.append(f"{serial:032x}")
        assert await sqlite.list_jobs(limit=1000) == await memory.list_jobs(limit=1000)
        assert await sqlite.next_due() == await memory.next_due()


# -- several SQLite connections on one file ---------------------------------------


async def test_two_connections_never_claim_the_same_job(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with await SQLiteStorage.open(path) as first, await SQLiteStorage.open(path) as second:
        for index in range(60):
            await (first, second)[index % 2].enqueue(make_job(priority=index % 4))
        taken: dict[str, list[str]] = {}

        async def worker(store: SQLiteStorage, name: str) -> None:
            while batch := await store.claim("default", worker=name, now=T0, lease=LEASE, limit=2):
                for job in batch:
                    taken.setdefault(job.id, []).append(name)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(6):
                    store = (first, second)[index % 2]
                    nursery.start_soon(worker, store, f"w{index}")
        assert len(taken) == 60
        assert all(len(workers) == 1 for workers in taken.values())
        for job in await second.list_jobs(limit=100):
            assert job.state is JobState.running
            assert [job.worker] == taken[job.id]
        assert len({workers[0] for workers in taken.values()}) > 1


async def test_two_connections_share_slots_and_dedup_keys(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with await SQLiteStorage.open(path) as first, await SQLiteStorage.open(path) as second:
        slots: list[bool] = []
        created: list[bool] = []

        async def claim_slot(store: SQLiteStorage) -> None:
            slots.append(await store.claim_slot("nightly", T0))

        async def enqueue(store: SQLiteStorage) -> None:
            created.append((await store.enqueue(make_job(dedup_key="once")))[1])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(20):
                    store = (first, second)[index % 2]
                    nursery.start_soon(claim_slot, store)
                    nursery.start_soon(enqueue, store)
        assert sorted(slots) == [False] * 19 + [True]
        assert sorted(created) == [False] * 19 + [True]
        assert len(await first.list_jobs()) == 1


async def test_a_job_claimed_through_one_connection_is_held_through_any(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with await SQLiteStorage.open(path) as first, await SQLiteStorage.open(path) as second:
        job, _ = await first.enqueue(make_job())
        (claimed,) = await second.claim("default", worker="w1", now=T0, lease=LEASE)
        assert await first.heartbeat([job.id], worker="w1", lease_until=T0 + LEASE) == {job.id}
        assert await first.cancel(job.id, now=T0) is not None
        assert await second.complete(job.id, worker="w1", now=T0) is False
        assert claimed.id == job.id


# -- the contract catches broken stores ---------------------------------------------


class IgnoresTheWorker(MemoryJobStore):
    """Broken: lets any worker complete a running job."""

    async def complete(self, job_id: str, *, worker: str, now: datetime | None = None) -> bool:
        job = await self.get_job(job_id)
        if job is None or job.worker is None:
            return False
        return await super().complete(job_id, worker=job.worker, now=now)


class FirstInFirstOut(MemoryJobStore):
    """Broken: claims in enqueue order, ignoring priority."""

    async def claim(self, queue: str, **options: Any) -> list[JobRecord]:
        jobs = await self.list_jobs(state=JobState.queued, queue=queue, limit=10_000)
        first = sorted(jobs, key=lambda job: job.enqueued_at)[: options.get("limit", 1)]
        for job in first:
            await self.cancel(job.id)
        return first


class RefundsReapedAttempts(MemoryJobStore):
    """Broken: a reaped job gets its attempt back."""

    async def reap_expired(self, now: datetime) -> list[str]:
        reaped = await super().reap_expired(now)
        for job_id in reaped:
            job = self._jobs[job_id]
            self._jobs[job_id] = JobRecord.from_json({**job.to_json(), "attempts": 0})
        return reaped


ContractCall = Callable[[JobStoreContract, JobStore], Awaitable[None]]


@pytest.mark.parametrize(
    ("broken", "call"),
    [
        (IgnoresTheWorker, lambda c, s: c.test_a_worker_that_lost_its_job_cannot_report_on_it(s)),
        (FirstInFirstOut, lambda c, s: c.test_claim_takes_the_highest_priority_first(s)),
        (
            RefundsReapedAttempts,
            lambda c, s: c.test_an_expired_lease_is_reaped_and_its_attempt_spent(s),
        ),
    ],
    ids=["ignores-the-worker", "fifo", "refunds-reaped-attempts"],
)
async def test_the_contract_catches(broken: type[MemoryJobStore], call: ContractCall) -> None:
    with pytest.raises(AssertionError):
        await call(JobStoreContract(), broken())

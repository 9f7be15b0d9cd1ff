"""The SQLite storage against the storage contract, plus what only a file
database has: URLs, reopening, WAL, schema versions, several connections and
surviving ``kill -9``."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from kernel.errors import InvalidAdapterURL, SchemaVersionError, StorageClosed, StorageError
from kernel.jobs.record import JobRecord, JobState
from kernel.ports import JobStore, Storage
from kernel.runtime.discovery import STORAGE_GROUP, AdapterRegistry
from kernel.storage.sqlite import (
    MEMORY,
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLiteOptions,
    SQLiteStorage,
    open_sqlite_storage,
    parse_sqlite_url,
)
from kernel.testing.storage_contract import StorageContract

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def make_job(**fields: Any) -> JobRecord:
    return JobRecord(**{"task": "t", "run_at": T0, "enqueued_at": T0, **fields})


class TestSQLiteStorage(StorageContract):
    @pytest.fixture
    async def storage(self, tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
        async with await open_sqlite_storage(f"sqlite:///{tmp_path}/state.db") as storage:
            yield storage


def _pragma(path: Path, name: str) -> object:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]


def _versions(path: Path) -> list[int]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT version FROM kernel_schema_version ORDER BY version")
        return [version for (version,) in rows]
    finally:
        connection.close()


# -- URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///state.db", SQLiteOptions("state.db")),
        ("sqlite:///data/state.db", SQLiteOptions("data/state.db")),
        ("sqlite:////var/lib/app/state.db", SQLiteOptions("/var/lib/app/state.db")),
        ("sqlite:///my%20state.db", SQLiteOptions("my state.db")),
        ("SQLITE:///state.db", SQLiteOptions("state.db")),
        ("sqlite://:memory:", SQLiteOptions(MEMORY)),
        ("sqlite:///:memory:", SQLiteOptions(MEMORY)),
        ("sqlite:///state.db?synchronous=full", SQLiteOptions("state.db", "full")),
        ("sqlite:///state.db?synchronous=EXTRA", SQLiteOptions("state.db", "extra")),
        (
            "sqlite:///s.db?busy_timeout=0.5&synchronous=normal",
            SQLiteOptions("s.db", "normal", 0.5),
        ),
    ],
)
def test_url_forms(url: str, expected: SQLiteOptions) -> None:
    assert parse_sqlite_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "names no database file"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///data/", "names no database file"),
        ("sqlite://host/state.db", "SQLite takes no host"),
        ("sqlite:///state.db?synchronous=off", "expected normal, full or extra"),
        ("sqlite:///state.db?busy_timeout=-1", "busy_timeout='-1'"),
        ("sqlite:///state.db?busy_timeout=soon", "busy_timeout='soon'"),
        ("sqlite:///state.db?busy_timeout=nan", "busy_timeout='nan'"),
        ("sqlite:///state.db?cache=shared", "unknown option 'cache'"),
        ("sqlite:///state.db#main", "#fragment"),
        ("sqlite:///a%00b.db", "NUL"),
    ],
)
async def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidAdapterURL, match=message):
        await open_sqlite_storage(url)


async def test_a_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with await open_sqlite_storage("sqlite:///sub.db") as storage:
        await storage.put("ns", "k", 1)
        assert storage.location == str(tmp_path / "sub.db")
    assert (tmp_path / "sub.db").exists()


async def test_each_memory_database_is_private(tmp_path: Path) -> None:
    async with (
        await open_sqlite_storage("sqlite://:memory:") as first,
        await open_sqlite_storage("sqlite://:memory:") as second,
    ):
        await first.put("ns", "k", 1)
        assert await second.keys("ns") == []
        assert await first.get("ns", "k") == 1
        assert first.location == MEMORY
        job, _ = await first.enqueue(make_job())
        assert await first.get_job(job.id) == job


# -- durability ---------------------------------------------------------------


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    storage = await SQLiteStorage.open(path)
    await storage.put("ns", "k", {"kept": [1, 2.5, "three"]})
    job, _ = await storage.enqueue(make_job(dedup_key="d", args=[1]))
    await storage.claim_slot("nightly", T0)
    await storage.put_schedule_state("nightly", {"last": "x"})
    await storage.aclose()
    with pytest.raises(StorageClosed):
        await storage.get("ns", "k")

    async with await SQLiteStorage.open(path) as reopened:
        assert await reopened.get("ns", "k") == {"kept": [1, 2.5, "three"]}
        assert await reopened.get_job(job.id) == job
        assert await reopened.claim_slot("nightly", T0) is False
        assert await reopened.get_schedule_state("nightly") == {"last": "x"}
        again, created = await reopened.enqueue(make_job(dedup_key="d"))
        assert (again.id, created) == (job.id, False)
    assert _versions(path) == [migration.version for migration in MIGRATIONS]


async def test_a_commit_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    child = textwrap.dedent(
        f"""
        import os, signal
        from datetime import datetime, timedelta, timezone

        import trio

        from kernel.jobs.record import JobRecord
        from kernel.storage.sqlite import SQLiteStorage

        async def main():
            storage = await SQLiteStorage.open({str(path)!r})
            await storage.put("ns", "k", "committed")
            now = datetime.now(timezone.utc)
            job = JobRecord(id="f" * 32, task="t", run_at=now, enqueued_at=now)
            await storage.enqueue(job)
            await storage.claim(
                "default", worker="doomed", now=job.run_at, lease=timedelta(seconds=30)
            )
            print("committed", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        trio.run(main)
        """
    )
    result = await trio.run_process(
        [sys.executable, "-c", child],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert result.stdout == b"committed\n"
    assert (tmp_path / "state.db-wal").exists()  # the WAL was never checkpointed
    async with await SQLiteStorage.open(path) as storage:
        assert await storage.get("ns", "k") == "committed"
        job = await storage.get_job("f" * 32)
        assert job is not None
        assert (job.state, job.worker, job.attempts) == (JobState.running, "doomed", 1)
        # The dead worker's job comes back once its lease runs out.
        assert job.lease_expires_at is not None
        assert await storage.reap_expired(job.lease_expires_at) == [job.id]


async def test_the_journal_is_a_write_ahead_log(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with await SQLiteStorage.open(path) as storage:
        await storage.put("ns", "k", 1)
        assert _pragma(path, "journal_mode") == "wal"
        assert await storage._call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
        assert await storage._call(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0]) == 5000
    async with await open_sqlite_storage(
        f"sqlite:///{path}?synchronous=full&busy_timeout=0.25"
    ) as storage:
        assert await storage._call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
        assert await storage._call(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0]) == 250


# -- schema versions ----------------------------------------------------------


async def test_a_newer_schema_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with await SQLiteStorage.open(path) as storage:
        await storage.put("ns", "k", "kept")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO kernel_schema_version VALUES (?, 'from the future', 'later')",
            (SCHEMA_VERSION + 5,),
        )
    connection.close()
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError) as refused:
        await SQLiteStorage.open(path)
    error = refused.value
    assert isinstance(error, StorageError)
    assert (error.location, error.found, error.supported) == (
        str(path),
        SCHEMA_VERSION + 5,
        SCHEMA_VERSION,
    )
    assert str(error) == (
        f"database {path} has schema version {SCHEMA_VERSION + 5}, but this trio-kernel "
        f"supports versions up to {SCHEMA_VERSION}: it was written by a newer release; "
        "upgrade trio-kernel (or open a copy made before the upgrade)"
    )
    assert path.read_bytes() == before
    with pytest.raises(SchemaVersionError):
        await open_sqlite_storage(f"sqlite:///{path}")


async def test_an_older_schema_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(
        "CREATE TABLE kernel_schema_version "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    for statement in MIGRATIONS[0].statements:
        connection.execute(statement)
    connection.execute("INSERT INTO kernel_schema_version VALUES (1, 'key-value state', 'then')")
    connection.execute("INSERT INTO kernel_kv VALUES ('ns', 'k', '{\"old\":true}')")
    connection.close()
    async with await SQLiteStorage.open(path) as storage:
        assert await storage.get("ns", "k") == {"old": True}
        _job, created = await storage.enqueue(make_job())
        assert created
    assert _versions(path) == [migration.version for migration in MIGRATIONS]


async def test_jobs_stored_before_headers_existed_read_back_with_none(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(
        "CREATE TABLE kernel_schema_version "
        "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    for migration in MIGRATIONS[:2]:
        for statement in migration.statements:
            connection.execute(statement)
        connection.execute(
            "INSERT INTO kernel_schema_version VALUES (?, ?, 'then')",
            (migration.version, migration.description),
        )
    connection.execute(
        "INSERT INTO kernel_jobs (id, task, args, kwargs, queue, priority, run_at, "
        "enqueued_at, attempts, state) VALUES ('old', 't', '[1]', '{}', 'default', 0, 0, 0, "
        "0, 'queued')"
    )
    connection.close()
    async with await SQLiteStorage.open(path) as storage:
        job = await storage.get_job("old")
    assert job is not None
    assert (job.args, job.headers) == ([1], {})
    assert _versions(path) == [migration.version for migration in MIGRATIONS]


async def test_opening_a_new_file_twice_at_once_migrates_it_once(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    opened: list[SQLiteStorage] = []

    async def open_one() -> None:
        opened.append(await SQLiteStorage.open(path))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(open_one)
    for storage in opened:
        await storage.aclose()
    assert _versions(path) == [migration.version for migration in MIGRATIONS]


async def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just some text that is long enough " * 20)
    with pytest.raises(
        StorageError, match=r"cannot open SQLite database .*notes\.txt.*not a database"
    ):
        await SQLiteStorage.open(path)


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"cannot open SQLite database .*missing.*state\.db"):
        await SQLiteStorage.open(tmp_path / "missing" / "state.db")


# -- concurrency and cancellation ----------------------------------------------


async def test_concurrent_puts_through_two_connections_all_land(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with await SQLiteStorage.open(path) as first, await SQLiteStorage.open(path) as second:

        async def put(storage: SQLiteStorage, index: int) -> None:
            await storage.put("ns", f"key-{index:03d}", {"index": index})

        async with trio.open_nursery() as nursery:
            for index in range(120):
                nursery.start_soon(put, (first, second)[index % 2], index)
        assert await first.keys("ns") == [f"key-{index:03d}" for index in range(120)]
        assert await second.get("ns", "key-077") == {"index": 77}


async def test_a_call_cancelled_before_it_starts_stores_nothing(tmp_path: Path) -> None:
    async with await SQLiteStorage.open(tmp_path / "state.db") as storage:
        with trio.CancelScope() as scope:
            scope.cancel()
            await storage.put("ns", "k", 1)
        assert scope.cancelled_caught
        with trio.CancelScope() as scope:
            scope.cancel()
            await storage.enqueue(make_job())
        assert await storage.keys("ns") == []
        assert await storage.list_jobs() == []


async def test_aclose_completes_under_cancellation(tmp_path: Path) -> None:
    storage = await SQLiteStorage.open(tmp_path / "state.db")
    with trio.CancelScope() as scope:
        scope.cancel()
        await storage.aclose()
    with pytest.raises(StorageClosed):
        await storage.put("ns", "k", 1)
    assert "closed" in repr(storage)


async def test_a_backend_failure_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with await SQLiteStorage.open(path) as storage:
        await storage._call(lambda c: c.execute("DROP TABLE kernel_kv"))
        with pytest.raises(StorageError, match="no such table: kernel_kv") as failed:
            await storage.put("ns", "k", 1)
        assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
        # The connection is still usable: the failed transaction was rolled back.
        _job, created = await storage.enqueue(make_job())
        assert created


async def test_discovery_can_open_it_as_a_built_in(tmp_path: Path) -> None:
    # What kernel.runtime.discovery.STORAGE_ADAPTERS does once "sqlite" is a built-in scheme.
    adapters = AdapterRegistry(
        "storage",
        STORAGE_GROUP,
        Storage,
        {"sqlite": "kernel.storage.sqlite:open_sqlite_storage"},
        find_entry_points=lambda group: [],
    )
    storage = await adapters.open(f"sqlite:///{tmp_path}/state.db?synchronous=full")
    assert isinstance(storage, SQLiteStorage)
    assert isinstance(storage, JobStore)
    await storage.aclose()


async def test_concurrent_completions_commit_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kernel.storage.sqlite.storage as module

    batches: list[int] = []
    complete_many = module.complete_many

    def counting(connection: sqlite3.Connection, completions: Any) -> list[bool]:
        batches.append(len(completions))
        return complete_many(connection, completions)

    monkeypatch.setattr(module, "complete_many", counting)
    async with await SQLiteStorage.open(tmp_path / "jobs.db") as store:
        for n in range(40):
            await store.enqueue(make_job(id=f"job-{n:02}"))
        claimed = await store.claim("default", worker="w1", now=T0, lease=LEASE, limit=40)
        assert len(claimed) == 40
        results: dict[str, bool] = {}

        async def complete(job_id: str, worker: str) -> None:
            results[f"{job_id}/{worker}"] = await store.complete(job_id, worker=worker, now=T0)

        async with trio.open_nursery() as nursery:
            for job in claimed:
                nursery.start_soon(complete, job.id, "w1")
            nursery.start_soon(complete, "job-00", "w2")  # not its job
            nursery.start_soon(complete, "no-such-job", "w1")
        done = await store.list_jobs(state=JobState.succeeded, limit=100)
    assert len(done) == 40
    assert results.pop("job-00/w2") is False
    assert results.pop("no-such-job/w1") is False
    assert set(results.values()) == {True}
    assert sum(batches) == 42
    assert len(batches) < 42  # grouped into fewer transactions than calls


async def test_a_failed_batch_of_completions_fails_each_caller(tmp_path: Path) -> None:
    async with await SQLiteStorage.open(tmp_path / "jobs.db") as store:
        await store.enqueue(make_job(id="a"))
        await store.enqueue(make_job(id="b"))
        await store.claim("default", worker="w1", now=T0, lease=LEASE, limit=2)
        connection = sqlite3.connect(tmp_path / "jobs.db")
        connection.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        store._connection.execute("PRAGMA busy_timeout = 50")  # type: ignore[union-attr]
        errors: list[BaseException] = []

        async def complete(job_id: str) -> None:
            try:
                await store.complete(job_id, worker="w1", now=T0)
            except StorageError as error:
                errors.append(error)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(complete, "a")
            nursery.start_soon(complete, "b")
        connection.rollback()
        connection.close()
        assert len(errors) == 2
        assert all("locked" in str(error) for error in errors)
        assert await store.complete("a", worker="w1", now=T0) is True


def test_claims_are_served_from_indexes_not_by_sorting_the_backlog(tmp_path: Path) -> None:
    """Every statement of a claim, with and without aging, walks an index in
    the order it needs and sorts nothing: the cost of a claim does not grow
    with the number of queued jobs (bench/README.md has the timings)."""
    from kernel.storage.sqlite import _sql

    trio.run(_migrated, tmp_path / "plan.db")
    connection = sqlite3.connect(tmp_path / "plan.db")
    statements = {
        "claim": (_sql._CLAIM_BY_PRIORITY, ("w", 1, "q", 0, 10), "kernel_jobs_order"),
        "top level": (_sql._TOP_LEVEL, ("q",), "kernel_jobs_order"),
        "next level": (_sql._NEXT_LEVEL, ("q", 5), "kernel_jobs_order"),
        "level heads": (_sql._LEVEL_HEADS, ("q", 5, 0, 10), "kernel_jobs_order"),
        "early": (_sql._EARLY, ("q", 0), "kernel_jobs_early"),
    }
    for name, (sql, params, index) in statements.items():
        plan = " | ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert f"INDEX {index} " in plan, (name, plan)
        assert "SCAN kernel_jobs" not in plan, (name, plan)
        assert "TEMP B-TREE" not in plan, (name, plan)
    connection.close()


async def _migrated(path: Path) -> None:
    async with await SQLiteStorage.open(path) as storage:
        for n in range(50):
            await storage.enqueue(make_job(priority=n % 5))

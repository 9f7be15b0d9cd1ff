"""The ``sqlite://`` storage: the durable embedded default, on stdlib sqlite3.

One SQLite file holds everything a kernel keeps: the key-value state of the
`kernel.ports.Storage` port and the jobs, schedule slots and schedule state
of the `kernel.ports.JobStore` port, so a single process needs no server and
several processes on one machine can share the file.

URLs (the SQLAlchemy spelling)::

    sqlite:///state.db                  relative to the working directory
    sqlite:////var/lib/app/state.db     absolute (four slashes)
    sqlite://:memory:                   a private in-memory database per open
    sqlite:///state.db?synchronous=full&busy_timeout=10

**Durability.** The journal is a write-ahead log (WAL: readers never block
the writer, and a commit is one append) with ``synchronous=NORMAL`` by
default: a committed transaction survives the process being killed
(``kill -9``, an OOM kill) because it is in the OS page cache, but the last
transactions before a power loss or kernel panic may be lost (the database
stays consistent; the WAL is only fsynced at checkpoints). ``?synchronous=full``
fsyncs the WAL at every commit, so commits survive power loss too, at the
cost of one fsync per write (see ``docs/storage.md`` for measured rates).

**Threads.** sqlite3 blocks, so every call runs in a worker thread
(`trio.to_thread.run_sync`). The storage owns one connection
(``check_same_thread=False``) and serialises its use with a
`trio.CapacityLimiter` of one: a pool of connections measured no faster on
two cores (writes serialise on SQLite's lock anyway, and several writer
connections in one process wait on each other's busy handlers), and one
connection makes every call trivially atomic within the process. Other
processes are kept apart by SQLite's lock: every write is a single statement
or one ``BEGIN IMMEDIATE`` transaction, and either takes the write lock
before reading anything (waiting up to ``busy_timeout`` seconds), so a claim
never hands out a job another process is claiming.

**Schema versions**: `kernel.storage.sqlite.schema`.

Times are stored as integer microseconds since the Unix epoch, UTC
(`kernel.storage.base.to_epoch_micros`); JSON as text, checked with
`kernel.ports.copy_json` before anything is written.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import trio

from kernel.errors import (
    StorageClosed,
    StorageError,
    StorageLost,
)
from kernel.jobs.record import JobRecord, JobState
from kernel.ports import JSON, JobStore, JSONLike, Storage, copy_json
from kernel.storage.base import (
    MAX_CLAIM_LIMIT,
    check_enqueue,
    claim_order,
    clean_error_text,
    finished_state,
    from_epoch_micros,
    job_list_filter,
    now_or_wall_clock,
    schedule_state_object,
    to_epoch_micros,
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
from kernel.storage.sqlite._group import GroupCommit
from kernel.storage.sqlite._sql import (
    HELD,
    JOB_COLUMNS,
    JOB_COLUMNS_NO_PAYLOAD,
    Claim,
    batches,
    claim_in_transaction,
    complete_and_claim_jobs,
    complete_many,
    count_changes,
    encode,
    enqueue_many,
    fetch_all,
    job_from_row,
    job_row,
    marks,
    next_due_of,
    prefix_end,
    reap_expired_jobs,
    renew_leases,
    requeue_dead,
    select_job,
)
from kernel.storage.sqlite._url import MEMORY, Synchronous, parse_sqlite_url
from kernel.storage.sqlite.schema import MIGRATIONS, connect, version_of

__all__ = ["SQLiteStorage", "open_sqlite_storage", "upgrade_sqlite_storage"]

T = TypeVar("T")


async def open_sqlite_storage(url: str) -> SQLiteStorage:
    """The factory for ``sqlite://`` URLs (see `parse_sqlite_url`): opens the
    database and brings its schema up to date, so a bad path or a newer
    schema fails at start-up, not at the first write."""
    options = parse_sqlite_url(url)
    return await SQLiteStorage.open(
        options.path, synchronous=options.synchronous, busy_timeout=options.busy_timeout
    )


async def upgrade_sqlite_storage(url: str) -> list[int]:
    """``kernel db upgrade`` for ``sqlite://``: opening a SQLite store
    already migrates it (one process owns the file); this says which
    schema versions that applied."""
    options = parse_sqlite_url(url)
    before = await trio.to_thread.run_sync(version_of, options.path)
    storage = await open_sqlite_storage(url)
    await storage.aclose()
    return [migration.version for migration in MIGRATIONS if migration.version > before]


# ---------------------------------------------------------------------------
# The storage
# ---------------------------------------------------------------------------


@attrs.define(eq=False)
class SQLiteStorage:
    """`kernel.ports.Storage` and `kernel.jobs.record.JobStore` on one SQLite file.

    Open with ``await SQLiteStorage.open(path)`` (or `open_sqlite_storage`
    for a URL); usable as ``async with``. See the module docstring for
    durability, threads and schema versions.
    """

    location: str
    """The absolute path of the file, or ``":memory:"``: what messages name."""
    _connection: sqlite3.Connection | None = attrs.field(alias="connection")
    busy_timeout: float = 5.0
    """Seconds a statement waits for another process's write lock."""
    _identity: tuple[int, int] | None = attrs.field(default=None, alias="identity")
    """(device, inode) of the file when opened; None in memory."""
    _lost: str | None = attrs.field(default=None, init=False)
    _lease_connections: threading.local = attrs.field(factory=threading.local, init=False)
    _limiter: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(1), init=False
    )
    _closed: bool = attrs.field(default=False, init=False)
    _completions: GroupCommit[tuple[str, str, int], bool] = attrs.field(init=False)
    _enqueues: GroupCommit[tuple[JobRecord, tuple[object, ...]], tuple[JobRecord, bool]] = (
        attrs.field(init=False)
    )

    def __attrs_post_init__(self) -> None:
        self._completions = GroupCommit(self._complete_batch)
        self._enqueues = GroupCommit(self._enqueue_batch)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "normal",
        busy_timeout: float = 5.0,
    ) -> SQLiteStorage:
        """Open (creating if needed) the database at ``path`` (`MEMORY` for
        an in-memory one), in WAL mode, and migrate it to `SCHEMA_VERSION`.

        Raises `SchemaVersionError` for a database of a newer release and
        `StorageError` when the file cannot be opened or is not SQLite.
        """
        path = os.fspath(path)
        if synchronous not in ("normal", "full", "extra"):
            raise ValueError(
                f"synchronous must be 'normal', 'full' or 'extra', not {synchronous!r}"
            )
        if not math.isfinite(busy_timeout) or busy_timeout < 0:
            raise ValueError(f"busy_timeout must be seconds >= 0, not {busy_timeout!r}")
        connection, location = await trio.to_thread.run_sync(
            connect, path, synchronous, busy_timeout
        )
        identity = None
        if location != MEMORY:
            found = os.stat(location)
            identity = (found.st_dev, found.st_ino)
        return cls(location, connection=connection, busy_timeout=busy_timeout, identity=identity)

    async def __aenter__(self) -> SQLiteStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SQLiteStorage {self.location} ({state})>"

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` with the connection in the worker thread, one call at
        a time. Cancellation takes effect before ``work`` starts, never in the
        middle (trio waits for the thread), so a transaction is whole or absent."""
        if self._closed:
            raise StorageClosed(f"the SQLite storage {self.location} is closed")
        return await trio.to_thread.run_sync(self._run, work, limiter=self._limiter)

    def _check_identity(self) -> None:
        """Raise `StorageLost` once the file at our path is not the one we
        opened (deleted, or replaced by a restore): the connection would go
        on writing to a file nobody will ever open again. A stat per call,
        on the worker thread."""
        if self._lost is None and self._identity is not None:
            try:
                found = os.stat(self.location)
            except FileNotFoundError:
                self._lost = "was deleted"
            except OSError:
                return  # cannot tell (permissions...): not a proof
            else:
                if (found.st_dev, found.st_ino) != self._identity:
                    self._lost = "was replaced by another file"
        if self._lost is not None:
            raise StorageLost(
                f"SQLite database {self.location} {self._lost} while this kernel was using it;"
                " nothing written from now on would be kept: restart the kernel"
            )

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        if connection is None:
            raise StorageClosed(f"the SQLite storage {self.location} is closed")
        self._check_identity()
        try:
            return work(connection)
        except sqlite3.Error as error:
            raise StorageError(
                f"SQLite database {self.location}: {type(error).__name__}: {error}"
            ) from error

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        with contextlib.suppress(sqlite3.Error):
            connection.execute("PRAGMA optimize")
        try:
            connection.close()
        except sqlite3.Error as error:
            raise StorageError(f"closing SQLite database {self.location}: {error}") from error

    async def aclose(self) -> None:
        """Wait for the call in progress, then close the connection; later
        calls raise `StorageClosed`. Idempotent, and completes even when the
        caller is being cancelled."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_connection, limiter=self._limiter)

    # -- key-value state (kernel.ports.Storage) --------------------------------

    async def get(self, namespace: str, key: str, default: JSON = None) -> JSON:
        validate_namespace(namespace)
        validate_key(key)
        rows = await self._call(
            fetch_all(
                "SELECT value FROM kernel_kv WHERE namespace = ? AND key = ?", (namespace, key)
            )
        )
        return _decode(rows[0][0]) if rows else default

    async def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, JSON]:
        validate_namespace(namespace)
        wanted = sorted(set(validate_keys(keys)))

        def work(connection: sqlite3.Connection) -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            for batch in batches(wanted):
                found += connection.execute(
                    "SELECT key, value FROM kernel_kv "
                    f"WHERE namespace = ? AND key IN ({marks(len(batch))})",
                    (namespace, *batch),
                ).fetchall()
            return found

        return {key: _decode(text) for key, text in await self._call(work)}

    async def put(self, namespace: str, key: str, value: JSONLike) -> None:
        validate_namespace(namespace)
        validate_key(key)
        text = encode(copy_json(value))
        await self._call(
            count_changes(
                "INSERT INTO kernel_kv (namespace, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                (namespace, key, text),
            )
        )

    async def delete(self, namespace: str, key: str) -> bool:
        validate_namespace(namespace)
        validate_key(key)
        deleted = await self._call(
            count_changes("DELETE FROM kernel_kv WHERE namespace = ? AND key = ?", (namespace, key))
        )
        return deleted == 1

    async def keys(self, namespace: str, prefix: str = "") -> list[str]:
        return [key for key, _ in await self._select_prefix(namespace, prefix, "key, NULL")]

    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, JSON]]:
        rows = await self._select_prefix(namespace, prefix, "key, value")
        return [(key, _decode(text)) for key, text in rows]

    async def _select_prefix(self, namespace: str, prefix: str, columns: str) -> list[Any]:
        validate_namespace(namespace)
        validate_prefix(prefix)
        end = prefix_end(prefix)
        sql = f"SELECT {columns} FROM kernel_kv WHERE namespace = ? AND key >= ?"
        params: tuple[str, ...] = (namespace, prefix)
        if end is not None:
            sql += " AND key < ?"
            params += (end,)
        return await self._call(fetch_all(sql + " ORDER BY key", params))

    async def clear(self, namespace: str) -> int:
        validate_namespace(namespace)
        return await self._call(
            count_changes("DELETE FROM kernel_kv WHERE namespace = ?", (namespace,))
        )

    # -- jobs (kernel.jobs.record.JobStore) -----------------------------------------

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        row = job_row(check_enqueue(job))
        return await self._enqueues.submit((job, row))

    async def _enqueue_batch(
        self, items: list[tuple[JobRecord, tuple[object, ...]]]
    ) -> list[tuple[JobRecord, bool] | BaseException]:
        """Enqueues that arrived together: one transaction (each its own
        checks, its own answer)."""
        return await self._call(functools.partial(enqueue_many, items=items))

    def _claim_of(
        self,
        queue: str,
        worker: str,
        now: datetime,
        lease: timedelta,
        limit: int,
        aging: timedelta | None,
        *,
        minimum: int = 1,
    ) -> Claim:
        validate_name("queue", queue)
        validate_name("worker", worker)
        now_us = to_epoch_micros(utc_datetime(now, field="now"))
        lease_us = validate_lease(lease) // timedelta(microseconds=1)
        validate_limit(limit, minimum=minimum, maximum=MAX_CLAIM_LIMIT)
        aging = validate_aging(aging)
        aging_us = None if aging is None else max(aging // timedelta(microseconds=1), 1)
        return Claim(queue, worker, now_us, now_us + lease_us, limit, aging_us)

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
        claim = self._claim_of(queue, worker, now, lease, limit, aging)
        rows = await self._call(functools.partial(claim_in_transaction, claim=claim))
        return _in_claim_order(rows, now, aging)

    async def complete_and_claim(
        self,
        queue: str,
        *,
        worker: str,
        now: datetime,
        completed: Sequence[str] = (),
        lease: timedelta,
        limit: int = 0,
        aging: timedelta | None = None,
    ) -> tuple[set[str], list[JobRecord]]:
        claim = self._claim_of(queue, worker, now, lease, limit, aging, minimum=0)
        ids = validate_job_ids(completed)
        done, rows = await self._call(
            functools.partial(
                complete_and_claim_jobs, completed=ids, finished_us=claim.now_us, claim=claim
            )
        )
        return done, _in_claim_order(rows, now, aging)

    async def heartbeat(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        ids = sorted(set(validate_job_ids(job_ids)))
        validate_name("worker", worker)
        until_us = to_epoch_micros(utc_datetime(lease_until, field="lease_until"))
        return await self._call(
            functools.partial(renew_leases, ids=ids, worker=worker, until_us=until_us)
        )

    def renew_leases_blocking(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        """`heartbeat` from any thread, on a connection of that thread's own
        (`kernel.jobs.leases.LeaseRenewer`): what keeps leases while the event
        loop is blocked. An in-memory database has no other process that
        could reap, so it answers that every job is still held."""
        ids = sorted(set(validate_job_ids(job_ids)))
        validate_name("worker", worker)
        until_us = to_epoch_micros(utc_datetime(lease_until, field="lease_until"))
        if self._closed:
            raise StorageClosed(f"the SQLite storage {self.location} is closed")
        if self.location == MEMORY:
            return set(ids)
        self._check_identity()
        connection: sqlite3.Connection | None = getattr(self._lease_connections, "connection", None)
        try:
            if connection is None:
                connection = sqlite3.connect(
                    self.location, timeout=self.busy_timeout, isolation_level=None
                )
                self._lease_connections.connection = connection
            return renew_leases(connection, ids, worker, until_us)
        except sqlite3.Error as error:
            raise StorageError(
                f"SQLite database {self.location}: {type(error).__name__}: {error}"
            ) from error

    async def complete(self, job_id: str, *, worker: str, now: datetime | None = None) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        finished_us = to_epoch_micros(now_or_wall_clock(now))
        return await self._completions.submit((job_id, worker, finished_us))

    async def _complete_batch(
        self, completions: list[tuple[str, str, int]]
    ) -> list[bool | BaseException]:
        """Completions that arrived together: one transaction."""
        done = await self._call(functools.partial(complete_many, completions=completions))
        return list(done)

    async def retry_later(self, job_id: str, *, worker: str, error: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        error = clean_error_text(error)
        run_at_us = to_epoch_micros(utc_datetime(run_at, field="run_at"))
        changed = await self._call(
            count_changes(
                "UPDATE kernel_jobs SET state = 'queued', run_at = ?, worker = NULL, "
                f"lease_expires_at = NULL, last_error = ? {HELD}",
                (run_at_us, error, job_id, worker),
            )
        )
        return changed == 1

    async def release(self, job_id: str, *, worker: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        run_at_us = to_epoch_micros(utc_datetime(run_at, field="run_at"))
        changed = await self._call(
            count_changes(
                "UPDATE kernel_jobs SET state = 'queued', run_at = ?, worker = NULL, "
                f"lease_expires_at = NULL, attempts = max(attempts - 1, 0) {HELD}",
                (run_at_us, job_id, worker),
            )
        )
        return changed == 1

    async def bury(
        self, job_id: str, *, worker: str, error: str, now: datetime | None = None
    ) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        error = clean_error_text(error)
        finished_us = to_epoch_micros(now_or_wall_clock(now))
        changed = await self._call(
            count_changes(
                "UPDATE kernel_jobs SET state = 'dead', lease_expires_at = NULL, "
                f"last_error = ?, finished_at = ? {HELD}",
                (error, finished_us, job_id, worker),
            )
        )
        return changed == 1

    async def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        finished_us = to_epoch_micros(now_or_wall_clock(now))
        rows = await self._call(
            fetch_all(
                "UPDATE kernel_jobs SET state = 'cancelled', lease_expires_at = NULL, "
                "finished_at = ? WHERE id = ? AND state IN ('queued', 'running') "
                f"RETURNING {JOB_COLUMNS}",
                (finished_us, job_id),
            )
        )
        return job_from_row(rows[0]) if rows else None

    async def reap_expired(self, now: datetime) -> list[str]:
        now_us = to_epoch_micros(utc_datetime(now, field="now"))
        return await self._call(lambda connection: reap_expired_jobs(connection, now_us))

    async def get_job(self, job_id: str) -> JobRecord | None:
        validate_job_id(job_id)
        return await self._call(lambda connection: select_job(connection, job_id))

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: str | None = None,
        payloads: bool = True,
    ) -> list[JobRecord]:
        where, params = job_list_filter(
            state=state, queue=queue, after_id=after_id, limit=limit, placeholder="?"
        )
        columns = JOB_COLUMNS if payloads else JOB_COLUMNS_NO_PAYLOAD
        rows = await self._call(
            fetch_all(f"SELECT {columns} FROM kernel_jobs{where} ORDER BY id LIMIT ?", params)
        )
        return [job_from_row(row) for row in rows]

    async def retry_dead(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        run_at_us = to_epoch_micros(now_or_wall_clock(now))
        return await self._call(lambda connection: requeue_dead(connection, job_id, run_at_us))

    async def purge_dead(self, *, older_than: datetime | None = None) -> int:
        return await self.purge(state=JobState.dead, older_than=older_than)

    async def purge(self, *, state: JobState, older_than: datetime | None = None) -> int:
        sql = "DELETE FROM kernel_jobs WHERE state = ?"
        params: tuple[object, ...] = (finished_state(state).value,)
        if older_than is not None:
            sql += " AND finished_at < ?"
            params += (to_epoch_micros(utc_datetime(older_than, field="older_than")),)
        return await self._call(count_changes(sql, params))

    async def next_due(self, queue: str | None = None) -> datetime | None:
        name = None if queue is None else validate_name("queue", queue)
        earliest = await self._call(functools.partial(next_due_of, queue=name))
        return None if earliest is None else from_epoch_micros(earliest)

    # -- schedules (kernel.jobs.record.JobStore) ------------------------------------

    async def claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        validate_name("schedule", schedule)
        fire_us = to_epoch_micros(utc_datetime(fire_time, field="fire_time"))
        inserted = await self._call(
            count_changes(
                "INSERT INTO kernel_schedule_slots (schedule, fire_time) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (schedule, fire_us),
            )
        )
        return inserted == 1

    async def prune_slots(self, *, older_than: datetime) -> int:
        cutoff_us = to_epoch_micros(utc_datetime(older_than, field="older_than"))
        return await self._call(
            count_changes("DELETE FROM kernel_schedule_slots WHERE fire_time < ?", (cutoff_us,))
        )

    async def get_schedule_state(self, schedule: str) -> dict[str, JSON] | None:
        validate_name("schedule", schedule)
        rows = await self._call(
            fetch_all("SELECT state FROM kernel_schedule_state WHERE schedule = ?", (schedule,))
        )
        return cast("dict[str, JSON]", _decode(rows[0][0])) if rows else None

    async def put_schedule_state(self, schedule: str, state: Mapping[str, JSONLike]) -> None:
        validate_name("schedule", schedule)
        text = encode(schedule_state_object(state))
        await self._call(
            count_changes(
                "INSERT INTO kernel_schedule_state (schedule, state) VALUES (?, ?) "
                "ON CONFLICT (schedule) DO UPDATE SET state = excluded.state",
                (schedule, text),
            )
        )


def _in_claim_order(rows: list[Any], now: datetime, aging: timedelta | None) -> list[JobRecord]:
    """RETURNING has no order: the claimed jobs sorted as the claim chose them."""
    claimed = sorted(
        ((job_from_row(row[1:]), row[0]) for row in rows),
        key=lambda pair: (*claim_order(pair[0], now, aging), pair[1]),
    )
    return [job for job, _ in claimed]


def _decode(text: str) -> JSON:
    return cast("JSON", json.loads(text))


if TYPE_CHECKING:

    def _keeps_the_storage_port(storage: SQLiteStorage) -> Storage:
        return storage  # mypy proves SQLiteStorage satisfies the Storage protocol

    def _keeps_the_job_store_port(storage: SQLiteStorage) -> JobStore:
        return storage  # ... and the JobStore protocol

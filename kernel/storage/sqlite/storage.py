"""The ``sqlite://`` storage: the durable embedded default, on stdlib sqlite3.

One SQLite file holds everything a kernel keeps: the key-value state of the
`kernel.ports.Storage` port and the jobs, schedule slots and schedule state
of the `kernel.jobs.record.JobStore` port, so a single process needs no server and
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

**Schema versions.** ``kernel_schema_version`` records each migration
applied; opening applies the missing ones in one transaction (so two
processes opening a new file at once migrate it once) and refuses a file
whose version is newer than this release knows (`SchemaVersionError`),
before writing anything. Tables are prefixed ``kernel_`` so the file can be
an application's own database.

Times are stored as integer microseconds since the Unix epoch, UTC
(`kernel.jobs.record.to_epoch_micros`); JSON as text, checked with
`kernel.ports.copy_json` before anything is written.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

import attrs
import trio

from kernel.errors import (
    InvalidAdapterURL,
    JobConflict,
    SchemaVersionError,
    StorageClosed,
    StorageError,
)
from kernel.jobs.record import (
    MAX_CLAIM_LIMIT,
    MAX_LIST_LIMIT,
    JobRecord,
    JobState,
    JobStore,
    check_enqueue,
    claim_order,
    clean_error_text,
    dedup_conflict_reason,
    finished_state,
    from_epoch_micros,
    lease_expired_error,
    now_or_wall_clock,
    schedule_state_object,
    to_epoch_micros,
    utc_datetime,
    validate_aging,
    validate_job_id,
    validate_job_ids,
    validate_lease,
    validate_limit,
    validate_name,
    validate_state,
)
from kernel.ports import (
    JSON,
    JSONLike,
    Storage,
    copy_json,
    validate_key,
    validate_keys,
    validate_namespace,
    validate_prefix,
)
from kernel.runtime.discovery import redact_url, url_options

__all__ = [
    "MEMORY",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "SQLiteOptions",
    "SQLiteStorage",
    "Synchronous",
    "open_sqlite_storage",
    "parse_sqlite_url",
]

T = TypeVar("T")
Synchronous = Literal["normal", "full", "extra"]

MEMORY: Final = ":memory:"
"""The path of an in-memory database."""

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_BATCH = 500
"""Ids or keys bound per statement (SQLite allows 32,766 variables)."""

# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------


@attrs.frozen
class Migration:
    """One step of the schema: applied once, in order, never edited after a
    release (a change is a new migration)."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: Final = (
    Migration(
        1,
        "key-value state",
        (
            """CREATE TABLE kernel_kv (
                namespace TEXT NOT NULL,
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (namespace, key)
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        2,
        "jobs, schedule slots and schedule state",
        (
            # seq (the rowid) is insertion order: the last tie-break of a claim.
            """CREATE TABLE kernel_jobs (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                task TEXT NOT NULL,
                args TEXT NOT NULL,
                kwargs TEXT NOT NULL,
                queue TEXT NOT NULL,
                priority INTEGER NOT NULL,
                run_at INTEGER NOT NULL,
                enqueued_at INTEGER NOT NULL,
                dedup_key TEXT,
                timeout REAL,
                retry TEXT,
                attempts INTEGER NOT NULL,
                state TEXT NOT NULL
                    CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
                worker TEXT,
                lease_expires_at INTEGER,
                last_error TEXT,
                finished_at INTEGER,
                schedule TEXT,
                fire_time INTEGER
            )""",
            # A claim walks the due jobs of a queue in claim order: without aging
            # straight down kernel_jobs_order (stopping at LIMIT), with aging by
            # sorting the due range of kernel_jobs_claim.
            "CREATE INDEX kernel_jobs_claim ON kernel_jobs (queue, state, run_at)",
            """CREATE INDEX kernel_jobs_order
                ON kernel_jobs (queue, state, priority DESC, run_at, enqueued_at)""",
            """CREATE UNIQUE INDEX kernel_jobs_dedup ON kernel_jobs (dedup_key)
                WHERE state IN ('queued', 'running')""",
            "CREATE INDEX kernel_jobs_due ON kernel_jobs (run_at) WHERE state = 'queued'",
            """CREATE INDEX kernel_jobs_lease ON kernel_jobs (lease_expires_at)
                WHERE state = 'running'""",
            "CREATE INDEX kernel_jobs_finished ON kernel_jobs (state, finished_at)",
            "CREATE INDEX kernel_jobs_state ON kernel_jobs (state, id)",
            """CREATE TABLE kernel_schedule_slots (
                schedule TEXT NOT NULL,
                fire_time INTEGER NOT NULL,
                PRIMARY KEY (schedule, fire_time)
            ) WITHOUT ROWID""",
            """CREATE TABLE kernel_schedule_state (
                schedule TEXT PRIMARY KEY,
                state TEXT NOT NULL
            ) WITHOUT ROWID""",
        ),
    ),
)
"""Every migration, oldest first."""

SCHEMA_VERSION: Final = MIGRATIONS[-1].version
"""The schema version this release writes (and the newest it opens)."""

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS kernel_schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""

_JOB_COLUMNS = (
    "id, task, args, kwargs, queue, priority, run_at, enqueued_at, dedup_key, timeout, retry, "
    "attempts, state, worker, lease_expires_at, last_error, finished_at, schedule, fire_time"
)

# ---------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------


@attrs.frozen
class SQLiteOptions:
    """What a ``sqlite://`` URL asks for."""

    path: str
    """A file path (relative to the working directory, or absolute) or `MEMORY`."""
    synchronous: Synchronous = "normal"
    busy_timeout: float = 5.0
    """Seconds a write waits for another process's transaction to end."""


def parse_sqlite_url(url: str) -> SQLiteOptions:
    """The `SQLiteOptions` of ``url``, else `InvalidAdapterURL`.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (percent-encoded
    as needed), ``sqlite://:memory:`` (or SQLAlchemy's
    ``sqlite:///:memory:``); options ``synchronous`` (``normal``, ``full``,
    ``extra``) and ``busy_timeout`` (seconds).
    """
    options = url_options(url, allowed=("synchronous", "busy_timeout"), location=True)
    shown = redact_url(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise InvalidAdapterURL(shown, "is not a sqlite:// URL")
    if parts.netloc == MEMORY and not parts.path:
        path = MEMORY
    elif parts.netloc:
        raise InvalidAdapterURL(
            shown,
            "SQLite takes no host: write sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite://:memory:",
        )
    else:
        path = urllib.parse.unquote(parts.path)[1:]
        if not path or path.endswith("/"):
            raise InvalidAdapterURL(
                shown,
                "names no database file: write sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or sqlite://:memory:",
            )
        if "\x00" in path:
            raise InvalidAdapterURL(shown, "the path contains NUL")
    synchronous = options.get("synchronous", "normal").lower()
    if synchronous not in ("normal", "full", "extra"):
        raise InvalidAdapterURL(
            shown, f"synchronous={options['synchronous']!r}: expected normal, full or extra"
        )
    busy_timeout = 5.0
    if "busy_timeout" in options:
        try:
            busy_timeout = float(options["busy_timeout"])
        except ValueError:
            busy_timeout = math.nan
        if not math.isfinite(busy_timeout) or busy_timeout < 0:
            raise InvalidAdapterURL(
                shown,
                f"busy_timeout={options['busy_timeout']!r}: expected seconds, a number >= 0",
            )
    return SQLiteOptions(path, cast(Synchronous, synchronous), busy_timeout)


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
    before = await trio.to_thread.run_sync(_version_of, options.path)
    storage = await open_sqlite_storage(url)
    await storage.aclose()
    return [migration.version for migration in MIGRATIONS if migration.version > before]


def _version_of(path: str) -> int:
    if path == MEMORY or not os.path.exists(path):
        return 0
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return _stored_version(connection)


# ---------------------------------------------------------------------------
# Plumbing that runs in the worker thread
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _immediate(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: ``BEGIN IMMEDIATE`` takes SQLite's write lock
    up front (waiting up to the busy timeout), so a transaction that reads
    and then writes never fails half-way on another process's write."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _stored_version(connection: sqlite3.Connection) -> int:
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kernel_schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    (version,) = connection.execute("SELECT max(version) FROM kernel_schema_version").fetchone()
    return int(version or 0)


def _migrate(connection: sqlite3.Connection, location: str) -> None:
    """Apply the missing migrations in one transaction, refusing a newer schema."""
    with _immediate(connection):
        connection.execute(_VERSION_TABLE)
        current = _stored_version(connection)
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(location, current, SCHEMA_VERSION)
        applied_at = datetime.now(UTC).isoformat()
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            for statement in migration.statements:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO kernel_schema_version (version, description, applied_at) "
                "VALUES (?, ?, ?)",
                (migration.version, migration.description, applied_at),
            )


def _connect(
    path: str, synchronous: Synchronous, busy_timeout: float
) -> tuple[sqlite3.Connection, str]:
    location = MEMORY if path == MEMORY else os.path.abspath(path)
    try:
        connection = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as error:
        raise StorageError(f"cannot open SQLite database {location}: {error}") from error
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Check the version before writing anything, not even the journal mode.
        found = _stored_version(connection)
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(location, found, SCHEMA_VERSION)
        mode = _enter_wal(connection, busy_timeout)
        if mode not in ("wal", "memory"):
            raise StorageError(
                f"SQLite database {location} cannot use a write-ahead log (journal mode "
                f"stays {mode!r}); a network file system does not support it"
            )
        connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        _migrate(connection, location)
    except BaseException as error:
        connection.close()
        if isinstance(error, sqlite3.Error):
            raise StorageError(f"cannot open SQLite database {location}: {error}") from error
        raise
    return connection, location


def _enter_wal(connection: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch to WAL. SQLite may answer "database is locked" to this without
    calling the busy handler while another connection switches the same new
    file, so retry here, within ``busy_timeout`` (we are on a worker thread:
    a blocking sleep is fine)."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.001
    while True:
        try:
            (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
            return str(mode)
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None
    if there is none), so a prefix is the range ``[prefix, end)``: literal
    (no LIKE pattern to escape) and served by the primary key. Code-point
    order is SQLite's ``BINARY`` order for valid UTF-8."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last == 0x10FFFF:
            continue
        chars.append(chr(0xE000 if last == 0xD7FF else last + 1))  # surrogates have no UTF-8
        return "".join(chars)
    return None


def _batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _job_row(job: JobRecord) -> tuple[object, ...]:
    return (
        job.id,
        job.task,
        _encode(job.args),
        _encode(job.kwargs),
        job.queue,
        job.priority,
        to_epoch_micros(job.run_at),
        to_epoch_micros(job.enqueued_at),
        job.dedup_key,
        job.timeout,
        None if job.retry is None else _encode(job.retry),
        job.attempts,
        job.state.value,
        job.worker,
        _micros_or_none(job.lease_expires_at),
        job.last_error,
        _micros_or_none(job.finished_at),
        job.schedule,
        _micros_or_none(job.fire_time),
    )


def _job_from_row(row: Sequence[object]) -> JobRecord:
    return JobRecord(
        id=row[0],
        task=row[1],
        args=json.loads(cast(str, row[2])),
        kwargs=json.loads(cast(str, row[3])),
        queue=row[4],
        priority=row[5],
        run_at=from_epoch_micros(cast(int, row[6])),
        enqueued_at=from_epoch_micros(cast(int, row[7])),
        dedup_key=row[8],
        timeout=row[9],
        retry=None if row[10] is None else json.loads(cast(str, row[10])),
        attempts=row[11],
        state=row[12],
        worker=row[13],
        lease_expires_at=_datetime_or_none(row[14]),
        last_error=row[15],
        finished_at=_datetime_or_none(row[16]),
        schedule=row[17],
        fire_time=_datetime_or_none(row[18]),
    )


def _micros_or_none(value: datetime | None) -> int | None:
    return None if value is None else to_epoch_micros(value)


def _datetime_or_none(value: object) -> datetime | None:
    return None if value is None else from_epoch_micros(cast(int, value))


def _select_job(connection: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = connection.execute(
        f"SELECT {_JOB_COLUMNS} FROM kernel_jobs WHERE id = ?", (job_id,)
    ).fetchone()
    return None if row is None else _job_from_row(row)


def _live_holder(connection: sqlite3.Connection, dedup_key: str) -> JobRecord | None:
    row = connection.execute(
        f"SELECT {_JOB_COLUMNS} FROM kernel_jobs "
        "WHERE dedup_key = ? AND state IN ('queued', 'running')",
        (dedup_key,),
    ).fetchone()
    return None if row is None else _job_from_row(row)


def _rowcount(sql: str, params: Sequence[object]) -> Callable[[sqlite3.Connection], int]:
    """One write statement, its own transaction: SQLite takes the write lock
    (waiting up to the busy timeout) before the statement reads anything,
    just as ``BEGIN IMMEDIATE`` would, so it is atomic between processes."""
    return lambda connection: connection.execute(sql, params).rowcount


def _rows(sql: str, params: Sequence[object]) -> Callable[[sqlite3.Connection], list[Any]]:
    """One statement (a read, or a write with ``RETURNING``, then atomic as
    in `_rowcount`), all its rows."""
    return lambda connection: connection.execute(sql, params).fetchall()


def _enqueue_checked(
    connection: sqlite3.Connection, job: JobRecord, row: tuple[object, ...]
) -> tuple[JobRecord, bool]:
    """Enqueue a job that claims a schedule slot or holds a dedup key: the
    checks and the insert in one write transaction."""
    with _immediate(connection):
        if connection.execute("SELECT 1 FROM kernel_jobs WHERE id = ?", (job.id,)).fetchone():
            raise JobConflict(job.id, "a job with this id is already stored")
        if job.schedule is not None and job.fire_time is not None:
            claimed = connection.execute(
                "INSERT INTO kernel_schedule_slots (schedule, fire_time) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (job.schedule, to_epoch_micros(job.fire_time)),
            ).rowcount
            if claimed != 1:
                return attrs.evolve(job), False
        holder = None if job.dedup_key is None else _live_holder(connection, job.dedup_key)
        if holder is not None:
            return holder, False
        connection.execute(_INSERT_JOB, row)
    return attrs.evolve(job), True


def _reap(connection: sqlite3.Connection, now_us: int) -> list[str]:
    with _immediate(connection):
        expired = sorted(
            connection.execute(
                "SELECT seq, id, worker FROM kernel_jobs "
                "WHERE state = 'running' AND lease_expires_at <= ?",
                (now_us,),
            )
        )
        connection.executemany(
            "UPDATE kernel_jobs SET state = 'queued', worker = NULL, "
            "lease_expires_at = NULL, last_error = ? WHERE seq = ?",
            [(lease_expired_error(worker), seq) for seq, _, worker in expired],
        )
    return [job_id for _, job_id, _ in expired]


def _retry_dead(connection: sqlite3.Connection, job_id: str, run_at_us: int) -> JobRecord | None:
    with _immediate(connection):
        job = _select_job(connection, job_id)
        if job is None or job.state is not JobState.dead:
            return None
        if job.dedup_key is not None and _live_holder(connection, job.dedup_key):
            raise JobConflict(job_id, dedup_conflict_reason(job.dedup_key))
        row = connection.execute(
            "UPDATE kernel_jobs SET state = 'queued', run_at = ?, attempts = 0, "
            f"worker = NULL, finished_at = NULL WHERE id = ? RETURNING {_JOB_COLUMNS}",
            (run_at_us, job_id),
        ).fetchone()
    return _job_from_row(row)


_INSERT_JOB = (
    f"INSERT INTO kernel_jobs ({_JOB_COLUMNS}) VALUES ({_marks(_JOB_COLUMNS.count(',') + 1)})"
)
_HELD = "WHERE id = ? AND state = 'running' AND worker = ?"
"""The jobs a worker holds: running, and claimed by it."""


def _complete_many(
    connection: sqlite3.Connection, completions: Sequence[tuple[str, str, int]]
) -> list[bool]:
    with _immediate(connection):
        return [
            connection.execute(
                "UPDATE kernel_jobs SET state = 'succeeded', lease_expires_at = NULL, "
                f"finished_at = ? {_HELD}",
                (finished_us, job_id, worker),
            ).rowcount
            == 1
            for job_id, worker, finished_us in completions
        ]


@attrs.define(eq=False)
class _Pending:
    """One `complete` waiting for the batch it is in."""

    completion: tuple[str, str, int]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: bool | BaseException = False


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
    _limiter: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(1), init=False
    )
    _closed: bool = attrs.field(default=False, init=False)
    _completing: list[_Pending] = attrs.field(factory=list, init=False)
    _completer: bool = attrs.field(default=False, init=False)

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
            _connect, path, synchronous, busy_timeout
        )
        return cls(location, connection=connection)

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

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        if connection is None:
            raise StorageClosed(f"the SQLite storage {self.location} is closed")
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
            _rows("SELECT value FROM kernel_kv WHERE namespace = ? AND key = ?", (namespace, key))
        )
        return _decode(rows[0][0]) if rows else default

    async def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, JSON]:
        validate_namespace(namespace)
        wanted = sorted(set(validate_keys(keys)))

        def work(connection: sqlite3.Connection) -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            for batch in _batches(wanted):
                found += connection.execute(
                    "SELECT key, value FROM kernel_kv "
                    f"WHERE namespace = ? AND key IN ({_marks(len(batch))})",
                    (namespace, *batch),
                ).fetchall()
            return found

        return {key: _decode(text) for key, text in await self._call(work)}

    async def put(self, namespace: str, key: str, value: JSONLike) -> None:
        validate_namespace(namespace)
        validate_key(key)
        text = _encode(copy_json(value))
        await self._call(
            _rowcount(
                "INSERT INTO kernel_kv (namespace, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                (namespace, key, text),
            )
        )

    async def delete(self, namespace: str, key: str) -> bool:
        validate_namespace(namespace)
        validate_key(key)
        deleted = await self._call(
            _rowcount("DELETE FROM kernel_kv WHERE namespace = ? AND key = ?", (namespace, key))
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
        end = _prefix_end(prefix)
        sql = f"SELECT {columns} FROM kernel_kv WHERE namespace = ? AND key >= ?"
        params: tuple[str, ...] = (namespace, prefix)
        if end is not None:
            sql += " AND key < ?"
            params += (end,)
        return await self._call(_rows(sql + " ORDER BY key", params))

    async def clear(self, namespace: str) -> int:
        validate_namespace(namespace)
        return await self._call(
            _rowcount("DELETE FROM kernel_kv WHERE namespace = ?", (namespace,))
        )

    # -- jobs (kernel.jobs.record.JobStore) -----------------------------------------

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        row = _job_row(check_enqueue(job))
        if job.dedup_key is not None or (job.schedule is not None and job.fire_time is not None):
            return await self._call(lambda connection: _enqueue_checked(connection, job, row))

        def work(connection: sqlite3.Connection) -> tuple[JobRecord, bool]:
            try:
                connection.execute(_INSERT_JOB, row)
            except sqlite3.IntegrityError:
                raise JobConflict(job.id, "a job with this id is already stored") from None
            return attrs.evolve(job), True

        return await self._call(work)

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
        validate_name("queue", queue)
        validate_name("worker", worker)
        now = utc_datetime(now, field="now")
        now_us = to_epoch_micros(now)
        lease_us = validate_lease(lease) // timedelta(microseconds=1)
        validate_limit(limit, maximum=MAX_CLAIM_LIMIT)
        aging = validate_aging(aging)
        # kernel.jobs.record.claim_order in SQL; with aging, the effective priority of
        # kernel.jobs.record.effective_priority. One statement, so atomic; PostgreSQL
        # adds FOR UPDATE SKIP LOCKED to the subquery.
        if aging is None:
            order = "priority DESC"
            order_params: tuple[int, ...] = ()
        else:
            order = "priority + max(0, ? - max(run_at, enqueued_at)) / ? DESC"
            order_params = (now_us, max(aging // timedelta(microseconds=1), 1))
        rows = await self._call(
            _rows(
                "UPDATE kernel_jobs SET state = 'running', worker = ?, lease_expires_at = ?, "
                "attempts = attempts + 1 WHERE seq IN ("
                "SELECT seq FROM kernel_jobs WHERE queue = ? AND state = 'queued' "
                f"AND run_at <= ? ORDER BY {order}, run_at, enqueued_at, seq LIMIT ?"
                f") RETURNING seq, {_JOB_COLUMNS}",
                (worker, now_us + lease_us, queue, now_us, *order_params, limit),
            )
        )
        # RETURNING has no order: sort as the subquery did.
        claimed = sorted(
            ((_job_from_row(row[1:]), row[0]) for row in rows),
            key=lambda pair: (*claim_order(pair[0], now, aging), pair[1]),
        )
        return [job for job, _ in claimed]

    async def heartbeat(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        ids = sorted(set(validate_job_ids(job_ids)))
        validate_name("worker", worker)
        until_us = to_epoch_micros(utc_datetime(lease_until, field="lease_until"))

        def work(connection: sqlite3.Connection) -> set[str]:
            held: set[str] = set()
            several = len(ids) > _BATCH
            with _immediate(connection) if several else contextlib.nullcontext():
                for batch in _batches(ids):
                    held.update(
                        job_id
                        for (job_id,) in connection.execute(
                            "UPDATE kernel_jobs SET lease_expires_at = ? "
                            "WHERE state = 'running' AND worker = ? "
                            f"AND id IN ({_marks(len(batch))}) RETURNING id",
                            (until_us, worker, *batch),
                        ).fetchall()
                    )
            return held

        return await self._call(work)

    async def complete(self, job_id: str, *, worker: str, now: datetime | None = None) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        pending = _Pending((job_id, worker, to_epoch_micros(now_or_wall_clock(now))))
        self._completing.append(pending)
        if not self._completer:
            await self._complete_pending()
        await pending.done.wait()
        if isinstance(pending.result, BaseException):
            raise pending.result
        return pending.result

    async def _complete_pending(self) -> None:
        """Group commit: the completions that arrive while one batch is in the
        thread go together in the next transaction (one thread hand-off and
        one commit for many jobs: completions are most of a busy queue's
        writes). The first caller drives the batches, shielded, since they
        hold other callers' completions."""
        self._completer = True
        try:
            with trio.CancelScope(shield=True):
                while self._completing:
                    batch, self._completing = self._completing, []
                    completions = [pending.completion for pending in batch]
                    try:
                        results: list[bool] | BaseException = await self._call(
                            functools.partial(_complete_many, completions=completions)
                        )
                    except Exception as error:
                        results = error
                    for index, pending in enumerate(batch):
                        pending.result = (
                            results if isinstance(results, BaseException) else results[index]
                        )
                        pending.done.set()
        finally:
            self._completer = False

    async def retry_later(self, job_id: str, *, worker: str, error: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        error = clean_error_text(error)
        run_at_us = to_epoch_micros(utc_datetime(run_at, field="run_at"))
        changed = await self._call(
            _rowcount(
                "UPDATE kernel_jobs SET state = 'queued', run_at = ?, worker = NULL, "
                f"lease_expires_at = NULL, last_error = ? {_HELD}",
                (run_at_us, error, job_id, worker),
            )
        )
        return changed == 1

    async def release(self, job_id: str, *, worker: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        run_at_us = to_epoch_micros(utc_datetime(run_at, field="run_at"))
        changed = await self._call(
            _rowcount(
                "UPDATE kernel_jobs SET state = 'queued', run_at = ?, worker = NULL, "
                f"lease_expires_at = NULL, attempts = max(attempts - 1, 0) {_HELD}",
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
            _rowcount(
                "UPDATE kernel_jobs SET state = 'dead', lease_expires_at = NULL, "
                f"last_error = ?, finished_at = ? {_HELD}",
                (error, finished_us, job_id, worker),
            )
        )
        return changed == 1

    async def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        finished_us = to_epoch_micros(now_or_wall_clock(now))
        rows = await self._call(
            _rows(
                "UPDATE kernel_jobs SET state = 'cancelled', lease_expires_at = NULL, "
                "finished_at = ? WHERE id = ? AND state IN ('queued', 'running') "
                f"RETURNING {_JOB_COLUMNS}",
                (finished_us, job_id),
            )
        )
        return _job_from_row(rows[0]) if rows else None

    async def reap_expired(self, now: datetime) -> list[str]:
        now_us = to_epoch_micros(utc_datetime(now, field="now"))
        return await self._call(lambda connection: _reap(connection, now_us))

    async def get_job(self, job_id: str) -> JobRecord | None:
        validate_job_id(job_id)
        return await self._call(lambda connection: _select_job(connection, job_id))

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: str | None = None,
    ) -> list[JobRecord]:
        conditions: list[str] = []
        params: list[object] = []
        if state is not None:
            conditions.append("state = ?")
            params.append(validate_state(state).value)
        if queue is not None:
            conditions.append("queue = ?")
            params.append(validate_name("queue", queue))
        if after_id is not None:
            conditions.append("id > ?")
            params.append(validate_job_id(after_id))
        params.append(validate_limit(limit, maximum=MAX_LIST_LIMIT))
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        rows = await self._call(
            _rows(f"SELECT {_JOB_COLUMNS} FROM kernel_jobs {where}ORDER BY id LIMIT ?", params)
        )
        return [_job_from_row(row) for row in rows]

    async def retry_dead(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        run_at_us = to_epoch_micros(now_or_wall_clock(now))
        return await self._call(lambda connection: _retry_dead(connection, job_id, run_at_us))

    async def purge_dead(self, *, older_than: datetime | None = None) -> int:
        return await self.purge(state=JobState.dead, older_than=older_than)

    async def purge(self, *, state: JobState, older_than: datetime | None = None) -> int:
        sql = "DELETE FROM kernel_jobs WHERE state = ?"
        params: tuple[object, ...] = (finished_state(state).value,)
        if older_than is not None:
            sql += " AND finished_at < ?"
            params += (to_epoch_micros(utc_datetime(older_than, field="older_than")),)
        return await self._call(_rowcount(sql, params))

    async def next_due(self, queue: str | None = None) -> datetime | None:
        if queue is None:
            sql = "SELECT min(run_at) FROM kernel_jobs WHERE state = 'queued'"
            params: tuple[str, ...] = ()
        else:
            sql = "SELECT min(run_at) FROM kernel_jobs WHERE queue = ? AND state = 'queued'"
            params = (validate_name("queue", queue),)
        ((earliest,),) = await self._call(_rows(sql, params))
        return None if earliest is None else from_epoch_micros(earliest)

    # -- schedules (kernel.jobs.record.JobStore) ------------------------------------

    async def claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        validate_name("schedule", schedule)
        fire_us = to_epoch_micros(utc_datetime(fire_time, field="fire_time"))
        inserted = await self._call(
            _rowcount(
                "INSERT INTO kernel_schedule_slots (schedule, fire_time) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (schedule, fire_us),
            )
        )
        return inserted == 1

    async def prune_slots(self, *, older_than: datetime) -> int:
        cutoff_us = to_epoch_micros(utc_datetime(older_than, field="older_than"))
        return await self._call(
            _rowcount("DELETE FROM kernel_schedule_slots WHERE fire_time < ?", (cutoff_us,))
        )

    async def get_schedule_state(self, schedule: str) -> dict[str, JSON] | None:
        validate_name("schedule", schedule)
        rows = await self._call(
            _rows("SELECT state FROM kernel_schedule_state WHERE schedule = ?", (schedule,))
        )
        return cast("dict[str, JSON]", _decode(rows[0][0])) if rows else None

    async def put_schedule_state(self, schedule: str, state: Mapping[str, JSONLike]) -> None:
        validate_name("schedule", schedule)
        text = _encode(schedule_state_object(state))
        await self._call(
            _rowcount(
                "INSERT INTO kernel_schedule_state (schedule, state) VALUES (?, ?) "
                "ON CONFLICT (schedule) DO UPDATE SET state = excluded.state",
                (schedule, text),
            )
        )


def _decode(text: str) -> JSON:
    return cast("JSON", json.loads(text))


if TYPE_CHECKING:

    def _keeps_the_storage_port(storage: SQLiteStorage) -> Storage:
        return storage  # mypy proves SQLiteStorage satisfies the Storage protocol

    def _keeps_the_job_store_port(storage: SQLiteStorage) -> JobStore:
        return storage  # ... and the JobStore protocol

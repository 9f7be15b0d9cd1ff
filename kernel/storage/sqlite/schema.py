"""The SQLite schema: its migrations, and opening a connection at the
version this release knows (applying what is missing, refusing what is newer).

``kernel_schema_version`` records each migration applied; opening applies
the missing ones in one transaction (so two processes opening a new file at
once migrate it once) and refuses a file whose version is newer than this
release knows (`SchemaVersionError`), before writing anything. Tables are
prefixed ``kernel_`` so the file can be an application's own database.
Everything here runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final

import attrs

from kernel.errors import (
    SchemaVersionError,
    StorageError,
)
from kernel.storage.sqlite._url import MEMORY, Synchronous

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration"]


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
    Migration(
        3,
        "job headers; claims with aging served from indexes",
        (
            "ALTER TABLE kernel_jobs ADD COLUMN headers TEXT NOT NULL DEFAULT '{}'",
            # the few jobs enqueued for a time already past: a claim with aging
            # reads them apart from the per-priority heads (see _sql.claim_jobs)
            """CREATE INDEX kernel_jobs_early ON kernel_jobs (queue, run_at)
                WHERE state = 'queued' AND run_at < enqueued_at""",
        ),
    ),
)
"""Every migration, oldest first."""

SCHEMA_VERSION: Final = MIGRATIONS[-1].version
"""The schema version this release writes (and the newest it opens)."""

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS kernel_schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


def version_of(path: str) -> int:
    if path == MEMORY or not os.path.exists(path):
        return 0
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return stored_version(connection)


@contextlib.contextmanager
def immediate(connection: sqlite3.Connection) -> Iterator[None]:
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


def stored_version(connection: sqlite3.Connection) -> int:
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kernel_schema_version'"
    ).fetchone()
    if exists is None:
        return 0
    (version,) = connection.execute("SELECT max(version) FROM kernel_schema_version").fetchone()
    return int(version or 0)


def migrate(connection: sqlite3.Connection, location: str) -> None:
    """Apply the missing migrations in one transaction, refusing a newer schema."""
    with immediate(connection):
        connection.execute(VERSION_TABLE)
        current = stored_version(connection)
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


def connect(
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
        found = stored_version(connection)
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(location, found, SCHEMA_VERSION)
        mode = enter_wal(connection, busy_timeout)
        if mode not in ("wal", "memory"):
            raise StorageError(
                f"SQLite database {location} cannot use a write-ahead log (journal mode "
                f"stays {mode!r}); a network file system does not support it"
            )
        connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        migrate(connection, location)
    except BaseException as error:
        connection.close()
        if isinstance(error, sqlite3.Error):
            raise StorageError(f"cannot open SQLite database {location}: {error}") from error
        raise
    return connection, location


def enter_wal(connection: sqlite3.Connection, busy_timeout: float) -> str:
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

"""The kernel's tables in PostgreSQL, as versioned migrations.

Each `Migration` is applied once, in order, and never edited after a
release (a change is a new migration). ``kernel_schema_version`` records
what was applied. A shared database is never migrated behind the
operator's back: opening a storage checks the version and refuses an older
schema (`kernel.errors.SchemaOutdated`, naming ``kernel db upgrade URL``) as
well as a newer one (`kernel.errors.SchemaVersionError`); `upgrade` (the
``kernel.migrate`` entry point) applies what is missing. ``?migrate=true``
on a storage URL upgrades at open, for one node and for tests.

All migrations run in one transaction under a transaction-scoped advisory
lock keyed on the schema, so nodes upgrading at once queue up: the first
applies, the others find nothing left to do. PostgreSQL's DDL is
transactional, so a failed upgrade leaves the schema as it was.

Every table is prefixed ``kernel_`` and lives in the URL's ``schema``
(default ``public``), so several kernels can share one database. Times are
integer microseconds since the Unix epoch, UTC (`kernel.jobs.record.to_epoch_micros`):
exact, and the aging arithmetic of a claim stays integer. JSON is stored as
text, not ``jsonb``: ``jsonb`` refuses ``\\u0000`` in strings and would
re-encode numbers, and the contract wants every value back as written.
"""

from __future__ import annotations

import hashlib
from typing import Final

import attrs
import psycopg
import trio

from kernel.errors import SchemaOutdated, SchemaVersionError, StorageError
from kernel_postgres._pool import Connection
from kernel_postgres._url import (
    MIGRATE_OPTIONS,
    PostgresOptions,
    parse_postgres_url,
    quote_identifier,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "apply_migrations",
    "check_schema_version",
    "stored_version",
    "upgrade",
]


@attrs.frozen
class Migration:
    """One step of the schema. ``{schema}`` in a statement stands for the
    quoted schema name."""

    version: int
    description: str
    statements: tuple[str, ...]


_LIVE = "state IN ('queued', 'running')"

MIGRATIONS: Final = (
    Migration(
        1,
        "key-value state",
        (
            """CREATE TABLE {schema}.kernel_kv (
                namespace text COLLATE "C" NOT NULL,
                key text COLLATE "C" NOT NULL,
                value text NOT NULL,
                PRIMARY KEY (namespace, key)
            )""",
        ),
    ),
    Migration(
        2,
        "jobs, schedule slots, schedule state and the enqueue notification",
        (
            # seq is insertion order, the last tie-break of a claim. Names are
            # COLLATE "C": code-point order (list_jobs pages by id in the order
            # of Python's str) and no locale in the hot comparisons.
            """CREATE TABLE {schema}.kernel_jobs (
                seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id text COLLATE "C" NOT NULL UNIQUE,
                task text COLLATE "C" NOT NULL,
                args text NOT NULL,
                kwargs text NOT NULL,
                queue text COLLATE "C" NOT NULL,
                priority integer NOT NULL,
                run_at bigint NOT NULL,
                enqueued_at bigint NOT NULL,
                dedup_key text COLLATE "C",
                timeout double precision,
                retry text,
                attempts integer NOT NULL,
                state text COLLATE "C" NOT NULL
                    CHECK (state IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
                worker text COLLATE "C",
                lease_expires_at bigint,
                last_error text,
                finished_at bigint,
                schedule text COLLATE "C",
                fire_time bigint
            ) WITH (
                autovacuum_vacuum_scale_factor = 0.02,
                autovacuum_analyze_scale_factor = 0.05
            )""",
            # Partial indexes hold only the jobs a hot statement looks for, so
            # they stay small however many finished jobs are kept. A claim
            # walks kernel_jobs_claim in claim order and stops at LIMIT (with
            # aging, once per priority level); next_due reads kernel_jobs_due.
            """CREATE INDEX kernel_jobs_claim ON {schema}.kernel_jobs
                (queue, priority DESC, run_at, enqueued_at, seq) WHERE state = 'queued'""",
            """CREATE INDEX kernel_jobs_due ON {schema}.kernel_jobs (queue, run_at)
                WHERE state = 'queued'""",
            # The few jobs enqueued with a run_at already past, which an aged
            # claim orders by when they were enqueued (_statements._CLAIM_AGED).
            """CREATE INDEX kernel_jobs_early ON {schema}.kernel_jobs (queue)
                WHERE state = 'queued' AND run_at < enqueued_at""",
            f"""CREATE UNIQUE INDEX kernel_jobs_dedup ON {{schema}}.kernel_jobs (dedup_key)
                WHERE dedup_key IS NOT NULL AND {_LIVE}""",
            """CREATE INDEX kernel_jobs_lease ON {schema}.kernel_jobs (lease_expires_at)
                WHERE state = 'running'""",
            """CREATE INDEX kernel_jobs_finished ON {schema}.kernel_jobs (state, finished_at)
                WHERE state IN ('succeeded', 'dead', 'cancelled')""",
            """CREATE TABLE {schema}.kernel_schedule_slots (
                schedule text COLLATE "C" NOT NULL,
                fire_time bigint NOT NULL,
                PRIMARY KEY (schedule, fire_time)
            )""",
            """CREATE TABLE {schema}.kernel_schedule_state (
                schedule text COLLATE "C" PRIMARY KEY,
                state text NOT NULL
            )""",
            # Wake idle nodes: a NOTIFY on the schema's jobs channel, payload the
            # queue, in the transaction that makes a job claimable or moves its
            # due time (enqueue, retry_later, release, retry_dead, reap_expired,
            # and any SQL an operator runs). PostgreSQL folds identical
            # notifications of one transaction into one. The channel name is
            # kernel_postgres._url.channel_name's.
            """CREATE FUNCTION {schema}.kernel_jobs_notify() RETURNS trigger
                LANGUAGE plpgsql AS $$
            DECLARE
                channel text := 'kernel_jobs:' || TG_TABLE_SCHEMA;
            BEGIN
                IF octet_length(channel) > 63 THEN
                    channel := 'kernel_jobs:' || md5(TG_TABLE_SCHEMA);
                END IF;
                PERFORM pg_notify(channel, NEW.queue);
                RETURN NULL;
            END
            $$""",
            """CREATE TRIGGER kernel_jobs_notify
                AFTER INSERT OR UPDATE OF state, run_at ON {schema}.kernel_jobs
                FOR EACH ROW WHEN (NEW.state = 'queued')
                EXECUTE FUNCTION {schema}.kernel_jobs_notify()""",
        ),
    ),
    Migration(
        3,
        "job headers (the trace context and other text carried with a job)",
        ("ALTER TABLE {schema}.kernel_jobs ADD COLUMN headers text NOT NULL DEFAULT '{{}}'",),
    ),
)
"""Every migration, oldest first."""

SCHEMA_VERSION: Final = MIGRATIONS[-1].version
"""The schema version this release writes and opens."""

_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS {schema}.kernel_schema_version (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def _lock_key(schema: str) -> int:
    """The advisory lock of migrations in ``schema``: a signed 64-bit key."""
    digest = hashlib.sha256(f"trio-kernel migrate {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def stored_version(connection: Connection, schema: str) -> int:
    """The schema version recorded in ``schema`` (0: none)."""
    row = connection.execute(
        "SELECT to_regclass(%s)", (f"{quote_identifier(schema)}.kernel_schema_version",)
    ).fetchone()
    if row is None or row[0] is None:
        return 0
    found = connection.execute(
        f"SELECT coalesce(max(version), 0) FROM {quote_identifier(schema)}.kernel_schema_version"
    ).fetchone()
    return 0 if found is None else int(found[0])


def check_schema_version(connection: Connection, schema: str, where: str) -> None:
    """Refuse a schema that is not exactly `SCHEMA_VERSION`."""
    found = stored_version(connection, schema)
    if found < SCHEMA_VERSION:
        raise SchemaOutdated(where, found, SCHEMA_VERSION)
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(where, found, SCHEMA_VERSION)


def apply_migrations(
    connection: Connection,
    schema: str,
    where: str,
    *,
    target: int = SCHEMA_VERSION,
) -> list[int]:
    """Bring ``schema`` to version ``target`` in one transaction under the
    migration lock (creating the schema if needed); the versions applied.

    ``target`` below `SCHEMA_VERSION` is for tests of older schemas.
    """
    quoted = quote_identifier(schema)
    applied: list[int] = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
        exists = connection.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
        if exists is None:
            connection.execute(f"CREATE SCHEMA {quoted}")
        current = stored_version(connection, schema)
        if current == 0:  # only then: it may exist where we may not create
            connection.execute(_VERSION_TABLE.format(schema=quoted))
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(where, current, SCHEMA_VERSION)
        for migration in MIGRATIONS:
            if migration.version <= current or migration.version > target:
                continue
            for statement in migration.statements:
                connection.execute(statement.format(schema=quoted))
            connection.execute(
                f"INSERT INTO {quoted}.kernel_schema_version (version, description) "
                "VALUES (%s, %s)",
                (migration.version, migration.description),
            )
            applied.append(migration.version)
    return applied


def connect(options: PostgresOptions) -> Connection:
    """One autocommit connection (blocking; call it in a worker thread),
    else `StorageError` naming the server, never the password."""
    try:
        return psycopg.connect(options.conninfo, autocommit=True, client_encoding="utf8")
    except psycopg.Error as error:
        raise StorageError(
            f"cannot connect to PostgreSQL at {options.location}: {error}"
        ) from error


def upgrade_blocking(options: PostgresOptions) -> list[int]:
    """`upgrade` in the calling thread."""
    connection = connect(options)
    try:
        return apply_migrations(connection, options.schema, options.where)
    except psycopg.Error as error:
        raise StorageError(f"upgrading {options.where} failed: {error}") from error
    finally:
        connection.close()


async def upgrade(url: str) -> list[int]:
    """Apply the missing migrations to the database and schema of ``url``
    (a storage URL); the versions applied, ``[]`` if it was up to date.

    The ``kernel.migrate`` entry point behind ``kernel db upgrade URL``.
    Safe to run from several nodes at once. Raises `InvalidAdapterURL`,
    `SchemaVersionError` (the schema is newer than this release) or
    `StorageError`.
    """
    options = parse_postgres_url(url, allowed=MIGRATE_OPTIONS)
    return await trio.to_thread.run_sync(upgrade_blocking, options)

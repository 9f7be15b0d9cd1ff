"""The ``postgresql://`` storage: key-value state and jobs shared by many nodes.

`PostgresStorage` is one object with both ports, as
`kernel.storage.sqlite.storage.SQLiteStorage` is: `kernel.ports.Storage` (JSON
values in namespaces) and `kernel.jobs.record.JobStore` (jobs under leases,
once-only schedule slots, schedule state), with exactly the memory store's
semantics, so the kernel's contract suites pass against a real server. It
also offers `kernel.jobs.record.EnqueueListener`: idle nodes wake when any node
makes a job claimable, through LISTEN/NOTIFY, instead of polling.

What holds across nodes, and how:

- **a job runs under one worker at a time**: a claim is one statement,
  ``UPDATE ... WHERE seq = ANY(ARRAY(SELECT seq ... ORDER BY <claim order>
  LIMIT n FOR UPDATE SKIP LOCKED)) RETURNING ...``: concurrent claims skip
  each other's rows instead of waiting or double-claiming (the queue
  pattern of Oban, solid_queue and Hangfire);
- **a schedule slot fires once**: ``kernel_schedule_slots`` has the primary
  key (schedule, fire_time) and both `claim_slot` and the enqueue of a
  slot's job insert with ``ON CONFLICT DO NOTHING``; the slot and its job
  are written in one statement, so a crash cannot claim a slot without
  its job;
- **a dedup key is held by one live job**: a partial unique index on
  queued and running jobs; an enqueue that meets it stores nothing and
  returns the holder;
- **every call is atomic**: nearly all are one statement, so one
  transaction and one round trip. `reap_expired` first reads which workers'
  leases ran out, then requeues their jobs in one statement that checks
  the leases again; an `enqueue` that races another enqueue of its dedup
  key asks again for the holder it could not yet see.

Each call runs in a worker thread with a pooled connection
(`kernel_postgres._pool`). Times are integer microseconds, JSON is text
(`kernel_postgres.schema` says why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import psycopg
import psycopg.errors
import trio

from kernel.errors import JobConflict, StorageClosed, StorageError
from kernel.ports import (
    JSON,
    EnqueueListener,
    JobRecord,
    JobState,
    JobStore,
    JSONLike,
    Storage,
    copy_json,
)
from kernel.storage.base import (
    MAX_CLAIM_LIMIT,
    check_enqueue,
    claim_order,
    clean_error_text,
    dedup_conflict_reason,
    finished_state,
    from_epoch_micros,
    job_list_filter,
    lease_expired_error,
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
from kernel_postgres._listen import listen
from kernel_postgres._pool import Connection, Database
from kernel_postgres._rows import decode, encode, job_from_row, job_row, micros_or_none, stored_copy
from kernel_postgres._statements import DEDUP_INDEX, ID_CONSTRAINT, Statements
from kernel_postgres._url import (
    STORAGE_OPTIONS,
    PostgresOptions,
    channel_name,
    parse_postgres_url,
)
from kernel_postgres.schema import apply_migrations, check_schema_version, connect

__all__ = ["JOBS_CHANNEL", "PostgresStorage", "open_storage"]

JOBS_CHANNEL: Final = "kernel_jobs"
"""The prefix of the channel a schema's job notifications use
(`kernel_postgres._url.channel_name`)."""

_MAX_KNOWN_QUEUES = 10_000
_DEDUP_RETRIES = 20


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None
    if there is none), so a prefix is the range ``[prefix, end)``: literal
    (no LIKE pattern to escape) and served by the primary key. Code-point
    order is ``COLLATE "C"`` order in UTF-8."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last == 0x10FFFF:
            continue
        chars.append(chr(0xE000 if last == 0xD7FF else last + 1))  # surrogates have no UTF-8
        return "".join(chars)
    return None


# ---------------------------------------------------------------------------
# Work done in the worker thread (one connection, usually one statement)
# ---------------------------------------------------------------------------


def _rows(
    sql: str, params: Sequence[object] | Mapping[str, object]
) -> Callable[[Connection], list[Any]]:
    return lambda connection: connection.execute(sql, params).fetchall()


def _rowcount(sql: str, params: Sequence[object]) -> Callable[[Connection], int]:
    return lambda connection: connection.execute(sql, params).rowcount


def _is_violation_of(error: psycopg.errors.UniqueViolation, name: str) -> bool:
    return error.diag.constraint_name == name


def _insert_job(sql: str, job: JobRecord, row: tuple[object, ...]) -> Callable[[Connection], None]:
    def work(connection: Connection) -> None:
        try:
            connection.execute(sql, row)
        except psycopg.errors.UniqueViolation as error:
            if _is_violation_of(error, ID_CONSTRAINT):
                raise JobConflict(job.id, "a job with this id is already stored") from None
            raise

    return work


def _enqueue_checked(
    sql: Statements, job: JobRecord, row: tuple[object, ...]
) -> Callable[[Connection], tuple[JobRecord, bool]]:
    """Enqueue a job that claims a slot or holds a dedup key (see
    ``ENQUEUE_SLOT``). Usually one statement; when the dedup key's holder
    committed after the statement's snapshot began, it is asked for again
    (the slot, already won, stays won: that is the rule)."""
    slot = job.schedule is not None and job.fire_time is not None

    def work(connection: Connection) -> tuple[JobRecord, bool]:
        if slot:
            statement = sql.enqueue_slot
            params: tuple[object, ...] = (
                job.id,
                job.schedule,
                micros_or_none(job.fire_time),
                *row,
                job.dedup_key,
            )
        else:
            statement = sql.enqueue_dedup
            params = (job.id, *row, job.dedup_key)
        for _ in range(_DEDUP_RETRIES):
            try:
                result = connection.execute(statement, params).fetchone()
            except psycopg.errors.UniqueViolation as error:
                if _is_violation_of(error, ID_CONSTRAINT):
                    raise JobConflict(job.id, "a job with this id is already stored") from None
                raise
            assert result is not None
            fresh, slot_claimed, inserted = result[0], result[1], result[2]
            if not fresh:
                raise JobConflict(job.id, "a job with this id is already stored")
            if not slot_claimed:
                return stored_copy(job, row), False
            if inserted:
                return stored_copy(job, row), True
            if result[3] is not None:
                return job_from_row(result[3:]), False
            # The holder is newer than our snapshot (or just finished): again,
            # without the slot, which is ours now.
            statement = sql.enqueue_dedup
            params = (job.id, *row, job.dedup_key)
        raise StorageError(
            f"enqueue of job {job.id}: dedup key {job.dedup_key!r} kept changing hands"
        )

    return work


def _reap(sql: Statements, now_us: int) -> Callable[[Connection], list[str]]:
    """Two statements: the workers whose leases ran out, then requeue their
    expired jobs with each worker's message (`kernel.jobs.record.lease_expired_error`
    quotes the worker the way Python does, which SQL cannot)."""

    def work(connection: Connection) -> list[str]:
        workers = [row[0] for row in connection.execute(sql.expired_workers, (now_us,))]
        if not workers:
            return []
        errors = [clean_error_text(lease_expired_error(worker)) for worker in workers]
        reaped = connection.execute(sql.reap, (workers, errors, now_us)).fetchall()
        return [job_id for _, job_id in sorted(reaped)]

    return work


def _retry_dead(sql: Statements, job_id: str, run_at_us: int) -> Callable[[Connection], Any]:
    def work(connection: Connection) -> JobRecord | None:
        try:
            row = connection.execute(sql.retry_dead, (run_at_us, job_id)).fetchone()
        except psycopg.errors.UniqueViolation as error:
            if not _is_violation_of(error, DEDUP_INDEX):
                raise
            found = connection.execute(sql.dedup_key_of, (job_id,)).fetchone()
            key = "?" if found is None else str(found[0])
            raise JobConflict(job_id, dedup_conflict_reason(key)) from None
        return None if row is None else job_from_row(row)

    return work


def _prepare(options: PostgresOptions) -> None:
    """At open (blocking): the server's encoding, the migrations if asked
    for, and the schema version."""
    connection = connect(options)
    try:
        row = connection.execute("SHOW server_encoding").fetchone()
        encoding = "" if row is None else str(row[0])
        if encoding.upper() not in ("UTF8", "UTF-8"):
            raise StorageError(
                f"database {options.location} has encoding {encoding}; trio-kernel "
                "stores text in UTF-8 (create the database WITH ENCODING 'UTF8')"
            )
        if options.migrate:
            apply_migrations(connection, options.schema, options.where)
        check_schema_version(connection, options.schema, options.where)
    except psycopg.Error as error:
        raise StorageError(f"opening {options.where} failed: {error}") from error
    finally:
        connection.close()


# ---------------------------------------------------------------------------
# The storage
# ---------------------------------------------------------------------------


@attrs.define(eq=False)
class PostgresStorage:
    """`kernel.ports.Storage`, `kernel.jobs.record.JobStore` and
    `kernel.jobs.record.EnqueueListener` on a PostgreSQL schema.

    Open with `open_storage` (or ``await PostgresStorage.open(options)``);
    usable as ``async with``. See the module docstring for what holds
    across nodes.
    """

    options: PostgresOptions
    _db: Database = attrs.field(alias="db")
    _sql: Statements = attrs.field(init=False)
    _known_queues: set[str] = attrs.field(factory=set, init=False)
    _listeners: set[trio.CancelScope] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        self._sql = Statements.for_schema(self.options.schema)

    @classmethod
    async def open(cls, options: PostgresOptions) -> PostgresStorage:
        """Check the database (and migrate it if ``options.migrate``), then
        open the pool. Raises `SchemaOutdated`, `SchemaVersionError` or
        `StorageError`."""
        await trio.to_thread.run_sync(_prepare, options)
        db = await Database.open(
            options,
            where=f"storage {options.where}",
            error=StorageError,
            closed_error=StorageClosed,
            name=f"trio-kernel storage {options.schema}",
        )
        return cls(options, db=db)

    async def __aenter__(self) -> PostgresStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._db.closed else "open"
        return f"<PostgresStorage {self.options.where} ({state})>"

    @property
    def closed(self) -> bool:
        return self._db.closed

    async def aclose(self) -> None:
        """Stop the listeners, wait for the calls in flight, close the pool;
        later calls raise `StorageClosed`. Idempotent."""
        for scope in self._listeners:
            scope.cancel()
        await self._db.close()

    def _remember(self, queue: str) -> None:
        known = self._known_queues
        if queue not in known:
            if len(known) >= _MAX_KNOWN_QUEUES:
                known.clear()
            known.add(queue)

    # -- key-value state (kernel.ports.Storage) --------------------------------

    async def get(self, namespace: str, key: str, default: JSON = None) -> JSON:
        validate_namespace(namespace)
        validate_key(key)
        rows = await self._db.run(_rows(self._sql.kv_get, (namespace, key)), idempotent=True)
        return decode(rows[0][0]) if rows else default

    async def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, JSON]:
        validate_namespace(namespace)
        wanted = sorted(set(validate_keys(keys)))
        if not wanted:
            self._db.check_open()
            await trio.lowlevel.checkpoint()
            return {}
        rows = await self._db.run(
            _rows(self._sql.kv_get_many, (namespace, wanted)), idempotent=True
        )
        return {key: decode(text) for key, text in rows}

    async def put(self, namespace: str, key: str, value: JSONLike) -> None:
        validate_namespace(namespace)
        validate_key(key)
        text = encode(copy_json(value))
        await self._db.run(_rowcount(self._sql.kv_put, (namespace, key, text)), idempotent=True)

    async def delete(self, namespace: str, key: str) -> bool:
        validate_namespace(namespace)
        validate_key(key)
        deleted = await self._db.run(_rowcount(self._sql.kv_delete, (namespace, key)))
        return deleted == 1

    async def keys(self, namespace: str, prefix: str = "") -> list[str]:
        rows = await self._select_prefix(self._sql.kv_keys, namespace, prefix)
        return [row[0] for row in rows]

    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, JSON]]:
        rows = await self._select_prefix(self._sql.kv_items, namespace, prefix)
        return [(key, decode(text)) for key, text in rows]

    async def _select_prefix(self, sql: str, namespace: str, prefix: str) -> list[Any]:
        validate_namespace(namespace)
        validate_prefix(prefix)
        end = _prefix_end(prefix)
        params: tuple[str, ...] = (namespace, prefix)
        if end is not None:
            sql += " AND key < %s"
            params += (end,)
        return await self._db.run(_rows(sql + " ORDER BY key", params), idempotent=True)

    async def clear(self, namespace: str) -> int:
        validate_namespace(namespace)
        return await self._db.run(_rowcount(self._sql.kv_clear, (namespace,)))

    # -- jobs (kernel.jobs.record.JobStore) -----------------------------------------

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        row = job_row(check_enqueue(job))
        self._remember(job.queue)
        if job.dedup_key is None and (job.schedule is None or job.fire_time is None):
            await self._db.run(_insert_job(self._sql.insert_job, job, row))
            return stored_copy(job, row), True
        return await self._db.run(_enqueue_checked(self._sql, job, row))

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
        self._remember(queue)
        if aging is None:
            sql = self._sql.claim
            params: tuple[object, ...] = (worker, now_us + lease_us, queue, now_us, limit)
        else:
            sql = self._sql.claim_aged
            named = {
                "worker": worker,
                "until": now_us + lease_us,
                "queue": queue,
                "now": now_us,
                "aging": max(aging // timedelta(microseconds=1), 1),
                "limit": limit,
            }
        rows = await self._db.run(_rows(sql, params if aging is None else named))
        # RETURNING has no order: sort as the subquery did.
        claimed = sorted(
            ((job_from_row(row[1:]), row[0]) for row in rows),
            key=lambda pair: (*claim_order(pair[0], now, aging), pair[1]),
        )
        return [job for job, _ in claimed]

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
        validate_name("queue", queue)
        validate_name("worker", worker)
        ids = sorted(set(validate_job_ids(completed)))
        now = utc_datetime(now, field="now")
        now_us = to_epoch_micros(now)
        lease_us = validate_lease(lease) // timedelta(microseconds=1)
        validate_limit(limit, minimum=0, maximum=MAX_CLAIM_LIMIT)
        aging = validate_aging(aging)
        self._remember(queue)
        named: dict[str, object] = {
            "completed": ids,
            "worker": worker,
            "until": now_us + lease_us,
            "queue": queue,
            "now": now_us,
            "limit": limit,
        }
        if aging is None:
            sql = self._sql.complete_claim
        else:
            sql = self._sql.complete_claim_aged
            named["aging"] = max(aging // timedelta(microseconds=1), 1)
        # not retried on a fresh connection: a claim is not idempotent
        rows = await self._db.run(_rows(sql, named))
        done = set(rows[0][0]) if rows else set()
        claimed = sorted(
            ((job_from_row(row[2:]), row[1]) for row in rows if row[1] is not None),
            key=lambda pair: (*claim_order(pair[0], now, aging), pair[1]),
        )
        return done, [job for job, _ in claimed]

    async def heartbeat(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        ids = sorted(set(validate_job_ids(job_ids)))
        validate_name("worker", worker)
        until_us = to_epoch_micros(utc_datetime(lease_until, field="lease_until"))
        if not ids:
            self._db.check_open()
            await trio.lowlevel.checkpoint()
            return set()
        rows = await self._db.run(
            _rows(self._sql.heartbeat, (until_us, ids, worker)), idempotent=True
        )
        return {row[0] for row in rows}

    def renew_leases_blocking(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        """`heartbeat` from any thread, blocking it (`kernel.jobs.leases`
        renews from its keeper thread while the event loop is blocked)."""
        ids = sorted(set(validate_job_ids(job_ids)))
        validate_name("worker", worker)
        until_us = to_epoch_micros(utc_datetime(lease_until, field="lease_until"))
        self._db.check_open()
        if not ids:
            return set()
        rows = self._db.run_blocking(_rows(self._sql.heartbeat, (until_us, ids, worker)), True)
        return {row[0] for row in rows}

    async def complete(self, job_id: str, *, worker: str, now: datetime | None = None) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        finished_us = to_epoch_micros(now_or_wall_clock(now))
        # idempotent: it matches only a job still running under this worker, so
        # running it again after a lost reply is harmless (it answers False);
        # not retrying would let the lease run out and the job run twice
        changed = await self._db.run(
            _rowcount(self._sql.complete, (finished_us, job_id, worker)), idempotent=True
        )
        return changed == 1

    async def retry_later(self, job_id: str, *, worker: str, error: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        error = clean_error_text(error)
        run_at_us = to_epoch_micros(utc_datetime(run_at, field="run_at"))
        changed = await self._db.run(
            _rowcount(self._sql.retry_later, (run_at_us, error, job_id, worker))
        )
        return changed == 1

    async def release(self, job_id: str, *, worker: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        run_at_us = to_epoch_micros(utc_datetime(run_at, field="run_at"))
        changed = await self._db.run(_rowcount(self._sql.release, (run_at_us, job_id, worker)))
        return changed == 1

    async def bury(
        self, job_id: str, *, worker: str, error: str, now: datetime | None = None
    ) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        error = clean_error_text(error)
        finished_us = to_epoch_micros(now_or_wall_clock(now))
        changed = await self._db.run(
            _rowcount(self._sql.bury, (error, finished_us, job_id, worker))
        )
        return changed == 1

    async def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        finished_us = to_epoch_micros(now_or_wall_clock(now))
        rows = await self._db.run(_rows(self._sql.cancel, (finished_us, job_id)))
        return job_from_row(rows[0]) if rows else None

    async def reap_expired(self, now: datetime) -> list[str]:
        now_us = to_epoch_micros(utc_datetime(now, field="now"))
        return await self._db.run(_reap(self._sql, now_us))

    async def get_job(self, job_id: str) -> JobRecord | None:
        validate_job_id(job_id)
        rows = await self._db.run(_rows(self._sql.get_job, (job_id,)), idempotent=True)
        return job_from_row(rows[0]) if rows else None

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
            state=state, queue=queue, after_id=after_id, limit=limit, placeholder="%s"
        )
        select = self._sql.list_jobs if payloads else self._sql.list_jobs_no_payload
        rows = await self._db.run(
            _rows(f"{select}{where} ORDER BY id LIMIT %s", params), idempotent=True
        )
        return [job_from_row(row) for row in rows]

    async def retry_dead(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        run_at_us = to_epoch_micros(now_or_wall_clock(now))
        return cast(
            "JobRecord | None", await self._db.run(_retry_dead(self._sql, job_id, run_at_us))
        )

    async def purge_dead(self, *, older_than: datetime | None = None) -> int:
        return await self.purge(state=JobState.dead, older_than=older_than)

    async def purge(self, *, state: JobState, older_than: datetime | None = None) -> int:
        value = finished_state(state).value
        if older_than is None:
            return await self._db.run(_rowcount(self._sql.purge, (value,)))
        cutoff_us = to_epoch_micros(utc_datetime(older_than, field="older_than"))
        return await self._db.run(_rowcount(self._sql.purge_older, (value, cutoff_us)))

    async def next_due(self, queue: str | None = None) -> datetime | None:
        if queue is None:
            rows = await self._db.run(_rows(self._sql.next_due, ()), idempotent=True)
        else:
            validate_name("queue", queue)
            self._remember(queue)
            rows = await self._db.run(_rows(self._sql.next_due_queue, (queue,)), idempotent=True)
        earliest = rows[0][0]
        return None if earliest is None else from_epoch_micros(earliest)

    # -- schedules (kernel.jobs.record.JobStore) ------------------------------------

    async def claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        validate_name("schedule", schedule)
        fire_us = to_epoch_micros(utc_datetime(fire_time, field="fire_time"))
        inserted = await self._db.run(_rowcount(self._sql.claim_slot, (schedule, fire_us)))
        return inserted == 1

    async def prune_slots(self, *, older_than: datetime) -> int:
        cutoff_us = to_epoch_micros(utc_datetime(older_than, field="older_than"))
        return await self._db.run(_rowcount(self._sql.prune_slots, (cutoff_us,)))

    async def get_schedule_state(self, schedule: str) -> dict[str, JSON] | None:
        validate_name("schedule", schedule)
        rows = await self._db.run(_rows(self._sql.get_schedule_state, (schedule,)), idempotent=True)
        return cast("dict[str, JSON]", decode(rows[0][0])) if rows else None

    async def put_schedule_state(self, schedule: str, state: Mapping[str, JSONLike]) -> None:
        validate_name("schedule", schedule)
        text = encode(schedule_state_object(state))
        await self._db.run(
            _rowcount(self._sql.put_schedule_state, (schedule, text)), idempotent=True
        )

    # -- waking idle nodes (kernel.jobs.record.EnqueueListener) -------------------------

    async def listen_enqueued(
        self,
        wake: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Until cancelled, call ``wake(queue)`` whenever any node makes a job
        of ``queue`` claimable or moves its due time (the ``kernel_jobs``
        trigger's NOTIFY); ``task_status.started()`` once LISTEN is active.

        Listens on a connection of its own, reopened with backoff when lost;
        after reopening, every queue this storage knows of (and every queue
        with queued jobs) is woken, since notifications sent meanwhile were
        lost. `StorageError` if the first connection fails; `StorageClosed`
        once the storage is closed.
        """
        self._db.check_open()
        channel = channel_name(JOBS_CHANNEL, self.options.schema)

        def deliver(batch: list[tuple[str, str]]) -> None:
            queues = dict.fromkeys(payload for name, payload in batch if name == channel)
            for queue in queues:
                self._remember(queue)
                wake(queue)

        async def catch_up() -> None:
            queues = set(self._known_queues)
            try:
                rows = await self._db.run(_rows(self._sql.queued_queues, ()), idempotent=True)
                queues.update(row[0] for row in rows)
            except StorageError as error:
                if isinstance(error, StorageClosed):
                    raise
            for queue in sorted(queues):
                self._remember(queue)
                wake(queue)

        with trio.CancelScope() as scope:
            self._listeners.add(scope)
            try:
                await listen(
                    self.options,
                    [channel],
                    deliver,
                    on_reconnect=catch_up,
                    error=StorageError,
                    task_status=task_status,
                )
            finally:
                self._listeners.discard(scope)
        raise StorageClosed(f"storage {self.options.where} is closed")


async def open_storage(url: str) -> PostgresStorage:
    """The ``kernel.storage`` factory for ``postgresql://`` URLs (see
    `kernel_postgres.parse_postgres_url`): connects and checks the schema
    version, so a wrong URL, a missing migration or a newer schema fails
    at start-up. Raises `InvalidAdapterURL`, `SchemaOutdated`,
    `SchemaVersionError` or `StorageError`."""
    options = parse_postgres_url(url, allowed=STORAGE_OPTIONS)
    return await PostgresStorage.open(options)


if TYPE_CHECKING:

    def _keeps_the_storage_port(storage: PostgresStorage) -> Storage:
        return storage  # mypy proves PostgresStorage satisfies the Storage protocol

    def _keeps_the_job_store_port(storage: PostgresStorage) -> JobStore:
        return storage  # ... the JobStore protocol

    def _keeps_the_listener_port(storage: PostgresStorage) -> EnqueueListener:
        return storage  # ... and the EnqueueListener protocol

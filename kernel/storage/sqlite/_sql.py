"""The job store's SQL, run in the worker thread (private to the storage).

Each function takes the connection and does one step of the job-store
contract; `SQLiteStorage` wraps them in transactions and hands them to its
thread. Times are integer microseconds since the Unix epoch
(`kernel.storage.base.to_epoch_micros`), JSON is text.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import attrs
import trio

from kernel.errors import (
    JobConflict,
)
from kernel.jobs.record import JobRecord, JobState
from kernel.storage.base import (
    dedup_conflict_reason,
    from_epoch_micros,
    lease_expired_error,
    to_epoch_micros,
)
from kernel.storage.sqlite.schema import immediate

T = TypeVar("T")
encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
BATCH = 500
"""Ids or keys bound per statement (SQLite allows 32,766 variables)."""

JOB_COLUMNS = (
    "id, task, args, kwargs, queue, priority, run_at, enqueued_at, dedup_key, timeout, retry, "
    "attempts, state, worker, lease_expires_at, last_error, finished_at, schedule, fire_time"
)


def prefix_end(prefix: str) -> str | None:
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


def batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]


def marks(count: int) -> str:
    return ", ".join("?" * count)


def job_row(job: JobRecord) -> tuple[object, ...]:
    return (
        job.id,
        job.task,
        encode(job.args),
        encode(job.kwargs),
        job.queue,
        job.priority,
        to_epoch_micros(job.run_at),
        to_epoch_micros(job.enqueued_at),
        job.dedup_key,
        job.timeout,
        None if job.retry is None else encode(job.retry),
        job.attempts,
        job.state.value,
        job.worker,
        micros_or_none(job.lease_expires_at),
        job.last_error,
        micros_or_none(job.finished_at),
        job.schedule,
        micros_or_none(job.fire_time),
    )


def job_from_row(row: Sequence[object]) -> JobRecord:
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
        lease_expires_at=datetime_or_none(row[14]),
        last_error=row[15],
        finished_at=datetime_or_none(row[16]),
        schedule=row[17],
        fire_time=datetime_or_none(row[18]),
    )


def micros_or_none(value: datetime | None) -> int | None:
    return None if value is None else to_epoch_micros(value)


def datetime_or_none(value: object) -> datetime | None:
    return None if value is None else from_epoch_micros(cast(int, value))


def select_job(connection: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = connection.execute(
        f"SELECT {JOB_COLUMNS} FROM kernel_jobs WHERE id = ?", (job_id,)
    ).fetchone()
    return None if row is None else job_from_row(row)


def live_holder(connection: sqlite3.Connection, dedup_key: str) -> JobRecord | None:
    row = connection.execute(
        f"SELECT {JOB_COLUMNS} FROM kernel_jobs "
        "WHERE dedup_key = ? AND state IN ('queued', 'running')",
        (dedup_key,),
    ).fetchone()
    return None if row is None else job_from_row(row)


def count_changes(sql: str, params: Sequence[object]) -> Callable[[sqlite3.Connection], int]:
    """One write statement, its own transaction: SQLite takes the write lock
    (waiting up to the busy timeout) before the statement reads anything,
    just as ``BEGIN IMMEDIATE`` would, so it is atomic between processes."""
    return lambda connection: connection.execute(sql, params).rowcount


def fetch_all(sql: str, params: Sequence[object]) -> Callable[[sqlite3.Connection], list[Any]]:
    """One statement (a read, or a write with ``RETURNING``, then atomic as
    in `count_changes`), all its rows."""
    return lambda connection: connection.execute(sql, params).fetchall()


def enqueue_checked(
    connection: sqlite3.Connection, job: JobRecord, row: tuple[object, ...]
) -> tuple[JobRecord, bool]:
    """Enqueue a job that claims a schedule slot or holds a dedup key: the
    checks and the insert in one write transaction."""
    with immediate(connection):
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
        holder = None if job.dedup_key is None else live_holder(connection, job.dedup_key)
        if holder is not None:
            return holder, False
        connection.execute(INSERT_JOB, row)
    return attrs.evolve(job), True


def reap_expired_jobs(connection: sqlite3.Connection, now_us: int) -> list[str]:
    with immediate(connection):
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


def requeue_dead(connection: sqlite3.Connection, job_id: str, run_at_us: int) -> JobRecord | None:
    with immediate(connection):
        job = select_job(connection, job_id)
        if job is None or job.state is not JobState.dead:
            return None
        if job.dedup_key is not None and live_holder(connection, job.dedup_key):
            raise JobConflict(job_id, dedup_conflict_reason(job.dedup_key))
        row = connection.execute(
            "UPDATE kernel_jobs SET state = 'queued', run_at = ?, attempts = 0, "
            f"worker = NULL, finished_at = NULL WHERE id = ? RETURNING {JOB_COLUMNS}",
            (run_at_us, job_id),
        ).fetchone()
    return job_from_row(row)


INSERT_JOB = f"INSERT INTO kernel_jobs ({JOB_COLUMNS}) VALUES ({marks(JOB_COLUMNS.count(',') + 1)})"
HELD = "WHERE id = ? AND state = 'running' AND worker = ?"
"""The jobs a worker holds: running, and claimed by it."""


def complete_many(
    connection: sqlite3.Connection, completions: Sequence[tuple[str, str, int]]
) -> list[bool]:
    with immediate(connection):
        return [
            connection.execute(
                "UPDATE kernel_jobs SET state = 'succeeded', lease_expires_at = NULL, "
                f"finished_at = ? {HELD}",
                (finished_us, job_id, worker),
            ).rowcount
            == 1
            for job_id, worker, finished_us in completions
        ]


@attrs.define(eq=False)
class Pending:
    """One `complete` waiting for the batch it is in."""

    completion: tuple[str, str, int]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: bool | BaseException = False

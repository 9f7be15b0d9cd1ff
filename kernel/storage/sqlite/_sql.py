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
    "attempts, state, worker, lease_expires_at, last_error, finished_at, schedule, fire_time, "
    "headers"
)
JOB_COLUMNS_NO_PAYLOAD = JOB_COLUMNS.replace("args, kwargs,", "'[]', '{}',")
"""The columns of a listing that shows no arguments: they are not read."""


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
        encode(job.headers),
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
        headers=json.loads(cast(str, row[19])),
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


_COMPLETE = (
    f"UPDATE kernel_jobs SET state = 'succeeded', lease_expires_at = NULL, finished_at = ? {HELD}"
)


def complete_many(
    connection: sqlite3.Connection, completions: Sequence[tuple[str, str, int]]
) -> list[bool]:
    with immediate(connection):
        return [
            connection.execute(_COMPLETE, (finished_us, job_id, worker)).rowcount == 1
            for job_id, worker, finished_us in completions
        ]


@attrs.frozen
class Claim:
    """What one claim asks for (times in epoch microseconds)."""

    queue: str
    worker: str
    now_us: int
    until_us: int
    limit: int
    aging_us: int | None


_CLAIM_BY_PRIORITY = (
    "UPDATE kernel_jobs SET state = 'running', worker = ?, lease_expires_at = ?, "
    "attempts = attempts + 1 WHERE seq IN ("
    "SELECT seq FROM kernel_jobs WHERE queue = ? AND state = 'queued' AND run_at <= ? "
    "ORDER BY priority DESC, run_at, enqueued_at, seq LIMIT ?"
    f") RETURNING seq, {JOB_COLUMNS}"
)
"""A claim without aging: one walk down ``kernel_jobs_order`` in claim
order, stopping at LIMIT."""

_TOP_LEVEL = (
    "SELECT priority FROM kernel_jobs WHERE queue = ? AND state = 'queued' "
    "ORDER BY priority DESC LIMIT 1"
)
_NEXT_LEVEL = (
    "SELECT priority FROM kernel_jobs WHERE queue = ? AND state = 'queued' AND priority < ? "
    "ORDER BY priority DESC LIMIT 1"
)
_LEVEL_HEADS = (
    "SELECT seq, priority, run_at, enqueued_at FROM kernel_jobs "
    "WHERE queue = ? AND state = 'queued' AND priority = ? AND run_at <= ? "
    "AND run_at >= enqueued_at ORDER BY run_at, enqueued_at, seq LIMIT ?"
)
_EARLY = (
    "SELECT seq, priority, run_at, enqueued_at FROM kernel_jobs INDEXED BY kernel_jobs_early "
    "WHERE queue = ? AND state = 'queued' AND run_at < enqueued_at AND run_at <= ?"
)
"""The jobs enqueued for a time already past (few): their partial index, by
name, since the planner would otherwise walk every due job."""
_CLAIM_SEQS = (
    "UPDATE kernel_jobs SET state = 'running', worker = ?, lease_expires_at = ?, "
    "attempts = attempts + 1 WHERE seq IN ({marks}) RETURNING seq, {columns}"
)


def aged_candidates(connection: sqlite3.Connection, claim: Claim) -> list[int]:
    """The ``seq`` of the best ``limit`` due jobs with aging, read from
    indexes without sorting the backlog: the same argument as the PostgreSQL
    adapter's claim and the memory store's per-level heaps. Within one
    priority level a job due at its ``run_at`` (``run_at >= enqueued_at``,
    nearly all) has aged at least as much as every job behind it in
    (run_at, enqueued_at, seq) order, so the best ``limit`` are among the
    first ``limit`` of each level (found level by level down
    ``kernel_jobs_order``, a loose index scan) and the few jobs enqueued for
    a time already past (``kernel_jobs_early``)."""
    assert claim.aging_us is not None
    rows: list[tuple[int, int, int, int]] = []
    level = connection.execute(_TOP_LEVEL, (claim.queue,)).fetchone()
    while level is not None:
        rows += connection.execute(
            _LEVEL_HEADS, (claim.queue, level[0], claim.now_us, claim.limit)
        ).fetchall()
        level = connection.execute(_NEXT_LEVEL, (claim.queue, level[0])).fetchone()
    rows += connection.execute(_EARLY, (claim.queue, claim.now_us)).fetchall()
    now_us, aging_us = claim.now_us, claim.aging_us

    def order(row: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        seq, priority, run_at, enqueued_at = row
        aged = priority + max(0, now_us - max(run_at, enqueued_at)) // aging_us
        return (-aged, run_at, enqueued_at, seq)

    return [row[0] for row in sorted(rows, key=order)[: claim.limit]]


def claim_jobs(connection: sqlite3.Connection, claim: Claim) -> list[Any]:
    """Claim in `kernel.storage.base.claim_order`; the rows are (seq, job
    columns...), in no particular order (RETURNING has none). Call inside
    a write transaction (`immediate`) or as the statement's own."""
    params = (claim.worker, claim.until_us)
    if claim.aging_us is None:
        return connection.execute(
            _CLAIM_BY_PRIORITY, (*params, claim.queue, claim.now_us, claim.limit)
        ).fetchall()
    seqs = aged_candidates(connection, claim)
    if not seqs:
        return []
    sql = _CLAIM_SEQS.format(marks=marks(len(seqs)), columns=JOB_COLUMNS)
    return connection.execute(sql, (*params, *seqs)).fetchall()


def claim_in_transaction(connection: sqlite3.Connection, claim: Claim) -> list[Any]:
    with immediate(connection):
        return claim_jobs(connection, claim)


def complete_and_claim_jobs(
    connection: sqlite3.Connection, completed: Sequence[str], finished_us: int, claim: Claim
) -> tuple[set[str], list[Any]]:
    """The workers' round trip: completions and the next claim in one write
    transaction."""
    with immediate(connection):
        done = {
            job_id
            for job_id in completed
            if connection.execute(_COMPLETE, (finished_us, job_id, claim.worker)).rowcount == 1
        }
        rows = claim_jobs(connection, claim) if claim.limit else []
    return done, rows


@attrs.define(eq=False)
class Pending:
    """One `complete` waiting for the batch it is in."""

    completion: tuple[str, str, int]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: bool | BaseException = False

"""A job's row in ``kernel_jobs`` and back: `job_row` for an insert,
`job_from_row` for what a statement returns (without re-running the
record's converters), `stored_copy` for what `enqueue` hands back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, cast

import attrs

from kernel.ports import JSON, JobRecord, JobState
from kernel.storage.base import from_epoch_micros, to_epoch_micros
from kernel_postgres._statements import COLUMNS

encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
"""Compact JSON text, as stored (NaN and infinities refused)."""


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


_FIELDS: Final = tuple(name for name, _ in COLUMNS)
_TRUSTED_ROWS: Final = tuple(field.name for field in attrs.fields(JobRecord)) == _FIELDS
"""Whether `job_from_row` may skip `JobRecord`'s converters: only while the
record has exactly the columns this module stores (a newer kernel with
another field gets the checked, slower path instead of a half-built record)."""
_STATES: Final = {state.value: state for state in JobState}
_set = object.__setattr__


def _checked_job_from_row(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        id=row[0],
        task=row[1],
        args=json.loads(row[2]),
        kwargs=json.loads(row[3]),
        queue=row[4],
        priority=row[5],
        run_at=from_epoch_micros(row[6]),
        enqueued_at=from_epoch_micros(row[7]),
        dedup_key=row[8],
        timeout=row[9],
        retry=None if row[10] is None else json.loads(row[10]),
        attempts=row[11],
        state=row[12],
        worker=row[13],
        lease_expires_at=None if row[14] is None else from_epoch_micros(row[14]),
        last_error=row[15],
        finished_at=None if row[16] is None else from_epoch_micros(row[16]),
        schedule=row[17],
        fire_time=None if row[18] is None else from_epoch_micros(row[18]),
        headers=json.loads(row[19]),
    )


def job_from_row(row: Sequence[Any]) -> JobRecord:
    """The record of a stored row. Rows were checked on the way in (every
    field went through `JobRecord`), so they are read back without running
    the converters again: that was most of a claim's CPU time. The JSON is
    decoded afresh, so the record shares nothing."""
    if not _TRUSTED_ROWS:  # pragma: no cover - a kernel with other job fields
        return _checked_job_from_row(row)
    job = object.__new__(JobRecord)
    _set(job, "id", row[0])
    _set(job, "task", row[1])
    _set(job, "args", json.loads(row[2]))
    _set(job, "kwargs", json.loads(row[3]))
    _set(job, "queue", row[4])
    _set(job, "priority", row[5])
    _set(job, "run_at", from_epoch_micros(row[6]))
    _set(job, "enqueued_at", from_epoch_micros(row[7]))
    _set(job, "dedup_key", row[8])
    _set(job, "timeout", row[9])
    _set(job, "retry", None if row[10] is None else json.loads(row[10]))
    _set(job, "attempts", row[11])
    _set(job, "state", _STATES[row[12]])
    _set(job, "worker", row[13])
    _set(job, "lease_expires_at", None if row[14] is None else from_epoch_micros(row[14]))
    _set(job, "last_error", row[15])
    _set(job, "finished_at", None if row[16] is None else from_epoch_micros(row[16]))
    _set(job, "schedule", row[17])
    _set(job, "fire_time", None if row[18] is None else from_epoch_micros(row[18]))
    _set(job, "headers", json.loads(row[19]))
    return job


def stored_copy(job: JobRecord, row: tuple[object, ...]) -> JobRecord:
    """What `enqueue` returns: ``job`` with JSON of its own, decoded from the
    text just stored (`attrs.evolve` would run every converter again)."""
    if not _TRUSTED_ROWS:  # pragma: no cover - a kernel with other job fields
        return attrs.evolve(job)
    copy = object.__new__(JobRecord)
    for name in _FIELDS:
        _set(copy, name, getattr(job, name))
    _set(copy, "args", json.loads(cast(str, row[2])))
    _set(copy, "kwargs", json.loads(cast(str, row[3])))
    if row[10] is not None:
        _set(copy, "retry", json.loads(cast(str, row[10])))
    _set(copy, "headers", json.loads(cast(str, row[19])))
    return copy


def micros_or_none(value: datetime | None) -> int | None:
    return None if value is None else to_epoch_micros(value)


def decode(text: str) -> JSON:
    return cast("JSON", json.loads(text))

"""Jobs as Redis hashes, and times as text that sorts.

A job is a hash under ``<prefix>job:<id>``: one field per `JobRecord` field
(a field that is None is absent), times as integer microseconds since the
epoch (`kernel.storage.base.to_epoch_micros`), JSON as text, plus three
fields of the store's own: ``seq`` (the insertion order, the last
tie-break of a claim), ``rk`` (`sortable_time` of ``run_at``) and ``tail``
(`sortable_time` of ``enqueued_at``, ``seq`` in 16 digits, then the id):
``rk + tail`` is the job's member in its queue's sorted set, so Redis keeps
the queue in claim order by comparing bytes (``ZRANGEBYLEX``), exactly,
for any date.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import attrs

from kernel.ports import JobRecord, JobState
from kernel.storage.base import from_epoch_micros, to_epoch_micros

__all__ = [
    "MEMBER_HEAD",
    "encode_json",
    "job_fields",
    "job_from_fields",
    "sortable_time",
    "stored_copy",
    "time_from_sortable",
]

encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode

_OFFSET: Final = 10**18
MEMBER_HEAD: Final = 19 + 19 + 16
"""Characters of a queue member before the job id: run_at, enqueued_at, seq."""


def sortable_time(value: datetime) -> str:
    """``value`` as 19 characters whose byte order is time order: ``1`` and
    18 digits of microseconds since the epoch, or ``0`` and 10**18 plus the
    (negative) microseconds before it. Every datetime fits."""
    micros = to_epoch_micros(value)
    if micros >= 0:
        return f"1{micros:018d}"
    return f"0{_OFFSET + micros:018d}"


def time_from_sortable(text: str) -> datetime:
    """The inverse of `sortable_time`."""
    magnitude = int(text[1:])
    return from_epoch_micros(magnitude if text[0] == "1" else magnitude - _OFFSET)


def _micros(value: datetime | None) -> str | None:
    return None if value is None else str(to_epoch_micros(value))


def job_fields(job: JobRecord) -> list[str]:
    """The hash fields of a job being enqueued, as ``[name, value, ...]``
    (None fields left out)."""
    pairs: list[tuple[str, str | None]] = [
        ("id", job.id),
        ("task", job.task),
        ("args", encode_json(job.args)),
        ("kwargs", encode_json(job.kwargs)),
        ("queue", job.queue),
        ("priority", str(job.priority)),
        ("run_at", str(to_epoch_micros(job.run_at))),
        ("enqueued_at", str(to_epoch_micros(job.enqueued_at))),
        ("dedup_key", job.dedup_key),
        ("timeout", None if job.timeout is None else repr(job.timeout)),
        ("retry", None if job.retry is None else encode_json(job.retry)),
        ("attempts", str(job.attempts)),
        ("state", job.state.value),
        ("worker", job.worker),
        ("lease_expires_at", _micros(job.lease_expires_at)),
        ("last_error", job.last_error),
        ("finished_at", _micros(job.finished_at)),
        ("schedule", job.schedule),
        ("fire_time", _micros(job.fire_time)),
        ("headers", encode_json(job.headers)),
    ]
    flat: list[str] = []
    for name, value in pairs:
        if value is not None:
            flat += (name, value)
    return flat


_FIELDS: Final = (
    "id",
    "task",
    "args",
    "kwargs",
    "queue",
    "priority",
    "run_at",
    "enqueued_at",
    "dedup_key",
    "timeout",
    "retry",
    "attempts",
    "state",
    "worker",
    "lease_expires_at",
    "last_error",
    "finished_at",
    "schedule",
    "fire_time",
    "headers",
)
_TRUSTED: Final = tuple(field.name for field in attrs.fields(JobRecord)) == _FIELDS
"""Whether `job_from_fields` may skip `JobRecord`'s converters: only while the
record has exactly the fields this module stores (a newer kernel with
another field gets the checked, slower path instead of a half-built record)."""
_STATES: Final = {state.value: state for state in JobState}
_set = object.__setattr__


def _time(value: str | None) -> datetime | None:
    return None if value is None else from_epoch_micros(int(value))


def _as_dict(fields: Sequence[Any] | dict[str, Any]) -> dict[str, str]:
    if isinstance(fields, dict):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=True))


def job_from_fields(fields: Sequence[Any] | dict[str, Any]) -> JobRecord:
    """The record of a stored hash (``HGETALL``'s list or dict). Hashes were
    checked on the way in (every field went through `JobRecord`), so they
    are read back without running the converters again; the JSON is decoded
    afresh, so the record shares nothing."""
    data = _as_dict(fields)
    get = data.get
    values: dict[str, object] = {
        "id": data["id"],
        "task": data["task"],
        "args": json.loads(data["args"]) if "args" in data else [],
        "kwargs": json.loads(data["kwargs"]) if "kwargs" in data else {},
        "queue": data["queue"],
        "priority": int(data["priority"]),
        "run_at": from_epoch_micros(int(data["run_at"])),
        "enqueued_at": from_epoch_micros(int(data["enqueued_at"])),
        "dedup_key": get("dedup_key"),
        "timeout": None if "timeout" not in data else float(data["timeout"]),
        "retry": None if "retry" not in data else json.loads(data["retry"]),
        "attempts": int(data["attempts"]),
        "state": _STATES[data["state"]],
        "worker": get("worker"),
        "lease_expires_at": _time(get("lease_expires_at")),
        "last_error": get("last_error"),
        "finished_at": _time(get("finished_at")),
        "schedule": get("schedule"),
        "fire_time": _time(get("fire_time")),
        "headers": json.loads(data["headers"]) if "headers" in data else {},
    }
    if not _TRUSTED:  # pragma: no cover - a kernel with other job fields
        return JobRecord(**values)
    job = object.__new__(JobRecord)
    for name in _FIELDS:
        _set(job, name, values[name])
    return job


def stored_copy(job: JobRecord) -> JobRecord:
    """What `enqueue` returns: ``job`` with JSON of its own (`attrs.evolve`
    would run every converter again)."""
    if not _TRUSTED:  # pragma: no cover - a kernel with other job fields
        return attrs.evolve(job)
    copy = object.__new__(JobRecord)
    for name in _FIELDS:
        _set(copy, name, getattr(job, name))
    _set(copy, "args", json.loads(encode_json(job.args)))
    _set(copy, "kwargs", json.loads(encode_json(job.kwargs)))
    if job.retry is not None:
        _set(copy, "retry", json.loads(encode_json(job.retry)))
    _set(copy, "headers", dict(job.headers))
    return copy

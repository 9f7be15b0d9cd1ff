"""A job as stored: its states, the `JobRecord` value, ids, and cheap copies.

A job is one call of a named task with JSON arguments, waiting in a queue
until it is due and then run by one worker at a time under a **lease**: the
worker that claims it must renew the lease (heartbeat) until it reports the
outcome, and a job whose lease runs out (its worker died) is put back in the
queue by `JobStore.reap_expired`, with that attempt spent. This is the
visibility timeout of SQS and the lease of Google Cloud Tasks; the store
side (`kernel.ports.JobStore`) follows Hangfire, Oban and solid_queue.

`JobRecord` is a frozen attrs value with a JSON form (no pickle: a shared
store must never execute what it reads). Every field is checked when a
record is made; `derive_record` and `check_fields` make new records from
checked ones without checking the unchanged fields again, which is what
keeps the hot path of the queue cheap.

State machine (``docs/storage.md`` has the table)::

    queued --claim--> running --complete--> succeeded
      ^  ^               |  |----bury-----> dead --retry_dead--> queued
      |  +--retry_later--+  |
      |  +--release------+  (attempt not spent)
      |  +--reap_expired-+  (lease ran out, attempt spent)
      +--------------------- cancel (queued or running) --> cancelled
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import cast

import attrs

from kernel.errors import InvalidJob
from kernel.jobs._checks import (
    MAX_DEDUP_KEY_BYTES,
    checked_name,
    clean_error_text,
    utc_datetime,
    validate_job_id,
    validate_name,
)
from kernel.serialization import JSON, copy_json

__all__ = [
    "FINISHED_STATES",
    "LIVE_STATES",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE_BYTES",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "JobRecord",
    "JobState",
    "check_fields",
    "clone_json",
    "derive_record",
    "new_job_id",
    "validate_state",
]


class JobState(enum.Enum):
    """Where a job is in its life; the values are what stores and JSON hold."""

    queued = "queued"
    """Waiting until ``run_at``, then for a worker."""
    running = "running"
    """Claimed by ``worker`` under a lease until ``lease_expires_at``."""
    succeeded = "succeeded"
    dead = "dead"
    """Failed for good (out of attempts, or not retryable): the dead letter,
    with the reason and traceback in ``last_error``."""
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job has left the queue for good (purge may delete it)."""
        return self in FINISHED_STATES


LIVE_STATES = frozenset({JobState.queued, JobState.running})
"""The states in which a job holds its dedup key."""

FINISHED_STATES = frozenset({JobState.succeeded, JobState.dead, JobState.cancelled})

MIN_PRIORITY = -(2**31)
MAX_PRIORITY = 2**31 - 1
"""Priorities fit a signed 32-bit integer (PostgreSQL ``integer``), so an
aged priority stays far inside 64 bits on every backend."""


def _optional_error(value: object) -> str | None:
    return None if value is None else clean_error_text(value)


def _task(value: object) -> str:
    return checked_name("task", value)


def _queue(value: object) -> str:
    return checked_name("queue", value)


def _dedup_key(value: object) -> str | None:
    return None if value is None else validate_name("dedup_key", value, limit=MAX_DEDUP_KEY_BYTES)


def _worker(value: object) -> str | None:
    return None if value is None else validate_name("worker", value)


def _schedule(value: object) -> str | None:
    return None if value is None else validate_name("schedule", value)


def _run_at(value: object) -> datetime:
    return utc_datetime(value, field="run_at")


def _enqueued_at(value: object) -> datetime:
    return utc_datetime(value, field="enqueued_at")


def _lease_expires_at(value: object) -> datetime | None:
    return None if value is None else utc_datetime(value, field="lease_expires_at")


def _finished_at(value: object) -> datetime | None:
    return None if value is None else utc_datetime(value, field="finished_at")


def _fire_time(value: object) -> datetime | None:
    return None if value is None else utc_datetime(value, field="fire_time")


MAX_HEADERS = 32
MAX_HEADER_VALUE_BYTES = 4096


def _headers(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidJob("headers", value, f"must be a dict of str, not {type(value).__name__}")
    if len(value) > MAX_HEADERS:
        raise InvalidJob("headers", value, f"has {len(value)} entries, more than {MAX_HEADERS}")
    headers: dict[str, str] = {}
    for key, item in value.items():
        validate_name("headers key", key)
        if not isinstance(item, str):
            raise InvalidJob(f"headers[{key!r}]", item, f"must be a str, not {type(item).__name__}")
        if item:
            validate_name(f"headers[{key!r}]", item, limit=MAX_HEADER_VALUE_BYTES)
        headers[key] = item
    return headers


def _job_id(value: object) -> str:
    return validate_job_id(value)


def _args(value: object) -> list[JSON]:
    if not isinstance(value, list | tuple):
        raise InvalidJob("args", value, f"must be a list, not {type(value).__name__}")
    return cast("list[JSON]", copy_json(value, path="args"))


def _kwargs(value: object) -> dict[str, JSON]:
    if not isinstance(value, dict):
        raise InvalidJob("kwargs", value, f"must be a dict, not {type(value).__name__}")
    return cast("dict[str, JSON]", copy_json(value, path="kwargs"))


def _retry(value: object) -> dict[str, JSON] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidJob("retry", value, f"must be a dict or None, not {type(value).__name__}")
    return cast("dict[str, JSON]", copy_json(value, path="retry"))


def _priority(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidJob("priority", value, f"must be an int, not {type(value).__name__}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidJob(
            "priority", value, f"must be from {MIN_PRIORITY} to {MAX_PRIORITY} (32 bits)"
        )
    return int(value)


def _attempts(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidJob("attempts", value, "must be an int >= 0")
    return int(value)


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidJob("timeout", value, f"must be seconds (a float), not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidJob("timeout", value, "must be a positive, finite number of seconds")
    return float(value)


def validate_state(value: object) -> JobState:
    """Return ``value`` as a `JobState` (a member or its value), else raise `InvalidJob`."""
    if isinstance(value, JobState):
        return value
    try:
        return JobState(value)
    except ValueError:
        names = ", ".join(state.value for state in JobState)
        raise InvalidJob("state", value, f"must be a JobState ({names})") from None


class _JobIds:
    """80 random bits drawn once per process (again in a forked child), then
    a counter."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = secrets.token_hex(10)
        self.counter = itertools.count()


_ids = _JobIds()
os.register_at_fork(after_in_child=_ids.reset)


def new_job_id() -> str:
    """32 hex digits, unique across processes as a uuid4 is, for a fraction
    of the cost; a process's ids sort in the order it made them."""
    return f"{_ids.prefix}{next(_ids.counter):012x}"


@attrs.frozen(kw_only=True)
class JobRecord:
    """One job as a store holds it: what to run, when, and how it went.

    Every field is checked when a record is made (`InvalidJob`, or
    `NotJSONSerializable` for arguments that are not JSON), so a store only
    ever sees valid records; datetimes are aware and normalised to UTC, and
    ``args``, ``kwargs`` and ``retry`` are private JSON copies. A store hands
    out fresh records: changing one changes nothing stored.
    """

    id: str = attrs.field(factory=new_job_id, converter=_job_id)
    """32 hex digits by default (`new_job_id`)."""
    task: str = attrs.field(converter=_task)
    """The name the task is registered under."""
    args: list[JSON] = attrs.field(factory=list, converter=_args)
    kwargs: dict[str, JSON] = attrs.field(factory=dict, converter=_kwargs)
    queue: str = attrs.field(default="default", converter=_queue)
    priority: int = attrs.field(default=0, converter=_priority)
    """Higher runs first."""
    run_at: datetime = attrs.field(converter=_run_at)
    """When the job becomes due."""
    enqueued_at: datetime = attrs.field(converter=_enqueued_at)
    dedup_key: str | None = attrs.field(default=None, converter=_dedup_key)
    """While a job with this key is queued or running, enqueueing another
    with the same key returns the first instead."""
    timeout: float | None = attrs.field(default=None, converter=_timeout)
    """Seconds one attempt may run."""
    retry: dict[str, JSON] | None = attrs.field(default=None, converter=_retry)
    """A serialised retry policy; opaque to the store."""
    attempts: int = attrs.field(default=0, converter=_attempts)
    """Attempts started so far (a claim adds one; `JobStore.release` gives it back)."""
    state: JobState = attrs.field(default=JobState.queued, converter=validate_state)
    worker: str | None = attrs.field(default=None, converter=_worker)
    """Who runs it (or last ran it, once finished)."""
    lease_expires_at: datetime | None = attrs.field(default=None, converter=_lease_expires_at)
    last_error: str | None = attrs.field(default=None, converter=_optional_error)
    finished_at: datetime | None = attrs.field(default=None, converter=_finished_at)
    schedule: str | None = attrs.field(default=None, converter=_schedule)
    """The schedule that enqueued it, if any."""
    fire_time: datetime | None = attrs.field(default=None, converter=_fire_time)
    """The schedule slot it was enqueued for."""
    headers: dict[str, str] = attrs.field(factory=dict, converter=_headers)
    """Small text carried with the job for whoever runs it, not arguments of
    the task (Celery's message headers): the trace context of whoever
    enqueued it (W3C ``traceparent``), correlation ids. At most 32 entries."""

    def to_json(self) -> dict[str, JSON]:
        """The record as a JSON object (datetimes as ISO 8601 text in UTC)."""
        return {
            "id": self.id,
            "task": self.task,
            "args": copy_json(self.args),
            "kwargs": copy_json(self.kwargs),
            "queue": self.queue,
            "priority": self.priority,
            "run_at": self.run_at.isoformat(),
            "enqueued_at": self.enqueued_at.isoformat(),
            "dedup_key": self.dedup_key,
            "timeout": self.timeout,
            "retry": copy_json(self.retry),
            "attempts": self.attempts,
            "state": self.state.value,
            "worker": self.worker,
            "lease_expires_at": _iso(self.lease_expires_at),
            "last_error": self.last_error,
            "finished_at": _iso(self.finished_at),
            "schedule": self.schedule,
            "fire_time": _iso(self.fire_time),
            "headers": dict(self.headers),
        }

    @classmethod
    def from_json(cls, data: object) -> JobRecord:
        """The record ``data`` (what `to_json` returned, possibly through
        ``json.loads``) describes, else `InvalidJob`.

        Keys this version does not know are ignored, so a record written by
        a newer release still reads; missing optional keys take their
        defaults; ``id``, ``task``, ``run_at`` and ``enqueued_at`` are required.
        """
        if not isinstance(data, Mapping):
            raise InvalidJob("record", data, f"must be a JSON object, not {type(data).__name__}")
        for required in ("id", "task", "run_at", "enqueued_at"):
            if required not in data:
                raise InvalidJob(required, None, "is missing from the JSON record")
        fields: dict[str, object] = {}
        for field in _JSON_FIELDS:
            if field not in data:
                continue
            value = data[field]
            if field in _DATETIME_FIELDS and value is not None:
                value = _parse_iso(field, value)
            fields[field] = value
        return cls(**fields)


_JSON_FIELDS = tuple(field.name for field in attrs.fields(JobRecord))
_DATETIME_FIELDS = frozenset(
    {"run_at", "enqueued_at", "lease_expires_at", "finished_at", "fire_time"}
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_iso(field: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidJob(field, value, f"must be ISO 8601 text, not {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidJob(field, value, "is not an ISO 8601 date and time") from None
    return utc_datetime(parsed, field=field)


# ---------------------------------------------------------------------------
# Cheap copies
# ---------------------------------------------------------------------------

_RECORD_FIELDS = tuple(field.name for field in attrs.fields(JobRecord))
_set_slot = object.__setattr__
_new_record = object.__new__


def clone_json(value: JSON) -> JSON:
    """A deep copy of JSON the store already checked (`copy_json` without
    the checks: the store owns it, so only sharing must be avoided)."""
    if type(value) is list:
        return [clone_json(item) for item in value] if value else []
    if type(value) is dict:
        return {key: clone_json(item) for key, item in value.items()} if value else {}
    return value


def derive_record(record: JobRecord, changes: Mapping[str, object]) -> JobRecord:
    """``attrs.evolve`` without the converters, for records whose fields (and
    the ``changes``) are already checked: a job changes state five or six
    times, and re-checking and re-copying every field each time cost more
    than the rest of the store. Spelled out field by field (twice as fast as
    a loop over the fields; `_DERIVED_FIELDS` keeps it complete)."""
    get = changes.get
    new = _new_record(JobRecord)
    _set_slot(new, "id", get("id", record.id))
    _set_slot(new, "task", get("task", record.task))
    _set_slot(new, "args", get("args", record.args))
    _set_slot(new, "kwargs", get("kwargs", record.kwargs))
    _set_slot(new, "queue", get("queue", record.queue))
    _set_slot(new, "priority", get("priority", record.priority))
    _set_slot(new, "run_at", get("run_at", record.run_at))
    _set_slot(new, "enqueued_at", get("enqueued_at", record.enqueued_at))
    _set_slot(new, "dedup_key", get("dedup_key", record.dedup_key))
    _set_slot(new, "timeout", get("timeout", record.timeout))
    _set_slot(new, "retry", get("retry", record.retry))
    _set_slot(new, "attempts", get("attempts", record.attempts))
    _set_slot(new, "state", get("state", record.state))
    _set_slot(new, "worker", get("worker", record.worker))
    _set_slot(new, "lease_expires_at", get("lease_expires_at", record.lease_expires_at))
    _set_slot(new, "last_error", get("last_error", record.last_error))
    _set_slot(new, "finished_at", get("finished_at", record.finished_at))
    _set_slot(new, "schedule", get("schedule", record.schedule))
    _set_slot(new, "fire_time", get("fire_time", record.fire_time))
    _set_slot(new, "headers", get("headers", record.headers))
    return new


_DERIVED_FIELDS = (
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
if _DERIVED_FIELDS != _RECORD_FIELDS:  # pragma: no cover - a field added to JobRecord only
    raise AssertionError("derive_record must set every JobRecord field")


_CONVERTERS: dict[str, Callable[[object], object]] = {
    field.name: field.converter  # type: ignore[misc]
    for field in attrs.fields(JobRecord)
}


def check_fields(**fields: object) -> dict[str, object]:
    """Each of ``fields`` through its `JobRecord` converter (checked, and
    copied where mutable): with `derive_record`, a new job from a checked
    template costs its few changed fields, not all of them."""
    return {name: _CONVERTERS[name](value) for name, value in fields.items()}

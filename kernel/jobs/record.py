"""Jobs as stored: the record, its states, the `JobStore` port, and a memory store.

A job is one call of a named task with JSON arguments, waiting in a queue
until it is due and then run by one worker at a time under a **lease**: the
worker that claims it must renew the lease (heartbeat) until it reports the
outcome, and a job whose lease runs out (its worker died) is put back in the
queue by `JobStore.reap_expired`, with that attempt spent. This is the
visibility timeout of SQS and the lease of Google Cloud Tasks; the store
side follows Hangfire, Oban and solid_queue (a claim is one ``UPDATE ...
WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` on PostgreSQL,
the same statement under SQLite's write lock on SQLite).

This module is pure data and policy, no SQL and no I/O:

- `JobState` and `JobRecord` (a frozen attrs value with a JSON form, no
  pickle: a shared store must never execute what it reads);
- the argument checks every store applies at its boundary (`utc_datetime`,
  `validate_job_id`, ...), so that bad input fails the same way on every
  backend and before anything is written;
- `effective_priority` and `claim_order`, the claim order every store keeps;
- `JobStore`, the protocol, and `MemoryJobStore`, the reference store
  (``kernel.storage.sqlite.storage`` holds the durable one).

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
import heapq
import itertools
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import attrs
import trio

from kernel.errors import InvalidJob, JobConflict, StorageClosed
from kernel.ports import JSON, JSONLike, copy_json

__all__ = [
    "FINISHED_STATES",
    "LIVE_STATES",
    "MAX_CLAIM_LIMIT",
    "MAX_DEDUP_KEY_BYTES",
    "MAX_LIST_LIMIT",
    "MAX_NAME_BYTES",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "EnqueueListener",
    "JobRecord",
    "JobState",
    "JobStore",
    "MemoryJobStore",
    "check_enqueue",
    "claim_order",
    "clean_error_text",
    "dedup_conflict_reason",
    "effective_priority",
    "finished_state",
    "from_epoch_micros",
    "lease_expired_error",
    "now_or_wall_clock",
    "schedule_state_object",
    "to_epoch_micros",
    "utc_datetime",
    "validate_aging",
    "validate_job_id",
    "validate_job_ids",
    "validate_lease",
    "validate_limit",
    "validate_name",
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

MAX_CLAIM_LIMIT = 1000
MAX_LIST_LIMIT = 10_000

MAX_NAME_BYTES = 255
MAX_DEDUP_KEY_BYTES = 1024
_CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------------------
# Checks at the boundary
# ---------------------------------------------------------------------------


def validate_name(field: str, value: object, *, limit: int = MAX_NAME_BYTES) -> str:
    """Return ``value`` if it is a non-empty str of printable text of at most
    ``limit`` UTF-8 bytes (a task, queue, worker, schedule name, a dedup
    key), else raise `InvalidJob` naming ``field``.

    The rules of `kernel.ports.validate_key`: no control characters (NUL
    cannot be stored in PostgreSQL text) and no lone surrogates (no UTF-8).
    """
    if not isinstance(value, str):
        raise InvalidJob(field, value, f"must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidJob(field, value, "must not be empty")
    bad = _CONTROL_OR_SURROGATE.search(value)
    if bad is not None:
        raise InvalidJob(field, value, f"contains U+{ord(bad.group()):04X} at index {bad.start()}")
    size = len(value) if value.isascii() else len(value.encode("utf-8"))
    if size > limit:
        raise InvalidJob(field, value, f"is {size} bytes in UTF-8, more than {limit}")
    return value


def validate_job_id(job_id: object) -> str:
    """Return ``job_id`` if it can name a job (a printable str of at most 255
    bytes; `JobRecord` makes 32-hex-digit ids), else raise `InvalidJob`."""
    return validate_name("job_id", job_id)


def validate_job_ids(job_ids: object) -> list[str]:
    """Return ``job_ids`` (any iterable of ids, a lone str refused) as a list
    of checked ids, else raise `InvalidJob`."""
    if isinstance(job_ids, str | bytes) or not isinstance(job_ids, Iterable):
        raise InvalidJob(
            "job_ids", job_ids, f"must be an iterable of job ids, not {type(job_ids).__name__}"
        )
    return [validate_job_id(job_id) for job_id in job_ids]


def utc_datetime(value: object, *, field: str = "datetime") -> datetime:
    """Return ``value`` as an aware UTC `datetime`, else raise `InvalidJob`.

    A naive datetime is refused rather than guessed at (local time? UTC?):
    jobs are shared between processes and hosts, and a wrong guess moves
    every job by hours. An aware datetime in another zone is converted.
    """
    if not isinstance(value, datetime):
        raise InvalidJob(field, value, f"must be a datetime, not {type(value).__name__}")
    offset = value.utcoffset()
    if offset is None:
        raise InvalidJob(
            field, value, "is naive; pass an aware datetime, e.g. datetime.now(timezone.utc)"
        )
    if value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


_KNOWN_NAMES: set[str] = set()
_KNOWN_NAMES_MAX = 4096


def _checked_name(field: str, value: object) -> str:
    """`validate_name` with a small cache: workers and queues call the store
    with the same few names thousands of times a second."""
    if type(value) is str and value in _KNOWN_NAMES:
        return value
    name = validate_name(field, value)
    if len(_KNOWN_NAMES) >= _KNOWN_NAMES_MAX:
        _KNOWN_NAMES.clear()
    _KNOWN_NAMES.add(name)
    return name


def _positive_timedelta(field: str, value: object) -> timedelta:
    if not isinstance(value, timedelta):
        raise InvalidJob(field, value, f"must be a timedelta, not {type(value).__name__}")
    if value <= timedelta(0):
        raise InvalidJob(field, value, "must be positive")
    return value


def validate_lease(lease: object) -> timedelta:
    """Return ``lease`` if it is a positive `timedelta`, else raise `InvalidJob`."""
    return _positive_timedelta("lease", lease)


def validate_aging(aging: object) -> timedelta | None:
    """Return ``aging`` if it is None or a positive `timedelta`, else raise `InvalidJob`."""
    return None if aging is None else _positive_timedelta("aging", aging)


def validate_limit(limit: object, *, maximum: int, field: str = "limit") -> int:
    """Return ``limit`` if it is an int from 1 to ``maximum``, else raise `InvalidJob`."""
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise InvalidJob(field, limit, f"must be an int, not {type(limit).__name__}")
    if not 1 <= limit <= maximum:
        raise InvalidJob(field, limit, f"must be from 1 to {maximum}")
    return limit


def clean_error_text(text: object) -> str:
    """``text`` (an error message and traceback) made storable on every
    backend: NUL and lone surrogates (which a traceback of a badly encoded
    file name can hold) are escaped, not refused, because recording why a job
    failed must not fail in turn."""
    if not isinstance(text, str):
        raise InvalidJob("error", text, f"must be a str, not {type(text).__name__}")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _optional_error(value: object) -> str | None:
    return None if value is None else clean_error_text(value)


def _task(value: object) -> str:
    return _checked_name("task", value)


def _queue(value: object) -> str:
    return _checked_name("queue", value)


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


# ---------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------


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
# Claim order
# ---------------------------------------------------------------------------


def effective_priority(job: JobRecord, now: datetime, aging: timedelta | None) -> int:
    """``job.priority`` plus one for each full ``aging`` the job has waited
    while due, so a low priority cannot starve behind a stream of high ones.

    The wait counts from when the job became due, the later of ``run_at``
    and ``enqueued_at`` (a job delayed until tomorrow, or retried after a
    backoff, has not been waiting meanwhile), never below zero (an
    ``enqueued_at`` ahead of ``now``, from clock skew between hosts, does
    not lower a priority). In SQL, with times as integer microseconds::

        priority + max(0, :now - max(run_at, enqueued_at)) / :aging
    """
    if aging is None:
        return job.priority
    waited = now - max(job.run_at, job.enqueued_at)
    if waited <= timedelta(0):
        return job.priority
    return job.priority + waited // aging


def claim_order(
    job: JobRecord, now: datetime, aging: timedelta | None
) -> tuple[int, datetime, datetime]:
    """The sort key of a due job in a claim: highest effective priority
    first, then earliest ``run_at``, then earliest ``enqueued_at`` (stores add
    insertion order as the last tie-break)."""
    return (-effective_priority(job, now, aging), job.run_at, job.enqueued_at)


# ---------------------------------------------------------------------------
# The port
# ---------------------------------------------------------------------------


@runtime_checkable
class JobStore(Protocol):
    """Durable jobs with leases, and once-only schedule slots.

    The rules every store keeps (`kernel.testing.jobstore_contract` tests
    each one; ``docs/storage.md`` explains them):

    - arguments are checked (`utc_datetime`, `validate_job_id`,
      `validate_lease`...) before the backend is touched, so bad input raises
      `InvalidJob` (a `ValueError`) and changes nothing; an unknown job id is
      not an error: the call returns False or None;
    - each call is atomic, also between processes sharing the backend: no
      two `claim` calls ever return the same job while it runs;
    - a worker *holds* a job while the job is running with ``worker`` equal
      to it; `complete`, `retry_later`, `release`, `bury` and `heartbeat`
      act only on jobs the worker holds (False otherwise), so a worker whose
      lease ran out, or whose job was cancelled, cannot overwrite the outcome;
    - ``now`` is always passed in (stores read no clock, except that the
      optional ``now`` of `complete`, `bury`, `cancel` and `retry_dead`
      defaults to the wall clock), so the kernel's clock and tests decide time;
    - records handed out are fresh copies; after `aclose` (idempotent) every
      call raises `StorageClosed`; a backend failure is a `StorageError`.
    """

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Store ``job`` (state queued); returns it and True.

        A job of a schedule slot (``schedule`` and ``fire_time`` both set)
        claims that slot (as `claim_slot`) in the same transaction: if the
        slot was already claimed, by any process, nothing is stored and
        ``(job, False)`` is returned, so a slot enqueues once cluster-wide and
        a crash cannot claim a slot without its job. Then, if
        ``job.dedup_key`` is held by a queued or running job, nothing is
        stored (the slot stays claimed) and that job and False are returned.
        A stored id is `JobConflict`.
        """
        ...

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
        """Take up to ``limit`` due queued jobs of ``queue`` in `claim_order`,
        marking them running for ``worker`` until ``now + lease``, each with
        one more attempt; returns them in that order."""
        ...

    async def heartbeat(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        """Move the lease of each of ``job_ids`` that ``worker`` holds to
        ``lease_until``; returns the ids it holds (a job missing from the
        answer was reaped or cancelled: stop working on it)."""
        ...

    async def complete(self, job_id: str, *, worker: str, now: datetime | None = None) -> bool:
        """running -> succeeded (``finished_at = now``); False if ``worker``
        does not hold the job."""
        ...

    async def retry_later(self, job_id: str, *, worker: str, error: str, run_at: datetime) -> bool:
        """running -> queued until ``run_at``, the attempt spent and ``error``
        kept in ``last_error``; False if ``worker`` does not hold the job."""
        ...

    async def release(self, job_id: str, *, worker: str, run_at: datetime) -> bool:
        """running -> queued at ``run_at`` *without* spending the attempt
        (shutdown, cancellation of the worker); False if ``worker`` does not
        hold the job."""
        ...

    async def bury(
        self, job_id: str, *, worker: str, error: str, now: datetime | None = None
    ) -> bool:
        """running -> dead (the dead letter), ``error`` (reason and traceback)
        in ``last_error``; False if ``worker`` does not hold the job."""
        ...

    async def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        """queued or running -> cancelled; the cancelled record, or None if
        there is no such job or it had already finished. A running job's
        worker learns it from its next heartbeat, and its outcome is refused."""
        ...

    async def reap_expired(self, now: datetime) -> list[str]:
        """Put running jobs whose lease ended at or before ``now`` back in the
        queue (the attempt counts as spent; ``last_error`` says so); their ids."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        ...

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: str | None = None,
    ) -> list[JobRecord]:
        """Up to ``limit`` jobs (filtered by ``state`` and ``queue``) in id
        order, starting after ``after_id``: pass the last id of a page to get
        the next (keyset paging, stable under concurrent writes)."""
        ...

    async def retry_dead(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        """dead -> queued at ``now`` with ``attempts`` reset to 0; the record,
        or None if there is no such dead job. `JobConflict` if a live job
        holds its dedup key."""
        ...

    async def purge_dead(self, *, older_than: datetime | None = None) -> int:
        """Delete dead jobs that finished before ``older_than`` (all, if
        None); how many."""
        ...

    async def purge(self, *, state: JobState, older_than: datetime | None = None) -> int:
        """Delete finished jobs (succeeded, dead or cancelled) in ``state``
        that finished before ``older_than`` (all, if None); how many. The
        retention of finished jobs."""
        ...

    async def next_due(self, queue: str | None = None) -> datetime | None:
        """The earliest ``run_at`` of the queued jobs (of ``queue``), or None:
        the one timer the queue puts in the wheel."""
        ...

    async def claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        """True only for the first call with this (``schedule``,
        ``fire_time``), across every process sharing the store."""
        ...

    async def prune_slots(self, *, older_than: datetime) -> int:
        """Forget claimed slots whose fire time is before ``older_than`` (keep
        more than the longest misfire grace); how many."""
        ...

    async def get_schedule_state(self, schedule: str) -> dict[str, JSON] | None:
        """The JSON object last stored for ``schedule``, or None."""
        ...

    async def put_schedule_state(self, schedule: str, state: Mapping[str, JSONLike]) -> None:
        """Store ``state`` (last fire, next fire...) for ``schedule``."""
        ...

    async def aclose(self) -> None:
        """Release the backend; idempotent."""
        ...


@runtime_checkable
class EnqueueListener(Protocol):
    """What a store shared by several processes offers so that idle workers
    wake when another process makes a job claimable (PostgreSQL's
    LISTEN/NOTIFY), instead of polling. Optional: a store without it is
    worked from the queue's own timers, which see only this process's jobs.
    """

    async def listen_enqueued(
        self,
        wake: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Until cancelled, call ``wake(queue)`` on the trio thread whenever
        any process enqueues into ``queue`` or changes when a job of it is
        due (`JobStore.enqueue`, `retry_later`, `release`, `retry_dead`,
        `reap_expired`); ``task_status.started()`` once listening. A store
        reconnects by itself where it can (waking every queue afterwards,
        since notices may have been missed); a `StorageError` it raises makes
        the queue call it again after a backoff."""
        ...


# ---------------------------------------------------------------------------
# Shared by the stores
# ---------------------------------------------------------------------------


def check_enqueue(job: object) -> JobRecord:
    """Return ``job`` if it can be enqueued (a queued `JobRecord` with no
    worker, lease or finish time), else raise `InvalidJob`."""
    if not isinstance(job, JobRecord):
        raise InvalidJob("job", job, f"must be a JobRecord, not {type(job).__name__}")
    if job.state is not JobState.queued:
        raise InvalidJob("state", job.state, "enqueue takes a queued job")
    for field in ("worker", "lease_expires_at", "finished_at"):
        if getattr(job, field) is not None:
            raise InvalidJob(field, getattr(job, field), "must be None for a job being enqueued")
    return job


def finished_state(state: object) -> JobState:
    """Return ``state`` if it is a finished `JobState` (what `JobStore.purge`
    deletes), else raise `InvalidJob`."""
    checked = validate_state(state)
    if checked not in FINISHED_STATES:
        raise InvalidJob("state", state, "only finished jobs (succeeded, dead, cancelled) purge")
    return checked


def schedule_state_object(state: object) -> dict[str, JSON]:
    """``state`` checked as a JSON object (a copy), else `InvalidJob` or
    `NotJSONSerializable`."""
    if not isinstance(state, Mapping):
        raise InvalidJob("state", state, f"must be a dict, not {type(state).__name__}")
    if not isinstance(state, dict):
        state = dict(state)
    return cast("dict[str, JSON]", copy_json(state, path="state"))


def now_or_wall_clock(now: datetime | None) -> datetime:
    """``now`` checked (`utc_datetime`), or the wall clock when None."""
    return datetime.now(UTC) if now is None else utc_datetime(now, field="now")


def lease_expired_error(worker: str | None) -> str:
    """The ``last_error`` of a job put back by `JobStore.reap_expired`."""
    return f"lease expired: worker {worker!r} stopped renewing it (crashed or hung?)"


def dedup_conflict_reason(dedup_key: str) -> str:
    """`JobConflict`'s reason when requeueing would duplicate a live dedup key."""
    return f"another queued or running job holds its dedup key {dedup_key!r}"


def _slot(job: JobRecord) -> tuple[str, datetime] | None:
    """The schedule slot ``job`` claims when it is enqueued, if any."""
    if job.schedule is None or job.fire_time is None:
        return None
    return job.schedule, job.fire_time


def to_epoch_micros(value: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch: exact,
    sortable, and cheap arithmetic in SQL (how the SQLite store keeps times)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_epoch_micros(value: int) -> datetime:
    """The inverse of `to_epoch_micros`."""
    return _EPOCH + timedelta(microseconds=value)


# ---------------------------------------------------------------------------
# The memory store
# ---------------------------------------------------------------------------

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


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


def _fresh(record: JobRecord) -> JobRecord:
    """A copy of a stored record to hand out: its JSON is the caller's own."""
    return derive_record(
        record,
        {
            "args": clone_json(record.args),
            "kwargs": clone_json(record.kwargs),
            "retry": None if record.retry is None else clone_json(record.retry),
        },
    )


_Entry = tuple[datetime, datetime, int, str]
"""A queued job in its priority level's heap: (run_at, enqueued_at,
insertion order, id)."""


@attrs.define(eq=False)
class MemoryJobStore:
    """The `JobStore` in process memory, gone when the process ends.

    The reference for durable stores: the contract runs against it. Each
    method checks its arguments, passes one checkpoint, then completes
    without yielding, so each is atomic with respect to other trio tasks.

    Queued jobs are indexed per queue and per priority level, each level a
    heap by (``run_at``, ``enqueued_at``, insertion order). Within a level a
    job with ``run_at >= enqueued_at`` became due at ``run_at``, so the head
    of the heap has both the earliest ``run_at`` and the highest aged
    priority of its level: a claim compares the heads of the levels only,
    O(levels + limit x log n), exact for any ``now`` and ``aging`` (the
    levels play the part of Sidekiq's or Oban's per-priority queues). The
    rare job with ``run_at`` before ``enqueued_at`` (enqueued for a time
    already past) became due at ``enqueued_at``, which the heap order does
    not follow, so those wait in a side set that each claim scans. Entries
    of jobs that left the queue are dropped lazily, when they reach a head.

    Kept apart from `kernel.storage.memory.MemoryStorage` so the two can be
    composed into one object that satisfies both ports.
    """

    _jobs: dict[str, JobRecord] = attrs.field(factory=dict, init=False)
    _order: dict[str, int] = attrs.field(factory=dict, init=False)
    _levels: dict[str, dict[int, list[_Entry]]] = attrs.field(factory=dict, init=False)
    _entries: dict[str, _Entry] = attrs.field(factory=dict, init=False)
    _early: dict[str, set[str]] = attrs.field(factory=dict, init=False)
    _running: set[str] = attrs.field(factory=set, init=False)
    _live_dedup: dict[str, str] = attrs.field(factory=dict, init=False)
    _slots: set[tuple[str, datetime]] = attrs.field(factory=set, init=False)
    _schedule_states: dict[str, str] = attrs.field(factory=dict, init=False)
    _counter: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    async def __aenter__(self) -> MemoryJobStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StorageClosed("the memory job store is closed")

    # -- the queued-job index --------------------------------------------------

    def _index(self, job: JobRecord) -> None:
        if job.run_at >= job.enqueued_at:
            entry = (job.run_at, job.enqueued_at, self._order[job.id], job.id)
            levels = self._levels.get(job.queue)
            if levels is None:
                levels = self._levels[job.queue] = {}
            heap = levels.get(job.priority)
            if heap is None:
                levels[job.priority] = [entry]
            else:
                heapq.heappush(heap, entry)
            self._entries[job.id] = entry
        else:
            self._early.setdefault(job.queue, set()).add(job.id)

    def _unindex(self, job: JobRecord) -> None:
        if self._entries.pop(job.id, None) is None:
            early = self._early.get(job.queue)
            if early is not None:
                early.discard(job.id)
                if not early:
                    del self._early[job.queue]

    def _head(self, heap: list[_Entry]) -> _Entry | None:
        """The live entry at the top of ``heap``, dropping stale ones."""
        entries = self._entries
        while heap:
            head = heap[0]
            if entries.get(head[3]) is head:
                return head
            heapq.heappop(heap)
        return None

    def _heads(self, queue: str) -> list[tuple[int, _Entry]]:
        """(priority, head) of each non-empty level of ``queue``."""
        levels = self._levels.get(queue)
        if not levels:
            return []
        heads = []
        for priority, heap in list(levels.items()):
            head = self._head(heap)
            if head is None:
                del levels[priority]
            else:
                heads.append((priority, head))
        if not levels:
            del self._levels[queue]
        return heads

    # -- bookkeeping: every state change goes through _replace ---------------

    def _replace(self, old: JobRecord, **changes: object) -> JobRecord:
        """Store ``old`` with ``changes`` (already checked) and keep the
        indexes; returns the stored record (hand out `_fresh` copies)."""
        new = derive_record(old, changes)
        self._jobs[new.id] = new
        if old.state is JobState.queued:
            self._unindex(old)
        elif old.state is JobState.running:
            self._running.discard(old.id)
        if new.state is JobState.queued:
            self._index(new)
        elif new.state is JobState.running:
            self._running.add(new.id)
        if new.dedup_key is not None:
            if new.state in LIVE_STATES:
                self._live_dedup[new.dedup_key] = new.id
            elif self._live_dedup.get(new.dedup_key) == new.id:
                del self._live_dedup[new.dedup_key]
        return new

    def _held(self, job_id: str, worker: str) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.running or job.worker != worker:
            return None
        return job

    def _delete(self, job: JobRecord) -> None:
        del self._jobs[job.id]
        del self._order[job.id]

    # -- the port -----------------------------------------------------------

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        check_enqueue(job)
        await self._enter()
        if job.id in self._jobs:
            raise JobConflict(job.id, "a job with this id is already stored")
        slot = _slot(job)
        if slot is not None:
            if slot in self._slots:
                return _fresh(job), False
            self._slots.add(slot)
        if job.dedup_key is not None:
            holder = self._live_dedup.get(job.dedup_key)
            if holder is not None:
                return _fresh(self._jobs[holder]), False
        stored = _fresh(job)
        self._jobs[stored.id] = stored
        self._order[stored.id] = next(self._counter)
        self._index(stored)
        if stored.dedup_key is not None:
            self._live_dedup[stored.dedup_key] = stored.id
        return job, True  # the caller's own record: the store keeps a copy

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
        _checked_name("queue", queue)
        _checked_name("worker", worker)
        now = utc_datetime(now, field="now")
        validate_lease(lease)
        validate_limit(limit, maximum=MAX_CLAIM_LIMIT)
        validate_aging(aging)
        await self._enter()
        jobs = self._jobs
        # one candidate per level (its head) plus the early jobs, keyed by
        # claim_order and insertion order; the level (None: early) last
        candidates: list[tuple[int, datetime, datetime, int, str, int | None]] = []
        for level, (run_at, enqueued_at, seq, job_id) in self._heads(queue):
            if run_at <= now:
                rank = -effective_priority(jobs[job_id], now, aging)
                candidates.append((rank, run_at, enqueued_at, seq, job_id, level))
        for job_id in self._early.get(queue, ()):
            job = jobs[job_id]
            if job.run_at <= now:
                rank, run_at, enqueued_at = claim_order(job, now, aging)
                candidates.append((rank, run_at, enqueued_at, self._order[job_id], job_id, None))
        heapq.heapify(candidates)
        levels = self._levels.get(queue, {})
        lease_expires_at = now + lease
        claimed: list[JobRecord] = []
        while candidates and len(claimed) < limit:
            _rank, _run_at, _enqueued_at, _seq, job_id, priority = heapq.heappop(candidates)
            job = jobs[job_id]
            stored = self._replace(
                job,
                state=JobState.running,
                worker=worker,
                lease_expires_at=lease_expires_at,
                attempts=job.attempts + 1,
            )
            claimed.append(_fresh(stored))
            if priority is None:
                continue
            heap = levels[priority]
            head = self._head(heap)  # pops the claimed entry, now stale
            if head is None:
                del levels[priority]
            elif head[0] <= now:
                run_at, enqueued_at, seq, next_id = head
                rank = -effective_priority(jobs[next_id], now, aging)
                heapq.heappush(candidates, (rank, run_at, enqueued_at, seq, next_id, priority))
        if not levels:
            self._levels.pop(queue, None)
        return claimed

    async def heartbeat(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        ids = validate_job_ids(job_ids)
        _checked_name("worker", worker)
        lease_until = utc_datetime(lease_until, field="lease_until")
        await self._enter()
        held: set[str] = set()
        for job_id in ids:
            job = self._held(job_id, worker)
            if job is not None:
                self._replace(job, lease_expires_at=lease_until)
                held.add(job_id)
        return held

    async def complete(self, job_id: str, *, worker: str, now: datetime | None = None) -> bool:
        validate_job_id(job_id)
        _checked_name("worker", worker)
        finished_at = now_or_wall_clock(now)
        await self._enter()
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(job, state=JobState.succeeded, lease_expires_at=None, finished_at=finished_at)
        return True

    async def retry_later(self, job_id: str, *, worker: str, error: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        _checked_name("worker", worker)
        error = clean_error_text(error)
        run_at = utc_datetime(run_at, field="run_at")
        await self._enter()
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(
            job,
            state=JobState.queued,
            run_at=run_at,
            worker=None,
            lease_expires_at=None,
            last_error=error,
        )
        return True

    async def release(self, job_id: str, *, worker: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        _checked_name("worker", worker)
        run_at = utc_datetime(run_at, field="run_at")
        await self._enter()
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(
            job,
            state=JobState.queued,
            run_at=run_at,
            worker=None,
            lease_expires_at=None,
            attempts=max(job.attempts - 1, 0),
        )
        return True

    async def bury(
        self, job_id: str, *, worker: str, error: str, now: datetime | None = None
    ) -> bool:
        validate_job_id(job_id)
        _checked_name("worker", worker)
        error = clean_error_text(error)
        finished_at = now_or_wall_clock(now)
        await self._enter()
        job = self._held(job_id, worker)
        if job is None:
            return False
        self._replace(
            job,
            state=JobState.dead,
            lease_expires_at=None,
            last_error=error,
            finished_at=finished_at,
        )
        return True

    async def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        finished_at = now_or_wall_clock(now)
        await self._enter()
        job = self._jobs.get(job_id)
        if job is None or job.state not in LIVE_STATES:
            return None
        return _fresh(
            self._replace(
                job, state=JobState.cancelled, lease_expires_at=None, finished_at=finished_at
            )
        )

    async def reap_expired(self, now: datetime) -> list[str]:
        now = utc_datetime(now, field="now")
        await self._enter()
        expired = [
            job
            for job in map(self._jobs.__getitem__, self._running)
            if job.lease_expires_at is not None and job.lease_expires_at <= now
        ]
        expired.sort(key=lambda job: self._order[job.id])
        for job in expired:
            self._replace(
                job,
                state=JobState.queued,
                worker=None,
                lease_expires_at=None,
                last_error=clean_error_text(lease_expired_error(job.worker)),
            )
        return [job.id for job in expired]

    async def get_job(self, job_id: str) -> JobRecord | None:
        validate_job_id(job_id)
        await self._enter()
        job = self._jobs.get(job_id)
        return None if job is None else _fresh(job)

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: str | None = None,
    ) -> list[JobRecord]:
        state = None if state is None else validate_state(state)
        if queue is not None:
            validate_name("queue", queue)
        validate_limit(limit, maximum=MAX_LIST_LIMIT)
        if after_id is not None:
            validate_job_id(after_id)
        await self._enter()
        matching = sorted(
            job_id
            for job_id, job in self._jobs.items()
            if (state is None or job.state is state)
            and (queue is None or job.queue == queue)
            and (after_id is None or job_id > after_id)
        )
        return [_fresh(self._jobs[job_id]) for job_id in matching[:limit]]

    async def retry_dead(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        run_at = now_or_wall_clock(now)
        await self._enter()
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.dead:
            return None
        if job.dedup_key is not None and job.dedup_key in self._live_dedup:
            raise JobConflict(job_id, dedup_conflict_reason(job.dedup_key))
        stored = self._replace(
            job,
            state=JobState.queued,
            run_at=run_at,
            attempts=0,
            worker=None,
            finished_at=None,
        )
        return _fresh(stored)

    async def purge_dead(self, *, older_than: datetime | None = None) -> int:
        return await self.purge(state=JobState.dead, older_than=older_than)

    async def purge(self, *, state: JobState, older_than: datetime | None = None) -> int:
        state = finished_state(state)
        cutoff = None if older_than is None else utc_datetime(older_than, field="older_than")
        await self._enter()
        doomed = [
            job
            for job in self._jobs.values()
            if job.state is state
            and (cutoff is None or (job.finished_at is not None and job.finished_at < cutoff))
        ]
        for job in doomed:
            self._delete(job)
        return len(doomed)

    async def next_due(self, queue: str | None = None) -> datetime | None:
        if queue is not None:
            _checked_name("queue", queue)
        await self._enter()
        names = [queue] if queue is not None else list(self._levels.keys() | self._early.keys())
        earliest: datetime | None = None
        for name in names:
            for _priority, head in self._heads(name):
                if earliest is None or head[0] < earliest:
                    earliest = head[0]
            for job_id in self._early.get(name, ()):
                run_at = self._jobs[job_id].run_at
                if earliest is None or run_at < earliest:
                    earliest = run_at
        return earliest

    async def claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        validate_name("schedule", schedule)
        fire_time = utc_datetime(fire_time, field="fire_time")
        await self._enter()
        if (schedule, fire_time) in self._slots:
            return False
        self._slots.add((schedule, fire_time))
        return True

    async def prune_slots(self, *, older_than: datetime) -> int:
        cutoff = utc_datetime(older_than, field="older_than")
        await self._enter()
        doomed = {slot for slot in self._slots if slot[1] < cutoff}
        self._slots -= doomed
        return len(doomed)

    async def get_schedule_state(self, schedule: str) -> dict[str, JSON] | None:
        validate_name("schedule", schedule)
        await self._enter()
        text = self._schedule_states.get(schedule)
        return None if text is None else cast("dict[str, JSON]", json.loads(text))

    async def put_schedule_state(self, schedule: str, state: Mapping[str, JSONLike]) -> None:
        validate_name("schedule", schedule)
        text = _encode(schedule_state_object(state))
        await self._enter()
        self._schedule_states[schedule] = text

    async def aclose(self) -> None:
        """Forget everything; later calls raise `StorageClosed`. Idempotent."""
        self._closed = True
        self._jobs.clear()
        self._order.clear()
        self._levels.clear()
        self._entries.clear()
        self._early.clear()
        self._running.clear()
        self._live_dedup.clear()
        self._slots.clear()
        self._schedule_states.clear()
        await trio.lowlevel.checkpoint()


if TYPE_CHECKING:

    def _keeps_the_port(store: MemoryJobStore) -> JobStore:
        return store  # mypy proves MemoryJobStore satisfies the JobStore protocol

"""What every store shares: the checks at its boundary, the claim order,
and the small rules of the job-store contract that are the same everywhere.

The public module for adapter authors, with `kernel.ports` (the protocols)
and `kernel.testing` (the contract suites): APScheduler 4 keeps what its
data stores share in ``datastores/base.py`` for the same reason. Stores
call these checks *before* touching the backend, so that bad input fails
the same way, with the same error, on every backend and changes nothing:

- storage names: `validate_namespace`, `validate_key`, `validate_keys`,
  `validate_prefix` (`kernel.errors.InvalidStorageKey`);
- job fields and arguments: `validate_name`, `validate_job_id`,
  `utc_datetime`, `validate_lease`, `validate_limit`... and
  `check_enqueue` (`kernel.errors.InvalidJob`);
- the claim order every store keeps (`effective_priority`, `claim_order`),
  and how times are kept as integers (`to_epoch_micros`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import cast

from kernel._exports import fixup_module_metadata
from kernel.errors import InvalidJob, InvalidStorageKey
from kernel.jobs._checks import (
    MAX_CLAIM_LIMIT,
    MAX_DEDUP_KEY_BYTES,
    MAX_LIST_LIMIT,
    MAX_NAME_BYTES,
    checked_name,
    clean_error_text,
    utc_datetime,
    validate_aging,
    validate_job_id,
    validate_job_ids,
    validate_lease,
    validate_limit,
    validate_name,
)
from kernel.jobs.record import (
    FINISHED_STATES,
    LIVE_STATES,
    JobRecord,
    JobState,
    trusted_record,
    validate_state,
)
from kernel.serialization import JSON, copy_json

__all__ = [
    "FINISHED_STATES",
    "LIVE_STATES",
    "MAX_CLAIM_LIMIT",
    "MAX_DEDUP_KEY_BYTES",
    "MAX_KEY_BYTES",
    "MAX_LIST_LIMIT",
    "MAX_NAMESPACE_BYTES",
    "MAX_NAME_BYTES",
    "check_enqueue",
    "checked_name",
    "claim_order",
    "clean_error_text",
    "dedup_conflict_reason",
    "effective_priority",
    "finished_state",
    "from_epoch_micros",
    "job_list_filter",
    "lease_expired_error",
    "now_or_wall_clock",
    "schedule_state_object",
    "slot_of",
    "to_epoch_micros",
    "trusted_record",
    "utc_datetime",
    "validate_aging",
    "validate_job_id",
    "validate_job_ids",
    "validate_key",
    "validate_keys",
    "validate_lease",
    "validate_limit",
    "validate_name",
    "validate_namespace",
    "validate_prefix",
    "validate_state",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------------------
# Storage names
# ---------------------------------------------------------------------------

MAX_NAMESPACE_BYTES = 255
"""Longest namespace, in UTF-8 bytes (bytes, not characters, because that is
what backends index)."""

MAX_KEY_BYTES = 1024
"""Longest key or key prefix, in UTF-8 bytes: well under PostgreSQL's B-tree
entry limit (about 2,700 bytes) and Redis's practical key sizes."""

_CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _validate_name(kind: str, value: object, *, limit: int, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise InvalidStorageKey(kind, value, f"must be a str, not {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidStorageKey(kind, value, "must not be empty")
    bad = _CONTROL_OR_SURROGATE.search(value)
    if bad is not None:
        char = bad.group()
        what = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        raise InvalidStorageKey(
            kind, value, f"contains {what} (U+{ord(char):04X}) at index {bad.start()}"
        )
    size = len(value) if value.isascii() else len(value.encode("utf-8"))
    if size > limit:
        raise InvalidStorageKey(kind, value, f"is {size} bytes in UTF-8, more than {limit}")
    return value


def validate_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is a non-empty str of printable text of at
    most `MAX_NAMESPACE_BYTES`, else raise `InvalidStorageKey`.

    Control characters are refused (NUL cannot be stored in PostgreSQL text,
    a newline breaks every log line that names the key), and so are lone
    surrogates (no UTF-8 encoding).
    """
    return _validate_name("namespace", namespace, limit=MAX_NAMESPACE_BYTES, allow_empty=False)


def validate_key(key: object) -> str:
    """Return ``key`` if it is a non-empty str of printable text of at most
    `MAX_KEY_BYTES`, else raise `InvalidStorageKey` (rules as for
    `validate_namespace`)."""
    return _validate_name("key", key, limit=MAX_KEY_BYTES, allow_empty=False)


def validate_keys(keys: object) -> list[str]:
    """Return ``keys`` (any iterable of keys, such as a list or a generator) as
    a list, each checked by `validate_key`, else raise `InvalidStorageKey`.

    A lone str is refused rather than read as its characters.
    """
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise InvalidStorageKey(
            "keys", keys, f"must be an iterable of keys, not {type(keys).__name__}"
        )
    return [validate_key(key) for key in keys]


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a str that could start a valid key (the empty
    string selects every key), else raise `InvalidStorageKey`."""
    return _validate_name("prefix", prefix, limit=MAX_KEY_BYTES, allow_empty=True)


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
# The job-store contract's small rules
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


def job_list_filter(
    *,
    state: JobState | None,
    queue: str | None,
    after_id: str | None,
    limit: int,
    placeholder: str,
) -> tuple[str, list[object]]:
    """What a SQL store's `list_jobs` selects by, each argument checked: the
    ``WHERE`` clause (with a leading space; empty for no filter) and its
    parameters, the limit last for the ``LIMIT`` that follows the order.
    ``placeholder`` is the driver's (``?`` for sqlite3, ``%s`` for psycopg)."""
    conditions: list[str] = []
    params: list[object] = []
    if state is not None:
        conditions.append(f"state = {placeholder}")
        params.append(validate_state(state).value)
    if queue is not None:
        conditions.append(f"queue = {placeholder}")
        params.append(validate_name("queue", queue))
    if after_id is not None:
        conditions.append(f"id > {placeholder}")
        params.append(validate_job_id(after_id))
    params.append(validate_limit(limit, maximum=MAX_LIST_LIMIT))
    return (f" WHERE {' AND '.join(conditions)}" if conditions else ""), params


def lease_expired_error(worker: str | None) -> str:
    """The ``last_error`` of a job put back by `JobStore.reap_expired`."""
    return f"lease expired: worker {worker!r} stopped renewing it (crashed or hung?)"


def dedup_conflict_reason(dedup_key: str) -> str:
    """`JobConflict`'s reason when requeueing would duplicate a live dedup key."""
    return f"another queued or running job holds its dedup key {dedup_key!r}"


def slot_of(job: JobRecord) -> tuple[str, datetime] | None:
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


fixup_module_metadata(__name__, globals())

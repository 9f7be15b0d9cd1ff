"""The checks at the job store's boundary, shared by the record and every store.

Bad input must fail the same way on every backend, before anything is
written: a name too long for PostgreSQL's index, a NUL byte it cannot store,
a naive datetime that another host would read in another zone. Each check
returns its (normalised) value or raises `kernel.errors.InvalidJob` naming
the field. Stores import them through `kernel.storage.base`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from kernel.errors import InvalidJob

__all__ = [
    "MAX_CLAIM_LIMIT",
    "MAX_DEDUP_KEY_BYTES",
    "MAX_LIST_LIMIT",
    "MAX_NAME_BYTES",
    "checked_name",
    "clean_error_text",
    "utc_datetime",
    "validate_aging",
    "validate_job_id",
    "validate_job_ids",
    "validate_lease",
    "validate_limit",
    "validate_name",
]

MAX_CLAIM_LIMIT = 1000
MAX_LIST_LIMIT = 10_000

MAX_NAME_BYTES = 255
MAX_DEDUP_KEY_BYTES = 1024
_CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


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


def checked_name(field: str, value: object) -> str:
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


def validate_limit(limit: object, *, maximum: int, minimum: int = 1, field: str = "limit") -> int:
    """Return ``limit`` if it is an int from ``minimum`` to ``maximum``, else
    raise `InvalidJob`."""
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise InvalidJob(field, limit, f"must be an int, not {type(limit).__name__}")
    if not minimum <= limit <= maximum:
        raise InvalidJob(field, limit, f"must be from {minimum} to {maximum}")
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

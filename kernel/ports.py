"""The ports: what the kernel asks of a storage, a bus, a notifier and a job store.

A port is a `typing.Protocol`; an adapter is any object with those methods
(no base class to inherit). Every port is in this one module, the way
APScheduler 4 keeps its interfaces in ``abc.py``; the core never knows
which backend it talks to (httpcore's transports). The kernel ships one
adapter per port so it runs with nothing installed (`kernel.storage.memory`,
`kernel.bus.local`, `kernel.notifier.log`; SQLite in `kernel.storage.sqlite`);
PostgreSQL, Redis, Apprise... ship as extension packages found by URL
scheme through entry points (``docs/ports.md``).

The ports, and the values they speak:

- `Storage`: JSON values (`JSON`, checked by `copy_json`) under keys in
  namespaces;
- `Bus` and `Subscription`: `Message` s on dot-separated topics, with
  AMQP-style ``*`` and ``#`` patterns (`validate_topic`, `topic_matches`);
- `Notifier`: a title, a message and a `Level` (`validate_notification`),
  sent in a `NotificationContext` (`current_notification_context`: the
  topic, the plugin, the host) that an adapter may show;
- `JobStore`: `JobRecord` s under leases, and once-only schedule slots;
  `EnqueueListener`, the optional wake-up of idle workers across processes;
- `Trigger`: when a schedule fires next.

Adapter authors also need `kernel.storage.base` (the checks every store
applies at its boundary, the claim order) and `kernel.testing` (the
contract suites: an adapter is done when its suite passes on the real
system), and the URL helpers here (`url_options`, `redact_url`).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import attrs
import trio

from kernel._exports import fixup_module_metadata
from kernel.bus.topics import (
    MAX_TOPIC_LENGTH,
    segments_match,
    topic_matches,
    validate_pattern,
    validate_topic,
)
from kernel.errors import InvalidNotification
from kernel.jobs.record import JobRecord, JobState
from kernel.notifier.context import (
    NotificationContext,
    current_notification_context,
    notification_context,
)
from kernel.serialization import JSON, MAX_JSON_DEPTH, JSONLike, copy_json
from kernel.time.triggers import Trigger
from kernel.urls import (
    option_flag,
    option_int,
    option_seconds,
    redact_url,
    url_options,
    url_scheme,
)

__all__ = [
    "JSON",
    "MAX_JSON_DEPTH",
    "MAX_TITLE_LENGTH",
    "MAX_TOPIC_LENGTH",
    "Bus",
    "EnqueueListener",
    "JSONLike",
    "JobRecord",
    "JobState",
    "JobStore",
    "Level",
    "Message",
    "Notification",
    "NotificationContext",
    "Notifier",
    "Storage",
    "SubscriberAware",
    "Subscription",
    "Trigger",
    "copy_json",
    "current_notification_context",
    "notification_context",
    "option_flag",
    "option_int",
    "option_seconds",
    "redact_url",
    "segments_match",
    "topic_matches",
    "url_options",
    "url_scheme",
    "validate_notification",
    "validate_pattern",
    "validate_topic",
]

# ---------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------


@runtime_checkable
class Storage(Protocol):
    """Durable key-value state, in namespaces (one per plugin, one per kernel
    subsystem), holding JSON values.

    The rules every adapter keeps (the storage contract tests each one):

    - names are checked by `validate_namespace` / `validate_key` /
      `validate_keys` / `validate_prefix` and values by `copy_json` *before* the backend is
      touched, so bad input raises and changes nothing;
    - a value read back equals the value written (tuples read back as lists;
      the order of object keys is not kept); it is a fresh object, so
      mutating it changes nothing stored;
    - `keys` and `items` are sorted by code point, which is also UTF-8 byte
      order (SQL adapters: ``COLLATE "C"``); ``prefix`` is a literal prefix,
      never a pattern (escape ``%`` and ``_`` in ``LIKE``, ``*`` in Redis);
    - every method is atomic: concurrent calls never see half a write, and of
      two concurrent `delete` calls on one key exactly one returns True;
    - after `aclose` (idempotent) every other method raises `StorageClosed`;
    - a backend failure is a `StorageError` chained to the driver's error.

    Jobs and schedules will be further methods on this protocol (or
    protocols beside it), added with their contract tests.
    """

    async def get(self, namespace: str, key: str, default: JSON = None) -> JSON:
        """The value stored under ``key``, or ``default`` if there is none.

        A stored ``null`` also reads as None; `get_many` tells the two apart.
        """
        ...

    async def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, JSON]:
        """The values of those ``keys`` that exist; missing keys are absent."""
        ...

    async def put(self, namespace: str, key: str, value: JSONLike) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...

    async def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        ...

    async def keys(self, namespace: str, prefix: str = "") -> list[str]:
        """The keys starting with ``prefix``, sorted."""
        ...

    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, JSON]]:
        """The ``(key, value)`` pairs whose key starts with ``prefix``, sorted by key."""
        ...

    async def clear(self, namespace: str) -> int:
        """Remove every key of ``namespace`` (a plugin being uninstalled);
        the number removed."""
        ...

    async def aclose(self) -> None:
        """Release the backend; idempotent."""
        ...


# ---------------------------------------------------------------------------
# Bus
# ---------------------------------------------------------------------------


@attrs.frozen
class Message:
    """One published message as a subscriber receives it.

    ``payload`` is the subscriber's own copy: changing it affects no other
    subscriber and not the publisher. More fields (an id, a publish time)
    may be added later, always with defaults.
    """

    topic: str
    payload: JSON


@runtime_checkable
class Subscription(Protocol):
    """A live subscription: an async iterator of `Message`.

    Iteration ends cleanly (the ``async for`` loop just stops) when the bus
    is closed, after the messages already buffered. After the ``async with``
    that created it has exited, `receive` raises `trio.ClosedResourceError`.
    """

    @property
    def pattern(self) -> str:
        """The pattern subscribed to."""
        ...

    @property
    def dropped(self) -> int:
        """How many messages for this subscription were dropped because it
        did not keep up (its buffer was full)."""
        ...

    async def receive(self) -> Message:
        """The next message; raises `trio.EndOfChannel` once the bus is
        closed and the buffer is drained."""
        ...

    def __aiter__(self) -> AsyncIterator[Message]: ...


@runtime_checkable
class Bus(Protocol):
    """Publish/subscribe of JSON messages on dot-separated topics.

    The rules every adapter keeps (the bus contract tests each one):

    - topics are checked by `validate_topic`, patterns by `validate_pattern`
      and payloads by `copy_json` before anything is sent;
    - a subscription receives every message published, after its ``async
      with`` was entered, on a topic its pattern matches (`topic_matches`),
      once, in the order each publisher published;
    - `publish` never waits for a subscriber: a subscriber that does not
      keep up loses messages once ``buffer`` are waiting (which ones is the
      adapter's documented policy) and each loss is counted in
      `Subscription.dropped`: every message is delivered or counted;
    - leaving the ``async with`` unsubscribes; `aclose` (idempotent) ends
      every subscription's iteration, and later `publish` or `subscribe`
      raise `BusClosed`;
    - a backend failure is a `BusError` chained to the driver's error.
    """

    async def publish(self, topic: str, payload: JSONLike = None) -> None:
        """Send ``payload`` to every subscription whose pattern matches ``topic``."""
        ...

    def subscribe(
        self, pattern: str, *, buffer: int | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """A subscription to ``pattern``, live inside ``async with``.

        ``buffer`` bounds how many messages may wait for this subscriber
        (None: the adapter's default).
        """
        ...

    async def aclose(self) -> None:
        """End every subscription and release the backend; idempotent."""
        ...


@runtime_checkable
class SubscriberAware(Protocol):
    """A bus that can tell whether anyone subscribes to a topic (the local
    bus can; a bus shared between processes cannot know), so that senders
    of frequent events skip building them for nobody. Optional."""

    def has_subscribers(self, topic: str) -> bool:
        """Whether a message published on ``topic`` now would reach a
        subscriber; cheap enough to ask for every message."""
        ...


# ---------------------------------------------------------------------------
# Notifier
# ---------------------------------------------------------------------------

_CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

MAX_TITLE_LENGTH = 200
"""Longest notification title, in characters: a title is one line (an e-mail
subject, a chat message's first line)."""


@functools.total_ordering
class Level(enum.Enum):
    """How serious a notification is; ordered, and mapped onto `logging` levels.

    Values are the lower-case names, which is how they appear in config
    files and JSON (``Level("warning")``).
    """

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"

    @property
    def logging_level(self) -> int:
        """The matching stdlib `logging` level (``logging.WARNING``...)."""
        return _LOGGING_LEVELS[self.value]

    def __lt__(self, other: object) -> bool:  # total_ordering derives the rest
        if not isinstance(other, Level):
            return NotImplemented
        return self.logging_level < other.logging_level


_LOGGING_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


@attrs.frozen
class Notification:
    """One notification as delivered: what a notifier's contract test reads
    back from the backend to compare with what was sent."""

    title: str
    message: str
    level: Level = Level.info


def validate_notification(title: object, message: object, level: object) -> Notification:
    """Return the `Notification` if it is deliverable by every notifier, else
    raise `InvalidNotification`.

    The ``title`` is one line of printable text (a newline in an e-mail
    subject is header injection) of at most `MAX_TITLE_LENGTH` characters;
    the ``message`` is any text, possibly empty or multi-line (adapters
    truncate to what their medium allows); the ``level`` is a `Level`.
    """
    if not isinstance(title, str):
        raise InvalidNotification("title", title, f"must be a str, not {type(title).__name__}")
    if not title.strip():
        raise InvalidNotification("title", title, "must not be blank")
    bad = _CONTROL_OR_SURROGATE.search(title)
    if bad is not None:
        raise InvalidNotification(
            "title",
            title,
            f"contains U+{ord(bad.group()):04X} at index {bad.start()}; a title is one line",
        )
    if len(title) > MAX_TITLE_LENGTH:
        raise InvalidNotification(
            "title", title, f"is {len(title)} characters, more than {MAX_TITLE_LENGTH}"
        )
    if not isinstance(message, str):
        raise InvalidNotification(
            "message", message, f"must be a str, not {type(message).__name__}"
        )
    if not message.isascii() and _SURROGATE.search(message):
        raise InvalidNotification("message", message, "contains a lone surrogate")
    if not isinstance(level, Level):
        raise InvalidNotification(
            "level", level, "must be a kernel.ports.Level (Level.info, Level.warning...)"
        )
    return Notification(title, message, level)


@runtime_checkable
class Notifier(Protocol):
    """Tells a human something happened (a plugin disabled after too many
    crashes, a job in the dead-letter queue).

    The rules every adapter keeps (the notifier contract tests each one):
    arguments are checked by `validate_notification` before anything is
    sent; a delivered notification carries the title, message and level
    unchanged; after `aclose` (idempotent) `notify` raises `NotifierClosed`;
    a delivery failure is a `NotifierError` chained to the driver's error.
    """

    async def notify(self, title: str, message: str, level: Level = Level.info) -> None:
        """Deliver one notification."""
        ...

    async def aclose(self) -> None:
        """Release the backend; idempotent."""
        ...


# ---------------------------------------------------------------------------
# Job store
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
        """`complete` each of ``completed`` (``finished_at = now``), then
        `claim` up to ``limit`` (0 to `MAX_CLAIM_LIMIT`) jobs of ``queue``,
        in one round trip: the workers' hot path, so a store should make it
        one transaction (SQLite, PostgreSQL) or one script (Redis). Returns
        the ids it completed (those ``worker`` held) and the claimed jobs,
        as the two calls would."""
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
        payloads: bool = True,
    ) -> list[JobRecord]:
        """Up to ``limit`` jobs (filtered by ``state`` and ``queue``) in id
        order, starting after ``after_id``: pass the last id of a page to get
        the next (keyset paging, stable under concurrent writes). With
        ``payloads=False`` the records' ``args`` and ``kwargs`` are empty and
        the store need not read them (a listing that shows none)."""
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


fixup_module_metadata(__name__, globals())

"""The ports: what the kernel asks of a storage, a bus and a notifier.

A port is a `typing.Protocol`; an adapter is any object with those methods
(no base class to inherit). The kernel ships one adapter per port so it runs
with nothing installed (`kernel.storage.memory`, `kernel.bus.local`,
`kernel.notifier.log`); SQLite, PostgreSQL, Redis, NATS, e-mail... ship as
extension packages found by `kernel.runtime.discovery`. The shape follows
APScheduler 4's ``abc.py`` (data stores and event brokers behind one
interface each) and httpcore's transports (the core never knows which backend
it talks to).

This module also holds the rules every adapter applies at its boundary, so
that bad input fails the same way, with the same error, on every backend and
before anything is stored or sent:

- `copy_json`: a value is plain JSON (no NaN, no sets, no bytes, str keys
  only, no cycles) and what is stored is a copy;
- `validate_namespace`, `validate_key`, `validate_prefix`: storage names;
- `validate_topic`, `validate_pattern`, `topic_matches`: bus topics, with
  AMQP-style ``*`` and ``#`` wildcards;
- `validate_notification`: a notification's title, message and level.

An adapter is done when the contract suite in `kernel.testing` passes on the
real system; ``docs/ports.md`` shows how to write and test one.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeAlias, runtime_checkable

import attrs

from kernel.errors import (
    AdapterLoadError,
    AdapterNotFound,
    BusClosed,
    BusError,
    EntryPointConflict,
    InvalidAdapterURL,
    InvalidNotification,
    InvalidStorageKey,
    InvalidTopic,
    NotifierClosed,
    NotifierError,
    NotJSONSerializable,
    StorageClosed,
    StorageError,
)

__all__ = [
    "JSON",
    "MAX_JSON_DEPTH",
    "MAX_KEY_BYTES",
    "MAX_NAMESPACE_BYTES",
    "MAX_TITLE_LENGTH",
    "MAX_TOPIC_LENGTH",
    "AdapterLoadError",
    "AdapterNotFound",
    "Bus",
    "BusClosed",
    "BusError",
    "EntryPointConflict",
    "InvalidAdapterURL",
    "InvalidNotification",
    "InvalidStorageKey",
    "InvalidTopic",
    "JSONLike",
    "Level",
    "Message",
    "NotJSONSerializable",
    "Notification",
    "Notifier",
    "NotifierClosed",
    "NotifierError",
    "Storage",
    "StorageClosed",
    "StorageError",
    "Subscription",
    "copy_json",
    "segments_match",
    "topic_matches",
    "validate_key",
    "validate_keys",
    "validate_namespace",
    "validate_notification",
    "validate_pattern",
    "validate_prefix",
    "validate_topic",
]

# ---------------------------------------------------------------------------
# JSON values
# ---------------------------------------------------------------------------

JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None
"""A plain JSON value, as `json.loads` returns it: what every port hands back."""

JSONLike: TypeAlias = (
    bool | int | float | str | Sequence["JSONLike"] | Mapping[str, "JSONLike"] | None
)
"""What a port accepts: JSON typed covariantly, so that a ``dict[str, int]``
type-checks where a value is expected (``dict[str, JSON]`` is invariant and
would not). At run time `copy_json` decides: dicts, lists and tuples (read
back as lists) pass; other mappings and sequences do not."""

MAX_JSON_DEPTH = 256
"""Containers nested deeper than this are refused: such a value is a bug (or
an attack) long before it is data, and refusing it keeps every adapter's
encoder and decoder far from the recursion limit."""

_SURROGATE = re.compile(r"[\ud800-\udfff]")


class _NotJSON(Exception):
    """Raised inside `_copy`; each frame it crosses adds its index, so the
    path is only built when a value is refused (zero cost otherwise)."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        self.parts: list[str] = []


_HINTS: dict[str, str] = {
    "set": "use a list",
    "frozenset": "use a list",
    "bytes": "decode it, or encode it as base64 text",
    "bytearray": "decode it, or encode it as base64 text",
    "datetime": "use an ISO 8601 string",
    "date": "use an ISO 8601 string",
    "Decimal": "use a str, or a float if precision allows",
}


def _refuse_type(value: object) -> _NotJSON:
    name = type(value).__name__
    hint = _HINTS.get(name)
    return _NotJSON(value, f"{name} is not JSON" + (f" ({hint})" if hint else ""))


def _copy_str(value: str) -> str:
    if not value.isascii() and _SURROGATE.search(value):
        raise _NotJSON(value, "str with a lone surrogate is not JSON (it has no UTF-8 encoding)")
    return value if type(value) is str else str.__str__(value)


def _copy(value: object, depth: int, active: set[int]) -> JSON:
    if value is None:
        return None
    if isinstance(value, str):
        return _copy_str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if type(value) is int else int(value)  # IntEnum -> int
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJSON(value, f"float {value!r} is not JSON (JSON has no NaN or Infinity)")
        return value if type(value) is float else float(value)
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_JSON_DEPTH:
            raise _NotJSON(value, f"nested deeper than {MAX_JSON_DEPTH} levels")
        if id(value) in active:
            raise _NotJSON(value, "circular reference")
        active.add(id(value))
        try:
            if isinstance(value, dict):
                return _copy_dict(value, depth, active)
            copied: list[JSON] = []
            for index, item in enumerate(value):
                try:
                    copied.append(_copy(item, depth + 1, active))
                except _NotJSON as error:
                    error.parts.append(f"[{index}]")
                    raise
            return copied
        finally:
            active.discard(id(value))
    raise _refuse_type(value)


def _copy_dict(value: dict[object, object], depth: int, active: set[int]) -> dict[str, JSON]:
    copied: dict[str, JSON] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _NotJSON(
                value, f"key {key!r} is {type(key).__name__}, not str (JSON object keys are text)"
            )
        if not key.isascii() and _SURROGATE.search(key):
            raise _NotJSON(value, f"key {key!r} has a lone surrogate (it has no UTF-8 encoding)")
        try:
            copied[key if type(key) is str else str.__str__(key)] = _copy(item, depth + 1, active)
        except _NotJSON as error:
            error.parts.append(f"[{key!r}]")
            raise
    return copied


def copy_json(value: object, *, path: str = "value") -> JSON:
    """Return a plain-JSON deep copy of ``value``, or raise `NotJSONSerializable`.

    Accepts None, bool, int, finite float, str, and dicts with str keys, lists
    and tuples of those (subclasses such as `enum.IntEnum` or
    `collections.OrderedDict` are converted to the plain type; tuples become
    lists, as they would through any JSON codec). Refuses NaN and infinities
    (not JSON, and NaN breaks "you get back what you stored"), non-str keys
    (`json.dumps` would silently turn ``1`` into ``"1"``), strings with lone
    surrogates (no UTF-8 encoding, so no backend can store them), cycles and
    nesting deeper than `MAX_JSON_DEPTH`. The error names the offending part
    from ``path``: ``value['a'][2]: set is not JSON (use a list)``.

    Because the result shares nothing with ``value``, later changes to the
    caller's object cannot reach what was stored or published.
    """
    try:
        return _copy(value, 0, set())
    except _NotJSON as error:
        where = path + "".join(reversed(error.parts))
        raise NotJSONSerializable(where, error.value, error.reason) from None


# ---------------------------------------------------------------------------
# Storage
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

MAX_TOPIC_LENGTH = 255
"""Longest topic or pattern, in characters (all ASCII)."""

_SEGMENT = re.compile(r"[A-Za-z0-9_:-]+")


def _split(kind: str, value: object) -> tuple[str, list[str]]:
    if not isinstance(value, str):
        raise InvalidTopic(kind, value, f"must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidTopic(kind, value, "must not be empty")
    if len(value) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(kind, value, f"is {len(value)} characters, more than {MAX_TOPIC_LENGTH}")
    return value, value.split(".")


def _check_segment(kind: str, value: str, index: int, segment: str) -> None:
    if not segment:
        raise InvalidTopic(kind, value, f"segment {index} is empty (no leading, trailing or '..')")
    if _SEGMENT.fullmatch(segment) is None:
        raise InvalidTopic(
            kind,
            value,
            f"segment {index} {segment!r} may only hold letters, digits, '_', '-' and ':'",
        )


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid topic to publish on, else raise `InvalidTopic`.

    A topic is one or more dot-separated segments of ASCII letters, digits,
    ``_``, ``-`` and ``:`` (``user.activity``, ``data.changed``), at most
    `MAX_TOPIC_LENGTH` characters: a charset every broker (NATS subjects,
    Redis channels, AMQP routing keys) carries unchanged. Case matters.
    """
    text, segments = _split("topic", topic)
    for index, segment in enumerate(segments):
        if segment in ("*", "#"):
            raise InvalidTopic(
                "topic", text, f"segment {index} is the wildcard {segment!r}; publish on a topic"
            )
        _check_segment("topic", text, index, segment)
    return text


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise `InvalidTopic`.

    A pattern is a topic in which a whole segment may be ``*`` (exactly one
    segment) and the last segment may be ``#`` (zero or more segments), as in
    AMQP topic exchanges: ``user.*`` matches ``user.activity`` but not
    ``user.a.b``; ``data.#`` matches ``data``, ``data.changed`` and
    ``data.a.b``; ``#`` alone matches every topic. ``#`` is refused
    elsewhere so that every pattern maps onto NATS (``>``) and Redis globs.
    """
    text, segments = _split("pattern", pattern)
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "*":
            continue
        if segment == "#":
            if index != last:
                raise InvalidTopic("pattern", text, "'#' is only allowed as the last segment")
            continue
        if "*" in segment or "#" in segment:
            raise InvalidTopic(
                "pattern",
                text,
                f"segment {index} {segment!r}: a wildcard must be a whole segment",
            )
        _check_segment("pattern", text, index, segment)
    return text


def segments_match(pattern: Sequence[str], topic: Sequence[str]) -> bool:
    """Whether the split ``pattern`` matches the split ``topic`` (both valid).

    Linear in the number of segments; ``#`` can only be last, so there is no
    backtracking.
    """
    if pattern and pattern[-1] == "#":
        head = pattern[:-1]
        if len(topic) < len(head):
            return False
    else:
        head = pattern
        if len(topic) != len(head):
            return False
    return all(want in ("*", have) for want, have in zip(head, topic, strict=False))


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` is delivered to a subscription on ``pattern``.

    Validates both (`InvalidTopic`); adapters whose broker has no wildcards
    of this shape filter with it.
    """
    return segments_match(validate_pattern(pattern).split("."), validate_topic(topic).split("."))


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


# ---------------------------------------------------------------------------
# Notifier
# ---------------------------------------------------------------------------

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

"""Bus topics and patterns: the names every bus adapter checks the same way.

A topic is dot-separated segments of ``[A-Za-z0-9_:-]``; a pattern may use
AMQP's wildcards, ``*`` for exactly one segment and ``#`` for zero or more.
Bus adapters import these through `kernel.ports`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kernel.errors import InvalidTopic

__all__ = [
    "MAX_TOPIC_LENGTH",
    "segments_match",
    "topic_matches",
    "validate_pattern",
    "validate_topic",
]

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

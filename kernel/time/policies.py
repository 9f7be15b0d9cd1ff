"""Schedule policies: what happens when a slot is late (misfire) or the
previous run is still going (overlap).

Each policy is a small frozen type plus a pure decision function
(`plan_misfire`, `decide_overlap`), after APScheduler's
``misfire_grace_time`` / ``coalesce`` and ``max_instances``, and Quartz's
misfire instructions. No clock and no trio: the scheduler passes the time
and the counts, and obeys the answer.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

__all__ = [
    "MAX_MISSED_SLOTS",
    "AllowOverlap",
    "CancelRunning",
    "CatchUp",
    "MisfirePolicy",
    "OverlapAction",
    "OverlapPolicy",
    "QueueOne",
    "RunOnce",
    "SkipIfRunning",
    "SkipMissed",
    "decide_overlap",
    "plan_misfire",
]

_ZERO = timedelta(0)

# -- misfire ------------------------------------------------------------------


def _grace(_: object, attribute: attrs.Attribute[Any], value: timedelta | None) -> None:
    if value is not None and value < _ZERO:
        raise ValueError(f"grace must not be negative, got {value}")


@attrs.frozen
class SkipMissed:
    """Run a slot only if it can start within ``grace`` of its time; drop the
    rest. Several on-time slots at once coalesce into one run."""

    grace: timedelta | None = attrs.field(default=timedelta(seconds=1), validator=_grace)


@attrs.frozen
class RunOnce:
    """However many slots were missed, run once now (for the latest of them),
    provided it is no older than ``grace`` (None: any age). The default."""

    grace: timedelta | None = attrs.field(default=None, validator=_grace)


@attrs.frozen
class CatchUp:
    """Run every missed slot no older than ``grace`` (None: any age), oldest
    first. The scheduler looks back at most ``MAX_MISSED_SLOTS`` slots."""

    grace: timedelta | None = attrs.field(default=None, validator=_grace)


MisfirePolicy = SkipMissed | RunOnce | CatchUp

#: How many missed slots the scheduler enumerates after a stall, a restart or
#: a forward clock jump; older ones are skipped, whatever the policy.
MAX_MISSED_SLOTS = 1000


def plan_misfire(policy: MisfirePolicy, due: Sequence[datetime], now: datetime) -> list[datetime]:
    """Which of the ``due`` slots (oldest first, all ``<= now``) to run."""
    if policy.grace is None:
        in_grace = list(due)
    else:
        oldest = now - policy.grace
        in_grace = [slot for slot in due if slot >= oldest]
    if isinstance(policy, CatchUp):
        return in_grace
    return in_grace[-1:]


# -- overlap ------------------------------------------------------------------


@attrs.frozen
class SkipIfRunning:
    """A slot that comes while the previous run is still going is skipped.
    The default."""


@attrs.frozen
class QueueOne:
    """A slot that comes while a run is going waits for it; at most one waits,
    later slots coalesce into it."""


@attrs.frozen
class AllowOverlap:
    """Up to ``max_running`` runs at once; a slot beyond that is skipped."""

    max_running: int = attrs.field(default=2)

    @max_running.validator
    def _positive(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ValueError(f"max_running must be at least 1, got {value}")


@attrs.frozen
class CancelRunning:
    """A new slot cancels the runs still going, then starts."""


OverlapPolicy = SkipIfRunning | QueueOne | AllowOverlap | CancelRunning


class OverlapAction(enum.Enum):
    START = "start"
    SKIP = "skip"
    QUEUE = "queue"
    CANCEL_AND_START = "cancel-and-start"


def decide_overlap(policy: OverlapPolicy, *, running: int, queued: int) -> OverlapAction:
    """What to do with a slot that is due while ``running`` runs are going and
    ``queued`` are waiting."""
    if running == 0:
        return OverlapAction.START
    if isinstance(policy, AllowOverlap):
        return OverlapAction.START if running < policy.max_running else OverlapAction.SKIP
    if isinstance(policy, QueueOne):
        return OverlapAction.QUEUE if queued == 0 else OverlapAction.SKIP
    if isinstance(policy, CancelRunning):
        return OverlapAction.CANCEL_AND_START
    return OverlapAction.SKIP

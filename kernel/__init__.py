"""trio-kernel: an embeddable scheduler microkernel for Python on trio.

The public surface is what this module exports; adapters and contrib
packages use only these names (plus `kernel.ports` and `kernel.testing`).
"""

from __future__ import annotations

from kernel.clock import Clock
from kernel.cron import CronExpression
from kernel.errors import CronSyntaxError, KernelError
from kernel.scheduler import Schedule, Scheduler, ScheduleStats, open_scheduler
from kernel.triggers import (
    AllOf,
    AllowOverlap,
    AnyOf,
    At,
    CancelRunning,
    CatchUp,
    Cron,
    Every,
    MisfirePolicy,
    OverlapPolicy,
    QueueOne,
    RunOnce,
    SkipIfRunning,
    SkipMissed,
    Trigger,
)
from kernel.wheel import Timer, TimerWheel

__all__ = [
    "AllOf",
    "AllowOverlap",
    "AnyOf",
    "At",
    "CancelRunning",
    "CatchUp",
    "Clock",
    "Cron",
    "CronExpression",
    "CronSyntaxError",
    "Every",
    "KernelError",
    "MisfirePolicy",
    "OverlapPolicy",
    "QueueOne",
    "RunOnce",
    "Schedule",
    "ScheduleStats",
    "Scheduler",
    "SkipIfRunning",
    "SkipMissed",
    "Timer",
    "TimerWheel",
    "Trigger",
    "open_scheduler",
]

__version__ = "0.1.0.dev0"

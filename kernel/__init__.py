"""trio-kernel: an embeddable scheduler microkernel for Python on trio.

The public surface is what this module exports; adapters and contrib
packages use only these names (plus `kernel.ports` and `kernel.testing`).
"""

from __future__ import annotations

from kernel._exports import fixup_module_metadata
from kernel.errors import (
    CircuitOpen,
    ConfigError,
    CronSyntaxError,
    KernelError,
    PermissionDenied,
    PluginDependencyError,
    PluginStateError,
)
from kernel.jobs.queue import JobQueue, RateLimit
from kernel.observe.health import HealthMonitor, HealthReport, Status
from kernel.observe.metrics import Metrics
from kernel.ports import Bus, Level, Message, Notifier, Storage
from kernel.resilience.breaker import BreakerState, CircuitBreaker
from kernel.resilience.retry import Jitter, RetryPolicy
from kernel.runtime.embedding import KernelThread, embed_in_asyncio
from kernel.runtime.kernel import ExitCode, Kernel, PluginSpec
from kernel.runtime.plugins import (
    Manifest,
    Permission,
    Plugin,
    PluginContext,
    Restart,
    RestartIntensity,
)
from kernel.runtime.supervisor import PluginState
from kernel.time.clock import Clock
from kernel.time.cron import CronExpression
from kernel.time.scheduler import Schedule, Scheduler, ScheduleStats, open_scheduler
from kernel.time.triggers import (
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
from kernel.time.wheel import Timer, TimerWheel

__all__ = [
    "AllOf",
    "AllowOverlap",
    "AnyOf",
    "At",
    "BreakerState",
    "Bus",
    "CancelRunning",
    "CatchUp",
    "CircuitBreaker",
    "CircuitOpen",
    "Clock",
    "ConfigError",
    "Cron",
    "CronExpression",
    "CronSyntaxError",
    "Every",
    "ExitCode",
    "HealthMonitor",
    "HealthReport",
    "Jitter",
    "JobQueue",
    "Kernel",
    "KernelError",
    "KernelThread",
    "Level",
    "Manifest",
    "Message",
    "Metrics",
    "MisfirePolicy",
    "Notifier",
    "OverlapPolicy",
    "Permission",
    "PermissionDenied",
    "Plugin",
    "PluginContext",
    "PluginDependencyError",
    "PluginSpec",
    "PluginState",
    "PluginStateError",
    "QueueOne",
    "RateLimit",
    "Restart",
    "RestartIntensity",
    "RetryPolicy",
    "RunOnce",
    "Schedule",
    "ScheduleStats",
    "Scheduler",
    "SkipIfRunning",
    "SkipMissed",
    "Status",
    "Storage",
    "Timer",
    "TimerWheel",
    "Trigger",
    "embed_in_asyncio",
    "open_scheduler",
]

__version__ = "0.1.0.dev0"

fixup_module_metadata(__name__, globals())

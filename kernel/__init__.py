"""trio-kernel: an embeddable scheduler microkernel for Python on trio.

What an application or a plugin needs is exported here. Adapter and contrib
authors also use `kernel.ports` (the protocols), `kernel.storage.base` (what
every store shares) and `kernel.testing` (the contract suites); errors are
in `kernel.errors`. The code behind these names is grouped by concept under
``kernel/`` (``docs/ARCHITECTURE.md``) and may move; these paths do not.
"""

from __future__ import annotations

from kernel._exports import fixup_module_metadata
from kernel.config.files import KernelConfig, load_config, parse_config
from kernel.errors import (
    CircuitOpen,
    ConfigError,
    CronSyntaxError,
    KernelError,
    PermissionDenied,
    PluginDependencyError,
    PluginStateError,
)
from kernel.jobs.queue import JobQueue
from kernel.jobs.rate import RateLimit
from kernel.notifier.routing import NotifyRoute
from kernel.observe.health import HealthMonitor, HealthReport, HealthTransition, Status
from kernel.observe.instrument import (
    AttemptObserver,
    AttemptOutcome,
    AttemptResult,
    Instrumentation,
    PluginStep,
)
from kernel.observe.metrics import Metrics
from kernel.ports import Bus, JobRecord, JobState, Level, Message, Notifier, Storage
from kernel.resilience.breaker import BreakerState, CircuitBreaker
from kernel.resilience.retry import Jitter, RetryPolicy
from kernel.runtime.contrib import Contrib
from kernel.runtime.control import JobPage, KernelControl
from kernel.runtime.discovery import open_bus, open_notifier, open_storage
from kernel.runtime.embedding import AsyncioHandle, KernelThread, embed_in_asyncio
from kernel.runtime.kernel import ExitCode, Kernel, PluginSpec
from kernel.runtime.permissions import Permission
from kernel.runtime.plugin_queue import PluginQueue
from kernel.runtime.plugins import (
    Manifest,
    Plugin,
    PluginContext,
    Restart,
    RestartIntensity,
)
from kernel.runtime.supervisor import PluginState
from kernel.time.clock import Clock
from kernel.time.cron import CronExpression
from kernel.time.policies import (
    AllowOverlap,
    CancelRunning,
    CatchUp,
    MisfirePolicy,
    OverlapPolicy,
    QueueOne,
    RunOnce,
    SkipIfRunning,
    SkipMissed,
)
from kernel.time.scheduler import Schedule, Scheduler, ScheduleStats, open_scheduler
from kernel.time.triggers import AllOf, AnyOf, At, Cron, Every, Trigger
from kernel.time.wheel import Timer, TimerWheel

__all__ = [
    "AllOf",
    "AllowOverlap",
    "AnyOf",
    "AsyncioHandle",
    "At",
    "AttemptObserver",
    "AttemptOutcome",
    "AttemptResult",
    "BreakerState",
    "Bus",
    "CancelRunning",
    "CatchUp",
    "CircuitBreaker",
    "CircuitOpen",
    "Clock",
    "ConfigError",
    "Contrib",
    "Cron",
    "CronExpression",
    "CronSyntaxError",
    "Every",
    "ExitCode",
    "HealthMonitor",
    "HealthReport",
    "HealthTransition",
    "Instrumentation",
    "Jitter",
    "JobPage",
    "JobQueue",
    "JobRecord",
    "JobState",
    "Kernel",
    "KernelConfig",
    "KernelControl",
    "KernelError",
    "KernelThread",
    "Level",
    "Manifest",
    "Message",
    "Metrics",
    "MisfirePolicy",
    "Notifier",
    "NotifyRoute",
    "OverlapPolicy",
    "Permission",
    "PermissionDenied",
    "Plugin",
    "PluginContext",
    "PluginDependencyError",
    "PluginQueue",
    "PluginSpec",
    "PluginState",
    "PluginStateError",
    "PluginStep",
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
    "load_config",
    "open_bus",
    "open_notifier",
    "open_scheduler",
    "open_storage",
    "parse_config",
]

__version__ = "0.1.0.dev0"

fixup_module_metadata(__name__, globals())

"""The public surface, pinned (after trio's ``_tests/test_exports.py``).

Users and adapter authors import from a few public modules; the code behind
them lives in modules grouped by concept and may move. These tests fail when
a public name appears, disappears or reports a private ``__module__``, so
that a change of the surface is always a deliberate edit here.
"""

from __future__ import annotations

import importlib
import re
import types

import pytest

from kernel._exports import PUBLIC_MODULES

SURFACE: dict[str, list[str]] = {
    "kernel": [
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
    ],
    "kernel.bus.local": [
        "DEFAULT_BUFFER",
        "DropHook",
        "LocalBus",
        "LocalSubscription",
        "Overflow",
        "open_local_bus",
    ],
    "kernel.errors": [
        "AdapterLoadError",
        "AdapterNotFound",
        "BusClosed",
        "BusError",
        "CircuitOpen",
        "ConfigError",
        "CronSyntaxError",
        "DuplicateTask",
        "EntryPointConflict",
        "HealthCheckError",
        "InvalidAdapterURL",
        "InvalidCircuitBreaker",
        "InvalidJob",
        "InvalidNotification",
        "InvalidRetryPolicy",
        "InvalidStorageKey",
        "InvalidTopic",
        "JobConflict",
        "JobTimedOut",
        "KernelError",
        "KernelNotRunning",
        "MetricError",
        "NotFound",
        "NotJSONSerializable",
        "NotificationFailed",
        "NotifierClosed",
        "NotifierError",
        "NotifierNotConfigured",
        "PayloadError",
        "PermissionDenied",
        "PluginDependencyError",
        "PluginLoadError",
        "PluginNotFound",
        "PluginStateError",
        "SchemaOutdated",
        "SchemaVersionError",
        "StatusSocketError",
        "StatusUnavailable",
        "StorageClosed",
        "StorageLost",
        "StorageError",
        "UnknownTask",
    ],
    "kernel.notifier.log": [
        "DEFAULT_LOGGER",
        "LogNotifier",
        "open_log_notifier",
    ],
    "kernel.ports": [
        "Bus",
        "EnqueueListener",
        "JSON",
        "JSONLike",
        "JobRecord",
        "JobState",
        "JobStore",
        "Level",
        "MAX_JSON_DEPTH",
        "MAX_TITLE_LENGTH",
        "MAX_TOPIC_LENGTH",
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
    ],
    "kernel.storage.base": [
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
    ],
    "kernel.storage.memory": [
        "MemoryJobStore",
        "MemoryStorage",
        "open_memory_storage",
        "upgrade_memory_storage",
    ],
    "kernel.storage.sqlite": [
        "MEMORY",
        "MIGRATIONS",
        "Migration",
        "SCHEMA_VERSION",
        "SQLiteOptions",
        "SQLiteStorage",
        "Synchronous",
        "open_sqlite_storage",
        "parse_sqlite_url",
        "upgrade_sqlite_storage",
    ],
    "kernel.testing": [
        "BusContract",
        "JobStoreContract",
        "NotifierContract",
        "RecordingNotifier",
        "SharedJobStoreContract",
        "StorageContract",
    ],
}


def test_the_public_modules_are_the_pinned_ones() -> None:
    assert set(SURFACE) == PUBLIC_MODULES


@pytest.mark.parametrize("module_name", sorted(SURFACE))
def test_each_public_module_exports_exactly_its_pinned_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(SURFACE[module_name])
    assert len(set(module.__all__)) == len(module.__all__), "a name listed twice"
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.{name} is listed but missing"


@pytest.mark.parametrize("module_name", sorted(SURFACE))
def test_public_names_report_a_public_module(module_name: str) -> None:
    """``__module__`` is where a user imports the name from: the module
    itself, or another public module that exports it too."""
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        if not isinstance(obj, type | types.FunctionType):
            continue  # constants and type aliases carry no module
        home = obj.__module__
        assert home in PUBLIC_MODULES, f"{module_name}.{name}.__module__ is {home!r}"
        assert name in importlib.import_module(home).__all__, (
            f"{module_name}.{name} says it lives in {home}, which does not export it"
        )


def test_no_public_name_is_private() -> None:
    for module_name in SURFACE:
        module = importlib.import_module(module_name)
        assert not [name for name in module.__all__ if name.startswith("_")]


def test_the_error_tree_in_the_docstring_names_every_error() -> None:
    errors = importlib.import_module("kernel.errors")
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert re.search(rf"[─ ]{name}\b", doc), f"{name} is missing from the tree"
        assert issubclass(getattr(errors, name), errors.KernelError)

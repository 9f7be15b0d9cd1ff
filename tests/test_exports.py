"""The public surface, pinned (after trio's ``_tests/test_exports.py``).

Users and adapter authors import from a few public modules; the code behind
them lives in modules grouped by concept and may move. These tests fail when
a public name appears, disappears or reports a private ``__module__``, so
that a change of the surface is always a deliberate edit here.
"""

from __future__ import annotations

import importlib
import types

import pytest

from kernel._exports import PUBLIC_MODULES

SURFACE: dict[str, list[str]] = {
    "kernel": [
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
        "MetricError",
        "NotJSONSerializable",
        "NotifierClosed",
        "NotifierError",
        "PermissionDenied",
        "PluginDependencyError",
        "PluginLoadError",
        "PluginNotFound",
        "PluginStateError",
        "SchemaOutdated",
        "SchemaVersionError",
        "StorageClosed",
        "StorageError",
        "UnknownTask",
    ],
    "kernel.ports": [
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
    ],
    "kernel.testing": [
        "BusContract",
        "JobStoreContract",
        "NotifierContract",
        "RecordingNotifier",
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

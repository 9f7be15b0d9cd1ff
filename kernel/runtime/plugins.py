"""Plugins: the manifest a plugin declares and the context it is given.

A plugin is a class with a `Manifest` (name, version, permissions, config
type, dependencies, restart policy) and lifecycle hooks: ``on_install`` once
per store, ``on_enable`` each time it starts, an optional long-running
``run``, ``on_disable`` when it stops, ``on_uninstall`` when it is removed.

Everything a plugin does goes through its `PluginContext`, which is built
afresh for every start and tied to that start's nursery: schedules,
subscriptions and background tasks all live there, so disabling the plugin
(or a crash) ends all of them together and nothing keeps running. The
context is also where capabilities are enforced: storage is namespaced to
the plugin, and storage, bus and notifications exist only as far as the
manifest asked for them (a capability model, after the Erlang/OTP
application and browser-extension manifests).
"""

from __future__ import annotations

import enum
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import trio

from kernel.config.durations import describe_duration
from kernel.errors import PermissionDenied
from kernel.notifier.context import notification_context
from kernel.observe.metrics import MetricsView
from kernel.ports import JSON, Bus, JSONLike, Level, Message, Notifier, Storage
from kernel.resilience.retry import RetryPolicy
from kernel.runtime.permissions import Permission
from kernel.runtime.plugin_queue import PluginQueue
from kernel.time.policies import MisfirePolicy, OverlapPolicy
from kernel.time.scheduler import Schedule, Scheduler
from kernel.time.triggers import Trigger

if TYPE_CHECKING:
    from datetime import timedelta

    from kernel.jobs.queue import JobQueue
    from kernel.jobs.record import JobRecord

__all__ = [
    "Manifest",
    "Permission",
    "Plugin",
    "PluginContext",
    "PluginStart",
    "PluginStorage",
    "Restart",
    "RestartIntensity",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

#: How many jobs of one plugin's queue run at once unless it configures its
#: queue (``ctx.queue.configure(concurrency=...)``).
_DEFAULT_CONCURRENCY = 4

_RUN_ONCE = RetryPolicy(max_attempts=1)


class Restart(enum.Enum):
    """When the supervisor restarts a plugin (OTP's restart types).

    ``permanent``: always, whether it crashed or its ``run`` returned;
    ``transient``: only after a crash; ``temporary``: never.
    """

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


@attrs.frozen
class RestartIntensity:
    """At most ``max_restarts`` restarts within ``period`` seconds (OTP's
    intensity and period); past that the plugin is marked failed. Restarts
    wait ``backoff_initial * 2**k`` seconds, capped at ``backoff_max``, where
    k counts the restarts already in the period."""

    max_restarts: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    period: float = attrs.field(default=60.0, validator=_positive)
    backoff_initial: float = attrs.field(default=0.5, validator=_positive)
    backoff_max: float = attrs.field(default=30.0, validator=_positive)


def _permissions(values: Iterable[Permission | str]) -> frozenset[Permission]:
    try:
        return frozenset(Permission(value) for value in values)
    except ValueError as exc:
        known = ", ".join(p.value for p in Permission)
        raise ValueError(f"{exc}; known permissions: {known}") from None


def _name(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"plugin {attribute.name} must be 1-63 characters of a-z, 0-9, '_', '.', '-'"
            f" starting with a letter or digit, got {value!r}"
        )


@attrs.frozen
class Manifest:
    """What a plugin is and what it may do."""

    name: str = attrs.field(validator=_name)
    version: str = "0.1.0"
    description: str = ""
    permissions: frozenset[Permission] = attrs.field(default=frozenset(), converter=_permissions)
    #: An attrs class its ``[plugins.NAME.config]`` table is structured into.
    config: type | None = None
    #: Names of plugins that must be enabled first.
    requires: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    restart: Restart = attrs.field(default=Restart.PERMANENT, converter=Restart)
    intensity: RestartIntensity = RestartIntensity()


class Plugin:
    """Base class for plugins; override the hooks you need.

    Subclasses set ``manifest``. A plugin that defines ``run`` is a service
    with a body: when ``run`` returns the plugin has exited (and a permanent
    plugin is restarted); one without ``run`` stays enabled until disabled.
    A plugin that defines ``health`` is checked periodically.
    """

    manifest: ClassVar[Manifest]

    async def on_install(self, ctx: PluginContext) -> None:
        """Once per store, before the first enable (create tables, seed data)."""

    async def on_enable(self, ctx: PluginContext) -> None:
        """At every start: add schedules, subscriptions and tasks through ``ctx``."""

    async def on_disable(self, ctx: PluginContext) -> None:
        """At every stop, before the plugin's tasks are cancelled: flush, say goodbye."""

    async def on_uninstall(self, ctx: PluginContext) -> None:
        """When removed for good: drop what on_install created."""

    # Optional, found by name (not declared here so that subclasses define
    # them with their own signatures):
    #   async def run(self, ctx) -> None
    #   async def health(self, ctx) -> HealthReport | Status | bool


class PluginStorage:
    """A plugin's own namespace of the kernel's storage, behind its permissions."""

    def __init__(self, ctx: PluginContext, storage: Storage) -> None:
        self._ctx = ctx
        self._storage = storage
        self.namespace = f"plugin:{ctx.name}"

    async def get(self, key: str, default: JSON = None) -> JSON:
        self._ctx.require(Permission.STORAGE_READ)
        with self._ctx._timed("storage", "get"):
            return await self._storage.get(self.namespace, key, default)

    async def keys(self, prefix: str = "") -> list[str]:
        self._ctx.require(Permission.STORAGE_READ)
        with self._ctx._timed("storage", "keys"):
            return await self._storage.keys(self.namespace, prefix)

    async def items(self, prefix: str = "") -> list[tuple[str, JSON]]:
        self._ctx.require(Permission.STORAGE_READ)
        with self._ctx._timed("storage", "items"):
            return await self._storage.items(self.namespace, prefix)

    async def put(self, key: str, value: JSONLike) -> None:
        self._ctx.require(Permission.STORAGE_WRITE)
        with self._ctx._timed("storage", "put"):
            await self._storage.put(self.namespace, key, value)

    async def delete(self, key: str) -> bool:
        self._ctx.require(Permission.STORAGE_WRITE)
        with self._ctx._timed("storage", "delete"):
            return await self._storage.delete(self.namespace, key)


MessageHandler = Callable[[Message], Awaitable[None]]


@attrs.define(eq=False)
class _Belongings:
    """What one start of a plugin made, for the supervisor to pause and end."""

    schedules: list[Schedule] = attrs.field(factory=list)
    intake: list[trio.CancelScope] = attrs.field(factory=list)  # subscriptions


class PluginContext:
    """What one start of a plugin may use; see the module docstring. The
    supervisor ends the start through `PluginStart`, never through this."""

    def __init__(
        self,
        *,
        name: str,
        manifest: Manifest,
        config: Any,
        scheduler: Scheduler,
        storage: Storage,
        bus: Bus,
        notifier: Notifier,
        metrics: MetricsView,
        nursery: trio.Nursery,
        queue: PluginQueue | None = None,
        belongings: _Belongings | None = None,
    ) -> None:
        self.name = name
        self.manifest = manifest
        self.config = config
        self.log = logging.getLogger(f"kernel.plugin.{name}")
        self.metrics = metrics
        self.clock = scheduler.clock
        self.storage = PluginStorage(self, storage)
        self._scheduler = scheduler
        self._bus = bus
        self._notifier = notifier
        self._nursery = nursery
        self._owned = belongings if belongings is not None else _Belongings()
        self._queue = queue

    def require(self, permission: Permission) -> None:
        """Raise `PermissionDenied` unless the manifest grants ``permission``."""
        if permission not in self.manifest.permissions:
            raise PermissionDenied(self.name, permission.value)

    # -- time -----------------------------------------------------------------

    def schedule(
        self,
        func: Callable[[], Awaitable[object] | object],
        trigger: Trigger,
        *,
        name: str | None = None,
        misfire: MisfirePolicy | None = None,
        overlap: OverlapPolicy | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
    ) -> Schedule:
        """Run ``func`` at each fire of ``trigger``: the returned `Schedule`
        can be paused, resumed or cancelled, and goes away when the plugin
        stops. Each run is timed and logged in one line.

        In a kernel, each fire enqueues a job of the task ``<plugin>.<name>``
        in the plugin's queue, so runs get ``retry`` and ``timeout``, are
        stored (a restart meets ``misfire`` for the slots it missed) and fire
        once across every kernel sharing the storage; ``overlap`` is then
        ``SkipIfRunning()`` or ``AllowOverlap()``. Without ``retry`` a failed
        run is not retried: the next slot is its retry."""
        label = (
            name or getattr(func, "__name__", None) or f"schedule-{len(self._owned.schedules) + 1}"
        )
        runs = self.metrics.histogram("schedule_run_seconds", schedule=label)
        failures = self.metrics.counter("schedule_failures", schedule=label)
        log = self.log

        async def timed_run() -> None:
            with runs.time() as watch:
                try:
                    result = func()
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    failures.inc()
                    log.info("%s: failed: %s: %s", label, type(exc).__name__, exc)
                    raise
            log.info("%s: ok in %s", label, describe_duration(watch.elapsed or 0.0))

        if self._queue is None:
            if retry is not None or timeout is not None:
                raise TypeError("retry and timeout need the kernel's job queue")
            schedule = self._scheduler.add_schedule(
                timed_run,
                trigger,
                name=f"{self.name}/{label}",
                misfire=misfire,
                overlap=overlap,
                nursery=self._nursery,
            )
        else:
            task = self.register_task(label, timed_run, retry=retry or _RUN_ONCE, timeout=timeout)
            return self._queue.add_schedule(
                task, trigger, name=label, misfire=misfire, overlap=overlap
            )
        self._owned.schedules.append(schedule)
        return schedule

    async def sleep(self, seconds: float) -> None:
        """Sleep on the kernel's timer wheel."""
        await self._scheduler.sleep(seconds)

    # -- tasks ------------------------------------------------------------------

    def start_task(
        self, func: Callable[..., Awaitable[object]], *args: object, name: str | None = None
    ) -> None:
        """Run ``func(*args)`` in this plugin's nursery. If it raises, the
        plugin has crashed and its supervisor decides what happens next."""
        self._nursery.start_soon(func, *args, name=name or f"{self.name}: {func!r}")

    # -- jobs ---------------------------------------------------------------------

    @property
    def queue(self) -> PluginQueue:
        """The plugin's handle on jobs (`PluginQueue`: its own queue, and
        more as its permissions say); `RuntimeError` outside a kernel."""
        if self._queue is None:
            raise RuntimeError(f"plugin {self.name!r} runs without the kernel's job queue")
        return self._queue

    def register_task(
        self,
        name: str,
        func: Callable[..., Any],
        *,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        **options: Any,
    ) -> str:
        """Register ``func`` as the task ``<plugin>.<name>`` in the plugin's
        queue (named after the plugin), for this start; returns the task's
        full name. ``options`` are `JobQueue.register`'s (breaker,
        rate_limit, blocking). While the plugin is stopped its jobs wait."""
        return self.queue.register(name, func, retry=retry, timeout=timeout, **options)

    async def enqueue(self, task: str, *args: Any, **options: Any) -> JobRecord:
        """Enqueue a job of this plugin's task ``task`` (`PluginQueue.enqueue`:
        another plugin's task, by its full name, needs ``jobs``)."""
        return await self.queue.enqueue(task, *args, **options)

    # -- bus ----------------------------------------------------------------------

    async def publish(self, topic: str, payload: JSONLike = None) -> None:
        self.require(Permission.BUS_PUBLISH)
        with self._timed("bus", "publish"):
            await self._bus.publish(topic, payload)

    async def subscribe(
        self, pattern: str, handler: MessageHandler, *, buffer: int | None = None
    ) -> trio.CancelScope:
        """Call ``handler`` for every message matching ``pattern``, one at a
        time, in this plugin's nursery; a handler that raises crashes the
        plugin. The subscription is live when this returns. Cancel the
        returned scope to unsubscribe."""
        self.require(Permission.BUS_SUBSCRIBE)
        scope = trio.CancelScope()
        self._owned.intake.append(scope)
        handled = self.metrics.histogram("message_handler_seconds", pattern=pattern)

        async def pump(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                async with self._bus.subscribe(pattern, buffer=buffer) as subscription:
                    task_status.started()
                    async for message in subscription:
                        with handled.time():
                            await handler(message)

        await self._nursery.start(pump, name=f"{self.name}: subscribe {pattern}")
        return scope

    # -- notifications --------------------------------------------------------

    async def notify(self, title: str, message: str, level: Level = Level.info) -> None:
        self.require(Permission.NOTIFICATIONS)
        with self._timed("notifier", "notify"), notification_context("plugin", plugin=self.name):
            await self._notifier.notify(f"[{self.name}] {title}", message, level)

    def _timed(self, port: str, operation: str) -> Any:
        return self.metrics.histogram("adapter_call_seconds", port=port, operation=operation).time()


class PluginStart:
    """One start of a plugin as its supervisor drives it: the `PluginContext`
    handed to the plugin, and the means to open, pause and end what that
    start made. Apart from the context, so a plugin cannot end its own start
    (or another's) through what it is given."""

    def __init__(
        self,
        *,
        name: str,
        manifest: Manifest,
        config: Any,
        scheduler: Scheduler,
        storage: Storage,
        bus: Bus,
        notifier: Notifier,
        metrics: MetricsView,
        nursery: trio.Nursery,
        queue: JobQueue | None = None,
    ) -> None:
        self.name = name
        self._owned = _Belongings()
        self._queue = queue
        self._jobs = (
            PluginQueue(queue, name, manifest.permissions, self._owned.schedules)
            if queue is not None
            else None
        )
        self.ctx = PluginContext(
            name=name,
            manifest=manifest,
            config=config,
            scheduler=scheduler,
            storage=storage,
            bus=bus,
            notifier=notifier,
            metrics=metrics,
            nursery=nursery,
            queue=self._jobs,
            belongings=self._owned,
        )
        if queue is not None:
            queue.configure(name, concurrency=_DEFAULT_CONCURRENCY)
            # paused until `on_enable` has returned (`start_intake`): a job of
            # a task the plugin registers there must not be claimed before
            queue.pause(name)

    def start_intake(self) -> None:
        """``on_enable`` returned: the plugin's queue is claimed from."""
        if self._queue is not None:
            self._queue.resume(self.name)

    def stop_intake(self) -> None:
        """No new runs, jobs or messages; runs in progress go on."""
        for schedule in self._owned.schedules:
            schedule.pause()
        for scope in self._owned.intake:
            scope.cancel()
        if self._queue is not None:
            self._queue.pause(self.name)

    def close(self) -> None:
        """The start is over: its schedules and tasks are gone for good, and
        jobs still running are interrupted and put back (attempt refunded)."""
        for schedule in self._owned.schedules:
            schedule.cancel()
        if self._queue is not None and self._jobs is not None:
            self._queue.interrupt(self.name)
            self._jobs.unregister_all()

    async def wait_runs_done(self) -> None:
        for schedule in self._owned.schedules:
            await schedule.wait_idle()
        if self._queue is not None:
            await self._queue.wait_idle(self.name)

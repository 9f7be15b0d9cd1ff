"""The kernel: the root of the nursery tree.

``async with Kernel(...) as kernel:`` opens the adapters, starts the
scheduler and the health monitor, installs and enables the plugins in
dependency order, and on exit stops them in reverse order, each within its
grace period. `Kernel.run` is the blocking entry point with signal handling:
the first SIGINT / SIGTERM starts a graceful shutdown, a second one cancels
at once. `Kernel.exit_code` says how it ended (see `ExitCode`).

Plugin states are stored under the storage namespace ``kernel`` so that a
restart on a durable store restores what was enabled: a plugin an operator
disabled stays disabled.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import attrs
import trio

from kernel.config.structure import key_path, structure_config
from kernel.errors import PluginDependencyError, PluginStateError
from kernel.jobs.attempt import UNKNOWN_TASK_GRACE
from kernel.jobs.queue import JobQueue
from kernel.notifier.context import notification_context
from kernel.notifier.fanout import FanoutNotifier, open_fanout_notifier
from kernel.notifier.routing import NotifyRoute
from kernel.observe.health import HealthMonitor, HealthTransition
from kernel.observe.instrument import Instrumentation, PluginStep, checked_instrumentation
from kernel.observe.metrics import Metrics
from kernel.observe.storage_watch import StorageWatch
from kernel.observe.watchdog import LoopWatchdog
from kernel.ports import Bus, JobStore, Level, Notifier, Storage
from kernel.runtime.discovery import open_bus, open_storage
from kernel.runtime.plugins import Manifest, Plugin
from kernel.runtime.supervisor import KernelServices, PluginState, PluginSupervisor
from kernel.serialization import DEFAULT_MAX_PAYLOAD
from kernel.storage.memory import MemoryJobStore
from kernel.time.clock import Clock
from kernel.time.scheduler import Scheduler

__all__ = ["ExitCode", "Kernel", "PluginSpec", "dependency_order"]

log = logging.getLogger("kernel")

STATE_NAMESPACE = "kernel"


class ExitCode(enum.IntEnum):
    """How a kernel run ended."""

    OK = 0  #: stopped on request, every plugin within its grace period
    ERROR = 1  #: the kernel itself failed
    USAGE = 2  #: bad configuration or arguments; nothing was started
    FORCED = 3  #: a second signal, or a plugin outlived its grace period
    PLUGIN_FAILED = 4  #: a plugin was disabled after crashing past its restart budget
    STORAGE_FAILED = 5  #: the store failed past ``storage_failure_limit``, or was lost


@attrs.frozen
class PluginSpec:
    """A plugin to host: the instance, its instance name (default: the
    manifest's), its config (an instance of ``manifest.config`` or a mapping
    to structure into it), and whether to enable it."""

    plugin: Plugin
    name: str | None = None
    config: Any = None
    enabled: bool = True
    #: Where the config came from, for error messages ("kernel.toml").
    source: str = "code"

    @property
    def manifest(self) -> Manifest:
        manifest = getattr(type(self.plugin), "manifest", None)
        if not isinstance(manifest, Manifest):
            raise PluginStateError(f"{type(self.plugin).__qualname__} has no Manifest")
        return manifest

    @property
    def instance_name(self) -> str:
        return self.name or self.manifest.name


def dependency_order(requires: Mapping[str, Iterable[str]]) -> list[str]:
    """Names in an order where each comes after what it requires (Kahn's
    algorithm, keeping the given order among equals). A missing dependency
    or a cycle is a `PluginDependencyError` naming the plugins involved."""
    needs = {name: list(deps) for name, deps in requires.items()}
    for name, deps in needs.items():
        missing = [dep for dep in deps if dep not in needs]
        if missing:
            wanted = ", ".join(map(repr, missing))
            raise PluginDependencyError(
                f"plugin {name!r} requires {wanted}, which is not configured",
                plugins=(name, *missing),
            )
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(needs):
        ready = [n for n, deps in needs.items() if n not in placed and placed.issuperset(deps)]
        if not ready:
            cycle = _find_cycle({n: d for n, d in needs.items() if n not in placed})
            raise PluginDependencyError(
                f"plugin dependency cycle: {' -> '.join(cycle)}", plugins=tuple(cycle)
            )
        order.extend(ready)
        placed.update(ready)
    return order


def _find_cycle(needs: Mapping[str, list[str]]) -> list[str]:
    path: list[str] = []
    node = next(iter(needs))
    while node not in path:
        path.append(node)
        node = next(dep for dep in needs[node] if dep in needs)
    return [*path[path.index(node) :], node]


class Kernel:
    """The root of a trio-kernel; see the module docstring.

    ``storage``, ``bus`` and ``notifier`` are adapter objects or URLs
    (``memory://``, ``local://``, ``log://`` by default); ``notifier`` may
    also be a list of URLs and `NotifyRoute` s, each notification then going
    to every notifier that covers it (`kernel.notifier.fanout`: remote ones
    through the job queue, with noise control). The job queue keeps
    its jobs in ``jobs`` if given, else in the storage when it can (SQLite,
    PostgreSQL), else in memory. ``clock`` is for
    tests (`Clock.starting_at` under ``MockClock``). ``loop_stall`` is how
    long the event loop may be blocked before the watchdog warns and the
    ``loop`` health check turns degraded (None: no watchdog);
    ``unknown_task_grace`` how long a task may stay unknown before its jobs
    are buried, ``job_lease`` and ``job_heartbeat`` how long a claimed job
    is ours without a renewal and how often leases are renewed (`JobQueue`).
    ``storage_failure_limit`` is how many seconds the store may fail with no
    call succeeding before `serve` stops with `ExitCode.STORAGE_FAILED` (also
    at once when the store is lost: its SQLite file deleted or replaced);
    None never stops. ``exit_when_all_failed`` makes `serve` stop (exit 4)
    once every plugin not disabled has failed past its restart budget.
    The runner turns both on (docs/configuration.md). ``max_payload_bytes``
    caps a job's arguments, as JSON (None: no cap).
    """

    def __init__(
        self,
        plugins: Iterable[Plugin | PluginSpec] = (),
        *,
        storage: Storage | str = "memory://",
        bus: Bus | str = "local://",
        notifier: Notifier | str | NotifyRoute | Sequence[str | NotifyRoute] = "log://",
        jobs: JobStore | None = None,
        clock: Clock | None = None,
        shutdown_grace: float = 10.0,
        enable_timeout: float = 30.0,
        health_interval: float = 30.0,
        loop_stall: float | None = 1.0,
        unknown_task_grace: timedelta = UNKNOWN_TASK_GRACE,
        job_lease: timedelta = timedelta(seconds=30),
        job_heartbeat: timedelta = timedelta(seconds=10),
        storage_failure_limit: float | None = None,
        exit_when_all_failed: bool = False,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.specs = [p if isinstance(p, PluginSpec) else PluginSpec(p) for p in plugins]
        self.metrics = Metrics()
        self.health = HealthMonitor(on_transition=self._on_health_transition)
        self.exit_code = ExitCode.OK
        self._adapters = (storage, bus, notifier)
        self._jobs = jobs
        self._clock = clock
        self._shutdown_grace = shutdown_grace
        self._enable_timeout = enable_timeout
        self._health_interval = health_interval
        self._unknown_task_grace = unknown_task_grace
        self._lease = (job_lease, job_heartbeat)
        self._storage_failure_limit = storage_failure_limit
        self._exit_when_all_failed = exit_when_all_failed
        self._max_payload_bytes = max_payload_bytes
        self.storage_watch: StorageWatch | None = None
        self._started = False  # every plugin has been started once
        self.watchdog = (
            None
            if loop_stall is None
            else LoopWatchdog(
                threshold=loop_stall, describe=self._jobs_running, metrics=self.metrics
            )
        )
        self._supervisors: dict[str, PluginSupervisor] = {}
        self._order: list[str] = []
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._services: KernelServices | None = None
        self._shutdown_scope = trio.CancelScope()
        self._stop_requested = trio.Event()
        self._specs = {spec.instance_name: spec for spec in self.specs}
        self._configs: dict[str, Any] = {}
        self._instrumentation: Instrumentation | None = None
        self._validate()

    # -- the plugins --------------------------------------------------------------

    def _validate(self) -> None:
        names = [spec.instance_name for spec in self.specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PluginStateError(f"plugin names must be unique: {', '.join(duplicates)}")
        self._order = dependency_order({s.instance_name: s.manifest.requires for s in self.specs})

    @property
    def plugins(self) -> dict[str, PluginSupervisor]:
        """The supervisors of the plugins, by name, in start order."""
        return dict(self._supervisors)

    @property
    def scheduler(self) -> Scheduler:
        return self._require_services().scheduler

    @property
    def storage(self) -> Storage:
        return self._require_services().storage

    @property
    def queue(self) -> JobQueue:
        """The job queue: schedules enqueue here; register tasks and enqueue."""
        queue = self._require_services().queue
        assert queue is not None
        return queue

    @property
    def bus(self) -> Bus:
        return self._require_services().bus

    @property
    def notifier(self) -> Notifier:
        return self._require_services().notifier

    def _require_services(self) -> KernelServices:
        if self._services is None:
            raise PluginStateError("the kernel is not running: use `async with Kernel(...)`")
        return self._services

    # -- instrumentation ------------------------------------------------------------

    @property
    def instrumentation(self) -> Instrumentation | None:
        return self._instrumentation

    def instrument(self, instrumentation: Instrumentation | None) -> None:
        """Report enqueues, job attempts, schedule fires and plugin
        lifecycle steps to ``instrumentation`` (`kernel.observe.instrument`;
        ``trio-kernel-otel`` is one); None stops it. Call it before the
        kernel starts (a contrib's ``serve`` is entered before), or while it
        runs: from then on."""
        instrumentation = checked_instrumentation(instrumentation)
        self._instrumentation = instrumentation
        services = self._services
        if services is not None:
            services.instrumentation = instrumentation
            services.scheduler.instrument(instrumentation)
            if services.queue is not None:
                services.queue.instrument(instrumentation)

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> Kernel:
        # every config is checked before anything starts
        self._configs = {spec.instance_name: _structured(spec) for spec in self.specs}
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            storage, bus, notifier = await self._open_adapters(stack)
            jobs = await self._job_store(storage, stack)
            nursery = await stack.enter_async_context(trio.open_nursery())
            scheduler = Scheduler(self._clock)
            scheduler.instrument(self._instrumentation)
            await nursery.start(scheduler.run)
            watch = self.storage_watch = self._watch_storage(storage, jobs)
            self.health.register("storage", watch.check)
            queue = JobQueue(
                jobs,
                scheduler,
                bus=bus,
                metrics=self.metrics,
                unknown_task_grace=self._unknown_task_grace,
                lease=self._lease[0],
                heartbeat=self._lease[1],
                watch=watch,
                max_payload_bytes=self._max_payload_bytes,
            )
            queue.instrument(self._instrumentation)
            await nursery.start(queue.run)
            if self.watchdog is not None:
                await nursery.start(self.watchdog.run)
                self.health.register("loop", self.watchdog.check)
            if isinstance(notifier, FanoutNotifier):  # opened from URLs: the outbox, digests
                await nursery.start(notifier.run, queue, self.health)
            services = KernelServices(
                scheduler=scheduler,
                storage=storage,
                bus=bus,
                notifier=notifier,
                metrics=self.metrics,
                health=self.health,
                record_state=self._record_state,
                shutdown_grace=self._shutdown_grace,
                enable_timeout=self._enable_timeout,
                queue=queue,
                instrumentation=self._instrumentation,
            )
            self._stack, self._nursery, self._services = stack, nursery, services
            await nursery.start(self.health.run, self._health_interval)
            for name in self._order:
                await self._start_plugin(name)
            self._started = True
            self._stop_if_all_failed()
        except BaseException as exc:
            self._stack = None
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None or self._nursery is None:
            return None
        nursery = self._nursery
        try:
            with self._shutdown_scope:
                await self.shutdown()
        except BaseException as stopped:
            # cancelled by `cancel()` (our own nursery swallows that) or failed
            nursery.cancel_scope.cancel()
            if await stack.__aexit__(type(stopped), stopped, stopped.__traceback__):
                return None
            raise
        finally:
            self._services = None
        nursery.cancel_scope.cancel()
        return await stack.__aexit__(exc_type, exc, tb)

    def _watch_storage(self, storage: Storage, jobs: JobStore) -> StorageWatch:
        """The store's health: real calls' outcomes, and as a probe a read
        of the key-value store and one of the job store (an index walk)."""

        async def probe() -> None:
            await storage.get(STATE_NAMESPACE, "probe")
            await jobs.next_due()

        return StorageWatch(probe, limit=self._storage_failure_limit, on_limit=self._storage_failed)

    def _storage_failed(self, reason: str) -> None:
        self.exit_code = max(self.exit_code, ExitCode.STORAGE_FAILED)
        self.request_stop()

    def _jobs_running(self) -> list[str]:
        """What runs on the loop now, for the watchdog (read from its thread)."""
        services = self._services
        if services is None or services.queue is None:
            return []
        return [f"{job.task} (job {job.id})" for job in services.queue.in_flight()]

    async def shutdown(self) -> None:
        """Stop gracefully. First nothing new starts, anywhere: schedules
        stop firing, their slots are no longer stored, no queue claims a job
        and prefetched jobs go back; the jobs already running get the grace
        period (the log says which it waits for) and are interrupted past
        it, their attempts given back. Then the plugins stop in reverse start
        order, each within its grace (their stored state stays as it was, so
        a restart enables them again)."""
        services = self._services
        if services is not None:
            for schedule in services.scheduler.schedules:
                schedule.pause()
            if services.queue is not None:
                services.queue.stop_intake()
                if not await services.queue.drain(self._shutdown_grace):
                    self.exit_code = max(self.exit_code, ExitCode.FORCED)
        for name in reversed(list(self._supervisors)):
            supervisor = self._supervisors[name]
            await supervisor.stop(remember=False)
            if supervisor.forced_stop:
                self.exit_code = max(self.exit_code, ExitCode.FORCED)
        log.info("kernel stopped")

    def cancel(self) -> None:
        """Cancel everything at once, without waiting for grace periods."""
        self.exit_code = max(self.exit_code, ExitCode.FORCED)
        self._shutdown_scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _open_adapters(self, stack: AsyncExitStack) -> tuple[Storage, Bus, Notifier]:
        storage, bus, notifier = self._adapters
        if isinstance(storage, str):
            storage = await open_storage(storage)
            stack.push_async_callback(storage.aclose)
        if isinstance(bus, str):
            bus = await open_bus(bus)
            stack.push_async_callback(bus.aclose)
        if not isinstance(notifier, Notifier):  # URLs and routes
            notifier = await open_fanout_notifier(notifier)
            stack.push_async_callback(notifier.aclose)
        return storage, bus, notifier

    async def _job_store(self, storage: Storage, stack: AsyncExitStack) -> JobStore:
        if self._jobs is not None:
            return self._jobs
        if isinstance(storage, JobStore):
            return storage
        store = MemoryJobStore()
        stack.push_async_callback(store.aclose)
        return store

    async def _start_plugin(self, name: str) -> None:
        spec = self._specs[name]
        services = self._require_services()
        stored = await services.storage.get(STATE_NAMESPACE, f"plugin/{name}")
        supervisor = self._new_supervisor(name)
        if stored is None:
            await self._install(supervisor)
        elif isinstance(stored, dict) and stored.get("state") == PluginState.DISABLED.value:
            supervisor.state = PluginState.DISABLED
            log.info("plugin %r stays disabled (as stored)", name)
            return
        if not spec.enabled:
            supervisor.state = PluginState.DISABLED
            return
        unmet = [
            dep
            for dep in spec.manifest.requires
            if self._supervisors[dep].state is not PluginState.ENABLED
        ]
        if unmet:
            supervisor.state = PluginState.DISABLED
            supervisor.reason = f"requires {', '.join(unmet)}, which did not start"
            log.error("plugin %r not started: %s", name, supervisor.reason)
            return
        await self._launch(supervisor)

    def _new_supervisor(self, name: str) -> PluginSupervisor:
        spec = self._specs[name]
        supervisor = PluginSupervisor(
            name, spec.plugin, spec.manifest, self._configs[name], self._require_services()
        )
        self._supervisors[name] = supervisor
        return supervisor

    async def _launch(self, supervisor: PluginSupervisor) -> None:
        assert self._nursery is not None
        await self._nursery.start(supervisor.run, name=f"plugin {supervisor.name}")
        if supervisor.state is PluginState.ENABLED:
            log.info("enabled plugin %r %s", supervisor.name, supervisor.manifest.version)

    async def _install(self, supervisor: PluginSupervisor) -> None:
        services = self._require_services()
        async with trio.open_nursery() as nursery:
            start = services.plugin_start(
                supervisor.name, supervisor.manifest, supervisor.config, nursery
            )
            try:
                with supervisor.step(PluginStep.INSTALL):
                    await supervisor.plugin.on_install(start.ctx)
            finally:
                start.close()
            nursery.cancel_scope.cancel()
        await self._record_state(supervisor.name, PluginState.INSTALLED, "installed")

    async def _record_state(self, name: str, state: PluginState, reason: str) -> None:
        if state is PluginState.FAILED:
            self.exit_code = max(self.exit_code, ExitCode.PLUGIN_FAILED)
            self._stop_if_all_failed()
        services = self._require_services()
        await services.storage.put(
            STATE_NAMESPACE,
            f"plugin/{name}",
            {
                "state": state.value,
                "reason": reason,
                "version": self._supervisors[name].manifest.version,
                "changed_at": services.scheduler.clock.now().isoformat(),
            },
        )

    def _stop_if_all_failed(self) -> None:
        if not (self._exit_when_all_failed and self._started) or self._stop_requested.is_set():
            return
        states = [
            supervisor.state
            for supervisor in self._supervisors.values()
            if supervisor.state is not PluginState.DISABLED
        ]
        if states and all(state is PluginState.FAILED for state in states):
            log.error(
                "every plugin has failed (%s): stopping", ", ".join(sorted(self._supervisors))
            )
            self.request_stop()

    async def _on_health_transition(self, transition: HealthTransition) -> None:
        level = Level.info if transition.is_recovery else Level.warning
        reasons = "; ".join(transition.report.reasons) or transition.new.value
        title = f"{transition.name} is {transition.new.value}"
        plugin = transition.name if transition.name in self._supervisors else None
        if self._services is not None:
            with notification_context("health", plugin=plugin):
                await self._services.notifier.notify(title, reasons, level)

    # -- runtime control ----------------------------------------------------------

    async def disable(self, name: str) -> None:
        """Stop a plugin and remember that it is disabled (across restarts)."""
        await self._supervisor(name).stop(remember=True)

    async def enable(self, name: str) -> None:
        """Start a plugin that is disabled or failed (its dependencies must be
        enabled) and remember that it is enabled."""
        current = self._supervisor(name)
        if current.state is PluginState.ENABLED:
            return
        unmet = [
            dep
            for dep in current.manifest.requires
            if self._supervisor(dep).state is not PluginState.ENABLED
        ]
        if unmet:
            raise PluginStateError(f"plugin {name!r} requires {', '.join(unmet)}: enable it first")
        await self._launch(self._new_supervisor(name))

    def _supervisor(self, name: str) -> PluginSupervisor:
        try:
            return self._supervisors[name]
        except KeyError:
            known = ", ".join(self._supervisors) or "none"
            raise PluginStateError(f"no plugin named {name!r} (known: {known})") from None

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: plugins, schedules, job queues, health and metrics."""
        services = self._services
        schedules = services.scheduler.schedules if services else []
        return {
            "time": datetime.now(UTC).isoformat(),
            "exit_code": int(self.exit_code),
            "plugins": {
                name: {
                    "state": sup.state.value,
                    "reason": sup.reason,
                    "version": sup.manifest.version,
                    "restarts": sup.restarts,
                    "permissions": sorted(p.value for p in sup.manifest.permissions),
                }
                for name, sup in self._supervisors.items()
            },
            "schedules": [
                {
                    "name": schedule.name,
                    "next_fire_time": (
                        schedule.next_fire_time.isoformat() if schedule.next_fire_time else None
                    ),
                    "paused": schedule.paused,
                    "running": schedule.running,
                    **attrs.asdict(schedule.stats),
                }
                for schedule in schedules
            ],
            "queues": services.queue.describe() if services and services.queue else [],
            "unknown_tasks": (
                services.queue.describe_unknown_tasks() if services and services.queue else {}
            ),
            "health": self.health.current().to_dict(),
            "metrics": self.metrics.snapshot(),
        }

    # -- the blocking entry point -------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> ExitCode:
        """Run until `request_stop`, SIGINT or SIGTERM; a second signal
        cancels at once."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as watchers:
                async with self:
                    watchers.start_soon(self._watch_signals, signals)
                    task_status.started()
                    await self._stop_requested.wait()
                watchers.cancel_scope.cancel()
        return self.exit_code

    def request_stop(self) -> None:
        """Ask `serve` to shut down gracefully (thread-unsafe: call it on the
        kernel's trio thread)."""
        self._stop_requested.set()

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self._stop_requested.is_set():
                log.info("%s: stopping (send it again to stop at once)", name)
                self.request_stop()
            else:
                log.warning("%s again: cancelling now", name)
                self.cancel()
                return

    def run(self) -> ExitCode:
        """Run the kernel in this thread until a signal; returns the exit code."""
        return trio.run(self.serve)


def _structured(spec: PluginSpec) -> Any:
    manifest = spec.manifest
    if manifest.config is None or isinstance(spec.config, manifest.config):
        return spec.config
    return structure_config(
        spec.config or {},
        manifest.config,
        source=spec.source,
        prefix=key_path("plugins", spec.instance_name, "config"),
    )

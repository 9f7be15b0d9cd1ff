"""Supervision of plugins, after Erlang/OTP's supervisor.

Each enabled plugin runs under its own `PluginSupervisor` task, in its own
nursery. A crash (an exception from ``on_enable``, ``run``, a background
task or a message handler) is contained there: it never reaches the kernel
or another plugin. What happens next is policy, pure and tested on its own:
`should_restart` (OTP's permanent / transient / temporary) and
`RestartBudget` (OTP's intensity and period, plus exponential backoff
between restarts). Past the budget the plugin is marked failed, disabled,
and the notifier says so.

Stopping is graceful: intake stops (schedules pause, subscriptions end),
``on_disable`` runs and runs in progress may finish until the grace period
is over; then whatever is left is cancelled.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import attrs
import trio

from kernel.jobs.queue import JobQueue
from kernel.notifier.context import notification_context
from kernel.observe.health import HealthMonitor, HealthReport, Status
from kernel.observe.instrument import Instrumentation, PluginStep
from kernel.observe.metrics import Metrics
from kernel.ports import Bus, Level, Notifier, Storage
from kernel.runtime.plugins import (
    Manifest,
    Plugin,
    PluginContext,
    PluginStart,
    Restart,
    RestartIntensity,
)
from kernel.time.scheduler import Scheduler

__all__ = ["KernelServices", "PluginState", "PluginSupervisor", "RestartBudget", "should_restart"]

log = logging.getLogger("kernel.supervisor")


class PluginState(enum.Enum):
    INSTALLED = "installed"
    ENABLED = "enabled"
    DISABLED = "disabled"
    FAILED = "failed"


def should_restart(restart: Restart, *, crashed: bool) -> bool:
    """OTP's restart types: permanent always, transient after a crash only,
    temporary never."""
    if restart is Restart.TEMPORARY:
        return False
    if restart is Restart.TRANSIENT:
        return crashed
    return True


@attrs.define
class RestartBudget:
    """Counts restarts in a sliding period; answers how long to wait before
    the next one, or None once ``max_restarts`` in ``period`` are spent."""

    intensity: RestartIntensity
    _restarts: deque[float] = attrs.field(factory=deque, init=False)

    def next_delay(self, now: float) -> float | None:
        intensity = self.intensity
        while self._restarts and self._restarts[0] <= now - intensity.period:
            self._restarts.popleft()
        if len(self._restarts) >= intensity.max_restarts:
            return None
        delay = math.ldexp(intensity.backoff_initial, len(self._restarts))
        self._restarts.append(now)
        return min(delay, intensity.backoff_max)


@attrs.define
class KernelServices:
    """What the kernel lends to every plugin supervisor."""

    scheduler: Scheduler
    storage: Storage
    bus: Bus
    notifier: Notifier
    metrics: Metrics
    health: HealthMonitor
    record_state: Callable[[str, PluginState, str], Awaitable[None]]
    shutdown_grace: float = 10.0
    enable_timeout: float = 30.0
    queue: JobQueue | None = None
    instrumentation: Instrumentation | None = None

    def plugin_start(
        self, name: str, manifest: Manifest, config: Any, nursery: trio.Nursery
    ) -> PluginStart:
        """One start (or the install) of plugin ``name``, with its context."""
        return PluginStart(
            name=name,
            manifest=manifest,
            config=config,
            scheduler=self.scheduler,
            storage=self.storage,
            bus=self.bus,
            notifier=self.notifier,
            metrics=self.metrics.scoped(plugin=name),
            nursery=nursery,
            queue=self.queue,
        )


class _Outcome(enum.Enum):
    STOPPED = "stopped"  # a stop was asked for
    EXITED = "exited"  # ``run`` returned


class PluginSupervisor:
    """Runs one plugin: start, watch, restart within budget, stop."""

    def __init__(
        self, name: str, plugin: Plugin, manifest: Manifest, config: Any, services: KernelServices
    ) -> None:
        self.name = name
        self.plugin = plugin
        self.manifest = manifest
        self.config = config
        self.state = PluginState.INSTALLED
        self.reason = ""
        self.restarts = 0
        self.forced_stop = False  # the last stop ran past its grace period
        self._services = services
        self._stop_requested = False
        self._remember_stop = True
        self._start: PluginStart | None = None
        self._wake = trio.Event()
        self._stopped = trio.Event()
        self._reported = False
        self._running = False  # `run` has begun: a stop must wait for it
        self._last_crash: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise until stopped or failed. ``task_status.started()`` is
        called once the first start has settled (enabled, or crashed)."""
        services = self._services
        budget = RestartBudget(self.manifest.intensity)
        restarts = services.metrics.counter("plugin_restarts", plugin=self.name)
        self._running = True

        def report() -> None:
            if not self._reported:
                self._reported = True
                task_status.started()

        try:
            while not self._stop_requested:
                self._wake = trio.Event()
                error: Exception | None = None
                try:
                    outcome = await self._start_once(report)
                except BaseException as exc:
                    error = _first_error(exc)
                    if error is None:
                        raise
                    outcome = None
                report()
                if outcome is _Outcome.STOPPED:
                    break
                crashed = error is not None
                if error is not None:
                    self._log_crash(error)
                what = f"crashed: {type(error).__name__}: {error}" if error else "exited"
                if not should_restart(self.manifest.restart, crashed=crashed):
                    final = PluginState.FAILED if crashed else PluginState.DISABLED
                    await self._set_state(final, what)
                    if crashed:
                        await self._alert(f"{what}; restart policy {self.manifest.restart.value}")
                    return
                delay = budget.next_delay(trio.current_time())
                if delay is None:
                    intensity = self.manifest.intensity
                    await self._set_state(PluginState.FAILED, what)
                    await self._alert(
                        f"{what}; more than {intensity.max_restarts} restarts in"
                        f" {intensity.period:g}s, so it is disabled"
                    )
                    return
                self.restarts += 1
                restarts.inc()
                log.warning("plugin %r %s; restarting in %.3gs", self.name, what, delay)
                with self.step(PluginStep.RESTART, error=error):
                    await self._wait_or_stop(delay)
            await self._set_state(PluginState.DISABLED, "disabled", persist=self._remember_stop)
        finally:
            report()
            self._stopped.set()

    async def stop(self, *, remember: bool = True) -> None:
        """Stop gracefully (see the module docstring) and wait until done.
        ``remember=False`` (a kernel shutdown) keeps the stored state as it
        was, so the next start enables the plugin again."""
        self._remember_stop = remember
        self._stop_requested = True
        self._wake.set()
        if not self._running:
            # never started (disabled by config or by an operator, or a
            # dependency failed): nothing runs, nothing to wait for
            self._stopped.set()
        await self._stopped.wait()

    def step(
        self, step: PluginStep, *, error: BaseException | None = None
    ) -> AbstractContextManager[object]:
        """Around a lifecycle step: the instrumentation's, if there is one."""
        instrumentation = self._services.instrumentation
        if instrumentation is None:
            return nullcontext()
        return instrumentation.plugin_step(self.name, step, error=error)

    @property
    def context(self) -> PluginContext | None:
        """The running start's context (for tests and the status API)."""
        start = self._start
        return start.ctx if start is not None and self.state is PluginState.ENABLED else None

    # -- one start ---------------------------------------------------------------

    async def _start_once(self, report: Callable[[], None]) -> _Outcome:
        services = self._services
        async with trio.open_nursery() as nursery:
            start = services.plugin_start(self.name, self.manifest, self.config, nursery)
            self._start = start
            try:
                return await self._watch(start, nursery, report)
            finally:
                start.close()

    async def _watch(
        self, start: PluginStart, nursery: trio.Nursery, report: Callable[[], None]
    ) -> _Outcome:
        services = self._services
        ctx = start.ctx
        try:
            with self.step(PluginStep.ENABLE), trio.fail_after(services.enable_timeout):
                await self.plugin.on_enable(ctx)
        except trio.TooSlowError:
            raise TimeoutError(f"on_enable took longer than {services.enable_timeout:g}s") from None
        await self._set_state(PluginState.ENABLED, "enabled")
        start.start_intake()  # its jobs are claimed only now that its tasks are registered
        report()
        health = getattr(self.plugin, "health", None)
        if health is not None:
            services.health.register(self.name, _bind_check(health, ctx))
        exited = False
        try:
            body = getattr(self.plugin, "run", None)
            if body is not None:

                async def run_body() -> None:
                    nonlocal exited
                    await body(ctx)
                    exited = True
                    self._wake.set()

                nursery.start_soon(run_body, name=f"{self.name}: run")
            await self._wake.wait()
            with self.step(PluginStep.DISABLE):
                await self._stop_gracefully(start)
        finally:
            services.health.unregister(self.name)
        nursery.cancel_scope.cancel()
        return _Outcome.EXITED if exited and not self._stop_requested else _Outcome.STOPPED

    async def _stop_gracefully(self, start: PluginStart) -> None:
        start.stop_intake()
        grace = self._services.shutdown_grace
        with trio.move_on_after(grace) as waited:
            try:
                await self.plugin.on_disable(start.ctx)
            except Exception:
                log.exception("plugin %r: on_disable failed", self.name)
            await start.wait_runs_done()
        self.forced_stop = waited.cancelled_caught
        if self.forced_stop:
            log.warning("plugin %r did not stop within %gs; cancelling it", self.name, grace)

    def _log_crash(self, error: Exception) -> None:
        """The traceback of a crash, in full the first time; a crash that
        repeats the last one (same type and message) in one line."""
        crash = f"{type(error).__name__}: {error}"
        if crash == self._last_crash:
            log.error("plugin %r crashed again: %s (traceback above)", self.name, crash)
        else:
            log.error("plugin %r crashed: %s", self.name, crash, exc_info=error)
        self._last_crash = crash

    async def _wait_or_stop(self, delay: float) -> None:
        scheduler = self._services.scheduler
        timer = scheduler.call_later(delay, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            scheduler.cancel_timer(timer)

    async def _set_state(self, state: PluginState, reason: str, *, persist: bool = True) -> None:
        self.state = state
        self.reason = reason
        if not persist:
            return
        with trio.CancelScope(shield=True):
            await self._services.record_state(self.name, state, reason)

    async def _alert(self, message: str) -> None:
        log.error("plugin %r %s", self.name, message)
        with trio.CancelScope(shield=True):
            try:
                with notification_context("plugin.failed", plugin=self.name):
                    await self._services.notifier.notify(
                        f"plugin {self.name} failed", message, Level.error
                    )
            except Exception:
                log.exception("plugin %r: the failure notification failed", self.name)


def _bind_check(
    health: Callable[[PluginContext], Awaitable[HealthReport | Status | bool]], ctx: PluginContext
) -> Callable[[], Awaitable[HealthReport | Status | bool]]:
    async def check() -> HealthReport | Status | bool:
        return await health(ctx)

    return check


def _first_error(exc: BaseException) -> Exception | None:
    """The first real error in ``exc`` (which may be an exception group), or
    None when it holds only cancellation and other BaseExceptions."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_error(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, Exception) else None

"""The scheduler: one trio task that drives the timer wheel.

The driver sleeps in a cancel scope whose deadline is the wheel's earliest
deadline; inserting an earlier timer moves that deadline, so the driver
wakes exactly when something is due and never ticks. An idle scheduler uses
no CPU, except one wake per ``Clock.jump_check_interval`` while wall-clock
schedules exist, to notice a stepped system clock (the kernel cannot ask the
OS to tell it; Linux's ``TFD_TIMER_CANCEL_ON_SET`` is not reachable from
Python).

The wheel is the kernel's only notion of future time: schedules here, and
later delayed jobs, retry backoff and lease renewals, are timers in it.
Timer callbacks run on the driver task, so they must be quick and must not
raise; real work is started in a nursery.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import attrs
import trio

from kernel.observe.instrument import Instrumentation, checked_instrumentation
from kernel.time.clock import Clock
from kernel.time.policies import (
    MAX_MISSED_SLOTS,
    AllowOverlap,
    MisfirePolicy,
    OverlapAction,
    OverlapPolicy,
    RunOnce,
    SkipIfRunning,
    decide_overlap,
    plan_misfire,
)
from kernel.time.triggers import AllOf, AnyOf, Every, Trigger
from kernel.time.wheel import Timer, TimerWheel

__all__ = ["Schedule", "ScheduleStats", "Scheduler", "anchor_every", "open_scheduler"]

log = logging.getLogger("kernel.scheduler")

Callback = Callable[[], None]
ScheduledFunc = Callable[[], Awaitable[object] | object]
Emit = Callable[["Schedule", list[datetime]], None]
"""Hands a schedule's due slots to someone else (the job queue) instead of
running its function: called on the driver task, so it must be quick."""


@attrs.define
class ScheduleStats:
    """What happened to a schedule's slots so far."""

    fired: int = 0  # slots that came due and were not dropped by the misfire policy
    missed: int = 0  # slots dropped by the misfire policy
    skipped: int = 0  # slots dropped by the overlap policy
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


_DEFAULT_MISFIRE = RunOnce()
_DEFAULT_OVERLAP = SkipIfRunning()


class Schedule:
    """A function bound to a trigger, with its misfire and overlap policies.

    Returned by `Scheduler.add_schedule`; use it to `pause`, `resume` or
    `cancel`, and to see ``next_fire_time``, ``last_fire_time`` and `stats`.
    Fire times are the trigger's exact slots; jitter only delays the run.
    """

    __slots__ = (
        "_emit",
        "_fire_at",
        "_idle",
        "_nursery",
        "_queued",
        "_running",
        "_scheduler",
        "_timer",
        "cancelled",
        "func",
        "last_fire_time",
        "misfire",
        "name",
        "next_fire_time",
        "overlap",
        "paused",
        "stats",
        "trigger",
    )

    def __init__(
        self,
        scheduler: Scheduler,
        func: ScheduledFunc,
        trigger: Trigger,
        *,
        name: str,
        misfire: MisfirePolicy,
        overlap: OverlapPolicy,
        nursery: trio.Nursery | None,
        emit: Emit | None = None,
    ) -> None:
        self.name = name
        self.func = func
        self.trigger = trigger
        self.misfire = misfire
        self.overlap = overlap
        self.stats = ScheduleStats()
        self.next_fire_time: datetime | None = None
        self.last_fire_time: datetime | None = None
        self.paused = False
        self.cancelled = False
        self._scheduler = scheduler
        self._nursery = nursery
        self._emit = emit
        self._timer: Timer[Callback] | None = None
        self._fire_at: datetime | None = None  # next_fire_time plus its jitter
        self._running: list[trio.CancelScope] = []  # a few at most: a list is lighter
        self._queued = 0
        self._idle: trio.Event | None = None  # made only while someone waits

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "paused" if self.paused else "active"
        return f"<Schedule {self.name!r} {state} next={self.next_fire_time}>"

    @property
    def finished(self) -> bool:
        """True once the trigger has no more fire times (or it was cancelled)."""
        return self.cancelled or (self.next_fire_time is None and not self.paused)

    @property
    def running(self) -> int:
        return len(self._running)

    def pause(self) -> None:
        """Stop firing until `resume`; runs in progress go on."""
        if self.cancelled or self.paused:
            return
        self.paused = True
        self._unplan()

    def resume(self) -> None:
        """Fire again, from the next slot after now: slots that fell in the
        pause are not run (pausing is deliberate, not a misfire)."""
        if self.cancelled or not self.paused:
            return
        self.paused = False
        self._plan(after=self._scheduler.clock.now())

    def trigger_now(self) -> None:
        """Fire once now, outside the trigger's slots: an operator's "run
        it now" (Hangfire's *Trigger now*, Celery beat's manual run). The
        overlap policy applies as to any slot (a queued schedule's job is one
        more job, held back while one of this schedule is queued or running
        under ``SkipIfRunning``); the planned next fire does not move, and a
        paused schedule stays paused. A cancelled schedule does nothing."""
        if self.cancelled:
            return
        now = self._scheduler.clock.now()
        self.stats.fired += 1
        self.last_fire_time = now
        if self._emit is not None:
            self._emit(self, [now])
        else:
            self._admit()

    def cancel(self) -> None:
        """Remove the schedule and cancel its runs in progress."""
        if self.cancelled:
            return
        self.cancelled = True
        self._unplan()
        self._queued = 0
        for scope in self._running:
            scope.cancel()
        self._scheduler._forget(self)

    async def wait_idle(self) -> None:
        """Wait until no run of this schedule is in progress or queued."""
        if self._running or self._queued:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()

    # -- planning (called on the driver task) --------------------------------

    def _plan(self, after: datetime) -> None:
        slot = self.trigger.next_fire_after(after)
        self.next_fire_time = slot
        if slot is None:
            self._fire_at = None
            self._scheduler._forget(self)
            return
        jitter = self.trigger.jitter
        offset = self._scheduler.rng.random() * jitter if jitter else timedelta(0)
        self._fire_at = slot + offset
        self._timer = self._scheduler._insert_wall(self._fire_at, self._on_due)

    def _unplan(self) -> None:
        if self._timer is not None:
            self._scheduler.cancel_timer(self._timer)
            self._timer = None

    def restart_from(self, after: datetime, trigger: Trigger) -> None:
        """Plan again from ``after`` (the last fire stored before a restart),
        anchoring an unanchored `Every` there: the slots since then come due
        at once and meet the misfire policy."""
        self._unplan()
        now = self._scheduler.clock.now()
        start = min(after, now)
        self.trigger = anchor_every(trigger, start)
        self._plan(after=start)
        if self._fire_at is not None and self._fire_at <= now:
            # hand the missed slots over now, not from the driver later: the
            # queue stores them before it records a later fire as the last
            self._unplan()
            self._on_due()

    def _replan_after_jump(self) -> None:
        if self._timer is not None and self._fire_at is not None:
            self._scheduler._reschedule_wall(self._timer, self._fire_at)

    def _on_due(self) -> None:
        self._timer = None
        first = self.next_fire_time
        assert first is not None
        assert self._fire_at is not None
        now = self._scheduler.clock.now()
        due = [first]
        cursor = first
        while True:
            slot = self.trigger.next_fire_after(cursor)
            if slot is None or slot > now:
                break
            if len(due) == MAX_MISSED_SLOTS:
                # a very long stall: give up enumerating, resume from now
                due.pop(0)
                self.stats.missed += 1
                cursor = now
                break
            due.append(slot)
            cursor = slot
        # lateness is measured from when the (jittered) run was meant to start
        runs = plan_misfire(self.misfire, due, now - (self._fire_at - first))
        self.stats.missed += len(due) - len(runs)
        self.stats.fired += len(runs)
        if runs and self._emit is not None:
            self.last_fire_time = runs[-1]
            self._emit(self, runs)
        elif runs:
            self.last_fire_time = runs[-1]
            self._admit()
            # caught-up slots run one after another, whatever the overlap policy
            self._queued += len(runs) - 1
        if len(due) > len(runs):
            log.info("schedule %r: %d missed slot(s) dropped", self.name, len(due) - len(runs))
        self._plan(after=cursor)

    def _admit(self) -> None:
        action = decide_overlap(self.overlap, running=len(self._running), queued=self._queued)
        if action is OverlapAction.SKIP:
            self.stats.skipped += 1
            log.info("schedule %r: slot skipped, the previous run is still going", self.name)
        elif action is OverlapAction.QUEUE:
            self._queued += 1
        else:
            if action is OverlapAction.CANCEL_AND_START:
                for scope in self._running:
                    scope.cancel()
            self._start()

    def _start(self) -> None:
        nursery = self._nursery or self._scheduler._nursery
        if nursery is None:  # pragma: no cover - the driver always has one
            raise RuntimeError("the scheduler is not running")
        scope = trio.CancelScope()
        self._running.append(scope)
        try:
            nursery.start_soon(self._run, scope, name=f"schedule {self.name}")
        except RuntimeError:
            # the owner's nursery is closing: the schedule goes with it
            self._running.remove(scope)
            self.cancel()
            self._after_run()

    async def _run(self, scope: trio.CancelScope) -> None:
        self.stats.started += 1
        instrumentation = self._scheduler.instrumentation
        try:
            with scope:
                if instrumentation is None:
                    await self._call()
                else:
                    with instrumentation.schedule_fire(self.name, self.last_fire_time):
                        await self._call()
            if scope.cancelled_caught:
                self.stats.cancelled += 1
            else:
                self.stats.succeeded += 1
        except Exception:
            self.stats.failed += 1
            log.exception("schedule %r: run failed", self.name)
        except BaseException:
            # the owner's nursery is being cancelled: nothing more starts
            self._queued = 0
            raise
        finally:
            self._running.remove(scope)
            self._after_run()

    async def _call(self) -> None:
        result = self.func()
        if inspect.isawaitable(result):
            await result

    def _after_run(self) -> None:
        limit = self.overlap.max_running if isinstance(self.overlap, AllowOverlap) else 1
        if self._queued and not self.cancelled and len(self._running) < limit:
            self._queued -= 1
            self._start()
        elif not self._running and not self._queued and self._idle is not None:
            self._idle.set()
            self._idle = None


class Scheduler:
    """Drives the timer wheel from one trio task; see the module docstring.

    Create it inside trio, then ``await nursery.start(scheduler.run)`` or use
    `open_scheduler`. Schedules may be added before or after the driver starts.
    """

    def __init__(self, clock: Clock | None = None, *, rng: random.Random | None = None) -> None:
        self.clock = clock if clock is not None else Clock()
        self.rng = rng if rng is not None else random.Random()
        self._wheel: TimerWheel[Callback] = TimerWheel(now=Clock.tick_now())
        self._schedules: dict[int, Schedule] = {}
        self._nursery: trio.Nursery | None = None
        self._sleep: trio.CancelScope | None = None
        self._names = 0
        self.instrumentation: Instrumentation | None = None

    def instrument(self, instrumentation: Instrumentation | None) -> None:
        """Report each run of a function schedule to ``instrumentation``
        (`kernel.observe.instrument`), from the next run on; None stops it."""
        self.instrumentation = checked_instrumentation(instrumentation)

    @property
    def schedules(self) -> list[Schedule]:
        """The schedules that may still fire."""
        return list(self._schedules.values())

    # -- timers -----------------------------------------------------------------

    def call_at(self, deadline: float, callback: Callback) -> Timer[Callback]:
        """Run ``callback`` on the driver task once trio time reaches ``deadline``."""
        return self._insert(Clock.tick_after(deadline), callback)

    def call_later(self, delay: float, callback: Callback) -> Timer[Callback]:
        return self.call_at(trio.current_time() + delay, callback)

    def cancel_timer(self, timer: Timer[Callback]) -> bool:
        return self._wheel.cancel(timer)

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until trio time ``deadline``, on the wheel."""
        woken = trio.Event()
        timer = self.call_at(deadline, woken.set)
        try:
            await woken.wait()
        finally:
            self.cancel_timer(timer)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, on the wheel."""
        await self.sleep_until(trio.current_time() + seconds)

    def _insert(self, tick: int, callback: Callback) -> Timer[Callback]:
        timer = self._wheel.insert(tick, callback)
        self._wake_by(tick)
        return timer

    def _insert_wall(self, wall: datetime, callback: Callback) -> Timer[Callback]:
        return self._insert(self.clock.wall_to_tick(wall), callback)

    def _reschedule_wall(self, timer: Timer[Callback], wall: datetime) -> None:
        tick = self.clock.wall_to_tick(wall)
        self._wheel.reschedule(timer, tick)
        self._wake_by(tick)

    def _wake_by(self, tick: int) -> None:
        sleep = self._sleep
        if sleep is not None:
            deadline = Clock.tick_deadline(tick)
            if deadline < sleep.deadline:
                sleep.deadline = deadline

    # -- schedules ----------------------------------------------------------------

    def add_schedule(
        self,
        func: ScheduledFunc,
        trigger: Trigger,
        *,
        name: str | None = None,
        misfire: MisfirePolicy | None = None,
        overlap: OverlapPolicy | None = None,
        nursery: trio.Nursery | None = None,
        emit: Emit | None = None,
        after: datetime | None = None,
    ) -> Schedule:
        """Run ``func`` (sync or async, no arguments) at each fire of ``trigger``.

        Defaults: ``RunOnce()`` for misfires and ``SkipIfRunning()`` for
        overlaps. Runs start in ``nursery`` (a plugin's, so that disabling the
        plugin cancels them) or else in the scheduler's own.

        With ``emit``, nothing runs here: each due batch of slots (after the
        misfire policy) is handed to ``emit`` (the job queue enqueues them;
        the overlap policy is then its business). ``after`` plans from an
        earlier instant, the last fire before a restart, so the slots missed
        meanwhile come due at once and meet the misfire policy; an unanchored
        `Every` is anchored there too, keeping its grid.
        """
        if not callable(func):
            raise TypeError(f"add_schedule needs a callable, got {func!r}")
        # duck-typed: an isinstance() against the runtime-checkable Protocol
        # costs microseconds per schedule
        if not callable(getattr(trigger, "next_fire_after", None)):
            raise TypeError(f"add_schedule needs a trigger, got {trigger!r}")
        now = self.clock.now()
        start = now if after is None else min(after, now)
        self._names += 1
        schedule = Schedule(
            self,
            func,
            anchor_every(trigger, start),
            name=name or getattr(func, "__qualname__", None) or f"schedule-{self._names}",
            misfire=misfire if misfire is not None else _DEFAULT_MISFIRE,
            overlap=overlap if overlap is not None else _DEFAULT_OVERLAP,
            nursery=nursery,
            emit=emit,
        )
        self._schedules[id(schedule)] = schedule
        schedule._plan(after=start)
        return schedule

    def _forget(self, schedule: Schedule) -> None:
        self._schedules.pop(id(schedule), None)

    # -- the driver -----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the wheel until cancelled."""
        if self._nursery is not None:
            raise RuntimeError("this scheduler is already running")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self._drive()
            finally:
                self._nursery = None

    async def _drive(self) -> None:
        wheel = self._wheel
        clock = self.clock
        next_jump_check = trio.current_time() + clock.jump_check_interval
        while True:
            for callback in wheel.advance(Clock.tick_now()):
                callback()
            deadline = wheel.next_deadline()
            wake = math.inf if deadline is None else Clock.tick_deadline(deadline)
            if clock.detects_jumps and self._schedules:
                if trio.current_time() >= next_jump_check:
                    next_jump_check = trio.current_time() + clock.jump_check_interval
                    self._check_jump()
                    continue
                wake = min(wake, next_jump_check)
            with trio.CancelScope(deadline=wake) as sleep:
                self._sleep = sleep
                await trio.sleep_forever()
            self._sleep = None

    def _check_jump(self) -> None:
        jump = self.clock.check_jump()
        if jump:
            log.warning("system clock jumped by %s; re-planning wall-clock schedules", jump)
            for schedule in list(self._schedules.values()):
                schedule._replan_after_jump()


def anchor_every(trigger: Trigger, now: datetime) -> Trigger:
    """Anchor every unanchored `Every` (also inside combinations) at ``now``."""
    if isinstance(trigger, Every):
        return trigger.anchored(now)
    if isinstance(trigger, AnyOf):
        return AnyOf(*(anchor_every(t, now) for t in trigger.triggers), jitter=trigger.jitter)
    if isinstance(trigger, AllOf):
        return AllOf(
            *(anchor_every(t, now) for t in trigger.triggers),
            jitter=trigger.jitter,
            max_rounds=trigger.max_rounds,
        )
    return trigger


@asynccontextmanager
async def open_scheduler(
    clock: Clock | None = None, *, rng: random.Random | None = None
) -> AsyncIterator[Scheduler]:
    """A running scheduler for the body of an ``async with``; leaving the
    block cancels the driver and every run still in progress."""
    scheduler = Scheduler(clock, rng=rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        try:
            yield scheduler
        finally:
            nursery.cancel_scope.cancel()

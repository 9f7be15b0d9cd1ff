"""The event-loop watchdog: notices when the loop stops turning, and says who.

Everything in a kernel shares one trio thread. A job that blocks it
(``time.sleep``, CPU-bound work, a synchronous client) stops every other
job, every schedule and every lease renewal until it returns. The watchdog
lives in a thread of its own, so it can see a stall *while* it happens:
every ``every`` seconds it posts a no-op to the loop
(`trio.lowlevel.TrioToken.run_sync_soon`) and measures how long the loop
takes to run it. A stall longer than ``threshold`` is logged as a warning
naming the jobs running at the time, which are the usual culprits; the lag
is the ``loop_lag_seconds`` gauge, and the ``loop`` health check is
degraded while a stall is going on and for ``recent`` seconds after.

It measures real time, not the kernel's clock: under trio's
`trio.testing.MockClock` it keeps measuring the real loop, and costs one
callback a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import trio

from kernel.observe.health import HealthReport
from kernel.observe.metrics import Metrics

__all__ = ["LoopWatchdog"]

log = logging.getLogger("kernel.watchdog")


class LoopWatchdog:
    """See the module docstring. ``describe()`` names what runs on the loop
    (called from the watchdog's thread while the loop is stalled, so it must
    only read)."""

    def __init__(
        self,
        *,
        threshold: float = 1.0,
        every: float = 0.5,
        recent: float = 60.0,
        describe: Callable[[], list[str]] = list,
        metrics: Metrics | None = None,
    ) -> None:
        if threshold <= 0 or every <= 0 or recent <= 0:
            raise ValueError("threshold, every and recent must be positive")
        self.threshold = threshold
        self.every = every
        self.recent = recent
        self.describe = describe
        self.stalls = 0  # stalls seen longer than the threshold
        self.worst = 0.0  # the longest lag measured, seconds
        self._lag = metrics.gauge("loop_lag_seconds") if metrics is not None else None
        self._last_stall: float | None = None  # monotonic time a stall was last seen
        self._stop = threading.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled."""
        token = trio.lowlevel.current_trio_token()
        self._stop.clear()
        thread = threading.Thread(
            target=self._watch, args=(token,), name="kernel loop watchdog", daemon=True
        )
        thread.start()
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._stop.set()

    async def check(self) -> HealthReport:
        """The ``loop`` health check: degraded during a stall and for
        ``recent`` seconds after one."""
        last = self._last_stall
        if last is not None and time.monotonic() - last < self.recent:
            return HealthReport.degraded(
                f"the event loop stalled for up to {self.worst:.1f} s"
                f" ({self.stalls} time(s)); blocking code runs on it",
                lag_seconds=round(self.worst, 3),
            )
        return HealthReport.healthy()

    def _watch(self, token: trio.lowlevel.TrioToken) -> None:
        while not self._stop.wait(self.every):
            answered = threading.Event()
            posted = time.monotonic()
            try:
                token.run_sync_soon(answered.set)
            except trio.RunFinishedError:
                return
            if answered.wait(self.threshold):
                self._measured(time.monotonic() - posted)
                continue
            # stalled: say so now, while it lasts, and who is running
            self.stalls += 1
            self._last_stall = time.monotonic()
            try:
                running = self.describe()
            except Exception:  # the loop's state is not ours to lock
                running = []
            log.warning(
                "the event loop has been blocked for %.1f s; running: %s. Blocking code"
                " stops every job, schedule and lease renewal: make it async, or register"
                " the task with blocking=True",
                time.monotonic() - posted,
                ", ".join(running) or "no job (a plugin or the kernel itself)",
            )
            while not answered.wait(self.every) and not self._stop.is_set():
                self._last_stall = time.monotonic()
                if self._lag is not None:
                    self._lag.set(time.monotonic() - posted)
            lag = time.monotonic() - posted
            self._last_stall = time.monotonic()
            self._measured(lag)
            log.warning("the event loop ran again after %.1f s", lag)

    def _measured(self, lag: float) -> None:
        self.worst = max(self.worst, lag)
        if self._lag is not None:
            self._lag.set(lag)

"""The store's health, seen from what the kernel does with it.

A store can fail in ways no single call reveals: a SQLite file with garbage
pages fails every claim while the kernel retries with backoff and does no
work; a database restarted for good answers nothing. `StorageWatch` makes
that visible and bounded, as a supervisor expects of a service:

- the job path reports each store call's outcome (`succeeded` after a
  claim round, an outcome stored, a lease renewed, a slot stored;
  `failed` with the error), and the ``storage`` health check adds a cheap
  probe of its own (a read of the key-value and the job tables) at each
  health round. The two are judged apart: a probe that succeeds does not
  excuse claims that keep failing (garbage in the job tables' pages), nor
  do working job calls excuse a key-value store that fails;
- the check is healthy while calls succeed, degraded while some fail and
  others succeed, unhealthy once nothing has succeeded for ``unhealthy_after``
  (or at once when the store is lost); a single failure is the caller's
  warning, and a run of failures that lasts that long is logged at error
  level with its cause (the recovery, then, at info);
- past ``limit`` seconds of either failing with no success (None: never), or at once
  for a `kernel.errors.StorageLost` (the SQLite file deleted or replaced
  under the kernel), ``on_limit`` is called: the runner stops and exits
  non-zero (`ExitCode.STORAGE_FAILED`) so systemd or Kubernetes restarts it.

Time is trio's clock (``MockClock`` in tests); reporting a success is one
attribute test on the hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from kernel.config.durations import describe_duration
from kernel.errors import StorageError, StorageLost
from kernel.observe.health import HealthReport

__all__ = ["StorageWatch"]

log = logging.getLogger("kernel.storage")


@attrs.define
class _Failures:
    """A run of failures of one kind of call, since its last success."""

    what: str  # "call" or "probe", for messages
    since: float | None = None  # trio time of the first failure since a success
    count: int = 0
    error: StorageError | None = None
    last: float | None = None  # trio time of the last failure, even if since recovered

    def failed(self, error: StorageError, now: float) -> None:
        self.error, self.last = error, now
        self.count += 1
        if self.since is None:
            self.since = now

    def reset(self) -> None:
        self.since, self.count = None, 0


class StorageWatch:
    """See the module docstring. ``probe`` is a cheap call to the store
    (raising `StorageError` when it fails)."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        limit: float | None = None,
        unhealthy_after: float = 30.0,
        on_limit: Callable[[str], None] | None = None,
    ) -> None:
        self._probe = probe
        self.limit = limit
        # unhealthy before it stops the kernel, however short the limit
        self.unhealthy_after = unhealthy_after if limit is None else min(unhealthy_after, limit)
        self._on_limit = on_limit
        self._calls = _Failures("call")
        self._probes = _Failures("probe")
        self.lost = False
        self._gave_up = False
        self._reported = False  # the current failing was logged as an error

    @property
    def failing_since(self) -> float | None:
        """Trio time since which calls or probes have failed with no success."""
        starts = [run.since for run in (self._calls, self._probes) if run.since is not None]
        return min(starts) if starts else None

    def succeeded(self) -> None:
        """A store call succeeded."""
        if self._calls.since is not None and not self.lost:
            self._recovered(self._calls)

    def failed(self, error: StorageError) -> None:
        """A store call failed with ``error``."""
        self._failed(self._calls, error)

    def _failed(self, run: _Failures, error: StorageError) -> None:
        now = trio.current_time()
        run.failed(error, now)
        if isinstance(error, StorageLost):
            self.lost = True
        worst = self._worst(now)
        if worst is None:
            return
        failing, run = worst
        if not self._reported and self.lost:
            self._reported = True
            log.error("storage: lost: %s", run.error)
        elif not self._reported and failing >= self.unhealthy_after:
            self._reported = True
            log.error(
                "storage: failing for %s with no %s succeeding (%d failed): %s",
                describe_duration(failing),
                run.what,
                run.count,
                run.error,
            )
        if self._gave_up or self._on_limit is None:
            return
        if self.lost:
            reason = f"the store is lost ({run.error})"
        elif self.limit is not None and failing >= self.limit:
            reason = (
                f"the store has failed for {describe_duration(failing)} with no {run.what}"
                f" succeeding ({run.count} failed; last: {run.error})"
            )
        else:
            return
        self._gave_up = True
        log.error("storage: %s; stopping so the kernel can be restarted", reason)
        self._on_limit(reason)

    def _recovered(self, run: _Failures) -> None:
        assert run.since is not None
        failing = trio.current_time() - run.since
        count = run.count
        run.reset()
        if self._reported and self.failing_since is None:
            self._reported = False
            log.info(
                "storage: working again after %s (%d failed %s(s))",
                describe_duration(failing),
                count,
                run.what,
            )

    def _worst(self, now: float) -> tuple[float, _Failures] | None:
        """The longest run of failures going on: how long, and which."""
        runs = [
            (now - run.since, run) for run in (self._calls, self._probes) if run.since is not None
        ]
        return max(runs, key=lambda item: item[0]) if runs else None

    async def check(self) -> HealthReport:
        """The ``storage`` health check: probe, then judge."""
        try:
            await self._probe()
        except StorageError as error:
            self._failed(self._probes, error)
        else:
            if self._probes.since is not None and not self.lost:
                self._recovered(self._probes)
        now = trio.current_time()
        worst = self._worst(now)
        if worst is None:
            recent = [
                run
                for run in (self._calls, self._probes)
                if run.last is not None and now - run.last < self.unhealthy_after
            ]
            if recent:
                return HealthReport.degraded(f"recent store failure: {recent[0].error}")
            return HealthReport.healthy()
        failing, run = worst
        reason = f"store {run.what}s failing for {describe_duration(failing)}: {run.error}"
        judge = (
            HealthReport.unhealthy
            if self.lost or failing >= self.unhealthy_after
            else HealthReport.degraded
        )
        return judge(reason, failing_seconds=round(failing, 3), failed=run.count)

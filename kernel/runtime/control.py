"""The operator's handle on a running kernel: look, and act.

`KernelControl` gathers what an operator does to a live kernel, the way
Hangfire's monitoring API, Oban Web and Sidekiq's API do: list the plugins
and enable, disable or restart one; list the schedules with their next and
last fires and pause, resume or trigger one now; see the queues with their
depth and pause or resume one; page through jobs by state, queue and task,
cancel one, retry a dead letter, purge the dead; and ask whether the kernel
is ready. The HTTP face (``trio-kernel-http``) serves it, and a CLI can.

It is a facade over the public methods of `Kernel`, its `JobQueue` and its
`Scheduler`, on the kernel's trio thread: no new state. Every answer is JSON
(dicts of str, numbers, bools, lists and ``None``; times as ISO 8601 in UTC)
except the job records, which are `JobRecord`\\s. A name it does not know
is `NotFound`; a job in a state the action does not apply to is
`InvalidJob` for its ``state``; a kernel that is not running (not started
yet, or stopped) is `KernelNotRunning`.

Pausing a schedule or a queue acts on this process: other kernels sharing
the store keep theirs, and a plugin restart starts its schedules and queue
afresh (unpaused), as a redeploy would.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import attrs
import trio

from kernel.errors import InvalidJob, KernelNotRunning, NotFound, PluginStateError
from kernel.jobs.queue import JobQueue
from kernel.jobs.record import JobRecord, JobState
from kernel.observe.health import HealthReport
from kernel.ports import JSON
from kernel.runtime.kernel import Kernel
from kernel.runtime.supervisor import PluginState, PluginSupervisor
from kernel.storage.base import MAX_LIST_LIMIT, validate_job_id
from kernel.time.scheduler import Schedule, Scheduler
from kernel.time.triggers import AllOf, AnyOf, At, Cron, Every

__all__ = ["DEPTH_LIMIT", "SCAN_LIMIT", "JobPage", "KernelControl", "describe_trigger"]

DEPTH_LIMIT: Final = 10_000
"""Queued jobs counted per queue before the depth is reported as "at least"
(the job store has no count: the depth is a bounded scan)."""

SCAN_LIMIT: Final = 5_000
"""Jobs one `KernelControl.jobs` call reads at most while filtering by task."""

_READY_PROBE: Final = ("kernel", "readyz")
_KNOWN_SHOWN: Final = 20


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _seconds_text(value: timedelta) -> str:
    total = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size and total % size == 0:
            return f"{total / size:g}{unit}"
    return f"{total:g}s"


def describe_trigger(trigger: object) -> str:
    """A trigger as an operator reads it: ``every 5m``, ``cron '0 2 * * *'
    Europe/Berlin``, ``at 2026-01-01T00:00:00+00:00``, ``any of (...)``."""
    if isinstance(trigger, Every):
        return f"every {_seconds_text(trigger.interval)}"
    if isinstance(trigger, Cron):
        return f"cron '{trigger.expression}' {trigger.tz}"
    if isinstance(trigger, At):
        return f"at {trigger.when.isoformat()}"
    if isinstance(trigger, AnyOf | AllOf):
        inner = ", ".join(describe_trigger(t) for t in trigger.triggers)
        return f"{'any' if isinstance(trigger, AnyOf) else 'all'} of ({inner})"
    return repr(trigger)


def _known(names: list[str]) -> tuple[str, ...]:
    return tuple(names) if len(names) <= _KNOWN_SHOWN else ()


@attrs.frozen
class JobPage:
    """One page of `KernelControl.jobs`: the ``jobs``, and ``next_after``,
    the id to pass as ``after_id`` for the next page (None at the end)."""

    jobs: list[JobRecord]
    next_after: str | None


class KernelControl:
    """Operator actions on ``kernel`` (see the module docstring). Make it
    once; it holds nothing but the kernel, so it outlives restarts."""

    def __init__(self, kernel: Kernel, *, depth_limit: int = DEPTH_LIMIT) -> None:
        self.kernel = kernel
        #: Jobs `count_jobs` counts at most (the store has no count: it scans).
        self.depth_limit = depth_limit

    # -- the running kernel -------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the kernel is running (its adapters open, its plugins up)."""
        try:
            self.kernel.scheduler  # noqa: B018 - raises while not running
        except PluginStateError:
            return False
        return True

    def _queue(self) -> JobQueue:
        try:
            return self.kernel.queue
        except PluginStateError:
            raise KernelNotRunning("the kernel is not running") from None

    def _scheduler(self) -> Scheduler:
        try:
            return self.kernel.scheduler
        except PluginStateError:
            raise KernelNotRunning("the kernel is not running") from None

    # -- plugins ------------------------------------------------------------------

    def plugins(self) -> list[dict[str, JSON]]:
        """Each plugin in start order: state and why, version, restarts,
        permissions, dependencies and its last health report."""
        health = self.kernel.health.current().components
        out: list[dict[str, JSON]] = []
        for name, supervisor in self.kernel.plugins.items():
            report = health.get(name)
            manifest = supervisor.manifest
            permissions: list[JSON] = [p for p in sorted(p.value for p in manifest.permissions)]
            requires: list[JSON] = list(manifest.requires)
            reasons: list[JSON] = [] if report is None else list(report.reasons)
            out.append(
                {
                    "name": name,
                    "state": supervisor.state.value,
                    "reason": supervisor.reason,
                    "version": manifest.version,
                    "restarts": supervisor.restarts,
                    "permissions": permissions,
                    "requires": requires,
                    "health": None
                    if report is None
                    else {"status": report.status.value, "reasons": reasons},
                }
            )
        return out

    def plugin(self, name: str) -> dict[str, JSON]:
        """`plugins` for one; `NotFound` if there is none of that name."""
        self._supervisor(name)
        return next(entry for entry in self.plugins() if entry["name"] == name)

    def _supervisor(self, name: str) -> PluginSupervisor:
        supervisors = self.kernel.plugins
        if name not in supervisors:
            raise NotFound("plugin", name, _known(list(supervisors)))
        return supervisors[name]

    async def enable_plugin(self, name: str) -> dict[str, JSON]:
        """Start a disabled or failed plugin and remember it is enabled;
        `PluginStateError` while a dependency is not enabled."""
        self._supervisor(name)
        self._queue()
        await self.kernel.enable(name)
        return self.plugin(name)

    async def disable_plugin(self, name: str) -> dict[str, JSON]:
        """Stop a plugin gracefully and remember it is disabled (across restarts)."""
        self._supervisor(name)
        self._queue()
        await self.kernel.disable(name)
        return self.plugin(name)

    async def restart_plugin(self, name: str) -> dict[str, JSON]:
        """Stop a plugin gracefully and start it again (its stored state
        stays enabled); a stopped plugin is just started."""
        supervisor = self._supervisor(name)
        self._queue()
        if supervisor.state is PluginState.ENABLED:
            await supervisor.stop(remember=False)
        await self.kernel.enable(name)
        return self.plugin(name)

    # -- schedules ----------------------------------------------------------------

    def schedules(self) -> list[dict[str, JSON]]:
        """Each schedule of this kernel: trigger, next and last fire,
        paused, runs in progress and what happened to its slots."""
        return [self._describe(schedule) for schedule in self._scheduler().schedules]

    def _describe(self, schedule: Schedule) -> dict[str, JSON]:
        stats: dict[str, JSON] = dict(attrs.asdict(schedule.stats))
        return {
            "name": schedule.name,
            "trigger": describe_trigger(schedule.trigger),
            "next_fire_time": _iso(schedule.next_fire_time),
            "last_fire_time": _iso(schedule.last_fire_time),
            "paused": schedule.paused,
            "running": schedule.running,
            "stats": stats,
        }

    def _schedule(self, name: str) -> Schedule:
        schedules = self._scheduler().schedules
        found = [schedule for schedule in schedules if schedule.name == name]
        if not found:
            raise NotFound("schedule", name, _known([s.name for s in schedules]))
        if len(found) > 1:
            raise InvalidJob("schedule", name, f"{len(found)} schedules have this name")
        return found[0]

    def pause_schedule(self, name: str) -> dict[str, JSON]:
        """Stop firing ``name`` here until `resume_schedule`; runs go on."""
        schedule = self._schedule(name)
        schedule.pause()
        return self._describe(schedule)

    def resume_schedule(self, name: str) -> dict[str, JSON]:
        """Fire again from the next slot after now (slots in the pause are not run)."""
        schedule = self._schedule(name)
        schedule.resume()
        return self._describe(schedule)

    def trigger_schedule(self, name: str) -> dict[str, JSON]:
        """Fire ``name`` once now (`Schedule.trigger_now`): its overlap
        policy applies; the next planned fire stays."""
        schedule = self._schedule(name)
        schedule.trigger_now()
        return self._describe(schedule)

    # -- queues -------------------------------------------------------------------

    async def queues(self) -> list[dict[str, JSON]]:
        """Each queue this kernel works: concurrency, running jobs here,
        paused, and its depth (queued jobs in the store, every process's;
        ``depth_capped`` when there are ``depth_limit`` or more)."""
        queue = self._queue()
        out = []
        for entry in queue.describe():
            name = str(entry["name"])
            depth = await self.count_jobs(JobState.queued, queue=name)
            out.append({**entry, "depth": depth, "depth_capped": depth >= self.depth_limit})
        return out

    async def count_jobs(self, state: JobState, *, queue: str | None = None) -> int:
        """How many jobs are in ``state`` (of ``queue``), counting at most
        ``depth_limit``: a bounded scan, as the store has no count."""
        store = self._queue().store
        batch = min(MAX_LIST_LIMIT, self.depth_limit)
        count = 0
        after: str | None = None
        while count < self.depth_limit:
            page = await store.list_jobs(
                state=state, queue=queue, limit=batch, after_id=after, payloads=False
            )
            count += len(page)
            if len(page) < batch:
                break
            after = page[-1].id
        return min(count, self.depth_limit)

    def _known_queue(self, name: str) -> JobQueue:
        queue = self._queue()
        names = [str(entry["name"]) for entry in queue.describe()]
        if name not in names:
            raise NotFound("queue", name, _known(names))
        return queue

    def pause_queue(self, name: str) -> None:
        """Claim nothing more from queue ``name`` here; running jobs go on."""
        self._known_queue(name).pause(name)

    def resume_queue(self, name: str) -> None:
        self._known_queue(name).resume(name)

    # -- jobs ---------------------------------------------------------------------

    async def jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        after_id: str | None = None,
        payloads: bool = True,
    ) -> JobPage:
        """Up to ``limit`` jobs in id order after ``after_id``, filtered by
        ``state``, ``queue`` and ``task`` (a task filter reads at most
        `SCAN_LIMIT` jobs per call; ``next_after`` then says where to go on).
        ``payloads=False`` leaves the arguments out (a listing that shows none)."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidJob("limit", limit, "must be an int from 1 to 1000")
        if after_id is not None:
            validate_job_id(after_id)
        store = self._queue().store
        if task is None:
            page = await store.list_jobs(
                state=state, queue=queue, limit=limit, after_id=after_id, payloads=payloads
            )
            return JobPage(page, page[-1].id if len(page) == limit else None)
        found: list[JobRecord] = []
        scanned = 0
        cursor = after_id
        while scanned < SCAN_LIMIT:
            batch = min(MAX_LIST_LIMIT, 500)
            page = await store.list_jobs(
                state=state, queue=queue, limit=batch, after_id=cursor, payloads=payloads
            )
            for record in page:
                scanned += 1
                cursor = record.id
                if record.task == task:
                    found.append(record)
                    if len(found) == limit:
                        return JobPage(found, record.id)
            if len(page) < batch:
                return JobPage(found, None)
        return JobPage(found, cursor)

    async def job(self, job_id: str) -> JobRecord:
        """The job ``job_id``; `NotFound` if the store has none."""
        validate_job_id(job_id)
        record = await self._queue().get_job(job_id)
        if record is None:
            raise NotFound("job", job_id)
        return record

    async def cancel_job(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job (a running one's task is cancelled)."""
        queue = self._queue()
        current = await self.job(job_id)
        record = await queue.cancel(job_id)
        if record is None:
            latest = await queue.get_job(job_id) or current
            raise InvalidJob(
                "state", latest.state.value, "only a queued or running job can be cancelled"
            )
        return record

    async def retry_job(self, job_id: str) -> JobRecord:
        """Put a dead job back in its queue, attempts reset (`JobConflict`
        if a live job holds its dedup key)."""
        queue = self._queue()
        current = await self.job(job_id)
        record = await queue.retry_dead(job_id)
        if record is None:
            latest = await queue.get_job(job_id) or current
            raise InvalidJob("state", latest.state.value, "only a dead job can be retried")
        return record

    async def purge_dead(self, older_than: timedelta | None = None) -> int:
        """Delete the dead letters (those dead for longer than ``older_than``); how many."""
        return await self._queue().purge_dead(older_than)

    # -- readiness ----------------------------------------------------------------

    async def readiness(self, *, storage_timeout: float = 5.0) -> HealthReport:
        """Healthy when the kernel runs, its storage answers within
        ``storage_timeout`` seconds and no plugin has failed; unhealthy with the
        reasons otherwise (Kubernetes' readiness, Spring's ``readiness`` group)."""
        if not self.running:
            return HealthReport.unhealthy("the kernel is not running")
        reasons = []
        try:
            with trio.fail_after(storage_timeout):
                await self.kernel.storage.get(*_READY_PROBE)
        except trio.TooSlowError:
            reasons.append(f"storage: no answer within {storage_timeout:g}s")
        except Exception as error:
            reasons.append(f"storage: {type(error).__name__}: {error}")
        for name, supervisor in self.kernel.plugins.items():
            if supervisor.state is PluginState.FAILED:
                reasons.append(f"plugin {name} failed: {supervisor.reason}")
        if reasons:
            return HealthReport.unhealthy(*reasons)
        return HealthReport.healthy()

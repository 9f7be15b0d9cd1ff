"""A plugin's handle on the job queue: its own queue in full, the rest only
as far as its manifest says.

A plugin never holds the kernel's `JobQueue` or its job store: through
them it could read or overwrite every plugin's jobs and the kernel's own
stored state. `PluginQueue` is a capability (as a browser extension's
``chrome.*`` handles, or an OTP application's registered names): its public
methods act on the plugin's own queue and tasks, and reach further only
with the permissions that name that reach:

- no permission: register the plugin's tasks (``<plugin>.<name>``), enqueue
  their jobs, configure the plugin's queue;
- ``jobs``: read, cancel and retry the jobs of the plugin's own queue, and
  enqueue jobs of other plugins' tasks (a hand-off between plugins);
- ``jobs-admin``: the same on every queue, pause and resume any queue,
  purge dead letters (an operator's plugin).

Permissions stop mistakes and make a manifest's reach reviewable; plugins
are code in the kernel's process, so this is not a sandbox against hostile
code (docs/plugins.md, "Trust").
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kernel.errors import PermissionDenied, UnknownTask
from kernel.jobs.rate import RateLimit
from kernel.jobs.record import JobRecord, JobState
from kernel.runtime.permissions import Permission

if TYPE_CHECKING:
    from kernel.jobs.queue import JobQueue
    from kernel.time.policies import MisfirePolicy, OverlapPolicy
    from kernel.time.scheduler import Schedule
    from kernel.time.triggers import Trigger

__all__ = ["PluginQueue"]

JOBS = Permission.JOBS
JOBS_ADMIN = Permission.JOBS_ADMIN


class PluginQueue:
    """What one start of a plugin may do with jobs; see the module docstring.
    Its queue is named after the plugin (`name`)."""

    def __init__(
        self,
        queue: JobQueue,
        name: str,
        permissions: frozenset[Permission],
        schedules: list[Schedule] | None = None,
    ) -> None:
        self._queue = queue
        self._permissions = permissions
        self._schedules = schedules if schedules is not None else []  # ended with the start
        self._tasks: dict[str, Callable[..., Any]] = {}  # full name -> function, this start's
        self.name = name

    # -- the plugin's own ---------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        """The full names of the tasks this start registered."""
        return list(self._tasks)

    def register(
        self,
        name: str,
        func: Callable[..., Any],
        *,
        retry: Any = None,
        timeout: float | timedelta | None = None,
        **options: Any,
    ) -> str:
        """Register ``func`` as the task ``<plugin>.<name>`` in the plugin's
        queue; returns the full name. ``options`` are `JobQueue.register`'s
        (breaker, rate_limit, blocking), except ``queue``."""
        if "queue" in options:
            raise TypeError("a plugin's tasks run in its own queue: leave out queue=")
        full = f"{self.name}.{name}"
        self._queue.register(full, func, queue=self.name, retry=retry, timeout=timeout, **options)
        self._tasks[full] = func
        return full

    def unregister_all(self) -> None:
        """Forget this start's tasks (the supervisor, at a stop)."""
        for full in self._tasks:
            self._queue.unregister(full)
        self._tasks.clear()

    async def enqueue(
        self, task: str | Callable[..., Any], *args: Any, **options: Any
    ) -> JobRecord:
        """A job of this plugin's task ``task`` (its short or full name, or
        its function); a task of another plugin, by its full name, needs the
        ``jobs`` permission, and a ``queue=`` other than the plugin's
        ``jobs-admin``. ``options`` are `JobQueue.enqueue`'s."""
        name = self._resolve(task)
        if name not in self._tasks:
            self._require(JOBS, f"enqueue a job of task {name!r}, not one of this plugin's")
        if options.get("queue", self.name) != self.name:
            self._require(JOBS_ADMIN, f"enqueue into queue {options['queue']!r}")
        return await self._queue.enqueue(name, *args, **options)

    def add_schedule(
        self,
        task: str,
        trigger: Trigger,
        *,
        name: str | None = None,
        args: list[Any] | tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        misfire: MisfirePolicy | None = None,
        overlap: OverlapPolicy | None = None,
    ) -> Schedule:
        """Enqueue a job of this plugin's task ``task`` (short or full name)
        at each fire of ``trigger`` (`JobQueue.add_schedule`), under the name
        ``<plugin>/<name>``; it ends with this start."""
        full = self._resolve(task)
        if full not in self._tasks:
            raise UnknownTask(full, known=sorted(self._tasks))
        schedule = self._queue.add_schedule(
            full,
            trigger,
            name=f"{self.name}/{name or full.removeprefix(self.name + '.')}",
            args=args,
            kwargs=kwargs,
            queue=self.name,
            priority=priority,
            misfire=misfire,
            overlap=overlap,
        )
        self._schedules.append(schedule)
        return schedule

    def configure(
        self,
        *,
        concurrency: int = 4,
        rate_limit: RateLimit | None = None,
        aging: timedelta | None = timedelta(seconds=60),
        prefetch: int | None = None,
    ) -> None:
        """How the plugin's queue is worked here (`JobQueue.configure`)."""
        self._queue.configure(
            self.name,
            concurrency=concurrency,
            rate_limit=rate_limit,
            aging=aging,
            prefetch=prefetch,
        )

    # -- reading and acting on jobs (``jobs``; other queues ``jobs-admin``) ----------

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job, if it is in this plugin's queue (any queue with
        ``jobs-admin``); None if there is no such job."""
        self._require(JOBS, "read jobs")
        job = await self._queue.get_job(job_id)
        if job is not None and job.queue != self.name and not self._may(JOBS_ADMIN):
            return None  # another plugin's job does not exist for this one
        return job

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: str | None = None,
        payloads: bool = True,
    ) -> list[JobRecord]:
        """Jobs of this plugin's queue (another ``queue`` with ``jobs-admin``)
        in id order; pass the last id of a page as ``after_id``."""
        target = self._own_or_admin(queue, "read the jobs of")
        return await self._queue.store.list_jobs(
            state=state,
            queue=target,
            limit=limit,
            after_id=after_id,
            payloads=payloads,
        )

    async def dead_letters(self, limit: int = 100, after_id: str | None = None) -> list[JobRecord]:
        """This plugin's dead jobs in id order."""
        return await self.list_jobs(state=JobState.dead, limit=limit, after_id=after_id)

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job of this plugin's queue
        (`JobQueue.cancel`); None if it had already finished."""
        if await self._reachable(job_id, "cancel"):
            return await self._queue.cancel(job_id)
        return None

    async def retry_dead(self, job_id: str) -> JobRecord | None:
        """Put a dead job of this plugin's queue back, attempts reset."""
        if await self._reachable(job_id, "retry"):
            return await self._queue.retry_dead(job_id)
        return None

    async def purge_dead(self, older_than: timedelta | datetime | None = None) -> int:
        """Delete every queue's dead jobs older than ``older_than`` (``jobs-admin``)."""
        self._require(JOBS_ADMIN, "purge dead letters")
        return await self._queue.purge_dead(older_than)

    def pause(self, queue: str | None = None) -> None:
        """Claim nothing more from the plugin's queue (another with ``jobs-admin``)."""
        self._queue.pause(self._own_or_admin(queue, "pause"))

    def resume(self, queue: str | None = None) -> None:
        self._queue.resume(self._own_or_admin(queue, "resume"))

    # -- checks -------------------------------------------------------------------

    def _may(self, permission: Permission) -> bool:
        granted = self._permissions
        return permission in granted or (permission is JOBS and JOBS_ADMIN in granted)

    def _require(self, permission: Permission, what: str) -> None:
        if not self._may(permission):
            raise PermissionDenied(self.name, permission.value, what)

    def _own_or_admin(self, queue: str | None, action: str) -> str:
        target = self.name if queue is None else queue
        if target == self.name:
            self._require(JOBS, f"{action} its own queue")
        else:
            self._require(JOBS_ADMIN, f"{action} queue {target!r}")
        return target

    async def _reachable(self, job_id: str, action: str) -> bool:
        self._require(JOBS, f"{action} jobs")
        job = await self._queue.get_job(job_id)
        if job is None:
            return False
        if job.queue != self.name:
            self._require(JOBS_ADMIN, f"{action} a job of queue {job.queue!r}")
        return True

    def _resolve(self, task: str | Callable[..., Any]) -> str:
        if isinstance(task, str):
            own = f"{self.name}.{task}"
            return own if own in self._tasks else task
        for full, func in self._tasks.items():
            if func is task:
                return full
        for spec in self._queue.tasks.values():
            if spec.func is task:
                return spec.name
        raise TypeError(f"{task!r} is not a registered task")

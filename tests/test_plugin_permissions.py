"""A plugin reaches only what its manifest names: its handles are scoped
(no raw store, queue, bus or notifier among its public attributes), jobs of
other plugins need ``jobs``/``jobs-admin``, and it cannot end its own start."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import trio
from trio.testing import MockClock

from kernel import (
    Every,
    Kernel,
    Manifest,
    Permission,
    PermissionDenied,
    Plugin,
    PluginContext,
    PluginQueue,
    RetryPolicy,
)
from kernel.jobs.queue import JobQueue
from kernel.jobs.record import JobState
from kernel.observe.metrics import Metrics
from kernel.ports import Bus, JobStore, Notifier, Storage
from kernel.runtime.kernel import STATE_NAMESPACE
from kernel.storage.memory import MemoryStorage
from kernel.time.clock import Clock
from kernel.time.scheduler import Scheduler

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class _Worker(Plugin):
    """Registers a task that fails for ever (so its jobs die) and one that waits."""

    ctx: PluginContext | None = None

    async def on_enable(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        ctx.register_task("fail", self.fail, retry=RetryPolicy(max_attempts=1))
        ctx.register_task("wait", self.wait)

    async def fail(self) -> None:
        raise RuntimeError("no")

    async def wait(self) -> None:
        await trio.sleep_forever()

    @property
    def queue(self) -> PluginQueue:
        assert self.ctx is not None
        return self.ctx.queue


def Worker(name: str, *permissions: str) -> _Worker:
    """A `_Worker` named ``name`` with a manifest asking for ``permissions``."""
    manifest = Manifest(name, permissions=permissions)
    return type(f"Worker_{name}", (_Worker,), {"manifest": manifest})()


def reachable(root: object, depth: int = 3) -> Iterator[tuple[str, object]]:
    """Every object reachable from ``root`` through public attributes."""
    seen: set[int] = set()
    todo: list[tuple[str, object, int]] = [("ctx", root, 0)]
    while todo:
        path, value, level = todo.pop()
        if id(value) in seen or level > depth:
            continue
        seen.add(id(value))
        yield path, value
        if isinstance(value, str | bytes | int | float | bool | type(None) | type):
            continue
        if inspect.ismethod(value) or inspect.isfunction(value) or inspect.ismodule(value):
            continue
        for name in dir(value):
            if name.startswith("_"):
                continue
            try:
                attribute = getattr(value, name)
            except Exception:  # a property refusing: nothing reached
                continue
            todo.append((f"{path}.{name}", attribute, level + 1))
        if isinstance(value, list | tuple | set | frozenset):
            for index, item in enumerate(value):
                todo.append((f"{path}[{index}]", item, level + 1))


RAW = (JobQueue, JobStore, Storage, Bus, Notifier, Scheduler, Kernel, Metrics)


async def test_no_raw_port_is_reachable_through_public_attributes(
    autojump_clock: MockClock,
) -> None:
    plugin = Worker("plain")
    async with Kernel([plugin], clock=Clock.starting_at(T0)):
        leaks = [
            f"{path}: {type(value).__name__}"
            for path, value in reachable(plugin.ctx)
            if isinstance(value, RAW)
        ]
    assert leaks == []


async def test_a_plugin_cannot_end_or_pause_its_own_start(autojump_clock: MockClock) -> None:
    plugin = Worker("plain")
    async with Kernel([plugin], clock=Clock.starting_at(T0)):
        for name in ("close", "stop_intake", "start_intake", "wait_runs_done", "store"):
            assert not hasattr(plugin.ctx, name), name
            assert not hasattr(plugin.queue, name), name


async def test_own_tasks_need_no_permission_and_jobs_do(autojump_clock: MockClock) -> None:
    plain, other = Worker("plain"), Worker("other")
    async with Kernel([plain, other], clock=Clock.starting_at(T0)):
        assert plain.ctx is not None
        job = await plain.ctx.enqueue("fail")
        assert (job.task, job.queue) == ("plain.fail", "plain")
        schedule = plain.queue.add_schedule("wait", Every(timedelta(hours=1)))
        assert schedule.name == "plain/wait"
        with pytest.raises(PermissionDenied, match="'jobs' permission") as denied:
            await plain.ctx.enqueue("other.fail")
        assert "enqueue a job of task 'other.fail'" in str(denied.value)
        for call in (
            plain.queue.get_job(job.id),
            plain.queue.list_jobs(),
            plain.queue.dead_letters(),
            plain.queue.cancel(job.id),
            plain.queue.retry_dead(job.id),
        ):
            with pytest.raises(PermissionDenied, match="'jobs'"):
                await call
        with pytest.raises(PermissionDenied, match="'jobs'"):
            plain.queue.pause()
        with pytest.raises(TypeError, match="own queue"):
            plain.queue.register("x", plain.fail, queue="other")
        with pytest.raises(PermissionDenied, match="'jobs-admin'"):
            await plain.ctx.enqueue("fail", queue="other")


async def test_jobs_reaches_the_own_queue_only(autojump_clock: MockClock) -> None:
    mine, other = Worker("mine", "jobs"), Worker("other")
    async with Kernel([mine, other], clock=Clock.starting_at(T0)) as kernel:
        assert mine.ctx is not None
        assert other.ctx is not None
        own = await mine.ctx.enqueue("fail")
        theirs = await other.ctx.enqueue("fail")
        await trio.sleep(1)
        assert [job.id for job in await mine.queue.dead_letters()] == [own.id]
        assert (await mine.queue.retry_dead(own.id)) is not None
        # another plugin's job does not exist for it, and cannot be touched
        assert await mine.queue.get_job(theirs.id) is None
        with pytest.raises(PermissionDenied, match="'jobs-admin'"):
            await mine.queue.retry_dead(theirs.id)
        with pytest.raises(PermissionDenied, match="'jobs-admin'"):
            await mine.queue.list_jobs(queue="other")
        with pytest.raises(PermissionDenied, match="'jobs-admin'"):
            mine.queue.pause("other")
        with pytest.raises(PermissionDenied, match="'jobs-admin'"):
            await mine.queue.purge_dead()
        # a hand-off to another plugin's task
        handed = await mine.ctx.enqueue("other.wait")
        assert handed.queue == "other"
        waiting = await mine.ctx.enqueue("wait")
        await trio.sleep(1)
        cancelled = await mine.queue.cancel(waiting.id)
        assert cancelled is not None
        assert cancelled.state is JobState.cancelled
        untouched = await kernel.queue.get_job(theirs.id)
        assert untouched is not None
        assert untouched.state is JobState.dead


async def test_jobs_admin_reaches_every_queue(autojump_clock: MockClock) -> None:
    admin, other = Worker("admin", "jobs-admin"), Worker("other")
    async with Kernel([admin, other], clock=Clock.starting_at(T0)) as kernel:
        assert other.ctx is not None
        theirs = await other.ctx.enqueue("fail")
        await trio.sleep(1)
        assert (await admin.queue.get_job(theirs.id)) is not None
        assert [job.id for job in await admin.queue.list_jobs(queue="other")] == [theirs.id]
        admin.queue.pause("other")
        again = await admin.queue.retry_dead(theirs.id)
        assert again is not None
        assert again.state is JobState.queued
        await trio.sleep(5)
        job = await kernel.queue.get_job(theirs.id)
        assert job is not None
        assert job.state is JobState.queued
        admin.queue.resume("other")
        await trio.sleep(1)
        assert await admin.queue.purge_dead() == 1


async def test_the_kernels_stored_state_is_out_of_reach(autojump_clock: MockClock) -> None:
    storage = MemoryStorage()
    plugin = Worker("keeper", "storage-read", "storage-write")
    async with Kernel([plugin], storage=storage, clock=Clock.starting_at(T0)):
        assert plugin.ctx is not None
        await plugin.ctx.storage.put("plugin/other", {"state": "disabled"})
        assert plugin.ctx.storage.namespace == "plugin:keeper"
    assert await storage.get(STATE_NAMESPACE, "plugin/other") is None


def test_permission_names_are_listed_in_a_bad_manifest() -> None:
    with pytest.raises(ValueError, match="jobs-admin"):
        Manifest("x", permissions=["job"])
    assert {p.value for p in Permission} >= {"jobs", "jobs-admin"}

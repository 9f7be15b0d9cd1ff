"""Job arguments are capped (1 MiB of JSON by default, configurable), and
listings read no payloads: `kernel jobs ls` over jobs of many megabytes
stays small."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from trio.testing import MockClock

from kernel import Every, Kernel, Manifest, Plugin, PluginContext
from kernel.cli import main
from kernel.errors import InvalidJob
from kernel.jobs.queue import JobQueue
from kernel.jobs.record import JobRecord
from kernel.serialization import DEFAULT_MAX_PAYLOAD
from kernel.storage.memory import MemoryJobStore
from kernel.storage.sqlite import SQLiteStorage
from kernel.time.clock import Clock
from kernel.time.scheduler import Scheduler

T0 = datetime(2026, 3, 1, tzinfo=UTC)
MIB = 1 << 20


async def noop(*args: object, **kwargs: object) -> None:
    pass


def queue_on(store: MemoryJobStore, **options: object) -> JobQueue:
    queue = JobQueue(store, Scheduler(Clock.starting_at(T0)), **options)  # type: ignore[arg-type]
    queue.register("noop", noop)
    return queue


async def test_arguments_up_to_the_limit_are_stored_and_past_it_refused() -> None:
    store = MemoryJobStore()
    queue = queue_on(store)
    assert queue.max_payload_bytes == DEFAULT_MAX_PAYLOAD == MIB
    # [["...."],{}] is 9 bytes around the string
    await queue.enqueue("noop", "x" * (MIB - 9))
    with pytest.raises(
        InvalidJob, match=r"arguments '1 MiB as JSON': more than the limit of 1 MiB"
    ):
        await queue.enqueue("noop", "x" * (MIB - 8))
    with pytest.raises(InvalidJob, match="max_payload_bytes"):
        await queue.enqueue("noop", blob="y" * 2 * MIB)
    assert len(await store.list_jobs()) == 1  # the refused ones stored nothing


async def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    queue = queue_on(MemoryJobStore(), max_payload_bytes=1000)
    await queue.enqueue("noop", "€" * 330)  # 990 bytes + 9
    with pytest.raises(InvalidJob, match="1,002 bytes as JSON"):
        await queue.enqueue("noop", "€" * 331)


async def test_the_limit_is_configurable_and_can_be_lifted() -> None:
    small = queue_on(MemoryJobStore(), max_payload_bytes=100)
    with pytest.raises(InvalidJob, match="more than the limit of 100 bytes"):
        await small.enqueue("noop", list(range(50)))
    unlimited = queue_on(MemoryJobStore(), max_payload_bytes=None)
    await unlimited.enqueue("noop", "z" * 3 * MIB)
    for bad in (0, -1, 1.5, "1MiB"):
        with pytest.raises(InvalidJob, match="max_payload_bytes"):
            queue_on(MemoryJobStore(), max_payload_bytes=bad)


async def test_a_schedule_with_arguments_past_the_limit_is_refused() -> None:
    queue = queue_on(MemoryJobStore(), max_payload_bytes=100)
    with pytest.raises(InvalidJob, match="more than the limit"):
        queue.add_schedule("noop", Every(timedelta(minutes=1)), args=["a" * 200])


class Sender(Plugin):
    manifest = Manifest("sender")

    async def on_enable(self, ctx: PluginContext) -> None:
        self.ctx = ctx
        ctx.register_task("send", noop)


async def test_a_kernel_passes_its_limit_to_plugins(autojump_clock: MockClock) -> None:
    plugin = Sender()
    async with Kernel([plugin], clock=Clock.starting_at(T0), max_payload_bytes=50):
        await plugin.ctx.enqueue("send", "short")
        with pytest.raises(InvalidJob, match="50 bytes"):
            await plugin.ctx.enqueue("send", "long" * 20)


def test_the_config_key_is_checked(tmp_path: Path) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text("[kernel]\nmax_payload_bytes = 0\n")
    result = CliRunner().invoke(main, ["plugins", "ls", str(config)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "kernel.max_payload_bytes" in result.stderr


async def _fill(path: Path, jobs: int, size: int) -> None:
    async with await SQLiteStorage.open(path) as store:
        for n in range(jobs):
            job = JobRecord(task="big", args=[f"{n}" + "p" * size], run_at=T0, enqueued_at=T0)
            await store.enqueue(job)


def test_jobs_ls_reads_no_payloads(tmp_path: Path) -> None:
    """20 jobs of 900 KB (18 MB of payloads): listing them allocates a
    small fraction of that (it read every payload before)."""
    path = tmp_path / "big.db"
    trio.run(_fill, path, 20, 900_000)
    tracemalloc.start()
    try:
        result = CliRunner().invoke(main, ["jobs", "ls", "--store", f"sqlite:///{path}"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert result.stdout.count(" big ") == 20
    assert peak < 4 * MIB, f"{peak / MIB:.1f} MiB"

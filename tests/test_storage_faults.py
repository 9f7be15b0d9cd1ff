"""Storage faults are visible, not silent: a store that keeps failing turns
the ``storage`` health check unhealthy, is logged at error level with its
cause, and past ``storage_failure_limit`` stops the runner (exit 5); a
SQLite file deleted or replaced under a running kernel stops it at once; a
runner whose every plugin has failed stops by itself (exit 4).

The runner cases run a real `kernel run` process; waits are on its exit,
bounded by a timeout that only limits a failure."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from kernel import (
    ExitCode,
    Kernel,
    Manifest,
    Plugin,
    PluginContext,
    PluginState,
    RestartIntensity,
)
from kernel.errors import StorageError, StorageLost
from kernel.observe.health import Status
from kernel.observe.storage_watch import StorageWatch
from kernel.storage.memory import MemoryStorage
from kernel.storage.sqlite import SQLiteStorage
from kernel.time.clock import Clock

PLUGINS = Path(__file__).parent / "plugins"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


# -- the watch ------------------------------------------------------------------


class Probe:
    def __init__(self) -> None:
        self.error: StorageError | None = None

    async def __call__(self) -> None:
        if self.error is not None:
            raise self.error


async def test_failures_turn_degraded_then_unhealthy_and_are_logged_once(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kernel.storage")
    probe = Probe()
    watch = StorageWatch(probe, unhealthy_after=30)
    assert (await watch.check()).status is Status.HEALTHY
    probe.error = StorageError("database disk image is malformed")
    report = await watch.check()
    assert report.status is Status.DEGRADED
    assert "malformed" in report.reasons[0]
    await trio.sleep(10)
    assert (await watch.check()).status is Status.DEGRADED
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    await trio.sleep(25)
    report = await watch.check()
    assert report.status is Status.UNHEALTHY
    assert report.details["failed"] == 3
    await watch.check()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "failing for 35s with no probe succeeding" in errors[0]
    assert "malformed" in errors[0]
    probe.error = None
    caplog.clear()
    report = await watch.check()
    assert "working again after" in caplog.text
    assert report.status is Status.DEGRADED  # a failure moments ago
    await trio.sleep(31)
    assert (await watch.check()).status is Status.HEALTHY


async def test_a_success_between_failures_restarts_the_count(autojump_clock: MockClock) -> None:
    stops: list[str] = []
    watch = StorageWatch(Probe(), limit=60, on_limit=stops.append)
    for _ in range(10):
        watch.failed(StorageError("busy"))
        await trio.sleep(50)
        watch.succeeded()
    assert stops == []
    watch.failed(StorageError("busy"))
    await trio.sleep(59)
    watch.failed(StorageError("busy"))
    assert stops == []
    await trio.sleep(1)
    watch.failed(StorageError("still busy"))
    assert len(stops) == 1
    assert "failed for 1m" in stops[0]
    assert "still busy" in stops[0]
    watch.failed(StorageError("again"))
    assert len(stops) == 1  # once


async def test_a_lost_store_stops_at_once(autojump_clock: MockClock) -> None:
    stops: list[str] = []
    watch = StorageWatch(Probe(), limit=600, on_limit=stops.append)
    watch.failed(StorageLost("SQLite database /x.db was deleted"))
    assert len(stops) == 1
    assert "was deleted" in stops[0]
    assert (await watch.check()).status is Status.UNHEALTHY
    watch.succeeded()  # a lost store does not come back
    assert (await watch.check()).status is Status.UNHEALTHY


# -- in a kernel ------------------------------------------------------------------


class BrokenStorage(MemoryStorage):
    """Memory storage whose reads fail once ``broken`` is set."""

    broken = False

    async def get(self, namespace: str, key: str, default: Any = None) -> Any:
        if self.broken:
            raise StorageError("connection refused")
        return await super().get(namespace, key, default)


async def test_the_kernel_reports_storage_health_and_stops_past_the_limit(
    autojump_clock: MockClock,
) -> None:
    storage = BrokenStorage()
    kernel = Kernel(
        storage=storage,
        clock=Clock.starting_at(T0),
        health_interval=5,
        storage_failure_limit=120,
    )
    codes: list[ExitCode] = []
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve, kernel, codes)
            await trio.sleep(6)
            assert kernel.health.current().components["storage"].status is Status.HEALTHY
            storage.broken = True
            await trio.sleep(60)
            assert kernel.health.current().components["storage"].status is Status.UNHEALTHY
    assert codes == [ExitCode.STORAGE_FAILED]
    assert trio.current_time() < 6 + 120 + 2 * 5 + 1  # the limit, and a health round or two


async def _serve(kernel: Kernel, codes: list[ExitCode]) -> None:
    codes.append(await kernel.serve())


# -- the SQLite file's identity ---------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_sqlite_file_deleted_or_replaced_is_lost(tmp_path: Path, how: str) -> None:
    path = tmp_path / "state.db"
    async with await SQLiteStorage.open(path) as storage:
        await storage.put("ns", "k", 1)
        if how == "deleted":
            path.unlink()
        else:
            other = tmp_path / "other.db"
            sqlite3.connect(other).close()
            os.replace(other, path)
        with pytest.raises(StorageLost, match=f"state.db was {how}"):
            await storage.put("ns", "k", 2)
        with pytest.raises(StorageLost):
            await storage.get("ns", "k")  # and stays lost


# -- the runner -------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    path = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def run_kernel(config: Path, env: dict[str, str]) -> Iterator[str]:
    """Run `kernel run CONFIG`, yielding its log lines; bounded by a timeout."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", "run", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(90, process.kill)  # bounds a failure, never a pass
    watchdog.start()
    try:
        assert process.stderr is not None
        yield from process.stderr
        yield f"exit {process.wait()}"
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


TICKER = """
[plugins.ticker]
use = "cli_fixture_plugins:Ticker"
[plugins.ticker.config]
every = "50ms"
"""


def test_kernel_run_stops_at_once_when_its_database_is_deleted(
    tmp_path: Path, env: dict[str, str]
) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text(TICKER)
    lines = []
    for line in run_kernel(config, env):
        lines.append(line)
        if "tick: ok in" in line and (tmp_path / "kernel.db").exists():
            (tmp_path / "kernel.db").unlink()
    log = "".join(lines[:-1])
    assert lines[-1] == f"exit {ExitCode.STORAGE_FAILED}", log
    assert "kernel.db was deleted while this kernel was using it" in log
    assert " ERROR " in log


def test_kernel_run_stops_when_its_database_keeps_failing(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A file with a valid header and garbage where the jobs are: the kernel
    starts, every claim fails, and it stops past the limit (was: retried
    for ever with growing backoff, doing nothing, and exited 0)."""
    database = tmp_path / "kernel.db"
    config = tmp_path / "kernel.toml"
    config.write_text('[kernel]\nstorage_failure_limit = "3s"\nhealth_interval = "1s"\n' + TICKER)
    _ = list(run_kernel_for_a_while(config, env))
    _corrupt_the_jobs(database)
    lines = list(run_kernel(config, env))
    log = "".join(lines[:-1])
    assert lines[-1] == f"exit {ExitCode.STORAGE_FAILED}", log
    assert "malformed" in log
    assert re.search(r"storage: failing for \S+ with no (call|probe) succeeding", log), log
    assert "stopping so the kernel can be restarted" in log


def run_kernel_for_a_while(config: Path, env: dict[str, str]) -> Iterator[str]:
    """A first run that stores jobs, stopped after its first few ticks."""
    process = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "run", str(config), "--stop-after", "1s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    yield from process.stderr.splitlines()


def _corrupt_the_jobs(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        pages = [
            page
            for (page,) in connection.execute(
                "SELECT pageno FROM dbstat"
                " WHERE name LIKE 'kernel_job%' OR name LIKE 'kernel_slot%'"
            )
        ]
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert pages
    with database.open("r+b") as file:
        for page in pages:
            file.seek((page - 1) * page_size)
            file.write(os.urandom(page_size))


def test_kernel_run_stops_when_every_plugin_has_failed(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text('[plugins.crasher]\nuse = "cli_fixture_plugins:Crasher"\n')
    lines = list(run_kernel(config, env))
    log = "".join(lines[:-1])
    assert lines[-1] == f"exit {ExitCode.PLUGIN_FAILED}", log
    assert "every plugin has failed (crasher): stopping" in log
    assert "the disk is full" in log


def test_exit_when_all_failed_can_be_turned_off(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text(
        "[kernel]\nexit_when_all_failed = false\n"
        '[plugins.crasher]\nuse = "cli_fixture_plugins:Crasher"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "run", str(config), "--stop-after", "3s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == ExitCode.PLUGIN_FAILED
    assert "--stop-after 3s reached" in done.stderr  # it idled until then
    assert "every plugin has failed" not in done.stderr


class Steady(Plugin):
    manifest = Manifest("steady")

    async def on_enable(self, ctx: PluginContext) -> None:
        pass


class Failing(Plugin):
    manifest = Manifest("failing", intensity=RestartIntensity(max_restarts=0))

    async def on_enable(self, ctx: PluginContext) -> None:
        raise RuntimeError("no")


async def test_one_plugin_failing_among_others_does_not_stop_the_kernel(
    autojump_clock: MockClock,
) -> None:
    kernel = Kernel([Steady(), Failing()], clock=Clock.starting_at(T0), exit_when_all_failed=True)
    codes: list[ExitCode] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve, kernel, codes)
        await trio.sleep(100)
        assert kernel.plugins["failing"].state is PluginState.FAILED
        assert codes == []  # still serving
        kernel.request_stop()
    assert codes == [ExitCode.PLUGIN_FAILED]


async def test_every_plugin_failing_stops_serve(autojump_clock: MockClock) -> None:
    kernel = Kernel([Failing()], clock=Clock.starting_at(T0), exit_when_all_failed=True)
    codes: list[ExitCode] = []
    with trio.fail_after(100):
        await _serve(kernel, codes)
    assert codes == [ExitCode.PLUGIN_FAILED]

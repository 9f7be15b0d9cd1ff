"""Hosting the kernel outside trio: in a thread, and as asyncio's guest.

These tests use real threads and a real asyncio loop, so they run in real
time; they never sleep to "wait and hope". Each waits on an event that the
kernel sets, with a generous timeout that only bounds a failure.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import attrs
import pytest
import trio

from kernel import ConfigError, Every, ExitCode, Kernel, Manifest, Plugin, PluginContext, PluginSpec
from kernel.errors import KernelNotRunning
from kernel.runtime.embedding import KernelThread, embed_in_asyncio

FAILURE_BOUND = 10.0  # seconds; reached only when a test is about to fail


class Ticker(Plugin):
    """A schedule every 10 ms; ``fired_thrice`` is set at its third run."""

    manifest = Manifest("ticker")

    def __init__(self) -> None:
        self.fires = 0
        self.fired_thrice = threading.Event()
        self.disabled = threading.Event()
        self.thread: threading.Thread | None = None

    async def on_enable(self, ctx: PluginContext) -> None:
        self.thread = threading.current_thread()
        ctx.schedule(self.tick, Every(milliseconds=10))

    def tick(self) -> None:
        self.fires += 1
        if self.fires == 3:
            self.fired_thrice.set()

    async def on_disable(self, ctx: PluginContext) -> None:
        self.disabled.set()


class Lingering(Plugin):
    """Would take the whole grace period to stop; ``stopping`` is set once it began."""

    manifest = Manifest("lingering")

    def __init__(self) -> None:
        self.stopping = threading.Event()

    async def on_disable(self, ctx: PluginContext) -> None:
        self.stopping.set()
        await trio.sleep_forever()


@attrs.frozen
class TickerConfig:
    interval_ms: int


class Configured(Plugin):
    manifest = Manifest("configured", config=TickerConfig)


async def double_later(value: int) -> int:
    await trio.lowlevel.checkpoint()  # this runs as trio code
    return value * 2


async def refuse(reason: str) -> None:
    await trio.lowlevel.checkpoint()
    raise ValueError(reason)


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.name == "trio-kernel"]
    assert leaked == []


@pytest.mark.usefixtures("no_leaked_threads")
class TestKernelThread:
    def test_a_schedule_fires_in_the_background_and_stop_joins(self) -> None:
        ticker = Ticker()
        handle = KernelThread(Kernel([ticker]))
        assert not handle.running
        handle.start(timeout=FAILURE_BOUND)
        assert handle.running
        assert ticker.thread is not threading.current_thread()
        assert ticker.fired_thrice.wait(FAILURE_BOUND)
        assert handle.stop(timeout=FAILURE_BOUND) is ExitCode.OK
        assert ticker.disabled.is_set()
        assert not handle.running
        assert ticker.thread is not None
        assert not ticker.thread.is_alive()

    def test_call_returns_the_result_and_runs_on_the_kernel_thread(self) -> None:
        ticker = Ticker()
        with KernelThread(Kernel([ticker])) as handle:
            assert handle.call(double_later, 21) == 42
            assert handle.call_sync(threading.current_thread) is ticker.thread
            status = handle.call_sync(handle.kernel.status)
            assert status["plugins"]["ticker"]["state"] == "enabled"

    def test_call_raises_the_functions_exception_and_the_kernel_goes_on(self) -> None:
        ticker = Ticker()
        with KernelThread(Kernel([ticker])) as handle:
            with pytest.raises(ValueError, match="no such invoice"):
                handle.call(refuse, "no such invoice")
            with pytest.raises(ZeroDivisionError):
                handle.call_sync(divmod, 1, 0)
            assert handle.running
            assert handle.call(double_later, 1) == 2

    def test_call_sync_refuses_an_async_function(self) -> None:
        with KernelThread(Kernel([])) as handle, pytest.raises(TypeError, match="use call"):
            handle.call_sync(double_later, 1)  # type: ignore[unused-coroutine]

    def test_a_startup_config_error_surfaces_from_start(self) -> None:
        spec = PluginSpec(Configured(), config={"interval_ms": "often"}, source="app.toml")
        handle = KernelThread(Kernel([spec]))
        with pytest.raises(ConfigError, match=r"plugins\.configured\.config\.interval_ms"):
            handle.start(timeout=FAILURE_BOUND)
        assert not handle.running
        with pytest.raises(KernelNotRunning):
            handle.call(double_later, 1)

    def test_use_before_start_and_after_stop_is_a_clear_error(self) -> None:
        handle = KernelThread(Kernel([]))
        with pytest.raises(KernelNotRunning, match="not started"):
            handle.call(double_later, 1)
        with pytest.raises(KernelNotRunning, match="never started"):
            handle.stop()
        handle.start(timeout=FAILURE_BOUND)
        with pytest.raises(KernelNotRunning, match="already started"):
            handle.start()
        assert handle.stop() is ExitCode.OK
        assert handle.stop() is ExitCode.OK  # stopping again reports the same
        with pytest.raises(KernelNotRunning, match="was stopped"):
            handle.call(double_later, 1)
        with pytest.raises(KernelNotRunning, match="was stopped"):
            handle.call_sync(int)
        with pytest.raises(KernelNotRunning, match="runs once"):
            handle.start()

    def test_a_call_still_running_at_stop_is_cancelled_first(self) -> None:
        handle = KernelThread(Kernel([]))
        handle.start(timeout=FAILURE_BOUND)
        outcome: list[BaseException] = []
        entered = threading.Event()

        async def wait_forever() -> None:
            entered.set()
            await trio.sleep_forever()

        def caller() -> None:
            try:
                handle.call(wait_forever)
            except KernelNotRunning as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=caller)
        waiter.start()
        assert entered.wait(FAILURE_BOUND)
        # graceful: the call is cancelled without forcing the kernel (FORCED)
        assert handle.stop(timeout=FAILURE_BOUND) is ExitCode.OK
        waiter.join(FAILURE_BOUND)
        assert not waiter.is_alive()
        assert len(outcome) == 1
        assert "stopped before the call finished" in str(outcome[0])

    def test_kernel_code_may_not_block_on_its_own_thread(self) -> None:
        with KernelThread(Kernel([])) as handle:
            with pytest.raises(RuntimeError, match="own thread"):
                handle.call_sync(lambda: handle.call_sync(int))
            with pytest.raises(RuntimeError, match="own thread"):
                handle.call_sync(handle.stop)
            assert handle.running

    def test_a_kernel_that_ends_on_an_error_reports_it_on_stop(self) -> None:
        async def exit_the_program() -> None:
            await trio.lowlevel.checkpoint()
            raise SystemExit(3)  # not an Exception: it ends the run, as under trio.run

        handle = KernelThread(Kernel([]))
        handle.start(timeout=FAILURE_BOUND)
        with pytest.raises(KernelNotRunning, match="stopped before the call finished"):
            handle.call(exit_the_program)
        with pytest.raises(BaseExceptionGroup) as caught:
            handle.stop(timeout=FAILURE_BOUND)
        assert caught.value.subgroup(SystemExit) is not None
        with pytest.raises(KernelNotRunning, match="was stopped"):
            handle.call_sync(int)

    def test_a_start_that_times_out_is_abandoned_and_joined(self) -> None:
        release = threading.Event()

        class Slow(Plugin):
            manifest = Manifest("slow")

            async def on_enable(self, ctx: PluginContext) -> None:
                await trio.to_thread.run_sync(release.wait, abandon_on_cancel=True)

        handle = KernelThread(Kernel([PluginSpec(Slow())], enable_timeout=FAILURE_BOUND))
        try:
            with pytest.raises(TimeoutError, match="did not start within"):
                handle.start(timeout=0.05)
        finally:
            release.set()
        assert not handle.running

    def test_a_stop_past_its_timeout_cancels_the_kernel(self) -> None:
        plugin = Lingering()
        handle = KernelThread(Kernel([plugin], shutdown_grace=60))
        handle.start(timeout=FAILURE_BOUND)
        # the plugin would linger for its 60 s grace; the stop gives it 0.05 s
        assert handle.stop(timeout=0.05) is ExitCode.FORCED
        assert not handle.running


class TestAsyncioGuest:
    def test_a_schedule_fires_calls_work_and_stop_returns_ok(self) -> None:
        ticker = Ticker()

        async def app() -> tuple[int, list[str], ExitCode]:
            async with embed_in_asyncio(Kernel([ticker])) as handle:
                assert handle.running
                fired = await asyncio.to_thread(ticker.fired_thrice.wait, FAILURE_BOUND)
                assert fired
                doubled = await handle.call(double_later, 21)
                status = await handle.call_sync(handle.kernel.status)
                code = await handle.stop()
                assert not handle.running
            return doubled, list(status["plugins"]), code

        assert asyncio.run(app()) == (42, ["ticker"], ExitCode.OK)
        assert ticker.thread is threading.current_thread()  # a guest shares the host's thread
        assert ticker.disabled.is_set()

    def test_call_raises_the_functions_exception(self) -> None:
        async def app() -> None:
            async with embed_in_asyncio(Kernel([])) as handle:
                with pytest.raises(ValueError, match="nope"):
                    await handle.call(refuse, "nope")
                assert await handle.call(double_later, 2) == 4

        asyncio.run(app())

    def test_a_startup_config_error_surfaces_on_entering(self) -> None:
        spec = PluginSpec(Configured(), config={"interval_ms": "often"}, source="app.toml")

        async def app() -> None:
            async with embed_in_asyncio(Kernel([spec])):
                pytest.fail("the kernel should not start")  # pragma: no cover

        with pytest.raises(ConfigError, match=r"plugins\.configured\.config\.interval_ms"):
            asyncio.run(app())

    def test_use_after_stop_is_a_clear_error(self) -> None:
        async def app() -> None:
            async with embed_in_asyncio(Kernel([])) as handle:
                assert await handle.stop() is ExitCode.OK
                with pytest.raises(KernelNotRunning):
                    await handle.call(double_later, 1)
            assert await handle.stop() is ExitCode.OK

        asyncio.run(app())

    def test_cancelling_the_asyncio_caller_cancels_the_trio_call(self) -> None:
        async def app() -> bool:
            cancelled = trio.Event()
            entered = asyncio.Event()

            async def wait_forever() -> None:
                try:
                    entered.set()  # same thread: asyncio's event may be set from the guest
                    await trio.sleep_forever()
                finally:
                    cancelled.set()

            async with embed_in_asyncio(Kernel([])) as handle:
                call = asyncio.ensure_future(handle.call(wait_forever))
                await asyncio.wait_for(entered.wait(), FAILURE_BOUND)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                await asyncio.wait_for(handle.call(cancelled.wait), FAILURE_BOUND)
                return cancelled.is_set()

        assert asyncio.run(app()) is True

    def test_cancelling_a_stop_cancels_the_kernel_and_still_waits_for_it(self) -> None:
        plugin = Lingering()

        async def app() -> tuple[ExitCode, bool]:
            async with embed_in_asyncio(Kernel([plugin], shutdown_grace=60)) as handle:
                stopping = asyncio.ensure_future(handle.stop())
                assert await asyncio.to_thread(plugin.stopping.wait, FAILURE_BOUND)
                stopping.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await stopping
                ended = not handle.running
            return await handle.stop(), ended

        assert asyncio.run(asyncio.wait_for(app(), FAILURE_BOUND)) == (ExitCode.FORCED, True)


def load_example(name: str) -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("no_leaked_threads")
class TestExamples:
    """The examples run (briefly) and stop by themselves with exit code OK."""

    def test_embed_thread(self, capsys: pytest.CaptureFixture[str]) -> None:
        example = load_example("embed_thread")
        assert example.main(0.02, interval=0.01, batch=0.01) is ExitCode.OK
        lines = capsys.readouterr().out.splitlines()
        assert any("app: batch 1 done" in line for line in lines)
        assert lines[-1].endswith("app: kernel stopped with OK")

    def test_embed_asyncio(self, capsys: pytest.CaptureFixture[str]) -> None:
        example = load_example("embed_asyncio")
        assert asyncio.run(example.main(0.02, interval=0.01, every=0.01)) is ExitCode.OK
        lines = capsys.readouterr().out.splitlines()
        assert any("app: request 1 served; heartbeat is enabled" in line for line in lines)
        assert lines[-1].endswith("app: kernel stopped with OK")

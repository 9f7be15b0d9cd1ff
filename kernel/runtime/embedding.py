"""Embedding the kernel in a host that is not trio: a thread, or asyncio.

A trio program writes ``async with Kernel(...) as kernel:``, and a program
that is nothing but the kernel calls ``Kernel.run()``. Everything else hosts
the kernel here, in one of two ways:

- `KernelThread` runs ``trio.run`` in a background thread, for plain
  thread-based programs (a Flask or Django process, a CLI tool, a GUI without
  an event loop). Other threads talk to the kernel through the handle's
  blocking `KernelThread.call` and `KernelThread.call_sync`.
- `embed_in_asyncio` runs the kernel as a trio *guest* of the running asyncio
  loop (``trio.lowlevel.start_guest_run``): both loops share one thread, trio
  does its I/O waits in a helper thread and runs its code in asyncio
  callbacks, so there is no locking to think about. asyncio code awaits
  `AsyncioHandle.call`.

Both share one trio-side body (`_KernelHost`): ``async with kernel``, then a
nursery *inside* the kernel where the host's calls run, then a wait for a
stop request. Calls therefore always see a running kernel: stopping cancels
the calls still running first, then shuts the kernel down gracefully. Neither
host installs trio's signal handling (only the main thread may, and in guest
mode the host loop owns the signals): stopping is the host's job.

Prior art: trio's own guest-mode asyncio example and ``trio.from_thread``;
``asyncio.run_coroutine_threadsafe``, whose ``concurrent.futures.Future``
hand-off is the one used here for results crossing threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, Unpack

import trio

from kernel.errors import KernelNotRunning
from kernel.runtime.kernel import ExitCode, Kernel

if TYPE_CHECKING:
    from outcome import Outcome

__all__ = ["AsyncioHandle", "KernelNotRunning", "KernelThread", "embed_in_asyncio"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _KernelHost:
    """The trio side of an embedded kernel, shared by both hosts.

    `serve` runs on the trio thread. `request_stop`, `submit` and
    `cancel_call` may be called from any thread, before, during or after the
    run: what reaches trio goes through the run's `trio.lowlevel.TrioToken`,
    whose ``run_sync_soon`` is the one thread-safe door into a trio run.
    """

    def __init__(self, kernel: Kernel, on_started: Callable[[], None]) -> None:
        self.kernel = kernel
        self.started = False  # written on the trio thread only
        self._on_started = on_started
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_before_run = False
        self._startup = trio.CancelScope()  # cancelled by a stop that comes before `started`
        self._stop = trio.Event()
        self._calls: trio.Nursery | None = None

    async def serve(self) -> ExitCode:
        with self._lock:
            self._token = trio.lowlevel.current_trio_token()
            if self._stop_before_run:
                self._startup.cancel()
        try:
            with self._startup:
                async with self.kernel, trio.open_nursery() as calls:
                    self._calls = calls
                    self.started = True
                    self._on_started()
                    await self._stop.wait()
                    self._calls = None
                    calls.cancel_scope.cancel()
        finally:
            self._calls = None
        return self.kernel.exit_code

    # -- from any thread -------------------------------------------------------

    def request_stop(self, *, cancel: bool = False) -> None:
        """Ask for a graceful shutdown, or with ``cancel`` for `Kernel.cancel`
        (no grace periods). Before the kernel has started, either one
        abandons the start. Does not wait."""
        with self._lock:
            token = self._token
            if token is None:
                self._stop_before_run = True
                return
        with suppress(trio.RunFinishedError):  # already over
            token.run_sync_soon(self._cancel_now if cancel else self._stop_now)

    def submit(
        self,
        async_fn: Callable[[Unpack[Ts]], Awaitable[T]],
        args: tuple[*Ts],
        future: concurrent.futures.Future[T],
        scope: trio.CancelScope,
    ) -> None:
        """Run ``async_fn(*args)`` in the calls nursery, inside ``scope``,
        and settle ``future`` with what it returns or raises."""
        with self._lock:
            token = self._token
        if token is None:
            raise KernelNotRunning("the kernel has not started")

        def spawn() -> None:
            calls = self._calls
            if not future.set_running_or_notify_cancel():
                return  # the caller gave up before the call started
            if calls is None:
                future.set_exception(KernelNotRunning("the kernel is not running"))
                return
            calls.start_soon(self._run_call, async_fn, args, future, scope)

        try:
            token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise KernelNotRunning("the kernel has stopped") from None

    def cancel_call(self, scope: trio.CancelScope) -> None:
        with self._lock:
            token = self._token
        if token is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

    # -- on the trio thread --------------------------------------------------------

    def _stop_now(self) -> None:
        if self.started:
            self._stop.set()
        else:
            self._startup.cancel()

    def _cancel_now(self) -> None:
        if self.started:
            self.kernel.cancel()
            self._stop.set()
        else:
            self._startup.cancel()

    async def _run_call(
        self,
        async_fn: Callable[[Unpack[Ts]], Awaitable[T]],
        args: tuple[*Ts],
        future: concurrent.futures.Future[T],
        scope: trio.CancelScope,
    ) -> None:
        try:
            with scope:
                future.set_result(await async_fn(*args))
                return
            # only the caller cancels this scope, and it is no longer waiting
            future.set_exception(concurrent.futures.CancelledError("cancelled by its caller"))
        except Exception as exc:
            # the caller's error, not the kernel's: it must not end the run
            future.set_exception(exc)
        except BaseException:
            # the kernel is stopping (trio.Cancelled) or worse: tell the caller, let it unwind
            future.set_exception(KernelNotRunning("the kernel stopped before the call finished"))
            raise


def _reject_async_for_sync(fn: Callable[..., object]) -> None:
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"{fn!r} is an async function: use call(), not call_sync()")


# -- a thread ----------------------------------------------------------------------


class _Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"  # start() was called (it may still be starting)
    STOPPED = "stopped"  # stop() was called, or start() failed


class KernelThread:
    """A `Kernel` running in a background thread with its own trio loop.

    ::

        with KernelThread(Kernel([MyPlugin()])) as handle:
            status = handle.call_sync(handle.kernel.status)
            ...  # the program's own work; the kernel runs meanwhile

    `start` blocks until every plugin is enabled (or re-raises the startup
    error here); `stop` shuts down gracefully, joins the thread and returns
    the `ExitCode`, or re-raises what ended the kernel. A handle runs its
    kernel once. The thread is not a daemon: a program that forgets to stop
    it does not exit, rather than cutting its plugins off mid-work.

    Code running *on* the kernel thread (a schedule, a plugin) must not call
    `call`, `call_sync` or `stop`: they would wait for the thread they block.
    """

    def __init__(self, kernel: Kernel, *, name: str = "trio-kernel") -> None:
        self.kernel = kernel
        self._ready = threading.Event()  # set once started, or once the run ended
        self._host = _KernelHost(kernel, on_started=self._ready.set)
        self._thread = threading.Thread(target=self._run, name=name)
        self._lock = threading.Lock()
        self._phase = _Phase.NEW
        self._exit_code: ExitCode | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<KernelThread {self._thread.name!r} {self._phase.value}>"

    @property
    def running(self) -> bool:
        """True from a successful `start` until `stop` (or the kernel's end)."""
        return self._phase is _Phase.RUNNING and self._host.started and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._exit_code = trio.run(self._host.serve)
        except BaseException as exc:  # handed to the thread that calls start() or stop()
            self._error = exc
        finally:
            self._ready.set()

    def start(self, timeout: float | None = None) -> None:
        """Start the kernel and wait until its plugins are enabled.

        Re-raises a startup error (a `ConfigError`, a plugin's) in this thread.
        Past ``timeout`` seconds the start is abandoned: the thread is joined
        and `TimeoutError` raised.
        """
        with self._lock:
            if self._phase is not _Phase.NEW:
                raise KernelNotRunning(f"{self!r} was already started: a KernelThread runs once")
            self._phase = _Phase.RUNNING
        self._thread.start()
        if not self._ready.wait(timeout):
            self._host.request_stop()
            self._end()
            if self._error is not None:
                raise self._error
            raise TimeoutError(f"the kernel did not start within {timeout} s")
        if not self._host.started:
            self._end()
            if self._error is not None:
                raise self._error
            raise KernelNotRunning("the kernel stopped before it started")  # pragma: no cover

    def stop(self, timeout: float | None = None) -> ExitCode:
        """Shut the kernel down gracefully, join the thread, return the exit code.

        Each plugin has the kernel's ``shutdown_grace``; past ``timeout``
        seconds the shutdown is cancelled (`Kernel.cancel`, exit code
        ``FORCED``). Re-raises an error that ended the kernel. Calling it
        again returns (or raises) the same.
        """
        self._refuse_on_own_thread("stop")
        with self._lock:
            if self._phase is _Phase.NEW:
                raise KernelNotRunning(f"{self!r} was never started")
            self._phase = _Phase.STOPPED
        self._host.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._host.request_stop(cancel=True)
        self._end()
        if self._error is not None:
            raise self._error
        assert self._exit_code is not None
        return self._exit_code

    def _end(self) -> None:
        self._thread.join()
        with self._lock:
            self._phase = _Phase.STOPPED

    def call(self, async_fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
        """Run ``await async_fn(*args)`` on the kernel thread while the kernel
        runs; block until it is done and return its result or raise its
        exception. Interrupting the wait (Ctrl-C) cancels the call."""
        self._refuse_on_own_thread("call")
        self._require_running()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        scope = trio.CancelScope()
        try:
            self._host.submit(async_fn, args, future, scope)
        except KernelNotRunning as exc:
            raise exc from self._error
        try:
            return future.result()
        except BaseException:
            if not future.done():
                self._host.cancel_call(scope)
            raise

    def call_sync(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run ``fn(*args)`` on the kernel thread, like `call` for a plain
        function: the way to touch kernel objects, which are not thread-safe
        (``handle.call_sync(handle.kernel.status)``)."""
        _reject_async_for_sync(fn)

        async def run_sync() -> T:
            return fn(*args)

        return self.call(run_sync)

    def _require_running(self) -> None:
        if self._phase is _Phase.NEW:
            raise KernelNotRunning(f"{self!r} is not started: call start() first")
        if self._phase is _Phase.STOPPED:
            raise KernelNotRunning(f"{self!r} was stopped") from self._error
        if not self._thread.is_alive():
            raise KernelNotRunning(f"{self!r}: the kernel has ended") from self._error

    def _refuse_on_own_thread(self, what: str) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                f"KernelThread.{what}() called on the kernel's own thread would wait for itself;"
                " in kernel code, await the function directly"
            )

    def __enter__(self) -> KernelThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- asyncio (trio guest mode) ---------------------------------------------------


class AsyncioHandle:
    """The asyncio side of a kernel embedded by `embed_in_asyncio`."""

    def __init__(self, kernel: Kernel, host: _KernelHost, done: asyncio.Future[ExitCode]) -> None:
        self.kernel = kernel
        self._host = host
        self._done = done
        self._stopping = False

    @property
    def running(self) -> bool:
        """True until the guest run has ended (a stopping kernel still runs)."""
        return not self._done.done()

    async def call(self, async_fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
        """Run ``await async_fn(*args)`` (trio code) in the kernel and await
        its result or exception from asyncio. Cancelling the awaiting asyncio
        task cancels the call in trio."""
        if self._stopping or self._done.done():
            raise KernelNotRunning("the kernel is stopped or stopping")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        scope = trio.CancelScope()
        self._host.submit(async_fn, args, future, scope)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self._host.cancel_call(scope)
            raise

    async def call_sync(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Run ``fn(*args)`` in trio's context (``await handle.call_sync(
        handle.kernel.status)``): kernel objects use trio's clock and tasks,
        which asyncio callbacks cannot reach directly."""
        _reject_async_for_sync(fn)

        async def run_sync() -> T:
            return fn(*args)

        return await self.call(run_sync)

    async def stop(self) -> ExitCode:
        """Shut the kernel down gracefully and return its exit code (or raise
        what ended it). Cancelling this wait turns the shutdown into
        `Kernel.cancel`, which is still waited for: the guest run must end
        before the asyncio loop does. Calling it again returns the same."""
        self._stopping = True
        self._host.request_stop()
        cancelled: asyncio.CancelledError | None = None
        while not self._done.done():
            try:
                await asyncio.wait({self._done})
            except asyncio.CancelledError as exc:
                cancelled = exc
                self._host.request_stop(cancel=True)
        if cancelled is not None:
            raise cancelled
        return self._done.result()


@asynccontextmanager
async def embed_in_asyncio(kernel: Kernel) -> AsyncIterator[AsyncioHandle]:
    """Run ``kernel`` as a trio guest of the running asyncio loop.

    ::

        async with embed_in_asyncio(Kernel([MyPlugin()])) as handle:
            await handle.call(handle.kernel.enable, "reports")

    Entering waits until the plugins are enabled, or raises the startup
    error; leaving stops the kernel gracefully (`AsyncioHandle.stop`).
    """
    loop = asyncio.get_running_loop()
    started: asyncio.Future[bool] = loop.create_future()  # False: the run ended first
    done: asyncio.Future[ExitCode] = loop.create_future()

    def on_started() -> None:  # guest code runs on the loop's thread
        if not started.done():
            started.set_result(True)

    def on_done(run: Outcome[ExitCode]) -> None:
        if not started.done():
            started.set_result(False)
        try:
            done.set_result(run.unwrap())
        except BaseException as exc:
            done.set_exception(exc)

    host = _KernelHost(kernel, on_started=on_started)
    trio.lowlevel.start_guest_run(
        host.serve,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=on_done,
        # asyncio may own signal.set_wakeup_fd (it does once a signal handler
        # is added); trio's signal handling is not used here
        host_uses_signal_set_wakeup_fd=True,
    )
    handle = AsyncioHandle(kernel, host, done)
    try:
        has_started = await started
    except BaseException:
        await handle.stop()
        raise
    if not has_started:
        done.result()  # raises the startup error
        raise KernelNotRunning("the kernel stopped before it started")  # pragma: no cover
    try:
        yield handle
    finally:
        await handle.stop()

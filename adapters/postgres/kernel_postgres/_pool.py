"""Blocking psycopg calls from trio: a connection pool behind worker threads.

psycopg's async connections need asyncio, so every call runs a small
blocking function with a pooled connection in a worker thread
(`trio.to_thread.run_sync`), limited by a `trio.CapacityLimiter` as large
as the pool, so a thread never waits for a connection. Connections are in
autocommit mode: a single statement is its own transaction, one round trip.

A connection can die under us (the server restarted, an operator ran
``pg_terminate_backend``, a network blip). The pool replaces a broken
connection when it is returned; `Database.run` also checks the idle ones
then, so the next call finds working connections, and retries a call on
another connection when that cannot run anything twice: for calls marked
idempotent, and when the server said it was shutting the session down
(SQLSTATE class 57P) before it ran the statement.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import psycopg
import trio
from psycopg_pool import ConnectionPool

from kernel_postgres._url import PostgresOptions

__all__ = ["Connection", "Database"]

T = TypeVar("T")
Connection = psycopg.Connection[tuple[Any, ...]]

log = logging.getLogger("kernel_postgres")

_NOT_RUN_SQLSTATES = ("57P01", "57P02", "57P03", "57P05")
"""admin_shutdown, crash_shutdown, cannot_connect_now, idle_session_timeout:
the session ended before the server ran the statement."""


@attrs.define(eq=False)
class Database:
    """A pool of autocommit connections and the threads that use it.

    ``error`` wraps driver failures (`StorageError` or `BusError`) and
    ``closed_error`` is raised after `close`.
    """

    pool: ConnectionPool[Connection]
    where: str
    error: Callable[[str], Exception]
    closed_error: Callable[[str], Exception]
    limiter: trio.CapacityLimiter
    closed: bool = False

    @classmethod
    async def open(
        cls,
        options: PostgresOptions,
        *,
        where: str,
        error: Callable[[str], Exception],
        closed_error: Callable[[str], Exception],
        name: str,
    ) -> Database:
        """Open ``options.pool_size`` connections (waiting up to ``pool_timeout``)."""
        pool: ConnectionPool[Connection] = ConnectionPool(
            options.conninfo,
            kwargs={"autocommit": True, "client_encoding": "utf8"},
            min_size=options.pool_size,
            max_size=options.pool_size,
            timeout=options.pool_timeout,
            open=False,
            name=name,
            num_workers=min(3, options.pool_size),
        )

        def start() -> None:
            try:
                pool.open(wait=True, timeout=options.pool_timeout)
            except BaseException:
                pool.close()
                raise

        try:
            await trio.to_thread.run_sync(start)
        except psycopg.Error as failure:
            raise error(f"cannot open a connection pool to {options.location}: {failure}") from (
                failure
            )
        return cls(pool, where, error, closed_error, trio.CapacityLimiter(options.pool_size))

    def check_open(self) -> None:
        if self.closed:
            raise self.closed_error(f"{self.where} is closed")

    async def run(self, work: Callable[[Connection], T], *, idempotent: bool = False) -> T:
        """``work(connection)`` in a worker thread. Cancellation takes effect
        before ``work`` starts, never in the middle (trio waits for the
        thread), so what ``work`` sends is whole or absent."""
        self.check_open()
        return await trio.to_thread.run_sync(
            self.run_blocking, work, idempotent, limiter=self.limiter
        )

    def run_blocking(self, work: Callable[[Connection], T], idempotent: bool = False) -> T:
        """`run` in the calling thread, which blocks: for a thread of the
        caller's own, such as the lease keeper's (outside trio's limiter, so
        it may wait for a connection up to the pool's timeout)."""
        attempts = self.pool.max_size + 1
        for attempt in range(attempts):
            self.check_open()
            lost = False
            try:
                with self.pool.connection() as connection:
                    try:
                        return work(connection)
                    except psycopg.Error:
                        lost = connection.broken
                        raise
            except psycopg.Error as failure:
                if not lost:
                    raise self.error(
                        f"PostgreSQL {self.where}: {type(failure).__name__}: {failure}"
                    ) from failure
                if attempt == 0:
                    self._check_idle()
                retry = idempotent or failure.sqlstate in _NOT_RUN_SQLSTATES
                if not retry or attempt == attempts - 1:
                    raise self.error(
                        f"PostgreSQL {self.where}: lost the connection: "
                        f"{type(failure).__name__}: {failure}"
                    ) from failure
                log.info("%s: connection lost (%s); retrying on another", self.where, failure)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_idle(self) -> None:
        """Drop the idle connections that died with the one we just lost."""
        try:
            self.pool.check()
        except psycopg.Error as failure:  # pragma: no cover - the pool logs its own
            log.warning("%s: checking the pool failed: %s", self.where, failure)

    async def close(self) -> None:
        """Wait for the calls in flight, then close the pool; later calls
        raise ``closed_error``. Idempotent; completes even when cancelled."""
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        self.closed = True
        with trio.CancelScope(shield=True):
            tokens: list[object] = []
            with trio.move_on_after(self.pool.timeout):
                for _ in range(int(self.limiter.total_tokens)):
                    token = object()
                    await self.limiter.acquire_on_behalf_of(token)
                    tokens.append(token)
            try:
                await trio.to_thread.run_sync(self.pool.close)
            finally:
                for token in tokens:
                    self.limiter.release_on_behalf_of(token)

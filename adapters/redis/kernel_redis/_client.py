"""One coredis client per storage or bus, and Redis failures as the kernel's errors.

coredis runs on trio through anyio, but its client must be used as ``async
with client:`` (the pool's connections live in a task group opened there),
and a storage is opened by one call and closed by another, possibly from
another task. So the client lives in a trio *system task* of its own
(`RedisConnection.open` starts it, `RedisConnection.close` ends it), as the
PostgreSQL bus's listener does, and every call goes through
`RedisConnection.run`, which maps coredis's errors (some arrive inside
exception groups) to `StorageError` or `BusError` naming the server with
its password redacted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from kernel.errors import KernelError
from kernel_redis._url import RedisOptions

__all__ = ["Client", "RedisConnection", "log", "redis_error_in"]

log = logging.getLogger("kernel_redis")

T = TypeVar("T")
SUBSCRIPTION_CONNECTIONS = 256
"""Connections the pool may open beyond ``pool_size``: each subscription (a
bus subscriber, the storage's wake-up listener) holds one for its life."""
Client = coredis.Redis[str]
"""The client type: responses decoded as UTF-8 text."""


def redis_error_in(error: BaseException) -> coredis.exceptions.RedisError | None:
    """The coredis error ``error`` is, or holds in an exception group made only
    of coredis errors (how anyio task groups report a lost connection); None
    for anything else (cancellation included), which must propagate as it is."""
    if isinstance(error, coredis.exceptions.RedisError):
        return error
    if isinstance(error, BaseExceptionGroup):
        matched, rest = error.split(coredis.exceptions.RedisError)
        if matched is not None and rest is None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            assert isinstance(leaf, coredis.exceptions.RedisError)
            return leaf
    return None


def make_client(options: RedisOptions) -> Client:
    """A coredis client for ``options`` (not yet entered). No automatic retry:
    `RedisConnection.run` decides which calls may run twice."""
    extra: dict[str, Any] = {}
    if options.ssl:
        extra["ssl"] = True
        if options.ssl_cert_reqs is not None:
            extra["ssl_cert_reqs"] = options.ssl_cert_reqs
        if options.ssl_ca_certs is not None:
            extra["ssl_ca_certs"] = options.ssl_ca_certs
        if options.ssl_check_hostname is not None:
            extra["ssl_check_hostname"] = options.ssl_check_hostname
    return coredis.Redis(
        host=options.host,
        port=options.port,
        db=options.db,
        username=options.username,
        password=options.password,
        decode_responses=True,
        max_connections=options.pool_size + SUBSCRIPTION_CONNECTIONS,
        pool_timeout=options.pool_timeout,
        connect_timeout=options.connect_timeout,
        client_name=options.client_name,
        retry_policy=NoRetryPolicy(),
        **extra,
    )


@attrs.define(eq=False)
class RedisConnection:
    """A coredis client kept open in a system task, and the error mapping."""

    options: RedisOptions
    what: str
    """``storage`` or ``bus``: how messages name it."""
    error: type[KernelError]
    closed_error: type[KernelError]
    client: Client = attrs.field(init=False)
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _done: trio.Event = attrs.field(factory=trio.Event, init=False)
    _failure: BaseException | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.client = make_client(self.options)

    @classmethod
    async def open(
        cls,
        options: RedisOptions,
        *,
        what: str,
        error: type[KernelError],
        closed_error: type[KernelError],
    ) -> RedisConnection:
        """Start the client and check the server answers (``PING``); else
        ``error`` naming the server (one line, password redacted)."""
        connection = cls(options, what, error, closed_error)
        started = trio.Event()
        trio.lowlevel.spawn_system_task(
            connection._host, started, name=f"kernel_redis {what} client"
        )
        await started.wait()
        try:
            if connection._failure is not None:
                raise connection._failure
            await connection.client.ping()
        except BaseException as failure:
            await connection.close()
            cause = redis_error_in(failure)
            if cause is None:
                raise
            raise error(
                f"Redis is not reachable at {options.location}: {_one_line(cause)}"
            ) from cause
        return connection

    async def _host(self, started: trio.Event) -> None:
        try:
            async with self.client:
                started.set()
                await self._stop.wait()
        except BaseException as failure:  # a system task must not raise
            self._failure = failure
            if not isinstance(failure, trio.Cancelled):
                log.warning("%s %s: the Redis client stopped: %r", self.what, self.where, failure)
        finally:
            started.set()
            self._done.set()

    @property
    def where(self) -> str:
        return self.options.where

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise self.closed_error(f"{self.what} {self.where} is closed")

    async def close(self) -> None:
        """Close the client (idempotent); later `run` calls raise ``closed_error``."""
        self._closed = True
        self._stop.set()
        with trio.CancelScope(shield=True):
            await self._done.wait()

    async def run(self, call: Callable[[Client], Awaitable[T]], *, idempotent: bool = False) -> T:
        """``await call(client)``, Redis failures raised as ``error``. An
        ``idempotent`` call (a read, or a write that means the same when done
        twice) is tried once more when the connection was lost under it."""
        self.check_open()
        if self._done.is_set():  # the client's task ended under us (logged when it did)
            stopped = f"the client stopped: {self._failure!r}"
            raise self.error(f"Redis {self.what} {self.where}: {stopped}")
        for attempt in (1, 2):
            try:
                return await call(self.client)
            except BaseException as failure:
                cause = redis_error_in(failure)
                if cause is None:
                    raise
                if self._closed:
                    raise self.closed_error(f"{self.what} {self.where} is closed") from cause
                lost = isinstance(cause, coredis.exceptions.ConnectionError)
                if idempotent and lost and attempt == 1:
                    continue
                raise self.error(f"Redis {self.what} {self.where}: {_one_line(cause)}") from cause
        raise AssertionError("unreachable")  # pragma: no cover


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."

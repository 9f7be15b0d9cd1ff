"""LISTEN on a dedicated connection, read from trio without a thread.

Connecting and ``LISTEN`` block, so they run in a worker thread; after that
the connection only ever *receives*, and receiving is what libpq can do
without blocking: wait until the socket is readable
(`trio.lowlevel.wait_readable`), ``PQconsumeInput``, then take the parsed
notifications with ``PQnotifies`` (the loop libpq's manual gives for
asynchronous notification). So a notification reaches trio as soon as it
arrives, in batches, and cancelling the listener is immediate.

A lost connection (server restart, ``pg_terminate_backend``, a dead
network caught by TCP keepalives) is reopened with exponential backoff;
notifications sent meanwhile are lost, so ``on_reconnect`` runs once
listening again, for the caller to catch up (wake every queue, release
waiting subscribers). Only a failure of the *first* connection is raised:
then the URL or the server is wrong, and the caller should know at once.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import ConnStatus

from kernel_postgres._pool import Connection
from kernel_postgres._url import PostgresOptions, quote_identifier

__all__ = ["Backoff", "listen"]

log = logging.getLogger("kernel_postgres")

Notification = tuple[str, str]
"""(channel, payload)."""

_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
"""So a listener behind a dead network learns it in about a minute instead of
waiting forever for a notification (unless the URL says otherwise)."""

_HEALTHY_AFTER = 5.0
"""Seconds a connection must last before the backoff starts again from its minimum."""


class Backoff:
    """Exponential backoff with full jitter (AWS's "full jitter" variant), so
    nodes that lost the server at the same moment do not return in step."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * math.pow(2, self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def _open(
    options: PostgresOptions, channels: Sequence[str]
) -> tuple[Connection, list[Notification]]:
    """Connect and LISTEN (blocking); also what arrived while LISTEN ran."""
    early: list[Notification] = []
    given = conninfo_to_dict(options.conninfo)
    extra = {name: value for name, value in _KEEPALIVES.items() if name not in given}
    conninfo = make_conninfo(options.conninfo, client_encoding="utf8", **extra)
    connection = psycopg.connect(conninfo, autocommit=True)
    try:
        connection.add_notify_handler(lambda notify: early.append((notify.channel, notify.payload)))
        for channel in channels:
            connection.execute(f"LISTEN {quote_identifier(channel)}")
    except BaseException:
        connection.close()
        raise
    return connection, early


async def _pump(connection: Connection, deliver: Callable[[list[Notification]], None]) -> NoReturn:
    """Deliver notifications until the connection breaks (raises)."""
    pgconn = connection.pgconn
    encoding = connection.info.encoding
    fd = pgconn.socket
    while True:
        batch: list[Notification] = []
        while (notify := pgconn.notifies()) is not None:
            batch.append((notify.relname.decode(encoding), notify.extra.decode(encoding)))
        if batch:
            deliver(batch)
        await trio.lowlevel.wait_readable(fd)
        pgconn.consume_input()
        if pgconn.status != ConnStatus.OK:
            raise psycopg.OperationalError("the listening connection was lost")


async def listen(
    options: PostgresOptions,
    channels: Sequence[str],
    deliver: Callable[[list[Notification]], None],
    *,
    on_reconnect: Callable[[], Awaitable[None]],
    error: Callable[[str], Exception],
    task_status: trio.TaskStatus[None],
) -> None:
    """LISTEN on ``channels`` until cancelled, passing each batch of
    notifications to ``deliver`` (on the trio thread, in arrival order).

    ``task_status.started()`` once listening; a failure to connect the
    first time is raised as ``error(message)``; later ones are retried.
    """
    backoff = Backoff()
    started = False
    while True:
        try:
            connection, early = await trio.to_thread.run_sync(_open, options, channels)
        except psycopg.Error as failure:
            if not started:
                raise error(f"cannot listen on PostgreSQL at {options.location}: {failure}") from (
                    failure
                )
            wait = backoff.next()
            log.warning(
                "listening on %s: reconnecting failed (%s); retrying in %.2f s",
                options.location,
                failure,
                wait,
            )
            await trio.sleep(wait)
            continue
        since = trio.current_time()
        try:
            if started:
                log.info("listening on %s again", options.location)
                await on_reconnect()
            else:
                started = True
                task_status.started()
            if early:
                deliver(early)
            await _pump(connection, deliver)
        except (psycopg.Error, OSError) as failure:
            if trio.current_time() - since >= _HEALTHY_AFTER:
                backoff.reset()
            wait = backoff.next()
            log.warning(
                "listening on %s: connection lost (%s); reconnecting in %.2f s",
                options.location,
                failure,
                wait,
            )
        finally:
            connection.close()
        await trio.sleep(wait)

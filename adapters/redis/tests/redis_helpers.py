"""Helpers for the Redis adapter's tests (a module name of its own, so that
importing it never picks up another directory's conftest)."""

from __future__ import annotations

import socket
import urllib.parse
import uuid

import coredis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def with_options(url: str, **options: object) -> str:
    """``url`` with ``options`` added to its query."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query += [(name, str(value)) for name, value in options.items()]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def unique_prefix() -> str:
    """A key prefix no other test (or engineer) uses on the shared server."""
    return f"kt-{uuid.uuid4().hex[:12]}:"


def ping(host: str, port: int, timeout: float = 5.0) -> None:
    """Raise OSError unless a Redis server answers PING at ``host:port``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        answer = sock.recv(64)
    if not answer.startswith((b"+PONG", b"-NOAUTH")):
        raise OSError(f"not a Redis server (answered {answer[:20]!r})")


def admin_client(url: str) -> coredis.Redis[str]:
    """A plain client of the tests' own (enter it with ``async with``)."""
    parts = urllib.parse.urlsplit(url)
    return coredis.Redis(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(parts.path.strip("/") or 0),
        password=parts.password,
        decode_responses=True,
    )


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (never the whole database:
    the server is shared); how many."""
    deleted = 0
    async with admin_client(url) as admin:
        batch: list[str] = []
        async for key in admin.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await admin.delete(batch)
                batch = []
        if batch:
            deleted += await admin.delete(batch)
    return deleted


async def kill_clients(url: str, name: str) -> list[int]:
    """``CLIENT KILL`` every connection named ``name`` (only this test's: the
    server is shared, so never ``CLIENT KILL TYPE normal`` for everyone);
    the ids killed."""
    async with admin_client(url) as admin:
        clients = await admin.client_list()
        ids = [int(client["id"]) for client in clients if client.get("name") == name]
        for client_id in ids:
            await admin.client_kill(identifier=client_id)
    return ids

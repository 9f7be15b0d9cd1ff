"""Helpers for the Redis adapter's tests (a module name of its own, so that
importing it never picks up another directory's conftest)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.parse
import uuid

import coredis
import pytest

DEFAULT_URL = "redis://127.0.0.1:6379/0"


LEAKS_OF_FAILED_CONNECTIONS = pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*MemoryObject:pytest.PytestUnraisableExceptionWarning"
)
"""coredis 6.9 leaves the anyio memory streams of a connection that failed to
connect unclosed (their ``__del__`` warns when they are collected): harmless,
but ``filterwarnings = error`` would fail whichever test the collector ran
in. Tests that make connections fail take this mark and the
`collect_failed_connections` fixture, so the warnings are raised, and
ignored, in them (the fixture is in conftest.py)."""


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateServer:
    """A ``redis-server`` of one test's own on a free port (keeping nothing on
    disk), to stop and start again: the shared server is never restarted."""

    def __init__(self, binary: str, directory: str, *, tls: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def ca_file(self) -> str:
        return os.path.join(self.directory, "ca.pem")

    def make_certificates(self) -> None:
        """A CA and a server certificate for 127.0.0.1 and localhost (openssl)."""
        files = {name: os.path.join(self.directory, name) for name in ("ca.key", "server.key")}
        ext = os.path.join(self.directory, "ext.cnf")
        with open(ext, "w") as out:
            out.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        csr = os.path.join(self.directory, "server.csr")
        for command in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", files["ca.key"],
             "-out", self.ca_file, "-days", "2", "-subj", "/CN=kernel-test-ca"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", files["server.key"],
             "-out", csr, "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", csr, "-CA", self.ca_file, "-CAkey", files["ca.key"],
             "-CAcreateserial", "-out", os.path.join(self.directory, "server.pem"),
             "-days", "2", "-extfile", ext],
        ):  # fmt: skip
            subprocess.run(["openssl", *command], check=True, capture_output=True)

    def start(self) -> None:
        if self.tls:
            listen = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", os.path.join(self.directory, "server.pem"),
                "--tls-key-file", os.path.join(self.directory, "server.key"),
                "--tls-ca-cert-file", self.ca_file,
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            listen = ["--port", str(self.port)]
        self.process = subprocess.Popen(
            [
                self.binary,
                *listen,
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.directory,
                "--logfile", os.path.join(self.directory, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.tls:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                else:
                    ping("127.0.0.1", self.port, timeout=1)
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

"""Fixtures for the Redis adapter's tests: a server, and a key prefix per test.

The server is ``$KERNEL_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
When it cannot be reached the tests are skipped, unless
``KERNEL_REQUIRE_SERVICES=1`` (CI), where that is a failure. The server is
shared (with other test runs, other engineers): each test works under a
key prefix of its own, and its keys are deleted afterwards; nothing here
flushes a database or restarts the server.
"""

from __future__ import annotations

import gc
import os
import shutil
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis_helpers import (
    DEFAULT_URL,
    PrivateServer,
    delete_prefix,
    ping,
    unique_prefix,
    with_options,
)

from kernel_redis._url import shown_url


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The server's URL, or a skip (a failure under KERNEL_REQUIRE_SERVICES=1)."""
    url = os.environ.get("KERNEL_TEST_REDIS_URL", DEFAULT_URL)
    parts = urllib.parse.urlsplit(url)
    try:
        ping(parts.hostname or "127.0.0.1", parts.port or 6379)
    except OSError as error:
        reason = f"Redis is not reachable at {shown_url(url)}: {error}".strip()
        if os.environ.get("KERNEL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (KERNEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture
async def prefix(redis_server: str) -> AsyncIterator[str]:
    """A fresh key prefix; every key under it is deleted after the test."""
    chosen = unique_prefix()
    yield chosen
    await delete_prefix(redis_server, chosen)


@pytest.fixture
def client_name() -> str:
    """A ``client_name`` to find a test's connections in ``CLIENT LIST``."""
    return f"kt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url(redis_server: str, prefix: str, client_name: str) -> str:
    """A storage or bus URL under the test's prefix, with a small pool."""
    return with_options(redis_server, prefix=prefix, pool_size=4, client_name=client_name)


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[PrivateServer]:
    """A fresh ``redis-server`` of this test's own, stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "no redis-server binary to run a private server"
        if os.environ.get("KERNEL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (KERNEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
        pytest.skip(reason)
    server = PrivateServer(binary, str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def collect_failed_connections() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[PrivateServer]:
    """A private ``redis-server`` speaking only TLS, with a CA of its own."""
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        reason = "no redis-server or openssl binary to run a TLS server"
        if os.environ.get("KERNEL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (KERNEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
        pytest.skip(reason)
    server = PrivateServer(binary, str(tmp_path), tls=True)
    server.make_certificates()
    server.start()
    try:
        yield server
    finally:
        server.stop()

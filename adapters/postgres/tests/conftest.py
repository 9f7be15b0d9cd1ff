"""Fixtures for the PostgreSQL adapter's tests: a server, and a fresh schema per test.

The server is ``$KERNEL_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When it cannot be reached
the tests are skipped, unless ``KERNEL_REQUIRE_SERVICES=1`` (CI), where
that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pg_helpers import DEFAULT_URL, Admin, drop_schema, with_options

from kernel.ports import redact_url
from kernel_postgres.schema import SCHEMA_VERSION, apply_migrations


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server's URL, or a skip (a failure under KERNEL_REQUIRE_SERVICES=1)."""
    url = os.environ.get("KERNEL_TEST_POSTGRES_URL", DEFAULT_URL)
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as error:
        reason = f"PostgreSQL is not reachable at {redact_url(url)}: {error}".strip()
        if os.environ.get("KERNEL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (KERNEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def admin(pg_server: str) -> Iterator[Admin]:
    """A connection of the tests' own, for making and dropping schemas."""
    with psycopg.connect(pg_server, autocommit=True) as connection:
        yield connection


@pytest.fixture
def bare_schema(admin: Admin) -> Iterator[str]:
    """A schema name no one uses (nothing created), dropped afterwards."""
    schema = f"kt_{uuid.uuid4().hex[:12]}"
    yield schema
    drop_schema(admin, schema)


@pytest.fixture
def schema(admin: Admin, bare_schema: str) -> str:
    """A fresh schema, migrated to the current version."""
    assert apply_migrations(admin, bare_schema, bare_schema) == list(range(1, SCHEMA_VERSION + 1))
    return bare_schema


@pytest.fixture
def app_name() -> str:
    """An ``application_name`` to find a test's connections in pg_stat_activity."""
    return f"kt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_url(pg_server: str, schema: str, app_name: str) -> str:
    """A storage or bus URL on the fresh ``schema``, with a small pool."""
    return with_options(pg_server, schema=schema, pool_size=4, application_name=app_name)

"""The kernel's contract suites, unchanged, against a real PostgreSQL server.

The job-store suite needs an empty store, so each of its tests gets a fresh
schema. The storage suite works in random namespaces and says an adapter
may share one database across tests, so its tests share one schema (made
and dropped around the module). The bus keeps no tables: each test only
needs a schema name of its own, which is its channel.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from pg_helpers import Admin, drop_schema, with_options

from kernel.testing.bus_contract import BusContract
from kernel.testing.jobstore_contract import JobStoreContract
from kernel.testing.storage_contract import StorageContract
from kernel_postgres import PostgresBus, PostgresStorage, open_bus, open_storage
from kernel_postgres.schema import apply_migrations


@pytest.fixture(scope="module")
def shared_url(pg_server: str, admin: Admin) -> Iterator[str]:
    """One migrated schema for the whole storage suite."""
    schema = f"kt_{uuid.uuid4().hex[:12]}"
    apply_migrations(admin, schema, schema)
    yield with_options(pg_server, schema=schema, pool_size=4)
    drop_schema(admin, schema)


class TestPostgresStorage(StorageContract):
    @pytest.fixture
    async def storage(self, shared_url: str) -> AsyncIterator[PostgresStorage]:
        async with await open_storage(shared_url) as storage:
            yield storage


class TestPostgresJobStore(JobStoreContract):
    @pytest.fixture
    async def job_store(self, pg_url: str) -> AsyncIterator[PostgresStorage]:
        async with await open_storage(pg_url) as storage:
            yield storage


class TestPostgresBus(BusContract):
    settle = 0.3  # a real server: wait this long for stragglers

    @pytest.fixture
    async def bus(self, pg_server: str) -> AsyncIterator[PostgresBus]:
        url = with_options(pg_server, schema=f"kt_{uuid.uuid4().hex[:12]}", pool_size=4)
        async with await open_bus(url) as bus:
            yield bus

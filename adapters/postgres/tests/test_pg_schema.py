"""Schema versions: refused when old, missing or newer; `upgrade` idempotent
and safe to run from two nodes at once; the entry points."""

from __future__ import annotations

import importlib.metadata

import psycopg
import pytest
import trio
from click.testing import CliRunner
from pg_helpers import Admin, with_options

from kernel.cli import main
from kernel.errors import (
    BusError,
    InvalidAdapterURL,
    SchemaOutdated,
    SchemaVersionError,
    StorageError,
)
from kernel.runtime.discovery import open_bus as discover_bus
from kernel.runtime.discovery import open_storage as discover_storage
from kernel_postgres import (
    SCHEMA_VERSION,
    PostgresBus,
    PostgresStorage,
    open_bus,
    open_storage,
    upgrade,
)
from kernel_postgres._url import quote_identifier
from kernel_postgres.schema import apply_migrations, stored_version


async def test_an_empty_schema_is_outdated(pg_server: str, bare_schema: str) -> None:
    url = with_options(pg_server, schema=bare_schema)
    with pytest.raises(SchemaOutdated) as refused:
        await open_storage(url)
    assert (refused.value.found, refused.value.required) == (0, SCHEMA_VERSION)
    assert "kernel db upgrade URL" in str(refused.value)
    assert bare_schema in str(refused.value)


async def test_an_older_schema_is_outdated(admin: Admin, pg_server: str, bare_schema: str) -> None:
    assert apply_migrations(admin, bare_schema, bare_schema, target=1) == [1]
    with pytest.raises(SchemaOutdated) as refused:
        await open_storage(with_options(pg_server, schema=bare_schema))
    assert (refused.value.found, refused.value.required) == (1, SCHEMA_VERSION)
    assert await upgrade(with_options(pg_server, schema=bare_schema)) == list(
        range(2, SCHEMA_VERSION + 1)
    )
    async with await open_storage(with_options(pg_server, schema=bare_schema, pool_size=1)):
        pass


async def test_jobs_stored_before_headers_existed_read_back_with_none(
    admin: Admin, pg_server: str, bare_schema: str
) -> None:
    assert apply_migrations(admin, bare_schema, bare_schema, target=2) == [1, 2]
    admin.execute(
        f"INSERT INTO {quote_identifier(bare_schema)}.kernel_jobs (id, task, args, kwargs, "
        "queue, priority, run_at, enqueued_at, attempts, state) "
        "VALUES ('old', 't', '[1]', '{}', 'default', 0, 0, 0, 0, 'queued')"
    )
    assert await upgrade(with_options(pg_server, schema=bare_schema)) == [3]
    async with await open_storage(
        with_options(pg_server, schema=bare_schema, pool_size=1)
    ) as store:
        job = await store.get_job("old")
    assert job is not None
    assert (job.args, job.headers) == ([1], {})


async def test_a_newer_schema_is_refused(admin: Admin, pg_server: str, schema: str) -> None:
    admin.execute(
        f"INSERT INTO {quote_identifier(schema)}.kernel_schema_version (version, description) "
        "VALUES (%s, 'from the future')",
        (SCHEMA_VERSION + 1,),
    )
    url = with_options(pg_server, schema=schema)
    with pytest.raises(SchemaVersionError) as refused:
        await open_storage(url)
    assert (refused.value.found, refused.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    with pytest.raises(SchemaVersionError):
        await upgrade(url)
    with pytest.raises(SchemaVersionError):
        await open_storage(with_options(url, migrate="true"))


async def test_upgrade_is_idempotent(admin: Admin, pg_server: str, bare_schema: str) -> None:
    url = with_options(pg_server, schema=bare_schema, pool_size=2)
    assert await upgrade(url) == list(range(1, SCHEMA_VERSION + 1))
    assert await upgrade(url) == []
    assert stored_version(admin, bare_schema) == SCHEMA_VERSION
    async with await open_storage(url) as storage:
        await storage.put("ns", "k", 1)
    assert await upgrade(url) == []


async def test_concurrent_upgrades_apply_once(
    admin: Admin, pg_server: str, bare_schema: str
) -> None:
    url = with_options(pg_server, schema=bare_schema)
    results: list[list[int]] = []

    async def run() -> None:
        results.append(await upgrade(url))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(run)
    assert sorted(results) == [[], [], [], list(range(1, SCHEMA_VERSION + 1))]
    versions = admin.execute(
        f"SELECT version FROM {quote_identifier(bare_schema)}.kernel_schema_version "
        "ORDER BY version"
    ).fetchall()
    assert [row[0] for row in versions] == list(range(1, SCHEMA_VERSION + 1))


async def test_migrate_at_open(pg_server: str, bare_schema: str) -> None:
    url = with_options(pg_server, schema=bare_schema, pool_size=1, migrate="true")
    async with await open_storage(url) as storage:
        await storage.put("ns", "k", "v")
    async with await open_storage(url) as storage:
        assert await storage.get("ns", "k") == "v"


async def test_an_unreachable_server_is_a_storage_error() -> None:
    url = "postgresql://app:hunter2@127.0.0.1:1/test?connect_timeout=2"
    with pytest.raises(StorageError) as refused:
        await open_storage(url)
    assert isinstance(refused.value.__cause__, psycopg.Error)
    assert "hunter2" not in str(refused.value)
    with pytest.raises(StorageError):
        await upgrade(url)
    with pytest.raises(BusError) as failed:
        await open_bus(url)
    assert "hunter2" not in str(failed.value)


async def test_bad_urls_fail_before_connecting() -> None:
    with pytest.raises(InvalidAdapterURL):
        await open_storage("postgresql://127.0.0.1:1/test?schema=Bad")
    with pytest.raises(InvalidAdapterURL):
        await upgrade("postgresql://127.0.0.1:1/test?buffer=3")
    with pytest.raises(InvalidAdapterURL):
        await open_bus("postgresql://127.0.0.1:1/test?migrate=true")


def test_entry_points_are_registered() -> None:
    for group, target in [
        ("kernel.storage", "kernel_postgres:open_storage"),
        ("kernel.bus", "kernel_postgres:open_bus"),
        ("kernel.migrate", "kernel_postgres:upgrade"),
    ]:
        found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}
        assert found.get("postgresql") == target
        assert found.get("postgres") == target


async def test_the_kernel_finds_the_adapters_by_scheme(pg_url: str) -> None:
    storage = await discover_storage(pg_url)
    try:
        assert isinstance(storage, PostgresStorage)
    finally:
        await storage.aclose()
    bus = await discover_bus(pg_url.replace("postgresql://", "postgres://", 1))
    try:
        assert isinstance(bus, PostgresBus)
    finally:
        await bus.aclose()


def test_kernel_db_upgrade(pg_server: str, bare_schema: str) -> None:
    url = with_options(pg_server, schema=bare_schema)
    first = CliRunner().invoke(main, ["db", "upgrade", url])
    assert first.exit_code == 0, first.output
    versions = ", ".join(str(version) for version in range(1, SCHEMA_VERSION + 1))
    assert f"applied schema version(s) {versions}" in first.output
    again = CliRunner().invoke(main, ["db", "upgrade", url])
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output

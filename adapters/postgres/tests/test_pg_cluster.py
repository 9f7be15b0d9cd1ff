"""What only a shared server has: several nodes on one schema, wake-ups
across nodes, connections killed under a running storage or bus."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest
import trio
from pg_helpers import Admin, with_options

from kernel.errors import StorageClosed, StorageError
from kernel.ports import JSON
from kernel.testing.bus_contract import check_a_subscription_outlives_an_outage
from kernel.testing.jobstore_contract import LEASE, T0, make_job
from kernel.testing.shared_jobstore_contract import SharedJobStoreContract, Wakes
from kernel_postgres import MessageTooLarge, PostgresStorage, open_bus, open_storage
from kernel_postgres._url import quote_identifier

WAIT = 10.0
"""Real seconds to wait for something that must happen (a hang guard)."""


@pytest.fixture
async def node_a(pg_url: str) -> AsyncIterator[PostgresStorage]:
    async with await open_storage(pg_url) as storage:
        yield storage


@pytest.fixture
async def node_b(pg_url: str) -> AsyncIterator[PostgresStorage]:
    async with await open_storage(pg_url) as storage:
        yield storage


def kill_connections(admin: Admin, app_name: str) -> int:
    """Terminate every backend of ``app_name`` (a node's pool and listener)."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s "
        "AND pid <> pg_backend_pid()",
        (app_name,),
    ).fetchall()
    return len(rows)


class TestSharedJobStore(SharedJobStoreContract):
    """Two nodes (two pools) on one server: the shared job-store contract,
    with this module's ``node_a`` and ``node_b``."""

    wait = WAIT


# -- jobs across nodes -------------------------------------------------------------


# -- waking idle nodes ---------------------------------------------------------------


async def test_a_long_schema_name_still_wakes(admin: Admin, pg_server: str) -> None:
    # "kernel_jobs:" + 60 characters is past NOTIFY's 63-byte channel names:
    # the trigger and the listener both fall back to a hash of the schema.
    from kernel_postgres.schema import apply_migrations

    schema = f"kt_{uuid.uuid4().hex}{'x' * 25}"
    apply_migrations(admin, schema, schema)
    try:
        url = with_options(pg_server, schema=schema, pool_size=1)
        async with await open_storage(url) as storage:
            wakes = Wakes()
            async with trio.open_nursery() as nursery:
                await nursery.start(storage.listen_enqueued, wakes)
                await storage.enqueue(make_job(queue="q"))
                await wakes.wait_for("q")
                nursery.cancel_scope.cancel()
    finally:
        admin.execute(f"DROP SCHEMA {quote_identifier(schema)} CASCADE")


async def test_the_listener_reconnects_and_wakes_every_known_queue(
    admin: Admin, app_name: str, node_a: PostgresStorage, node_b: PostgresStorage
) -> None:
    await node_b.enqueue(make_job(queue="backlog"))
    await node_a.next_due("known")  # a queue node A works on, with nothing queued
    wakes = Wakes()
    async with trio.open_nursery() as nursery:
        await nursery.start(node_a.listen_enqueued, wakes)
        assert kill_connections(admin, app_name) >= 1
        # notifications sent while it was away are lost: it wakes them all
        await wakes.wait_for("backlog")
        await wakes.wait_for("known")
        with trio.fail_after(WAIT):
            while "after" not in wakes.queues:
                await node_b.enqueue(make_job(queue="after"))
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_listening_on_a_closed_storage_is_refused(pg_url: str) -> None:
    storage = await open_storage(pg_url)
    async with trio.open_nursery() as nursery:
        closed = trio.Event()

        async def listen() -> None:
            with pytest.raises(StorageClosed):
                await storage.listen_enqueued(lambda queue: None)
            closed.set()

        await nursery.start(_started, listen)
        await trio.sleep(0.1)
        await storage.aclose()
        with trio.fail_after(WAIT):
            await closed.wait()
    with pytest.raises(StorageClosed):
        await storage.listen_enqueued(lambda queue: None)


async def _started(
    function: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await function()  # type: ignore[operator]


# -- failures ----------------------------------------------------------------------


async def test_storage_survives_its_connections_being_killed(
    admin: Admin, app_name: str, node_a: PostgresStorage
) -> None:
    await node_a.put("ns", "k", 1)
    job, _ = await node_a.enqueue(make_job())
    assert kill_connections(admin, app_name) == 4
    # the server said it ended each session before running anything: the
    # call is retried on a fresh connection, writes included
    assert await node_a.get("ns", "k") == 1
    assert kill_connections(admin, app_name) >= 1  # the pool may be refilling
    (claimed,) = await node_a.claim("default", worker="w", now=T0, lease=LEASE)
    assert claimed.id == job.id
    assert kill_connections(admin, app_name) >= 1
    assert await node_a.complete(job.id, worker="w", now=T0) is True
    assert await node_a.delete("ns", "k") is True


async def test_a_driver_failure_is_a_storage_error(
    admin: Admin, schema: str, node_a: PostgresStorage
) -> None:
    admin.execute(f"DROP TABLE {quote_identifier(schema)}.kernel_kv")
    with pytest.raises(StorageError) as failed:
        await node_a.get("ns", "k")
    assert isinstance(failed.value.__cause__, psycopg.errors.UndefinedTable)
    await node_a.enqueue(make_job())  # the rest still works


# -- the bus across nodes ----------------------------------------------------------


async def test_the_bus_carries_messages_between_nodes(pg_url: str) -> None:
    huge: dict[str, JSON] = {
        "text": "é☃𝄞" * 30_000,
        "n": list(range(2000)),
    }  # about 240 KB: 31 chunks
    async with await open_bus(pg_url) as node_a, await open_bus(pg_url) as node_b:
        async with node_a.subscribe("jobs.#") as subscription:
            await node_b.publish("jobs.done", {"id": 1})
            await node_b.publish("jobs.huge", huge)
            await node_b.publish("jobs.last", None)
            with trio.fail_after(WAIT):
                got = [await subscription.receive() for _ in range(3)]
        assert [(m.topic, m.payload) for m in got] == [
            ("jobs.done", {"id": 1}),
            ("jobs.huge", huge),
            ("jobs.last", None),
        ]


async def test_a_message_too_large_is_refused(pg_url: str) -> None:
    async with (
        await open_bus(with_options(pg_url, max_message=1000)) as bus,
        bus.subscribe("t") as subscription,
    ):
        with pytest.raises(MessageTooLarge) as refused:
            await bus.publish("t", "x" * 1000)
        assert (refused.value.size, refused.value.limit) == (1002, 1000)
        assert isinstance(refused.value, ValueError)
        assert "1002 bytes" in str(refused.value)
        await bus.publish("t", "x" * 998)
        with trio.fail_after(WAIT):
            assert (await subscription.receive()).payload == "x" * 998


async def test_the_bus_listener_reconnects(admin: Admin, app_name: str, pg_url: str) -> None:
    async def cut() -> None:
        assert kill_connections(admin, app_name) >= 1

    async with await open_bus(pg_url) as bus:
        await check_a_subscription_outlives_an_outage(bus, cut, wait=WAIT)


async def test_jobs_listen_on_their_own_channel(pg_url: str, node_a: PostgresStorage) -> None:
    wakes = Wakes()
    async with await open_bus(pg_url) as bus, trio.open_nursery() as nursery:
        await nursery.start(node_a.listen_enqueued, wakes)
        async with bus.subscribe("#") as subscription:
            await node_a.enqueue(make_job(queue="q"))
            await wakes.wait_for("q")
            await bus.publish("b", 1)
            with trio.fail_after(WAIT):
                message = await subscription.receive()
        assert (message.topic, message.payload) == ("b", 1)
        assert wakes.queues == ["q"]
        nursery.cancel_scope.cancel()


async def test_claim_with_aging_uses_whole_periods(node_a: PostgresStorage) -> None:
    # the aging arithmetic runs in SQL on integer microseconds
    waited, _ = await node_a.enqueue(make_job(priority=0, at=-timedelta(seconds=20)))
    fresh, _ = await node_a.enqueue(make_job(priority=2))
    claimed = await node_a.claim(
        "default", worker="w", now=T0, lease=LEASE, limit=2, aging=timedelta(seconds=10)
    )
    # waited 2 full agings: 0 + 2 ties with 2, and wins on its earlier run_at
    assert [job.id for job in claimed] == [waited.id, fresh.id]


# -- the kernel's job queue on top ---------------------------------------------------

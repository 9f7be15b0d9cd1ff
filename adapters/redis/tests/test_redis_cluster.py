"""What only a shared server has: several nodes on one prefix, wake-ups
across nodes, connections killed under a running storage or bus, a server
that restarts (a private one), and failures that must read as one line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import coredis.exceptions
import pytest
import trio
from redis_helpers import (
    LEAKS_OF_FAILED_CONNECTIONS,
    PrivateServer,
    admin_client,
    free_port,
    kill_clients,
    with_options,
)

from kernel.errors import BusError, StorageClosed, StorageError
from kernel.ports import JSON, JobState
from kernel.testing.bus_contract import check_a_subscription_outlives_an_outage
from kernel.testing.jobstore_contract import LEASE, T0, make_job
from kernel.testing.shared_jobstore_contract import SharedJobStoreContract, Wakes
from kernel_redis import RedisBus, RedisStorage, open_bus, open_storage

WAIT = 10.0
"""Real seconds to wait for something that must happen (a hang guard)."""


@pytest.fixture
async def node_a(redis_url: str) -> AsyncIterator[RedisStorage]:
    async with await open_storage(redis_url) as storage:
        yield storage


@pytest.fixture
async def node_b(redis_url: str) -> AsyncIterator[RedisStorage]:
    async with await open_storage(redis_url) as storage:
        yield storage


class TestSharedJobStore(SharedJobStoreContract):
    """Two nodes (two pools) on one server: the shared job-store contract,
    with this module's ``node_a`` and ``node_b``."""

    wait = WAIT


# -- jobs across nodes -------------------------------------------------------------


async def test_prefixes_keep_kernels_apart(redis_server: str, prefix: str) -> None:
    other = f"{prefix}other:"
    async with (
        await open_storage(with_options(redis_server, prefix=prefix)) as mine,
        await open_storage(with_options(redis_server, prefix=other)) as theirs,
    ):
        await mine.put("ns", "k", "mine")
        await theirs.put("ns", "k", "theirs")
        job, _ = await theirs.enqueue(make_job(queue="q"))
        assert await mine.get("ns", "k") == "mine"
        assert await mine.keys("ns") == ["k"]
        assert await mine.list_jobs() == []
        assert await mine.next_due() is None
        assert await mine.claim("q", worker="w", now=T0, lease=LEASE) == []
        assert [j.id for j in await theirs.list_jobs()] == [job.id]


async def test_times_far_from_now_keep_their_order(node_a: RedisStorage) -> None:
    # the queue order is bytes of sortable times: exact for any datetime
    dates = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2300, 1, 1, tzinfo=UTC),
    ]
    for run_at in reversed(dates):
        await node_a.enqueue(make_job(run_at=run_at, enqueued_at=run_at))
    assert await node_a.next_due() == dates[0]
    claimed = await node_a.claim(
        "default", worker="w", now=datetime(9999, 1, 1, tzinfo=UTC), lease=LEASE, limit=10
    )
    assert [job.run_at for job in claimed] == dates


async def test_a_large_purge_goes_in_batches(node_a: RedisStorage) -> None:
    count = 1_200  # more than one script's batch of 1,000
    for index in range(count):
        job, _ = await node_a.enqueue(make_job(queue=f"q{index % 3}"))
        await node_a.cancel(job.id, now=T0)
    kept, _ = await node_a.enqueue(make_job())
    assert await node_a.purge(state=JobState.cancelled) == count
    assert [job.id for job in await node_a.list_jobs()] == [kept.id]
    assert await node_a.list_jobs(queue="q1") == []


async def test_the_kernel_opens_redis_by_its_url(redis_url: str) -> None:
    import kernel

    storage = await kernel.open_storage(redis_url)
    try:
        assert isinstance(storage, RedisStorage)
        await storage.put("ns", "k", [1])
        assert await storage.get("ns", "k") == [1]
    finally:
        await storage.aclose()
    bus = await kernel.open_bus(redis_url)
    assert isinstance(bus, RedisBus)
    await bus.aclose()


# -- waking idle nodes ---------------------------------------------------------------


async def test_the_listener_reconnects_and_wakes_every_queue_with_jobs(
    redis_server: str,
    client_name: str,
    node_a: RedisStorage,
    node_b: RedisStorage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await node_b.enqueue(make_job(queue="backlog"))
    wakes = Wakes()
    caplog.set_level(logging.INFO, logger="kernel_redis")
    async with trio.open_nursery() as nursery:
        await nursery.start(node_a.listen_enqueued, wakes)
        assert await kill_clients(redis_server, client_name)
        # messages published while it was away are lost: it wakes every queue
        await wakes.wait_for("backlog")
        with trio.fail_after(WAIT):
            while "after" not in wakes.queues:
                await node_b.enqueue(make_job(queue="after"))
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    said = [record.getMessage() for record in caplog.records]
    assert any("lost the wake-up subscription" in line for line in said), said
    assert any("listening for jobs again" in line for line in said), said


async def test_listening_on_a_closed_storage_is_refused(redis_url: str) -> None:
    storage = await open_storage(redis_url)
    async with trio.open_nursery() as nursery:
        closed = trio.Event()

        async def listen(*, task_status: trio.TaskStatus[None]) -> None:
            with pytest.raises(StorageClosed):
                await storage.listen_enqueued(lambda queue: None, task_status=task_status)
            closed.set()

        await nursery.start(listen)
        await storage.aclose()
        with trio.fail_after(WAIT):
            await closed.wait()
    with pytest.raises(StorageClosed):
        await storage.listen_enqueued(lambda queue: None)


# -- failures ----------------------------------------------------------------------


async def test_storage_survives_its_connections_being_killed(
    redis_server: str, client_name: str, node_a: RedisStorage
) -> None:
    await node_a.put("ns", "k", 1)
    job, _ = await node_a.enqueue(make_job())
    assert await kill_clients(redis_server, client_name)
    await trio.sleep(0.05)  # the pool sees its connections closed
    assert await node_a.get("ns", "k") == 1
    assert await kill_clients(redis_server, client_name)
    await trio.sleep(0.05)
    (claimed,) = await node_a.claim("default", worker="w", now=T0, lease=LEASE)
    assert claimed.id == job.id
    assert await kill_clients(redis_server, client_name)
    await trio.sleep(0.05)
    assert await node_a.complete(job.id, worker="w", now=T0) is True
    assert await node_a.delete("ns", "k") is True


async def test_a_redis_failure_is_a_storage_error(
    redis_server: str, prefix: str, node_a: RedisStorage
) -> None:
    async with admin_client(redis_server) as admin:
        await admin.set(f"{prefix}kv:ns", "not a hash")
    with pytest.raises(StorageError) as failed:
        await node_a.get("ns", "k")
    assert isinstance(failed.value.__cause__, coredis.exceptions.ResponseError)
    assert "wrong kind of value" in str(failed.value)
    assert prefix in str(failed.value)
    await node_a.enqueue(make_job())  # the rest still works


@LEAKS_OF_FAILED_CONNECTIONS
@pytest.mark.usefixtures("collect_failed_connections")
@pytest.mark.parametrize("opener", [open_storage, open_bus])
async def test_an_unreachable_server_is_one_line_without_the_password(opener: object) -> None:
    url = f"redis://app:s3cret@127.0.0.1:{free_port()}/0?connect_timeout=2"
    error = StorageError if opener is open_storage else BusError
    with trio.fail_after(WAIT), pytest.raises(error) as failed:
        await opener(url)  # type: ignore[operator]
    message = str(failed.value)
    assert "s3cret" not in message
    assert "\n" not in message
    assert message.startswith("Redis is not reachable at redis://app:***@127.0.0.1:")


@LEAKS_OF_FAILED_CONNECTIONS
@pytest.mark.usefixtures("collect_failed_connections")
async def test_a_server_restart_is_lived_through(
    private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Storage, wake-ups and a bus subscriber get going again on their own
    after the server restarts (empty: this one keeps nothing on disk), with
    log lines and nothing else for the code using them to notice."""
    caplog.set_level(logging.INFO, logger="kernel_redis")
    url = private_server.url
    wakes = Wakes()
    async with (
        await open_storage(url) as storage,
        await open_bus(url) as bus,
        bus.subscribe("news.*") as subscription,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(storage.listen_enqueued, wakes)
        await storage.enqueue(make_job(queue="before"))
        await wakes.wait_for("before")
        await bus.publish("news.a", 1)
        with trio.fail_after(WAIT):
            assert (await subscription.receive()).payload == 1
        private_server.stop()
        with pytest.raises(StorageError):
            await storage.get("ns", "k")
        private_server.start()
        # the scripts are gone from the restarted server: they are loaded again
        with trio.fail_after(WAIT):
            while True:
                try:
                    await storage.enqueue(make_job(queue="after"))
                    break
                except StorageError:
                    await trio.sleep(0.05)
        await wakes.wait_for("after")
        received = trio.Event()

        async def publish_until_received() -> None:
            number = 0
            while not received.is_set():
                await bus.publish("news.b", number)
                number += 1
                await trio.sleep(0.05)

        with trio.fail_after(WAIT):
            nursery.start_soon(publish_until_received)
            message = await subscription.receive()
            received.set()
        assert message.topic == "news.b"
        nursery.cancel_scope.cancel()
    said = [record.getMessage() for record in caplog.records]
    assert any("listening for jobs again" in line for line in said), said
    assert any("subscribed to 'news.*' again" in line for line in said), said


@LEAKS_OF_FAILED_CONNECTIONS
@pytest.mark.usefixtures("collect_failed_connections")
async def test_rediss_speaks_tls(tls_server: PrivateServer) -> None:
    trusted = with_options(tls_server.url, ssl_ca_certs=tls_server.ca_file)
    async with await open_storage(trusted) as storage, await open_bus(trusted) as bus:
        await storage.put("ns", "k", "over TLS")
        assert await storage.get("ns", "k") == "over TLS"
        async with bus.subscribe("t") as subscription:
            await bus.publish("t", 1)
            with trio.fail_after(WAIT):
                assert (await subscription.receive()).payload == 1
    # a server whose certificate no trusted CA signed is refused, in one line
    with trio.fail_after(WAIT), pytest.raises(StorageError) as refused:
        await open_storage(with_options(tls_server.url, connect_timeout=2))
    assert str(refused.value).startswith(f"Redis is not reachable at {tls_server.url}")


# -- the bus across nodes ----------------------------------------------------------


async def test_the_bus_carries_messages_between_nodes(redis_url: str) -> None:
    huge: dict[str, JSON] = {"text": "é☃𝄞" * 30_000, "n": list(range(2000))}
    async with await open_bus(redis_url) as node_a, await open_bus(redis_url) as node_b:
        async with node_a.subscribe("jobs.#") as subscription:
            await node_b.publish("jobs.done", {"id": 1})
            await node_b.publish("jobs.huge", huge)
            await node_b.publish("jobsdone", "not under jobs.#: the glob is wider")
            await node_b.publish("jobs", None)
            with trio.fail_after(WAIT):
                got = [await subscription.receive() for _ in range(3)]
        assert [(m.topic, m.payload) for m in got] == [
            ("jobs.done", {"id": 1}),
            ("jobs.huge", huge),
            ("jobs", None),
        ]


async def test_a_bus_subscriber_reconnects(
    redis_server: str, client_name: str, redis_url: str
) -> None:
    async def cut() -> None:
        assert await kill_clients(redis_server, client_name)

    async with await open_bus(redis_url) as bus:
        await check_a_subscription_outlives_an_outage(bus, cut, wait=WAIT)


async def test_jobs_wake_on_their_own_channel(redis_url: str, node_a: RedisStorage) -> None:
    wakes = Wakes()
    async with await open_bus(redis_url) as bus, trio.open_nursery() as nursery:
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


async def test_an_error_inside_a_subscription_is_not_wrapped(redis_url: str) -> None:
    async with await open_bus(redis_url) as bus:
        with pytest.raises(KeyError):
            async with bus.subscribe("t"):
                raise KeyError("the caller's own")


# -- the kernel's job queue on top ---------------------------------------------------

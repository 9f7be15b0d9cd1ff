"""Real processes on one Redis: three kernel nodes (``kernel.testing.node``,
driven by ``kernel.testing.cluster``) work thousands of jobs and two fast
schedules from one key prefix, while one node is killed with SIGKILL, or
while every connection the nodes hold is killed (``CLIENT KILL``) under
them.

Afterwards every job has succeeded and run at least once, the runs repeated
are bounded by what was in flight at the failure, the killed node's jobs
were reclaimed when their lease ran out and finished elsewhere, every slot
of a schedule became exactly one job, and the fast schedule's slots form
an unbroken grid (none lost). A third test measures how fast an idle
cluster starts a job another process enqueued: nothing in the queue polls,
so that it starts at all is the pub/sub wake-up at work.

Real processes and real time: the waits are the scenario, and nothing is
asserted about timing except hang guards (and the wake-up's generous
bound; ``bench/redis_queue.py`` measures it).

The server is shared: only this test's connections are killed, found by
the ``client_name`` its nodes give them (``CLIENT KILL ID`` each, never
``CLIENT KILL TYPE normal`` for everyone), and nothing is flushed.
"""

from __future__ import annotations

import collections
import functools
import re
import time
from pathlib import Path

import pytest
import trio
from redis_helpers import admin_client, kill_clients, with_options

from kernel.ports import JobState
from kernel.storage.base import to_epoch_micros
from kernel.testing.cluster import (
    DONE_TIMEOUT,
    NODES,
    POLL,
    READY_TIMEOUT,
    WAKE_BOUND,
    Row,
    check_after_kill,
    check_idle_wakeups,
    check_outcome,
    count_done,
    enqueue_work,
    kill_one_mid_run,
    label,
    open_cluster,
    read_log,
    started_by,
    stop_survivors,
    wait_for,
    wait_until,
    wait_until_done,
)
from kernel.testing.node import (
    CONCURRENCY,
    SCHEDULES,
    TICK_CONCURRENCY,
    TICKS,
    wall_us,
)
from kernel_redis import RedisStorage, open_storage
from kernel_redis._records import time_from_sortable

_ROW_FIELDS = ("id", "queue", "state", "worker", "attempts", "schedule", "fire_time", "last_error")

ADAPTER_LOGS = ["kernel_redis"]  # the nodes log its reconnections


async def read_rows(url: str, prefix: str) -> list[Row]:
    """Every job under ``prefix``, read from Redis directly."""
    async with admin_client(url) as admin:
        ids = await admin.zrange(f"{prefix}all", 0, -1)
        rows = []
        for job_id in ids:
            values = await admin.hmget(f"{prefix}job:{job_id}", _ROW_FIELDS)
            job, queue, state, worker, attempts, schedule, fire_time, last_error = values
            assert job is not None, job_id
            assert queue is not None, job_id
            assert state is not None, job_id
            rows.append(
                Row(
                    job,
                    queue,
                    state,
                    worker,
                    int(attempts or 0),
                    schedule,
                    None if fire_time is None else int(fire_time),
                    last_error,
                )
            )
    return rows


async def read_slots(url: str, prefix: str) -> list[tuple[str, int]]:
    """Every claimed slot: members are a sortable fire time and the schedule."""
    async with admin_client(url) as admin:
        members = await admin.zrange(f"{prefix}slots", 0, -1)
    return [(member[19:], to_epoch_micros(time_from_sortable(member[:19]))) for member in members]


async def wait_ticks_done(storage: RedisStorage, url: str, prefix: str, cut_us: int) -> None:
    """Until every schedule job of a slot up to ``cut_us`` has finished.

    And until every schedule has claimed a slot past the cut: a slot fired
    just before the cut may not be stored yet, but a slot's job is stored
    with its claim and each node feeds a schedule's slots in order, so once
    a slot past the cut is claimed every job up to the cut is there."""

    async def settled() -> bool:
        slots = await read_slots(url, prefix)
        if not all(any(s == name and f > cut_us for s, f in slots) for name in SCHEDULES):
            return False
        for state in (JobState.queued, JobState.running):
            for job in await storage.list_jobs(state=state, queue=TICKS, limit=1000):
                if job.fire_time is not None and to_epoch_micros(job.fire_time) <= cut_us:
                    return False
        return True

    with trio.fail_after(DONE_TIMEOUT):
        while True:  # polled: the nodes are other processes
            if await settled():
                return
            await trio.sleep(POLL)


# -- the tests -----------------------------------------------------------------


async def wait_for_slots(url: str, prefix: str, at_least: int = 6) -> None:
    """Until every schedule has fired ``at_least`` slots: a run whose work
    went fast must still show each schedule running throughout."""
    with trio.fail_after(DONE_TIMEOUT):
        while True:  # polled: the nodes are other processes
            fired = collections.Counter(name for name, _ in await read_slots(url, prefix))
            if all(fired[name] >= at_least for name in SCHEDULES):
                return
            await trio.sleep(POLL)


def node_url(redis_server: str, prefix: str, client_name: str) -> str:
    """The nodes' URL: their connections are named ``<client_name>-node``,
    so the test can find (and kill) exactly them."""
    return with_options(redis_server, prefix=prefix, pool_size=6, client_name=f"{client_name}-node")


@pytest.mark.slow
async def test_a_node_killed_mid_run_loses_nothing(
    redis_server: str, prefix: str, client_name: str, redis_url: str, tmp_path: Path
) -> None:
    before, during = 1500, 1000
    labels = [label(n) for n in range(before + during)]
    url = node_url(redis_server, prefix, client_name)
    began = time.monotonic()
    async with (
        await open_storage(redis_url) as storage,
        open_cluster(url, tmp_path, log_info=ADAPTER_LOGS) as cluster,
    ):
        victim, killed_at = await kill_one_mid_run(storage, cluster, labels, before=before)
        await wait_until_done(storage, cluster)
        await wait_for_slots(redis_server, prefix)
        cut_us = wall_us()
        await wait_ticks_done(storage, redis_server, prefix, cut_us)
        stderr = await stop_survivors(cluster, victim)
    print(f"run took {time.monotonic() - began:.1f} s")
    starts, dones = read_log(cluster.log)
    check_after_kill(
        rows=await read_rows(redis_server, prefix),
        slots=await read_slots(redis_server, prefix),
        starts=starts,
        dones=dones,
        labels=set(labels),
        cut_us=cut_us,
        victim=victim.name,
        killed_at=killed_at,
    )
    assert " ERROR " not in stderr, stderr


@pytest.mark.slow
async def test_the_cluster_lives_through_killed_connections(
    redis_server: str, prefix: str, client_name: str, redis_url: str, tmp_path: Path
) -> None:
    before, after = 2000, 500
    labels = [label(n) for n in range(before + after)]
    url = node_url(redis_server, prefix, client_name)
    began = time.monotonic()
    async with (
        await open_storage(redis_url) as storage,
        open_cluster(url, tmp_path, log_info=ADAPTER_LOGS) as cluster,
    ):
        await enqueue_work(storage, labels[:before])
        await cluster.start(NODES)
        killed = 0
        for share in (4, 2):  # twice: a quarter of the way, then half
            await wait_until(
                lambda share=share: count_done(cluster.log).total() >= before // share,
                within=DONE_TIMEOUT,
                every=0.01,
            )
            ids = await kill_clients(redis_server, f"{client_name}-node")
            assert ids, "the nodes' connections were not found by their client_name"
            killed += len(ids)
        print(f"killed {killed} connections of the nodes (CLIENT KILL ID)")
        assert all(node.alive for node in cluster.nodes), cluster.all_stderr()
        await enqueue_work(storage, labels[before:])
        await wait_until_done(storage, cluster)
        await wait_for_slots(redis_server, prefix)
        cut_us = wall_us()
        # each node listens again (its wake-ups came back), after its backoff
        await wait_until(
            lambda: all(
                re.search(r"listening for jobs again", cluster.stderr(node))
                for node in cluster.nodes
            ),
            within=READY_TIMEOUT,
        )
        # and an idle queue wakes for a new job again
        labels.append("after-kill")
        await enqueue_work(storage, labels[-1:])
        await wait_for(functools.partial(started_by, cluster.log, labels[-1]), within=WAKE_BOUND)
        await wait_until_done(storage, cluster)
        await wait_ticks_done(storage, redis_server, prefix, cut_us)
        # the nodes lived through it: still alive, and stop cleanly
        assert all(node.alive for node in cluster.nodes), cluster.all_stderr()
        codes = await cluster.stop()
        assert set(codes.values()) == {0}, (codes, cluster.all_stderr())
        stderr = cluster.all_stderr()
    print(f"run took {time.monotonic() - began:.1f} s")
    rows = await read_rows(redis_server, prefix)
    slots = await read_slots(redis_server, prefix)
    lost = [line for line in stderr.splitlines() if "lost" in line]
    print(f"{len(lost)} node log lines about lost connections")
    reaped = [row.id for row in rows if row.last_error is not None]
    print(f"{len(reaped)} job(s) reaped after their lease ran out: {reaped}")
    starts, dones = read_log(cluster.log)
    # a call whose connection was killed under it may have claimed jobs whose
    # reply was lost: those come back when their lease runs out, on any node
    check_outcome(
        rows=rows,
        slots=slots,
        starts=starts,
        dones=dones,
        labels=set(labels),
        cut_us=cut_us,
        suspects=None,
        max_repeats=2 * NODES * CONCURRENCY,
        max_tick_repeats=2 * NODES * TICK_CONCURRENCY,
    )
    # a node's only errors are outcomes it could not store (the connection
    # died under the call): those jobs were reaped and ran again, within the
    # bound above
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    print(f"{len(errors)} outcome(s) not stored: {errors}")
    assert all("could not record its outcome" in line for line in errors), errors


async def test_an_idle_cluster_starts_a_new_job_at_once(
    redis_server: str, prefix: str, client_name: str, redis_url: str, tmp_path: Path
) -> None:
    rounds = 20
    url = with_options(redis_server, prefix=prefix, pool_size=2, client_name=f"{client_name}-node")
    async with (
        await open_storage(redis_url) as storage,
        open_cluster(url, tmp_path, log_info=ADAPTER_LOGS) as cluster,
    ):
        await cluster.start(NODES, "--no-schedules")
        # idle, and every node subscribed: `JobQueue.run` may report started
        # before its subscription is active
        await trio.sleep(1.0)
        print(await check_idle_wakeups(storage, cluster, rounds=rounds, pause=0.1))

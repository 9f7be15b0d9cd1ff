"""Real processes on one Redis: three kernel nodes (``redis_node.py``) work
thousands of jobs and two fast schedules from one key prefix, while one
node is killed with SIGKILL, or while every connection the nodes hold is
killed (``CLIENT KILL``) under them.

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
import contextlib
import functools
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import attrs
import pytest
import trio
from redis_helpers import admin_client, kill_clients, with_options
from redis_node import (
    ANCHOR,
    CONCURRENCY,
    SCHEDULES,
    TICK_CONCURRENCY,
    TICKS,
    WORK,
    wall_us,
)

from kernel.errors import StorageError
from kernel.ports import JobRecord, JobState
from kernel.storage.base import lease_expired_error, to_epoch_micros
from kernel_redis import RedisStorage, open_storage
from kernel_redis._records import time_from_sortable

T = TypeVar("T")

NODE = Path(__file__).resolve().with_name("redis_node.py")
NODES = 3
READY_TIMEOUT = 30.0
DONE_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
POLL = 0.05
#: A job enqueued on an idle cluster must start within this many seconds. The
#: queue has no polling timer, so without the wake-up it would never start;
#: the bound is a hang guard, not a performance claim.
WAKE_BOUND = 5.0


# -- the nodes -----------------------------------------------------------------


@attrs.define(eq=False)
class Node:
    name: str
    process: trio.Process
    stderr: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@attrs.define(eq=False)
class Cluster:
    """The node processes of one test and the log they share."""

    url: str
    tmp: Path
    nodes: list[Node] = attrs.field(factory=list)

    @property
    def log(self) -> Path:
        return self.tmp / "runs.log"

    async def start(self, count: int, *flags: str) -> None:
        """``count`` nodes, started together, each serving when this returns."""
        names = [f"node-{len(self.nodes) + index}" for index in range(count)]
        for name in names:
            stderr = self.tmp / f"{name}.err"
            with stderr.open("wb") as err:
                process = await trio.lowlevel.open_process(
                    [sys.executable, str(NODE), self.url, name, str(self.log), *flags],
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
            self.nodes.append(Node(name, process, stderr))
        for node in self.nodes[-count:]:
            await self._ready(node)

    async def _ready(self, node: Node) -> None:
        assert node.process.stdout is not None
        output = b""
        with trio.move_on_after(READY_TIMEOUT):
            while b"\n" not in output:
                chunk = await node.process.stdout.receive_some()
                if not chunk:
                    break
                output += chunk
        assert output == b"ready\n", f"{node.name} said {output!r}:\n{self.stderr(node)}"

    def stderr(self, node: Node) -> str:
        return node.stderr.read_text(errors="replace")

    def all_stderr(self) -> str:
        return "\n".join(f"--- {node.name}:\n{self.stderr(node)}" for node in self.nodes)

    def kill(self, node: Node) -> None:
        node.process.send_signal(signal.SIGKILL)

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM every node still running; their exit codes once stopped."""
        for node in self.nodes:
            if node.alive:
                node.process.terminate()
        with trio.move_on_after(STOP_TIMEOUT):
            for node in self.nodes:
                await node.process.wait()
        return {node.name: node.process.returncode for node in self.nodes}

    async def aclose(self) -> None:
        """Kill whatever a failed test left running, and reap it."""
        with trio.CancelScope(shield=True):
            for node in self.nodes:
                if node.alive:
                    node.process.kill()
                await node.process.wait()
                if node.process.stdout is not None:
                    await node.process.stdout.aclose()


@contextlib.asynccontextmanager
async def open_cluster(url: str, tmp: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(url, tmp)
    cluster.log.touch()
    try:
        yield cluster
    finally:
        await cluster.aclose()


# -- what happened -------------------------------------------------------------


@attrs.frozen
class Start:
    node: str
    job_id: str
    at_us: int
    schedule: str | None
    fire_time: int | None


@attrs.frozen
class Done:
    node: str
    label: str
    at_us: int


def read_log(path: Path) -> tuple[list[Start], list[Done]]:
    starts: list[Start] = []
    dones: list[Done] = []
    for line in path.read_text().splitlines():
        kind, *fields = line.split(" ")
        if kind == "start" and len(fields) == 5:
            node, job_id, at_us, schedule, fire_time = fields
            fire_us = None if fire_time == "-" else datetime.fromisoformat(fire_time)
            starts.append(
                Start(
                    node,
                    job_id,
                    int(at_us),
                    None if schedule == "-" else schedule,
                    None if fire_us is None else to_epoch_micros(fire_us),
                )
            )
        elif kind == "done" and len(fields) == 3:
            dones.append(Done(fields[0], fields[1], int(fields[2])))
        else:
            raise AssertionError(f"unexpected log line {line!r}")
    return starts, dones


def started_by(path: Path, job_id: str) -> Start | None:
    """The first start of ``job_id`` in the log so far."""
    return next((start for start in read_log(path)[0] if start.job_id == job_id), None)


def count_done(path: Path) -> collections.Counter[str]:
    """Done lines so far, by node (cheap enough to poll)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        if line.startswith("done "):
            counts[line.split(" ", 2)[1]] += 1
    return counts


@attrs.frozen
class Row:
    id: str
    queue: str
    state: str
    worker: str | None
    attempts: int
    schedule: str | None
    fire_time: int | None
    last_error: str | None


_ROW_FIELDS = ("id", "queue", "state", "worker", "attempts", "schedule", "fire_time", "last_error")


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


def label(n: int) -> str:
    return f"w-{n:05d}"


async def enqueue_work(storage: RedisStorage, labels: Sequence[str]) -> None:
    """Jobs of ``work`` with the labels as ids (several at a time)."""

    async def some(part: Sequence[str]) -> None:
        for name in part:
            now = datetime.now(UTC)
            await storage.enqueue(
                JobRecord(
                    id=name, task="work", args=[name], queue=WORK, run_at=now, enqueued_at=now
                )
            )

    async with trio.open_nursery() as nursery:
        for lane in range(8):
            nursery.start_soon(some, labels[lane::8])


async def live_work(storage: RedisStorage) -> int:
    """Queued or running jobs of ``work`` (0 or more, at most 2)."""
    live = 0
    for state in (JobState.queued, JobState.running):
        live += len(await storage.list_jobs(state=state, queue=WORK, limit=1))
    return live


async def wait_until_done(storage: RedisStorage, cluster: Cluster) -> None:
    """Until no job of ``work`` is queued or running. Polled: a killed node's
    jobs stay running in the store until their lease is reaped. A failing
    call (the server restarting) is polled again."""
    with trio.move_on_after(DONE_TIMEOUT) as hang:
        while True:
            try:
                if not await live_work(storage):
                    return
            except StorageError:
                pass
            await trio.sleep(POLL)
    assert not hang.cancelled_caught, f"work left after {DONE_TIMEOUT} s\n{cluster.all_stderr()}"


async def wait_for(check: Callable[[], T | None], *, within: float, every: float = POLL) -> T:
    """The first result of ``check`` that is not None, polled every ``every``
    seconds; `trio.TooSlowError` after ``within`` seconds."""
    with trio.fail_after(within):
        while True:
            if (result := check()) is not None:
                return result
            await trio.sleep(every)


async def wait_until(condition: Callable[[], bool], *, within: float, every: float = POLL) -> None:
    await wait_for(lambda: True if condition() else None, within=within, every=every)


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


def check_outcome(
    *,
    rows: list[Row],
    slots: list[tuple[str, int]],
    starts: list[Start],
    dones: list[Done],
    labels: set[str],
    cut_us: int,
    suspects: set[str] | None,
    max_repeats: int,
    max_tick_repeats: int,
) -> None:
    """What must hold after any run: ``suspects`` are the nodes whose runs
    may have been repeated elsewhere (None: any node's, a server restart),
    ``max_repeats`` and ``max_tick_repeats`` how many repeats in all."""
    by_id = {row.id: row for row in rows}
    assert len(by_id) == len(rows)

    # every work job succeeded, nothing lost, nothing extra
    work = {row.id: row for row in rows if row.queue == WORK}
    assert set(work) == labels
    assert collections.Counter(row.state for row in work.values()) == {"succeeded": len(labels)}

    # every job ran at least once; "succeeded" implies its worker logged the run
    ran_by: dict[str, list[str]] = collections.defaultdict(list)
    for done in dones:
        ran_by[done.label].append(done.node)
    assert set(ran_by) == labels
    for name, row in work.items():
        assert row.worker in ran_by[name], (name, row, ran_by[name])

    # runs repeated: bounded, and only where a suspect node ran first
    repeated = {name: nodes for name, nodes in ran_by.items() if len(nodes) > 1}
    print(f"work: {len(labels)} jobs, {len(repeated)} ran twice or more: {repeated}")
    assert sum(len(nodes) - 1 for nodes in repeated.values()) <= max_repeats, repeated
    if suspects is not None:
        assert all(set(nodes) & suspects for nodes in repeated.values()), repeated

    # starts: every work job started, restarts bounded as its runs
    started: dict[str, list[Start]] = collections.defaultdict(list)
    for start in starts:
        started[start.job_id].append(start)
        assert start.job_id in by_id, start  # no start of a job the store does not hold
    assert labels <= set(started)
    restarted = {
        job_id: [start.node for start in group]
        for job_id, group in started.items()
        if len(group) > 1
    }
    work_restarts = sum(len(nodes) - 1 for job_id, nodes in restarted.items() if job_id in work)
    tick_restarts = sum(len(nodes) - 1 for job_id, nodes in restarted.items() if job_id not in work)
    print(f"starts repeated: {work_restarts} of work, {tick_restarts} of ticks")
    assert work_restarts <= max_repeats, restarted
    assert tick_restarts <= max_tick_repeats, restarted
    if suspects is not None:
        assert all(nodes[0] in suspects for nodes in restarted.values()), restarted

    # schedules: a slot fires once cluster-wide, and the catch-up grid is whole
    ticks = [row for row in rows if row.queue == TICKS]
    assert all(row.schedule in SCHEDULES and row.fire_time is not None for row in ticks)
    slot_jobs = collections.Counter((row.schedule, row.fire_time) for row in ticks)
    assert max(slot_jobs.values()) == 1, [slot for slot, n in slot_jobs.items() if n > 1]
    slot_set = set(slots)
    assert len(slot_set) == len(slots)
    assert set(slot_jobs) <= slot_set  # every job has its slot claimed
    anchor_us = to_epoch_micros(ANCHOR)
    for name, (interval, _, _) in SCHEDULES.items():
        step = interval // timedelta(microseconds=1)
        fired = sorted(fire for schedule, fire in slot_set if schedule == name)
        assert len(fired) >= 5, (name, fired)  # the schedule did run throughout
        assert all((fire - anchor_us) % step == 0 for fire in fired), name
        jobs = sum(1 for schedule, _ in slot_jobs if schedule == name)
        print(f"schedule {name}: {len(fired)} slots, {jobs} jobs")
    fast = "fast"
    step = SCHEDULES[fast][0] // timedelta(microseconds=1)
    fired = sorted(fire for schedule, fire in slot_set if schedule == fast)
    gaps = sorted(set(range(fired[0], fired[-1] + step, step)) - set(fired))
    assert not gaps, f"slots of {fast!r} never fired: {gaps}"
    assert all((fast, fire) in slot_jobs for fire in fired)  # AllowOverlap: a job per slot
    for row in ticks:
        if row.fire_time is not None and row.fire_time <= cut_us:
            assert row.state == "succeeded", row
            assert row.id in started, row
        starts_of_row = started.get(row.id, [])
        assert all(
            (start.schedule, start.fire_time) == (row.schedule, row.fire_time)
            for start in starts_of_row
        )


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
    async with await open_storage(redis_url) as storage, open_cluster(url, tmp_path) as cluster:
        await enqueue_work(storage, labels[:before])
        await cluster.start(NODES)
        victim, *survivors = cluster.nodes
        third = len(labels) // 3
        async with trio.open_nursery() as nursery:
            nursery.start_soon(enqueue_work, storage, labels[before:])  # while they work
            done = await wait_for(
                lambda: runs if (runs := count_done(cluster.log)).total() >= third else None,
                within=DONE_TIMEOUT,
                every=0.01,
            )
            cluster.kill(victim)
            killed_at = wall_us()
        print(f"killed {victim.name} after {done.total()} runs ({dict(done)})")
        await wait_until_done(storage, cluster)
        await wait_for_slots(redis_server, prefix)
        cut_us = wall_us()
        await wait_ticks_done(storage, redis_server, prefix, cut_us)
        assert all(node.alive for node in survivors), cluster.all_stderr()
        codes = await cluster.stop()
        assert codes == {victim.name: -signal.SIGKILL, **{node.name: 0 for node in survivors}}, (
            cluster.all_stderr()
        )
        stderr = cluster.all_stderr()
    print(f"run took {time.monotonic() - began:.1f} s")
    starts, dones = read_log(cluster.log)
    rows = await read_rows(redis_server, prefix)
    # the jobs the victim held went back to the queue when their lease ran
    # out (the reaper says so in last_error), and finished on a survivor
    by_id = {row.id: row for row in rows}
    reaped = {row.id for row in rows if row.last_error is not None}
    held = {row.id for row in rows if row.last_error == lease_expired_error(victim.name)}
    print(f"{victim.name} held {len(held)} job(s) when killed: {sorted(held)}")
    assert reaped == held, "a survivor lost a lease"
    # what a node holds: the jobs running, those claimed ahead (the workers'
    # default prefetch, concurrency // 4), and those whose function returned
    # but whose outcome waits for the next round trip (one per slot at most)
    in_flight_bound = sum(2 * (n + n // 4) for n in (CONCURRENCY, TICK_CONCURRENCY))
    assert 1 <= len(held) <= in_flight_bound, held
    # only those can run twice: repeats are bounded by what was in flight
    check_outcome(
        rows=rows,
        slots=await read_slots(redis_server, prefix),
        starts=starts,
        dones=dones,
        labels=set(labels),
        cut_us=cut_us,
        suspects={victim.name},
        max_repeats=len(held),
        max_tick_repeats=len(held),
    )
    repeated = {done.label for done in dones if done.node != victim.name} & {
        done.label for done in dones if done.node == victim.name
    }
    assert repeated <= held, repeated - held
    finished_elsewhere = {done.label: done for done in dones if done.node != victim.name}
    for job_id in held:
        row = by_id[job_id]
        assert row.state == "succeeded", row
        assert row.worker != victim.name, row
        assert row.attempts >= 2, row
        if row.queue == WORK:
            assert finished_elsewhere[job_id].at_us > killed_at, row
    # what its log says it was running is among them
    in_flight = {
        s.job_id for s in starts if s.node == victim.name and by_id[s.job_id].worker != victim.name
    }
    assert in_flight <= held, in_flight - held
    waits = [
        (finished_elsewhere[job_id].at_us - killed_at) / 1e6
        for job_id in held
        if job_id in finished_elsewhere
    ]
    if waits:  # (they could all have been schedule jobs)
        print(f"reclaimed jobs finished {min(waits):.2f}-{max(waits):.2f} s after the kill")
    assert " ERROR " not in stderr, stderr


@pytest.mark.slow
async def test_the_cluster_lives_through_killed_connections(
    redis_server: str, prefix: str, client_name: str, redis_url: str, tmp_path: Path
) -> None:
    before, after = 2000, 500
    labels = [label(n) for n in range(before + after)]
    url = node_url(redis_server, prefix, client_name)
    began = time.monotonic()
    async with await open_storage(redis_url) as storage, open_cluster(url, tmp_path) as cluster:
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
    latencies: list[float] = []
    takers: list[str] = []
    async with await open_storage(redis_url) as storage, open_cluster(url, tmp_path) as cluster:
        await cluster.start(NODES, "--no-schedules")
        # idle, and every node subscribed: `JobQueue.run` may report started
        # before its subscription is active
        await trio.sleep(1.0)
        for n in range(rounds):
            name = f"idle-{n}"
            sent = wall_us()
            await enqueue_work(storage, [name])
            try:
                mine = await wait_for(
                    functools.partial(started_by, cluster.log, name), within=WAKE_BOUND, every=0.002
                )
            except trio.TooSlowError:
                raise AssertionError(
                    f"{name} did not start in {WAKE_BOUND} s\n{cluster.all_stderr()}"
                ) from None
            latencies.append((mine.at_us - sent) / 1000)
            takers.append(mine.node)
            await wait_until_done(storage, cluster)
            await trio.sleep(0.1)  # idle again
        codes = await cluster.stop()
        assert set(codes.values()) == {0}, cluster.all_stderr()
    print(
        f"enqueue -> start on an idle cluster, ms: min {min(latencies):.1f}, "
        f"median {statistics.median(latencies):.1f}, max {max(latencies):.1f}; "
        f"taken by {collections.Counter(takers)}"
    )

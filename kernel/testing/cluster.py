"""Real kernel nodes on a shared job store, as separate processes: start
them (`open_cluster`), kill one with SIGKILL or stop them all with SIGTERM,
read what each ran from the log they share (`read_log`), and check that no
job was lost or run twice beyond what a killed node held (`check_outcome`).
Each node is `kernel.testing.node`; an adapter's test supplies the store's
URL and reads its rows and claimed slots in its own way (`Row`).

Nothing here asserts a timing except hang guards: the timeouts below.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import signal
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import attrs
import trio

from kernel.errors import StorageError
from kernel.ports import JobRecord, JobState, JobStore
from kernel.storage.base import lease_expired_error, to_epoch_micros
from kernel.testing.node import (
    ANCHOR,
    CONCURRENCY,
    SCHEDULES,
    TICK_CONCURRENCY,
    TICKS,
    WORK,
    wall_us,
)

T = TypeVar("T")

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
    """The node processes of one test and the log they share; ``log_info``
    names loggers the nodes show at info level (an adapter's reconnections)."""

    url: str
    tmp: Path
    log_info: tuple[str, ...] = ()
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
                    [
                        sys.executable,
                        "-m",
                        "kernel.testing.node",
                        self.url,
                        name,
                        str(self.log),
                        *(f"--log-info={name}" for name in self.log_info),
                        *flags,
                    ],
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
async def open_cluster(
    url: str, tmp: Path, *, log_info: Sequence[str] = ()
) -> AsyncIterator[Cluster]:
    """A cluster whose nodes work the store at ``url``, their log and
    stderr in ``tmp``; whatever is still running at the end is killed."""
    cluster = Cluster(url, tmp, tuple(log_info))
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


def label(n: int) -> str:
    return f"w-{n:05d}"


async def enqueue_work(storage: JobStore, labels: Sequence[str]) -> None:
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


async def live_work(storage: JobStore) -> int:
    """Queued or running jobs of ``work`` (0 or more, at most 2)."""
    live = 0
    for state in (JobState.queued, JobState.running):
        live += len(await storage.list_jobs(state=state, queue=WORK, limit=1))
    return live


async def wait_until_done(storage: JobStore, cluster: Cluster) -> None:
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


async def check_idle_wakeups(
    storage: JobStore, cluster: Cluster, *, rounds: int, pause: float
) -> str:
    """Enqueue one job at a time into an idle, already started cluster: each
    must start within `WAKE_BOUND` (a node is woken, not polling), and the
    nodes must stop cleanly after. ``pause`` lets the cluster go idle between
    rounds. Returns a line saying how long the starts took, and where."""
    latencies: list[float] = []
    takers: list[str] = []
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
        await trio.sleep(pause)  # idle again
    codes = await cluster.stop()
    assert set(codes.values()) == {0}, cluster.all_stderr()
    return (
        f"enqueue -> start on an idle cluster, ms: min {min(latencies):.1f}, "
        f"median {statistics.median(latencies):.1f}, max {max(latencies):.1f}; "
        f"taken by {collections.Counter(takers)}"
    )


async def kill_one_mid_run(
    storage: JobStore, cluster: Cluster, labels: Sequence[str], *, before: int
) -> tuple[Node, int]:
    """The kill scenario: ``labels[:before]`` enqueued, `NODES` nodes
    started, the rest enqueued while they work, and the first node killed
    with SIGKILL once a third of the work is done. The victim and the wall
    time (µs) of the kill."""
    await enqueue_work(storage, labels[:before])
    await cluster.start(NODES)
    victim = cluster.nodes[0]
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
    return victim, killed_at


async def stop_survivors(cluster: Cluster, victim: Node) -> str:
    """SIGTERM the nodes that lived through the kill: each was still alive
    and stops cleanly (0), the victim's status is its SIGKILL. Their stderr."""
    survivors = [node for node in cluster.nodes if node is not victim]
    assert all(node.alive for node in survivors), cluster.all_stderr()
    codes = await cluster.stop()
    assert codes == {victim.name: -signal.SIGKILL, **{node.name: 0 for node in survivors}}, (
        cluster.all_stderr()
    )
    return cluster.all_stderr()


def most_unsettled(concurrency: int) -> int:
    """The most jobs of one queue a node holds and may have started without
    their outcome stored: those running, those whose function returned but
    whose success waits for the next round trip (at most a round's worth),
    and the prefetch (a quarter of the concurrency, claimed, not started)."""
    return 2 * concurrency + concurrency // 4


def check_after_kill(
    *,
    rows: list[Row],
    slots: list[tuple[str, int]],
    starts: list[Start],
    dones: list[Done],
    labels: set[str],
    cut_us: int,
    victim: str,
    killed_at: int,
) -> None:
    """`check_outcome` after one node, ``victim``, was killed at
    ``killed_at``: the jobs it held went back to the queue when their lease
    ran out (the reaper says so in ``last_error``) and finished on a
    survivor; only those ran twice, and what its log says it was running is
    among them."""
    by_id = {row.id: row for row in rows}
    reaped = {row.id for row in rows if row.last_error is not None}
    held = {row.id for row in rows if row.last_error == lease_expired_error(victim)}
    print(f"{victim} held {len(held)} job(s) when killed: {sorted(held)}")
    assert reaped == held, "a survivor lost a lease"
    assert 1 <= len(held) <= most_unsettled(CONCURRENCY) + most_unsettled(TICK_CONCURRENCY), held
    check_outcome(
        rows=rows,
        slots=slots,
        starts=starts,
        dones=dones,
        labels=labels,
        cut_us=cut_us,
        suspects={victim},
        max_repeats=len(held),
        max_tick_repeats=len(held),
    )
    repeated = {done.label for done in dones if done.node != victim} & {
        done.label for done in dones if done.node == victim
    }
    assert repeated <= held, repeated - held
    finished_elsewhere = {done.label: done for done in dones if done.node != victim}
    for job_id in held:
        row = by_id[job_id]
        assert row.state == "succeeded", row
        assert row.worker != victim, row
        assert row.attempts >= 2, row
        if row.queue == WORK:
            assert finished_elsewhere[job_id].at_us > killed_at, row
    in_flight = {s.job_id for s in starts if s.node == victim and by_id[s.job_id].worker != victim}
    assert in_flight <= held, in_flight - held
    waits = [
        (finished_elsewhere[job_id].at_us - killed_at) / 1e6
        for job_id in held
        if job_id in finished_elsewhere
    ]
    if waits:  # (they could all have been schedule jobs)
        print(f"reclaimed jobs finished {min(waits):.2f}-{max(waits):.2f} s after the kill")

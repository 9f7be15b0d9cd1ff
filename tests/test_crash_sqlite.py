"""Crash test with real processes: a kernel node (``tests/crash_node.py``) works
thousands of jobs and three schedules on one SQLite file, is killed with
SIGKILL at random moments several times and restarted. Afterwards every job
has completed at least once and none is lost, the runs repeated are bounded
by what was in flight at the kills, the database is never corrupt, and the
slots missed while the node was down follow each schedule's misfire policy.

Real processes and real time: the waits here are the scenario itself, and
nothing is asserted about timing, only about the outcome. The kill moments
come from a seeded rng (``CRASH_TEST_SEED`` replays a printed seed).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
from crash_node import (
    ANCHOR,
    CONCURRENCY,
    INTERVAL,
    SCHEDULES,
    SKIP_GRACE,
    TICK_CONCURRENCY,
    TICKS,
    WORK,
    seed_label,
)

from kernel.storage.base import to_epoch_micros

REPO = Path(__file__).resolve().parent.parent
NODE = Path(__file__).resolve().parent / "crash_node.py"
SEEDED_JOBS = 3000
KILLS = 6
RUN_SECONDS = (0.3, 1.5)  # from "ready" to SIGKILL
#: Some kills come early, counted from the spawn: while the interpreter
#: starts, SQLite recovers the WAL, the queue reaps and the schedules restore.
EARLY_KILL_ODDS = 0.3
EARLY_SECONDS = (0.1, 0.8)
DOWN_SECONDS = (0.5, 1.2)  # from the kill to the restart: > INTERVAL + SKIP_GRACE
READY_TIMEOUT = 30.0
FINAL_TIMEOUT = 90.0
#: Slack for the few microseconds between two readings of the child's clock
#: (the misfire decision, then the job's enqueued_at) and for the parent's.
EPSILON_US = 50_000


@attrs.frozen
class Outage:
    """No node with schedules was alive from ``killed`` until one said
    ``ready`` (µs, UTC); nodes killed before they said it may have come between."""

    killed: int
    ready: int


@attrs.frozen
class Job:
    id: str
    queue: str
    args: list[object]
    state: str
    attempts: int
    schedule: str | None
    fire_time: int | None
    enqueued_at: int


def now_us() -> int:
    return to_epoch_micros(datetime.now(UTC))


def spawn(*args: str | Path, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, str(NODE), *map(str, args)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=err,
        )


def wait_ready(node: subprocess.Popen[bytes], stderr: Path) -> int:
    """When (the node's clock, µs) it had its schedules added and began working."""
    assert node.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(node.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=READY_TIMEOUT):
            raise AssertionError(f"no 'ready' in {READY_TIMEOUT} s:\n{stderr.read_text()}")
    line = node.stdout.readline().decode()
    ready = ready_time(line)
    assert ready is not None, f"{line!r}\n{stderr.read_text()}"
    return ready


def ready_time(output: str) -> int | None:
    """The time in a node's "ready <iso>" line, if it wrote one."""
    word, _, when = output.partition(" ")
    return to_epoch_micros(datetime.fromisoformat(when.strip())) if word == "ready" else None


def stop(node: subprocess.Popen[bytes]) -> None:
    """Reap a node (killing it first if a check failed while it ran)."""
    if node.poll() is None:
        node.kill()
    node.wait()
    assert node.stdout is not None
    node.stdout.close()


def integrity(db: Path, scratch: Path) -> str:
    """``PRAGMA integrity_check`` of a copy of the files the killed node left
    (the database and its WAL), so that the next node recovers the originals."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for suffix in ("", "-wal"):
        source = db.with_name(db.name + suffix)
        if source.exists():
            shutil.copyfile(source, scratch / source.name)
    with contextlib.closing(sqlite3.connect(scratch / db.name)) as connection:
        rows = connection.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(row[0]) for row in rows)


def read_jobs(db: Path) -> list[Job]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT id, queue, args, state, attempts, schedule, fire_time, enqueued_at "
            "FROM kernel_jobs"
        ).fetchall()
    return [
        Job(id, queue, json.loads(args), state, attempts, schedule, fire_time, enqueued_at)
        for id, queue, args, state, attempts, schedule, fire_time, enqueued_at in rows
    ]


def read_slots(db: Path) -> set[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT schedule, fire_time FROM kernel_schedule_slots")
        return {(schedule, fire_time) for schedule, fire_time in rows}


def read_log(log: Path) -> tuple[collections.Counter[str], set[str], collections.Counter[object]]:
    """Runs of ``work`` by label, acknowledged enqueues, runs of ticks by (schedule, slot µs)."""
    runs: collections.Counter[str] = collections.Counter()
    ticks: collections.Counter[object] = collections.Counter()
    acked: set[str] = set()
    for line in log.read_text().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "job":
            runs[rest] += 1
        elif kind == "enq":
            acked.add(rest)
        elif kind == "tick":
            name, _, slot = rest.partition(" ")
            ticks[(name, to_epoch_micros(datetime.fromisoformat(slot)))] += 1
        else:
            raise AssertionError(f"unexpected log line {line!r}")
    return runs, acked, ticks


def test_killed_nodes_lose_no_job_and_keep_misfire_policies(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED", random.randrange(2**32)))
    print(f"crash test seed: {seed} (CRASH_TEST_SEED={seed} replays the kill moments)")
    rng = random.Random(seed)
    db, log, errors = tmp_path / "state.db", tmp_path / "runs.log", tmp_path / "node.err"
    log.touch()

    seeding = subprocess.run(
        [sys.executable, str(NODE), "seed", str(db), str(SEEDED_JOBS)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        check=False,
    )
    assert seeding.returncode == 0, seeding.stderr.decode()

    outages: list[Outage] = []
    down_since: int | None = None  # when the last node that had said "ready" was killed
    for round_ in range(KILLS):
        node = spawn("run", db, log, stderr=errors)
        try:
            ready: int | None = None
            if rng.random() < EARLY_KILL_ODDS:
                time.sleep(rng.uniform(*EARLY_SECONDS))  # starting, recovering, restoring
            else:
                ready = wait_ready(node, errors)
                time.sleep(rng.uniform(*RUN_SECONDS))
            node.send_signal(signal.SIGKILL)
            assert node.wait() == -signal.SIGKILL, errors.read_text()
            killed = now_us()
            if ready is None:  # it may have said so before it died
                assert node.stdout is not None
                ready = ready_time(node.stdout.read().decode())
        finally:
            stop(node)
        if ready is not None:
            if down_since is not None:
                outages.append(Outage(down_since, ready))
            down_since = killed
        check = integrity(db, tmp_path / "check")
        assert check == "ok", f"after kill {round_ + 1} (seed {seed}): {check}"
        time.sleep(rng.uniform(*DOWN_SECONDS))

    node = spawn("final", db, log, stderr=errors)  # works until nothing is left
    try:
        ready = wait_ready(node, errors)
        if down_since is not None:
            outages.append(Outage(down_since, ready))
        assert node.wait(timeout=FINAL_TIMEOUT) == 0, errors.read_text()
    finally:
        stop(node)

    assert integrity(db, tmp_path / "check") == "ok"
    jobs = read_jobs(db)
    runs, acked, ticks = read_log(log)
    context = f"seed {seed}"

    # -- the work: every job completed at least once, none lost -----------------
    work = {str(job.args[0]): job for job in jobs if job.queue == WORK}
    assert len(work) == len([job for job in jobs if job.queue == WORK])  # labels are unique
    seeded = {seed_label(n) for n in range(SEEDED_JOBS)}
    assert seeded <= work.keys(), context
    assert acked <= work.keys(), f"acknowledged enqueues lost: {sorted(acked - work.keys())}"
    assert len(acked) > 0
    states = collections.Counter(job.state for job in jobs)
    assert states == {"succeeded": len(jobs)}, f"{states} ({context})"
    never_ran = sorted(label for label in work if runs[label] == 0)
    assert never_ran == [], f"succeeded in the store but never ran: {never_ran[:10]} ({context})"
    assert runs.keys() <= work.keys()

    # -- duplicates: only what was in flight at a kill ran again ----------------
    for label, job in work.items():
        assert runs[label] <= job.attempts, f"{label} ran more often than it was claimed"
    repeated_runs = sum(count - 1 for count in runs.values())
    extra_claims = sum(job.attempts - 1 for job in work.values())
    # a kill loses what the node held: its running jobs and its prefetch
    # (a quarter of the concurrency by default), each claim an attempt
    assert repeated_runs <= extra_claims <= KILLS * (CONCURRENCY + CONCURRENCY // 4), (
        f"{repeated_runs} repeated runs, {extra_claims} extra claims ({context})"
    )

    # -- schedules: each slot one job, run at least once -------------------------
    slot_jobs = [job for job in jobs if job.schedule is not None]
    assert {job.queue for job in slot_jobs} == {TICKS}
    slots_of: dict[str, list[int]] = {name: [] for name in SCHEDULES}
    for job in slot_jobs:
        assert job.schedule in SCHEDULES
        assert job.fire_time is not None
        slots_of[job.schedule].append(job.fire_time)
        assert 1 <= ticks[(job.schedule, job.fire_time)] <= job.attempts, job
    for name, slots in slots_of.items():
        assert len(slots) == len(set(slots)), f"a slot of {name} was enqueued twice"
        slots.sort()
    assert read_slots(db) == {(job.schedule, job.fire_time) for job in slot_jobs}
    assert ticks.keys() <= {(job.schedule, job.fire_time) for job in slot_jobs}
    ticks_held = TICK_CONCURRENCY + TICK_CONCURRENCY // 4
    assert sum(job.attempts - 1 for job in slot_jobs) <= KILLS * ticks_held

    interval_us = INTERVAL // timedelta(microseconds=1)
    anchor_us = to_epoch_micros(ANCHOR)
    for slots in slots_of.values():
        assert all((slot - anchor_us) % interval_us == 0 for slot in slots)

    # CatchUp: every slot from the first to the last, downtime included.
    catchup = slots_of["catchup"]
    assert catchup == list(range(catchup[0], catchup[-1] + 1, interval_us)), context

    # SkipMissed: a slot runs only if it can start within grace of its time,
    # so the slots of a downtime (but its last grace) are dropped, where
    # CatchUp ran every one of them.
    grace_us = SKIP_GRACE // timedelta(microseconds=1)
    for job in slot_jobs:
        assert job.fire_time is not None
        if job.schedule == "skip":
            late = job.enqueued_at - job.fire_time
            assert late <= grace_us + EPSILON_US, f"a slot enqueued {late} µs late: {job}"
    caught_up = 0
    for outage in outages:
        late_by_then = outage.ready - grace_us - EPSILON_US  # too late at the restart
        caught_up += len([s for s in catchup if outage.killed < s < late_by_then])
        ran = [s for s in slots_of["skip"] if outage.killed < s < late_by_then]
        assert ran == [], f"SkipMissed ran slots missed during {outage}: {ran}"
        # RunOnce: however many slots a downtime missed, one run.
        once = [s for s in slots_of["once"] if outage.killed < s < outage.ready]
        assert len(once) <= 1, f"RunOnce ran {len(once)} slots missed during {outage}"
    assert caught_up >= 1, "no slot fell in a downtime: the misfire checks proved nothing"
    print(
        f"{len(work)} jobs ({len(acked)} enqueued by killed nodes), {repeated_runs} runs "
        f"repeated, {extra_claims} claims lost to {KILLS} kills "
        f"({KILLS - len(outages)} before 'ready'); slots: "
        + ", ".join(f"{name} {len(slots)}" for name, slots in slots_of.items())
        + f"; {caught_up} slots missed in downtimes, all caught up, none run by SkipMissed"
    )

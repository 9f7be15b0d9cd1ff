"""The job path keeps its promise where a user meets it: real `kernel run`
processes on one database (issue #9). No job is buried because of start-up
order, two kernels started together run each slot once, a stop starts
nothing new and never hangs, and a job that blocks the event loop is never
run twice at once. The PostgreSQL variants are beside that adapter."""

from __future__ import annotations

import itertools
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from jobpath import all_jobs, finish, read_log, runs_by_label, start, states

from kernel.ports import JobRecord, JobState
from kernel.storage.sqlite import SQLiteStorage

STOP_AFTER = "3s"


def config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "kernel.toml"
    path.write_text(body)
    return path


async def seed(db: Path, task: str, queue: str, labels: list[str]) -> None:
    async with await SQLiteStorage.open(db) as store:
        for label in labels:
            at = datetime.now(UTC)
            await store.enqueue(
                JobRecord(task=task, queue=queue, args=[label], run_at=at, enqueued_at=at)
            )


async def jobs_in(db: Path) -> list[JobRecord]:
    async with await SQLiteStorage.open(db) as store:
        return await all_jobs(store)


def test_jobs_of_a_plugin_that_registers_its_task_late_wait_for_it(tmp_path: Path) -> None:
    """Its on_enable reads storage and waits before registering: the jobs
    waiting in its queue (50 seeded, 20 more before a restart) all run and
    none is buried as an unknown task."""
    log = tmp_path / "work.log"
    cfg = config(
        tmp_path,
        f'[plugins.slowstart]\nuse = "jobpath_plugins:SlowStart"\n'
        f'[plugins.slowstart.config]\nlog = "{log}"\n',
    )
    labels = [f"seeded-{n}" for n in range(50)]
    trio.run(seed, tmp_path / "kernel.db", "slowstart.work", "slowstart", labels)
    code, err = finish(start(cfg, "--stop-after", STOP_AFTER))
    assert code == 0, err
    more = [f"restart-{n}" for n in range(20)]
    trio.run(seed, tmp_path / "kernel.db", "slowstart.work", "slowstart", more)
    code, err = finish(start(cfg, "--stop-after", STOP_AFTER))
    assert code == 0, err
    ran = {words[1] for _, _, words in read_log(log)}
    assert ran == set(labels + more)
    jobs = trio.run(jobs_in, tmp_path / "kernel.db")
    assert states(jobs) == {JobState.succeeded: 70}
    assert "unknown task" not in err


def test_two_kernels_started_together_run_each_slot_once(tmp_path: Path) -> None:
    """A 1-second schedule in two kernels on one file, started 0.3 s apart:
    one grid of slots for both, each slot one run."""
    log = tmp_path / "sync.log"
    cfg = config(
        tmp_path,
        f'[plugins.sync]\nuse = "jobpath_plugins:Sync"\n'
        f'[plugins.sync.config]\nlog = "{log}"\nevery = "1s"\n',
    )
    began = time.time()
    first = start(cfg, "--stop-after", "5s")
    time.sleep(0.3)  # the second kernel starts a moment later, as in a deployment
    second = start(cfg, "--stop-after", "5s")
    for process in (first, second):
        code, err = finish(process)
        assert code == 0, err
    ended = time.time()
    jobs = [job for job in trio.run(jobs_in, tmp_path / "kernel.db") if job.schedule]
    fire_times = [job.fire_time for job in jobs]
    assert len(fire_times) == len(set(fire_times))
    assert all(slot is not None and slot.microsecond == 0 for slot in fire_times), fire_times
    assert len(jobs) <= ended - began + 1  # at most one job per second of the run
    starts = [line for line in read_log(log) if line[2][0] == "start"]
    assert len(starts) == len(jobs)  # each slot ran once, in one of the two kernels


def test_a_kernel_with_a_plugin_that_never_started_stops(tmp_path: Path) -> None:
    log = tmp_path / "sync.log"
    cfg = config(
        tmp_path,
        f'[plugins.sync]\nuse = "jobpath_plugins:Sync"\n'
        f'[plugins.sync.config]\nlog = "{log}"\n'
        '[plugins.off]\nuse = "jobpath_plugins:Idle"\nenabled = false\n',
    )
    began = time.monotonic()
    code, err = finish(start(cfg, "--stop-after", "1s"), timeout=30)
    assert code == 0, err
    assert time.monotonic() - began < 25


def test_after_a_stop_no_new_run_starts(tmp_path: Path) -> None:
    """A schedule every second whose runs take 1.5 s: from SIGINT on no run
    starts, the one in flight finishes, and the log says what is waited for."""
    log = tmp_path / "sync.log"
    cfg = config(
        tmp_path,
        f'[plugins.sync]\nuse = "jobpath_plugins:Sync"\n'
        f'[plugins.sync.config]\nlog = "{log}"\nevery = "1s"\nseconds = 1.5\n',
    )
    process = start(cfg)
    deadline = time.monotonic() + 30
    while not [line for line in read_log(log) if line[2][0] == "start"]:
        assert time.monotonic() < deadline, "no run started"
        time.sleep(0.05)
    time.sleep(0.2)  # now a run is in flight
    stopped = time.time()
    process.send_signal(signal.SIGINT)
    code, err = finish(process)
    assert code == 0, err
    lines = read_log(log)
    late = [at for _, at, words in lines if words[0] == "start" and at > stopped]
    assert late == [], f"runs started after the stop: {late}\n{err}"
    assert "waiting for 1 job(s): sync.sync" in err
    runs = runs_by_label(lines)[""]
    assert all(end != float("inf") for _, end in runs)  # the one in flight finished


@pytest.mark.parametrize("nodes", [2])
def test_a_job_blocking_the_loop_is_never_run_twice_at_once(tmp_path: Path, nodes: int) -> None:
    """Jobs that block the event loop (time.sleep) for twice their lease, in
    two kernels on one file: their leases are kept from a thread, so no job
    is taken over while it runs; the watchdog names the blocking job."""
    log = tmp_path / "block.log"
    cfg = config(
        tmp_path,
        '[kernel]\njob_lease = "1s"\njob_heartbeat = "300ms"\nloop_stall = "500ms"\n'
        f'[plugins.blocker]\nuse = "jobpath_plugins:Blocker"\n'
        f'[plugins.blocker.config]\nlog = "{log}"\nseconds = 2.0\n',
    )
    labels = [f"job-{n}" for n in range(4)]
    trio.run(seed, tmp_path / "kernel.db", "blocker.block", "blocker", labels)
    processes = [start(cfg, "--stop-after", "7s") for _ in range(nodes)]
    errors = []
    for process in processes:
        code, err = finish(process)
        assert code == 0, err
        errors.append(err)
    runs = runs_by_label(read_log(log))
    assert set(runs) == set(labels)
    for label, intervals in runs.items():
        intervals.sort()
        for (_, end), (next_start, _) in itertools.pairwise(intervals):
            assert next_start >= end, f"{label} ran twice at once: {intervals}"
    assert any("blocked" in err and "blocker.block" in err for err in errors), errors
    jobs = trio.run(jobs_in, tmp_path / "kernel.db")
    assert states(jobs) == {JobState.succeeded: len(labels)}

"""Two `kernel run` processes on one PostgreSQL schema, started 0.3 s apart,
run each slot of a schedule once (issue #9; the SQLite variants are in
tests/test_job_path.py)."""

from __future__ import annotations

import time
from pathlib import Path

import trio
from jobpath import all_jobs, finish, read_log, start
from pg_helpers import with_options

from kernel_postgres import open_storage


async def jobs_in(url: str) -> list[object]:
    async with await open_storage(url) as store:
        return [job for job in await all_jobs(store) if job.schedule]


def test_two_kernels_started_together_run_each_slot_once(
    tmp_path: Path, pg_server: str, schema: str
) -> None:
    url = with_options(pg_server, schema=schema, pool_size=2)
    log = tmp_path / "sync.log"
    cfg = tmp_path / "kernel.toml"
    cfg.write_text(
        f'[kernel]\nstorage = "{url}"\n'
        f'[plugins.sync]\nuse = "jobpath_plugins:Sync"\n'
        f'[plugins.sync.config]\nlog = "{log}"\nevery = "1s"\n'
    )
    began = time.time()
    first = start(cfg, "--stop-after", "5s")
    time.sleep(0.3)
    second = start(cfg, "--stop-after", "5s")
    for process in (first, second):
        code, err = finish(process)
        assert code == 0, err
    ended = time.time()
    jobs = trio.run(jobs_in, url)
    fire_times = [job.fire_time for job in jobs]  # type: ignore[attr-defined]
    assert len(fire_times) == len(set(fire_times))
    assert all(slot.microsecond == 0 for slot in fire_times), fire_times
    assert len(jobs) <= ended - began + 1
    starts = [line for line in read_log(log) if line[2][0] == "start"]
    assert len(starts) == len(jobs)

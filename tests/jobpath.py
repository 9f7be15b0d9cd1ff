"""Helpers for the job-path tests that run real `kernel run` processes (also
used by the PostgreSQL adapter's tests): start and wait for processes, read
what the plugins of ``tests/plugins/jobpath_plugins.py`` logged."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import trio

from kernel.ports import JobRecord, JobState, JobStore

PLUGINS = Path(__file__).resolve().parent / "plugins"
RUN_TIMEOUT = 60.0
"""Seconds a `kernel run` may take before the test fails (a hang, not a speed)."""


def environment() -> dict[str, str]:
    path = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    """`kernel run CONFIG ARGS` in the config's folder; stderr is captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", "run", str(config), *args],
        cwd=config.parent,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
    """Wait for ``process``: its exit code and its log (stderr)."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"kernel run did not stop within {timeout} s:\n{err}") from None
    return process.returncode, err


def read_log(path: Path) -> list[tuple[int, float, list[str]]]:
    """The lines `jobpath_plugins.write` appended: (pid, time, words)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        pid, at, *words = line.split()
        lines.append((int(pid), float(at), words))
    return lines


def runs_by_label(
    lines: list[tuple[int, float, list[str]]],
) -> dict[str, list[tuple[float, float]]]:
    """(start, end) of each run of each label, from ``start``/``end`` lines."""
    open_runs: dict[tuple[int, str], float] = {}
    runs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for pid, at, words in lines:
        kind, label = words[0], words[1] if len(words) > 1 else ""
        if kind == "start":
            open_runs[(pid, label)] = at
        elif kind == "end":
            runs[label].append((open_runs.pop((pid, label)), at))
    for (_, label), started in open_runs.items():  # never ended: it runs on
        runs[label].append((started, float("inf")))
    return runs


async def all_jobs(store: JobStore) -> list[JobRecord]:
    jobs: list[JobRecord] = []
    after: str | None = None
    while page := await store.list_jobs(limit=1000, after_id=after):
        jobs += page
        after = page[-1].id
    return jobs


def states(jobs: list[JobRecord]) -> dict[JobState, int]:
    counts: dict[JobState, int] = defaultdict(int)
    for job in jobs:
        counts[job.state] += 1
    return dict(counts)


def run(async_fn: object, *args: object) -> object:
    return trio.run(async_fn, *args)  # type: ignore[arg-type]

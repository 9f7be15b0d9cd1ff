"""SQLite files hold job arguments and tracebacks: a new database and its
``-wal`` and ``-shm`` files are readable by their owner only (0600), as the
user meets them through ``kernel db upgrade`` and ``kernel run``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from kernel.cli import main
from kernel.jobs.record import JobRecord
from kernel.storage.sqlite import SQLiteStorage


@pytest.fixture(autouse=True)
def _loose_umask() -> Iterator[None]:
    """The usual umask, which would make a plain new file 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path | os.DirEntry[str]) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async def write_and_look() -> dict[str, int]:
        async with await SQLiteStorage.open(path) as store:
            await store.put("ns", "key", {"payload": "private"})
            t0 = datetime(2024, 1, 1, tzinfo=UTC)
            await store.enqueue(JobRecord(id="job-1", task="t", run_at=t0, enqueued_at=t0))
            return {p.name: mode(p) for p in os.scandir(tmp_path)}

    modes = trio.run(write_and_look)
    assert set(modes) >= {"state.db", "state.db-wal", "state.db-shm"}, modes
    assert set(modes.values()) == {0o600}, {name: oct(m) for name, m in modes.items()}


def test_an_existing_file_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)
    assert CliRunner().invoke(main, ["db", "upgrade", f"sqlite:///{path}"]).exit_code == 0
    assert mode(path) == 0o640


def test_kernel_db_upgrade_creates_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    assert CliRunner().invoke(main, ["db", "upgrade", f"sqlite:///{path}"]).exit_code == 0
    assert mode(path) == 0o600


def test_kernel_run_creates_a_private_kernel_db(tmp_path: Path) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text("")  # the runner's default: sqlite:///kernel.db
    done = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "run", str(config), "--stop-after", "0.1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    files = {p.name: mode(p) for p in tmp_path.glob("kernel.db*")}
    assert "kernel.db" in files
    assert set(files.values()) == {0o600}, files

"""The status socket never removes what it did not create.

Real `kernel run` processes: a second kernel on a live socket refuses to
start and leaves the first one reachable; a file that is not a socket is
refused and left as it was; a stale socket is replaced; at exit a kernel
removes only the socket it bound. Waits are on the processes' own output,
bounded by a timeout that only limits a failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"
CONFIG = """
[kernel]
storage = "memory://"
status_socket = "{socket}"

[plugins.ticker]
use = "cli_fixture_plugins:Ticker"
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    path = os.pathsep.join([str(PLUGINS), *sys.path])
    return {**os.environ, "PYTHONPATH": path}


def config_for(tmp_path: Path, socket_path: Path, name: str = "kernel.toml") -> Path:
    config = tmp_path / name
    config.write_text(CONFIG.format(socket=socket_path))
    return config


def kernel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernel.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextmanager
def running(config: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A `kernel run` that has enabled its plugin; stopped with SIGTERM after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", "run", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)  # bounds a failure, never a pass
    watchdog.start()
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "enabled plugin 'ticker'" in line:
                break
        else:
            pytest.fail(f"the kernel did not start (exit {process.wait()})")
        yield process
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=30) == 0, rest
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


def assert_refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot use ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_file_that_is_not_a_socket_is_refused_and_left_alone(
    tmp_path: Path, env: dict[str, str]
) -> None:
    database = tmp_path / "kernel.db"
    database.write_bytes(b"SQLite format 3\x00precious")
    done = kernel("run", str(config_for(tmp_path, database)), env=env)
    assert_refused(done, str(database), "is not a socket", "left alone")
    assert database.read_bytes() == b"SQLite format 3\x00precious"


def test_a_symlink_is_refused_and_left_alone(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "target"
    target.write_text("keep me")
    link = tmp_path / "k.sock"
    link.symlink_to(target)
    done = kernel("run", str(config_for(tmp_path, link)), env=env)
    assert_refused(done, "symbolic link")
    assert link.is_symlink()
    assert target.read_text() == "keep me"


def test_a_missing_folder_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    done = kernel("run", str(config_for(tmp_path, tmp_path / "no" / "k.sock")), env=env)
    assert_refused(done, "No such file or directory")


def test_a_second_kernel_on_a_live_socket_refuses_and_the_first_keeps_it(
    tmp_path: Path, env: dict[str, str]
) -> None:
    socket_path = tmp_path / "k.sock"
    first = config_for(tmp_path, socket_path)
    second = config_for(tmp_path, socket_path, "second.toml")
    with running(first, env):
        done = kernel("run", str(second), env=env)
        assert_refused(done, "a running kernel answers there")
        assert socket_path.is_socket()
        status = kernel("status", "--json", "--socket", str(socket_path), env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["plugins"]["ticker"]["state"] == "enabled"
    assert not socket_path.exists()  # the first removed its own socket at exit


def test_a_stale_socket_is_replaced(tmp_path: Path, env: dict[str, str]) -> None:
    socket_path = tmp_path / "k.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(socket_path))  # bound, never listening: what a killed kernel leaves
    assert socket_path.is_socket()
    with running(config_for(tmp_path, socket_path), env):
        status = kernel("status", "--json", "--socket", str(socket_path), env=env)
        assert status.returncode == 0, status.stderr
    assert not socket_path.exists()


def test_at_exit_a_kernel_removes_only_its_own_socket(tmp_path: Path, env: dict[str, str]) -> None:
    socket_path = tmp_path / "k.sock"
    with running(config_for(tmp_path, socket_path), env):
        socket_path.unlink()
        socket_path.write_text("someone else's file")
    assert socket_path.read_text() == "someone else's file"


def test_a_status_client_that_hangs_up_does_not_stop_the_kernel(
    tmp_path: Path, env: dict[str, str]
) -> None:
    socket_path = tmp_path / "k.sock"
    with running(config_for(tmp_path, socket_path), env):
        for _ in range(20):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(socket_path))  # and close at once
        status = kernel("status", "--json", "--socket", str(socket_path), env=env)
        assert status.returncode == 0, status.stderr

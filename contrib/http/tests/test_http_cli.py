"""`kernel run` with an ``[http]`` table, as a user runs it: a mistake is one
line and exit 2 before anything starts; a good table serves the dashboard
for as long as the kernel runs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernel.cli import main

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = """
[kernel]
storage = "sqlite:///{db}"

[plugins.activity]
use = "examples.activity_events:ActivityEvents"
[plugins.activity.config]
summary_interval = "5s"

[plugins.sync]
use = "examples.data_sync:DataSync"
[plugins.sync.config]
interval = "1s"
batch_size = 10
"""


def run_with(tmp_path: Path, http: str) -> tuple[int, str]:
    config = tmp_path / "kernel.toml"
    config.write_text(QUICKSTART.format(db=tmp_path / "k.db") + http)
    result = CliRunner().invoke(main, ["run", str(config), "--stop-after", "1s"])
    return result.exit_code, result.stderr


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # where `examples` imports from, as `kernel run` runs it


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[http]\nlisten = "8080"\n', "at http.listen: expected 'host:port'"),
        ('[http]\nlisten = "0.0.0.0:8080"\n', "beyond loopback) needs a token"),
        ('[http]\ntoken = "short"\n', "at http.token: a token needs at least 16 characters"),
        ('[http]\nlisen = "127.0.0.1:1"\n', "at http.lisen: unknown key 'lisen'"),
        ("[http]\ntoken_env = 'KERNEL_TEST_NO_SUCH_VAR'\n", "KERNEL_TEST_NO_SUCH_VAR must hold"),
        ("[htp]\n", "unknown key 'htp'; did you mean 'http'?"),
    ],
)
def test_a_bad_http_table_is_one_line_and_exit_2(tmp_path: Path, table: str, message: str) -> None:
    code, stderr = run_with(tmp_path, table)
    assert code == 2
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("error: config error in ")
    assert message in stderr
    assert not (tmp_path / "k.db").exists()  # nothing started


@pytest.mark.usefixtures("in_repo")
def test_a_port_in_use_is_one_line_before_any_plugin_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = run_with(tmp_path, f'[http]\nlisten = "127.0.0.1:{port}"\n')
    assert code == 2
    assert stderr == (
        f"error: config error in {tmp_path / 'kernel.toml'} at http.listen: "
        f"cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
    assert not (tmp_path / "k.db").exists()


@pytest.fixture
def kernel_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`kernel run` of the quick start with an [http] table on a free port;
    yields the process and the dashboard's URL (read from its log) once the
    last plugin is enabled."""
    config = tmp_path / "kernel.toml"
    token = "cli-test-token-0123456789"
    config.write_text(
        QUICKSTART.format(db=tmp_path / "k.db")
        + f'[http]\nlisten = "127.0.0.1:0"\ntoken = "{token}"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "kernel.cli", "run", str(config), "--stop-after", "60s"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    url = None
    seen = []
    timer = threading.Timer(30, process.kill)  # bounds a failure only
    timer.start()
    try:
        for line in process.stderr:
            seen.append(line)
            match = re.search(r"serving the dashboard at (http://\S+)/ ", line)
            if match:
                url = match.group(1)
            if "enabled plugin 'sync'" in line:
                break
        assert url is not None, "".join(seen)
        assert token not in "".join(seen)
        drain = threading.Thread(target=seen.extend, args=(process.stderr,), daemon=True)
        drain.start()  # keeps the pipe from filling while the test runs
        yield process, url
    finally:
        timer.cancel()
        process.terminate()
        process.communicate(timeout=30)


def test_kernel_run_serves_the_dashboard_and_stops_it(
    kernel_run: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = kernel_run
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{url}/", timeout=10) as response:
        page = response.read().decode()
    assert "sync" in page
    assert "activity" in page
    process.terminate()
    assert process.wait(timeout=30) == 0
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(f"{url}/healthz", timeout=2)

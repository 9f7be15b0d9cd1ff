"""`kernel run`, `kernel plugins ls` and `kernel status`, as a user runs them.

The happy path starts a real `kernel run` process: signals, the status
socket and exit codes only mean something across a process boundary. Waits
are on the process's own output, bounded by a timeout that only limits a
failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernel.cli import main

PLUGINS = Path(__file__).parent / "plugins"
GOOD = """
[kernel]
status_socket = "{socket}"

[plugins.ticker]
use = "cli_fixture_plugins:Ticker"
[plugins.ticker.config]
every = "50ms"
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    # the runner's default storage is ./kernel.db: keep it out of the checkout
    monkeypatch.chdir(tmp_path)
    path = os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.syspath_prepend(str(PLUGINS))
    return {**os.environ, "PYTHONPATH": path}


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "no such file"),
        ("[kernel\n", "kernel.toml"),
        ('[plugins.x]\nuse = "no_such_module:Thing"\n', "no_such_module"),
        ('[plugins.x]\nuse = "cli_fixture_plugins:NotAPlugin"\n', "has no Manifest"),
        (
            '[plugins.ticker]\nuse = "cli_fixture_plugins:Ticker"\n'
            '[plugins.ticker.config]\nevery = "soon"\n',
            "plugins.ticker.config.every",
        ),
        ('[kernel]\nstorage = "nosuch://x"\n', "nosuch"),
    ],
)
def test_run_rejects_bad_input_in_one_line(
    tmp_path: Path, env: dict[str, str], config: str | None, message: str
) -> None:
    path = tmp_path / "kernel.toml"
    if config is not None:
        path.write_text(config)
    code, _, stderr = invoke("run", str(path))
    assert code == 2
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("error: ")
    assert message in stderr


def test_plugins_ls(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "kernel.toml"
    path.write_text(GOOD.format(socket=tmp_path / "k.sock"))
    code, stdout, stderr = invoke("plugins", "ls", str(path))
    assert code == 0, stderr
    header, row = stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "STATE", "CONFIGURED", "PERMISSIONS", "USES"]
    assert row.split() == [
        "ticker",
        "1.2.3",
        "not",
        "installed",
        "enabled",
        "storage-write",
        "cli_fixture_plugins:Ticker",
    ]


def test_status_without_a_kernel_is_one_line(tmp_path: Path) -> None:
    code, _, stderr = invoke("status", "--socket", str(tmp_path / "none.sock"))
    assert code == 1
    assert stderr.startswith("error: no kernel is running at")
    assert stderr.count("\n") == 1


def test_run_status_and_graceful_stop(tmp_path: Path, env: dict[str, str]) -> None:
    socket_path = tmp_path / "k.sock"
    config = tmp_path / "kernel.toml"
    config.write_text(GOOD.format(socket=socket_path))
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
        lines = []
        for line in process.stderr:  # the kernel logs to stderr
            lines.append(line)
            if "tick: ok" in line:
                break
        assert any("enabled plugin 'ticker' 1.2.3" in line for line in lines), lines
        status = subprocess.run(
            [sys.executable, "-m", "kernel.cli", "status", "--json", "--socket", str(socket_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        snapshot = json.loads(status.stdout)
        assert snapshot["plugins"]["ticker"]["state"] == "enabled"
        assert snapshot["schedules"][0]["name"] == "ticker/tick"
        assert snapshot["health"]["status"] == "healthy"
        (queue,) = snapshot["queues"]  # the plugin's own queue runs its schedule
        assert (queue["name"], queue["concurrency"], queue["paused"]) == ("ticker", 4, False)
        table = subprocess.run(
            [sys.executable, "-m", "kernel.cli", "status", "--socket", str(socket_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert "QUEUE" in table
        assert any(line.split()[:1] == ["ticker"] and "no" in line for line in table.splitlines())
        rows = {line.split()[0]: line for line in table.splitlines() if line.strip()}
        # times to the second with their offset; durations as 2s, 12ms
        assert re.search(r" \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 ", rows["ticker/tick"])
        assert rows["METRIC"].split() == ["METRIC", "LABELS", "VALUE"]
        assert re.search(
            r"task=ticker\.tick +count \d+, p50 [\d.]+(ms|s), p99 [\d.]+(ms|s), max [\d.]+(ms|s)$",
            rows["job_run_seconds"],
        ), rows["job_run_seconds"]
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=30) == 0, rest
        assert "kernel stopped" in rest
        assert not socket_path.exists()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]


def test_stop_after_ends_the_run_cleanly(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text(GOOD.format(socket=tmp_path / "k.sock"))
    done = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "run", str(config), "--stop-after", "500ms"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--stop-after 500ms reached: stopping" in done.stderr
    assert "tick: ok" in done.stderr
    assert "kernel stopped" in done.stderr


def test_bad_stop_after_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text(GOOD.format(socket=tmp_path / "k.sock"))
    code, _, stderr = invoke("run", str(config), "--stop-after", "soon")
    assert code == 2
    assert stderr.startswith("error: Invalid value for '--stop-after'")
    assert stderr.count("\n") == 1

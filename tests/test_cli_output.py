"""What every command shares: ``--version``, ``--json`` listings, one error
line with one exit status per kind of failure (the same from every
command), ``--debug`` for a traceback, and times and durations in one format.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sqlite3
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import kernel.cli.commands as commands
from kernel.cli import main
from kernel.config.durations import describe_duration, parse_duration

PLUGINS = Path(__file__).parent / "plugins"
TICKER = """
[plugins.ticker]
use = "cli_fixture_plugins:Ticker"
"""
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 (INFO|DEBUG|WARNING|ERROR) ")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(PLUGINS))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), *sys.path])}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def kernel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernel.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    result = invoke(flag)
    assert (result.exit_code, result.stdout) == (0, f"trio-kernel {version('trio-kernel')}\n")


@pytest.mark.parametrize(
    "command", [["jobs", "ls"], ["jobs", "dead"], ["plugins", "ls"], ["status"]]
)
def test_every_listing_command_has_json(command: list[str]) -> None:
    assert "--json" in invoke(*command, "--help").stdout


def test_plugins_ls_json_and_no_database_as_a_side_effect(
    tmp_path: Path, env: dict[str, str]
) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text(TICKER)  # storage: the runner's default, sqlite:///kernel.db
    table = invoke("plugins", "ls", str(config))
    assert table.exit_code == 0, table.output
    listed = invoke("plugins", "ls", str(config), "--json")
    assert listed.exit_code == 0, listed.output
    [plugin] = json.loads(listed.stdout)["plugins"]
    assert plugin == {
        "name": "ticker",
        "version": "1.2.3",
        "description": "Ticks on a schedule (a CLI test fixture).",
        "state": None,
        "enabled": True,
        "permissions": ["storage-write"],
        "requires": [],
        "use": "cli_fixture_plugins:Ticker",
    }
    assert not (tmp_path / "kernel.db").exists()


def _corrupt(path: Path) -> None:
    """A kernel database whose header is valid and whose pages are garbage."""
    assert invoke("db", "upgrade", f"sqlite:///{path}").exit_code == 0
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(b"\xff" * 8192)


@pytest.mark.parametrize("damage", ["corrupt", "not-a-database"])
def test_a_broken_database_fails_the_same_way_from_every_command(
    tmp_path: Path, env: dict[str, str], damage: str
) -> None:
    path = tmp_path / "kernel.db"
    if damage == "corrupt":
        _corrupt(path)
    else:
        path.write_bytes(b"not a database at all" * 200)
    config = tmp_path / "kernel.toml"
    config.write_text(TICKER)
    url = "sqlite:///kernel.db"
    runs = {
        "db upgrade": kernel("db", "upgrade", url, env=env),
        "jobs ls": kernel("jobs", "ls", "--store", url, env=env),
        "jobs dead": kernel("jobs", "dead", "--config", str(config), env=env),
        "plugins ls": kernel("plugins", "ls", str(config), env=env),
        "run": kernel("run", str(config), "--stop-after", "5", env=env),
    }
    for command, done in runs.items():
        assert done.returncode == 1, (command, done.stderr)
        line = one_line(done.stderr.split("\n", done.stderr.count("\n") - 1)[-1])
        assert str(path) in line, (command, line)
        assert "SQLite" in line, (command, line)


def test_an_unexpected_error_is_one_line_and_debug_adds_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def read_only(url: str) -> list[int]:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(commands, "upgrade_storage", read_only)
    result = invoke("db", "upgrade", "sqlite:///x.db")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: OperationalError: attempt to write a readonly database"
    )
    with_flag = invoke("--debug", "db", "upgrade", "sqlite:///x.db")
    with_env = invoke("db", "upgrade", "sqlite:///x.db", env={"KERNEL_DEBUG": "1"})
    for debug in (with_flag, with_env):
        assert debug.exit_code == 1
        assert "Traceback (most recent call last)" in debug.stderr
        assert debug.stderr.splitlines()[-1] == (
            "error: OperationalError: attempt to write a readonly database"
        )

    async def bug(url: str) -> list[int]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(commands, "upgrade_storage", bug)
    result = invoke("db", "upgrade", "sqlite:///x.db")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: unexpected RuntimeError: a bug (kernel --debug shows the traceback)"
    )


def test_every_problem_of_a_config_file_is_listed(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text('[kernel]\nstorage = 5\nlog_level = "loud"\nshutdown_grace = "soon"\n')
    for command in (["run", str(config)], ["plugins", "ls", str(config)], ["status", str(config)]):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert [line.split(" at ")[1].split(":")[0] for line in lines] == [
            "kernel.storage",
            "kernel.shutdown_grace",
            "kernel.log_level",
        ], lines
        assert all(line.startswith("error: config error in ") for line in lines)
        assert "more problem" not in result.stderr


def test_stop_after_takes_plain_seconds_and_logs_in_one_format(
    tmp_path: Path, env: dict[str, str]
) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text('[kernel]\nstorage = "memory://"\n' + TICKER)
    done = kernel("run", str(config), "--stop-after", "1.5", env=env)
    assert done.returncode == 0, done.stderr
    assert "--stop-after 1.5s reached: stopping" in done.stderr
    lines = done.stderr.splitlines()
    assert lines
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert any("tick: ok in " in line for line in lines)


def test_the_runner_freezes_what_start_up_made(tmp_path: Path, env: dict[str, str]) -> None:
    """Start-up's objects live for the whole run: after every plugin has
    started they are moved out of the collector's way (gc.freeze)."""
    config = tmp_path / "kernel.toml"
    config.write_text('[kernel]\nstorage = "memory://"\n' + TICKER)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        result = invoke("run", str(config), "--stop-after", "0.3", env=env)
        assert result.exit_code == 0, result.output
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_log_level_debug_shows_claims_and_completions(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text('[kernel]\nstorage = "memory://"\n' + TICKER)
    done = kernel("run", str(config), "--stop-after", "1", "--log-level", "debug", env=env)
    assert done.returncode == 0, done.stderr
    claims = re.findall(r"DEBUG .*claimed job (\S+) \(ticker\.tick\), attempt 1", done.stderr)
    successes = re.findall(r"DEBUG .*job (\S+) \(ticker\.tick\) succeeded", done.stderr)
    assert claims, done.stderr
    assert successes, done.stderr
    assert set(successes) <= set(claims)
    quiet = kernel("run", str(config), "--stop-after", "1", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "claimed job" not in quiet.stderr


@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon", "5 min"])
def test_a_bad_stop_after_is_one_line(tmp_path: Path, env: dict[str, str], value: str) -> None:
    config = tmp_path / "kernel.toml"
    config.write_text(TICKER)
    result = invoke("run", str(config), "--stop-after", value)
    assert result.exit_code == 2
    assert one_line(result.stderr).startswith("error: Invalid value for '--stop-after'")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (0.00042, "0.42ms"),
        (0.4499, "450ms"),
        (0.9996, "1s"),
        (2, "2s"),
        (5.2638, "5.26s"),
        (59.96, "1m"),
        (90, "1m30s"),
        (3599.6, "1h"),
        (7530, "2h6m"),
        (86399, "1d"),
        (3 * 86400 + 4 * 3600 + 1000, "3d4h"),
    ],
)
def test_durations_read_the_same_everywhere(seconds: float, shown: str) -> None:
    assert describe_duration(seconds) == shown
    assert parse_duration(shown).total_seconds() == pytest.approx(seconds, rel=0.05, abs=1e-3)

"""No command prints a secret: every URL shown goes through `redact_url`.

A password is planted in the user-info and a token in a query option of
adapter URLs that fail in every way a URL can (unknown scheme, malformed,
an option the adapter does not know, a server that does not answer), then
every command that takes a URL, directly, through ``KERNEL_STORE`` or
through a config file, is run with it: neither secret may appear in what it
prints, with or without ``--debug``. (The PostgreSQL adapter's tests run
the same sweep against a live server, where listings page.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernel.cli import main
from kernel.cli.jobs import StoreSource, _next_page
from kernel.ports import redact_url

PASSWORD = "pw-7Hq2-secret"
TOKEN = "tok-9Zr4-secret"
SECRETS = (PASSWORD, TOKEN)

BROKEN_URLS = [
    pytest.param(f"nosuch://app:{PASSWORD}@host/db?token={TOKEN}", id="unknown-scheme"),
    pytest.param(f"postgres:app:{PASSWORD}@host/db?password={TOKEN}", id="no-slashes"),
    pytest.param(f"postgresql://app:{PASSWORD}@host:port/db?password={TOKEN}", id="bad-port"),
    pytest.param(f"postgresql://app:{PASSWORD}/x@host/db?password={TOKEN}", id="slash-in-pw"),
    pytest.param(f" postgresql://app:{PASSWORD}@host/db?password={TOKEN}", id="whitespace"),
    pytest.param(f"sqlite:///state.db?password={TOKEN}", id="unknown-option"),
    pytest.param(f"memory://?api_key={TOKEN}", id="memory-option"),
    pytest.param(
        f"postgresql://app:{PASSWORD}@127.0.0.1:1/db"
        f"?password={TOKEN}&connect_timeout=1&pool_timeout=1",
        id="unreachable",
    ),
]

JOB_COMMANDS = [
    ["jobs", "ls"],
    ["jobs", "dead"],
    ["jobs", "ls", "--json"],
    ["jobs", "show", "job-1"],
    ["jobs", "retry", "job-1"],
    ["jobs", "cancel", "job-1"],
    ["jobs", "purge-dead", "--yes"],
]


def assert_no_secret(output: str) -> None:
    for secret in SECRETS:
        assert secret not in output, output


def check(args: list[str], env: dict[str, str] | None = None) -> None:
    for debug in ([], ["--debug"]):
        result = CliRunner().invoke(main, [*debug, *args], env=env)
        assert result.exit_code in (0, 1, 2), result.output
        assert_no_secret(result.stdout + result.stderr)
        if not debug and result.exit_code:
            assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("url", BROKEN_URLS)
def test_db_upgrade(url: str) -> None:
    check(["db", "upgrade", url])


@pytest.mark.parametrize("url", BROKEN_URLS)
@pytest.mark.parametrize("command", JOB_COMMANDS, ids=" ".join)
def test_jobs_with_store(url: str, command: list[str]) -> None:
    check([*command, "--store", url])


@pytest.mark.parametrize("url", BROKEN_URLS)
def test_jobs_with_store_from_the_environment(url: str) -> None:
    check(["jobs", "ls"], env={"KERNEL_STORE": url})


def _config(tmp_path: Path, key: str, url: str) -> Path:
    path = tmp_path / "kernel.toml"
    escaped = url.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(f'[kernel]\n{key} = "{escaped}"\nstatus_socket = "k.sock"\n')
    return path


@pytest.mark.parametrize("url", BROKEN_URLS)
@pytest.mark.parametrize("key", ["storage", "bus", "notifier"])
def test_config_files(tmp_path: Path, url: str, key: str) -> None:
    config = str(_config(tmp_path, key, url))
    if key == "storage":
        check(["plugins", "ls", config])
        check(["jobs", "ls", "--config", config])
    check(["status", config])  # the socket is not there: still nothing printed
    done = subprocess.run(
        [sys.executable, "-m", "kernel.cli", "run", config, "--stop-after", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode in (0, 1, 2), done.stderr
    assert_no_secret(done.stdout + done.stderr)


def test_the_next_page_hint_hides_the_password() -> None:
    url = f"postgresql://app:{PASSWORD}@db/jobs?password={TOKEN}&sslmode=require"
    hint = _next_page(StoreSource(url, ("--store", url)), ["dead"], 50, "job-9")
    assert_no_secret(hint)
    assert hint.startswith(
        "kernel jobs dead --store 'postgresql://app:***@db/jobs?password=***&sslmode=require' "
        "--after job-9"
    )
    assert "KERNEL_STORE" in hint
    from_env = _next_page(StoreSource(url, ()), ["ls"], 10, "job-9")
    assert from_env == "kernel jobs ls --limit 10 --after job-9"
    plain = _next_page(
        StoreSource("sqlite:///s.db", ("--store", "sqlite:///s.db")), ["ls"], 50, "a"
    )
    assert plain == "kernel jobs ls --store sqlite:///s.db --after a"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/jobs", "postgresql://app:***@db:5432/jobs"),
        ("postgresql://app@db/jobs?password=s3cret", "postgresql://app@db/jobs?password=***"),
        (
            "postgresql://db/jobs?sslpassword=a&sslmode=require&PassWord=b",
            "postgresql://db/jobs?sslpassword=***&sslmode=require&PassWord=***",
        ),
        (
            "redis://cache/0?token=a;api_key=b#access_token=c",
            "redis://cache/0?token=***;api_key=***#access_token=***",
        ),
        ("x://host?pass%77ord=a", "x://host?pass%77ord=***"),
        ("postgresql://app:p/ss@db/jobs", "postgresql://app:***@db/jobs"),
        ("postgresql://app:p@ss@db/jobs", "postgresql://app:***@db/jobs"),
        ("postgresql://app:p?ss@db/jobs", "postgresql://app:***@db/jobs"),
        ("app:s3cret@db/jobs", "app:***@db/jobs"),
        ("postgres:app:s3cret@db/jobs", "postgres:***@db/jobs"),
        (
            "postgresql://app@db/jobs?application_name=a:b@c",
            "postgresql://app@db/jobs?application_name=a:b@c",
        ),
        ("sqlite:///state.db?synchronous=full", "sqlite:///state.db?synchronous=full"),
        ("nats://host:4222/a@b", "nats://host:***@b"),  # unsure: hides more
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_within_a_message() -> None:
    url = "postgresql://app:p%40ss@db/jobs?password=a%20b"
    message = f'bad URL "{url}": p@ss, a b, a%20b'
    assert redact_url(url, within=message) == (
        'bad URL "postgresql://app:***@db/jobs?password=***": ***, ***, ***'
    )

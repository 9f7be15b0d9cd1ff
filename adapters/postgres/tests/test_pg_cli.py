"""The ``kernel`` command on a live PostgreSQL never prints the password:
``kernel db upgrade`` and a ``kernel jobs`` listing long enough to page,
whose next-page hint would otherwise repeat the URL."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime

import pytest
import trio
from click.testing import CliRunner
from pg_helpers import with_options

from kernel.cli import main
from kernel.ports import JobRecord
from kernel_postgres import open_storage

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def secret_url(pg_server: str, bare_schema: str) -> tuple[str, list[str]]:
    """The server's URL on a fresh schema with a password in it, and the
    secrets to look for: the server's own password if it has one, else a
    planted one (a server that trusts the test user ignores it) and a
    planted ``sslpassword`` (unused without an SSL key)."""
    parts = urllib.parse.urlsplit(pg_server)
    if parts.password:
        return with_options(pg_server, schema=bare_schema), [parts.password]
    password, token = "pw-4Kd8-secret", "tok-2Wm6-secret"
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )
    planted = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return with_options(planted, schema=bare_schema, sslpassword=token), [password, token]


def test_db_upgrade_and_a_paged_listing_hide_the_password(
    secret_url: tuple[str, list[str]],
) -> None:
    url, secrets = secret_url
    outputs = []
    upgrade = CliRunner().invoke(main, ["db", "upgrade", url])
    assert upgrade.exit_code == 0, upgrade.output
    assert "applied schema version(s)" in upgrade.stdout
    outputs.append(upgrade.output)

    async def fill() -> None:
        storage = await open_storage(url)
        try:
            for i in range(3):
                job = JobRecord(id=f"job-{i}", task="t", run_at=T0, enqueued_at=T0)
                await storage.enqueue(job)
        finally:
            await storage.aclose()

    trio.run(fill)
    listing = CliRunner().invoke(main, ["jobs", "ls", "--limit", "2", "--store", url])
    assert listing.exit_code == 0, listing.output
    assert "more jobs follow; next page: kernel jobs ls --store 'postgresql://" in listing.stdout
    assert "***" in listing.stdout
    outputs.append(listing.output)
    page = CliRunner().invoke(
        main, ["jobs", "ls", "--json", "--limit", "2"], env={"KERNEL_STORE": url}
    )
    assert json.loads(page.stdout)["next_after"] == "job-1"
    outputs.append(page.output)
    for command in (["jobs", "show", "job-0"], ["jobs", "retry", "job-0"], ["jobs", "dead"]):
        outputs.append(CliRunner().invoke(main, [*command, "--store", url]).output)
    for output in outputs:
        for secret in secrets:
            assert secret not in output, output

"""``kernel db upgrade``: migrations by command, clear errors for bad URLs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner

from kernel.cli import main
from kernel.storage.sqlite import SCHEMA_VERSION


def test_upgrade_creates_then_reports_an_up_to_date_sqlite_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    first = CliRunner().invoke(main, ["db", "upgrade", url])
    assert first.exit_code == 0, first.output
    versions = ", ".join(str(v) for v in range(1, SCHEMA_VERSION + 1))
    assert first.output == f"{url}: applied schema version(s) {versions}\n"
    with sqlite3.connect(tmp_path / "state.db") as connection:
        (stored,) = connection.execute("SELECT max(version) FROM kernel_schema_version").fetchone()
    assert stored == SCHEMA_VERSION
    again = CliRunner().invoke(main, ["db", "upgrade", url])
    assert (again.exit_code, again.output) == (0, f"{url}: the schema is up to date\n")


def test_memory_has_no_schema() -> None:
    result = CliRunner().invoke(main, ["db", "upgrade", "memory://"])
    assert (result.exit_code, result.output) == (0, "memory://: the schema is up to date\n")


def test_a_bad_url_is_a_usage_error() -> None:
    unknown = CliRunner().invoke(main, ["db", "upgrade", "nosuch://host/db"])
    assert unknown.exit_code == 2
    assert "no schema migration adapter for scheme 'nosuch'" in unknown.output
    bare = CliRunner().invoke(main, ["db", "upgrade", "sqlite"])
    assert bare.exit_code == 2
    assert "has no scheme" in bare.output


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    assert CliRunner().invoke(main, ["db", "upgrade", f"sqlite:///{path}"]).exit_code == 0
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO kernel_schema_version (version, description, applied_at) "
            "VALUES (999, 'from the future', 'x')"
        )
    result = CliRunner().invoke(main, ["db", "upgrade", f"sqlite:///{path}"])
    assert result.exit_code == 1
    assert "schema version 999" in result.output
    with sqlite3.connect(path) as connection:
        (stored,) = connection.execute("SELECT max(version) FROM kernel_schema_version").fetchone()
    assert stored == 999

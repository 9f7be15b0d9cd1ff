"""`kernel cron`: fire times printed one per line; every bad argument is one error line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner, Result

from kernel.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_prints_the_next_five_fire_times_by_default() -> None:
    result = run("cron", "0 9 * * 1-5", "--from", "2024-01-05T10:00:00+00:00")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "2024-01-08T09:00:00+00:00 Mon",
        "2024-01-09T09:00:00+00:00 Tue",
        "2024-01-10T09:00:00+00:00 Wed",
        "2024-01-11T09:00:00+00:00 Thu",
        "2024-01-12T09:00:00+00:00 Fri",
    ]
    assert result.stderr == ""


def test_zone_count_and_naive_start_local_to_the_zone() -> None:
    result = run(
        "cron", "30 2 * * *", "--tz", "Europe/Berlin", "-n", "2", "--from", "2024-03-30T12:00"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "2024-03-31T03:00:00+02:00 Sun",
        "2024-04-01T02:30:00+02:00 Mon",
    ]


def test_aware_start_is_converted_to_the_zone() -> None:
    result = run("cron", "@daily", "--tz", "America/New_York", "-n", "1", "--from", "2024-07-01")
    assert result.stdout.splitlines() == ["2024-07-02T00:00:00-04:00 Tue"]
    result = run(
        "cron", "@daily", "--tz", "America/New_York", "-n", "1", "--from", "2024-07-01T02:00Z"
    )
    assert result.stdout.splitlines() == ["2024-07-01T00:00:00-04:00 Mon"]


def test_default_start_is_now() -> None:
    before = datetime.now(UTC)
    result = run("cron", "* * * * * *", "-n", "1")
    fire = datetime.fromisoformat(result.stdout.split()[0])
    assert before < fire <= datetime.now(UTC) + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["cron", "0 0 * * FOO"],
            "error: invalid cron expression '0 0 * * FOO': day-of-week field 'FOO': "
            "unknown name (expected SUN-SAT or 0-7)",
        ),
        (
            ["cron", "0 0 30 2 *"],
            "error: invalid cron expression '0 0 30 2 *': day-of-month field '30': "
            "can never fire: no month allowed by the month field has a day that matches "
            "day-of-month",
        ),
        (
            ["cron", "* * *"],
            "error: invalid cron expression '* * *': expected 5 fields (minute hour "
            "day-of-month month day-of-week) or 6 with seconds first, got 3",
        ),
        (
            ["cron", "@daily", "--tz", "Mars/Olympus_Mons"],
            "error: unknown time zone 'Mars/Olympus_Mons' for --tz (use an IANA name such as "
            "Europe/Berlin)",
        ),
        (["cron", "@daily", "--tz", "../../etc/passwd"], "error: unknown time zone"),
        (
            ["cron", "@daily", "--from", "next tuesday"],
            "error: invalid --from 'next tuesday': expected ISO-8601",
        ),
        (["cron", "@daily", "-n", "0"], "error: Invalid value for '-n'"),
        (["cron", "@daily", "-n", "many"], "error: Invalid value for '-n'"),
        (["cron"], "error: Missing argument 'EXPRESSION'"),
        (["cron", "@daily", "--bogus"], "error: No such option"),
        (["launch"], "error: No such command 'launch'"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_two(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, click.ClickException)


def test_running_out_of_calendar_prints_what_it_has_then_an_error() -> None:
    result = run("cron", "0 0 29 2 *", "--from", "9990-01-01", "-n", "3")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "9992-02-29T00:00:00+00:00 Sat",
        "9996-02-29T00:00:00+00:00 Thu",
    ]
    assert result.stderr == (
        "error: cron expression '0 0 29 2 *' does not fire again before 10000\n"
    )


def test_help_lists_the_cron_command() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "cron" in result.stdout
    result = run("cron", "--help")
    assert result.exit_code == 0
    assert "--tz ZONE" in result.stdout


def test_no_command_shows_help() -> None:
    result = run()
    assert "Usage:" in result.output
    assert "cron" in result.output

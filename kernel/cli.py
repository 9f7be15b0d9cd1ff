"""The ``kernel`` command line.

One click group, `main`; each subcommand is a thin shell over the library.
A bad argument is one ``error: ...`` line on stderr and exit status 2, never
a traceback: `KernelGroup` turns every click usage error into that line, and
commands turn the library's own errors into `click.UsageError`. Add a
command with ``@main.command()``; it inherits the error style.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

from kernel.cron import CronExpression
from kernel.errors import CronSyntaxError

__all__ = ["KernelGroup", "main"]


class KernelGroup(click.Group):
    """A click group whose errors are one line each, as ``error: <what is wrong>``.

    click's default prints a usage block and a hint before the message; a
    scheduler's CLI is often read in logs and scripts, where one line that
    names the bad input is what helps.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            error.show()  # `kernel` alone: the help text is the answer
            sys.exit(error.exit_code)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(status)


@click.group(cls=KernelGroup)
def main() -> None:
    """trio-kernel: an embeddable scheduler microkernel on trio."""


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise click.UsageError(
            f"unknown time zone {name!r} for --tz (use an IANA name such as Europe/Berlin)"
        ) from None


def _start(text: str | None, zone: tzinfo) -> datetime:
    if text is None:
        return datetime.now(zone)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.UsageError(
            f"invalid --from {text!r}: expected ISO-8601 such as 2024-03-31T01:30 "
            "or 2024-03-31T01:30+01:00"
        ) from None
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment.astimezone(zone)


@main.command("cron")
@click.argument("expression")
@click.option(
    "--tz",
    "zone_name",
    default="UTC",
    show_default=True,
    metavar="ZONE",
    help="IANA time zone the expression is read in.",
)
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="How many fire times to print.",
)
@click.option(
    "--from",
    "start_text",
    metavar="ISO",
    help="Print fire times after this instant (naive means local to --tz); default now.",
)
def cron_command(expression: str, zone_name: str, count: int, start_text: str | None) -> None:
    """Print the next fire times of the cron EXPRESSION, one ISO-8601 time per line.

    Five fields (minute hour day-of-month month day-of-week), or six with
    seconds first; @daily and the other aliases; L, W and # in the day fields.
    """
    zone = _zone(zone_name)
    try:
        cron = CronExpression.parse(expression)
    except CronSyntaxError as error:
        raise click.UsageError(str(error)) from None
    moment = _start(start_text, zone)
    for _ in range(count):
        try:
            moment = cron.next_after(moment, zone)
        except (ValueError, OverflowError) as error:
            _fail(str(error), 1)
        click.echo(f"{moment.isoformat()} {moment:%a}")

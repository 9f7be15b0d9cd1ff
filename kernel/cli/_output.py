"""How the ``kernel`` command speaks (private to `kernel.cli`): one-line
errors with one exit status per kind of failure, tables, times and
durations in one format, and text made safe for a terminal.

Every command's failure goes through `KernelGroup`, so the same failure
exits with the same status whichever command met it:

- **2**, a usage error: a bad option, argument, config file, adapter URL,
  plugin reference or job id, a status socket path that cannot be used;
- **1**, the thing asked about is not there or not in the right state, or a
  backend failed (storage, bus, a file that cannot be read, an unexpected
  error).

The message is one ``error: ...`` line on stderr, never a traceback; with
``kernel --debug`` (or ``KERNEL_DEBUG=1``) the traceback of an unexpected
error is printed above it. Human output escapes control characters (a job's
error text could otherwise drive the terminal); ``--json`` output is exact.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import click

from kernel.errors import (
    AdapterLoadError,
    AdapterNotFound,
    ConfigError,
    CronSyntaxError,
    EntryPointConflict,
    InvalidAdapterURL,
    InvalidJob,
    KernelError,
    PluginDependencyError,
    PluginLoadError,
    PluginNotFound,
    StatusSocketError,
)

__all__ = [
    "USAGE",
    "KernelGroup",
    "LogFormatter",
    "escape",
    "exit_status",
    "fail",
    "format_time",
    "sole_error",
    "table",
]

USAGE: Final = 2
"""Exit status of a usage error."""
FAILED: Final = 1
"""Exit status of anything else that went wrong."""

USAGE_ERRORS: Final = (
    ConfigError,
    CronSyntaxError,
    InvalidAdapterURL,
    AdapterNotFound,
    AdapterLoadError,
    EntryPointConflict,
    InvalidJob,
    PluginNotFound,
    PluginLoadError,
    PluginDependencyError,
    StatusSocketError,
)
"""Library errors that mean the command line or its config file is wrong."""

DEBUG_ENV: Final = "KERNEL_DEBUG"

# C0 and C1 controls, DEL, the Unicode line and paragraph separators and the
# bidirectional overrides ("Trojan Source", CVE-2021-42574).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_CONTROL_KEEPING_LINES = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` safe to print to a terminal: control characters (ESC, CR,
    BEL, backspace...) and bidirectional overrides written as ``\\x1b``,
    ``\\u202e``; newlines kept only if ``keep_newlines``."""
    pattern = _CONTROL_KEEPING_LINES if keep_newlines else _CONTROL
    return pattern.sub(_escaped, text)


def format_time(value: datetime | None, *, tz: Any = UTC) -> str:
    """The one format of a time in human output and logs: ISO 8601 to the
    second with its UTC offset (``2026-03-29T01:30:00+00:00``); ``-`` for none."""
    if value is None:
        return "-"
    return value.astimezone(tz).isoformat(timespec="seconds")


class LogFormatter(logging.Formatter):
    """The log line of ``kernel run``: time (`format_time`, UTC), level,
    logger, message; control characters escaped (tracebacks keep their
    lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return format_time(datetime.fromtimestamp(record.created, UTC))

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record), keep_newlines=True)


def sole_error(error: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups,
    as `trio.run` wraps what a nursery raised."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def exit_status(error: BaseException) -> int:
    """2 for a usage error, 1 for anything else (see the module docstring)."""
    if isinstance(error, click.ClickException):
        return error.exit_code
    return USAGE if isinstance(error, USAGE_ERRORS) else FAILED


def describe(error: BaseException) -> list[str]:
    """The line that says what went wrong; a config file with several
    problems gets one line for each."""
    if isinstance(error, ConfigError) and len(error.problems) > 1:
        return [str(problem) for problem in error.problems]
    if isinstance(error, click.ClickException):
        return [error.format_message()]
    if isinstance(error, KernelError):
        return [str(error)]
    if isinstance(error, OSError) and error.filename is not None:
        return [f"{error.filename}: {error.strerror or error}"]
    if isinstance(error, OSError | sqlite3.Error):
        return [f"{type(error).__name__}: {error}"]
    return [f"unexpected {type(error).__name__}: {error} (kernel --debug shows the traceback)"]


class KernelGroup(click.Group):
    """A click group whose errors are one line each, as ``error: <what is wrong>``.

    click's default prints a usage block and a hint before the message; a
    scheduler's CLI is often read in logs and scripts, where one line that
    names the bad input is what helps. Any exception a command lets out
    becomes that line too, with the status `exit_status` gives it.
    """

    debug = False
    """Set by ``kernel --debug``: print the traceback of an unexpected error."""

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
        KernelGroup.debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            error.show()  # `kernel` alone: the help text is the answer
            sys.exit(error.exit_code)
        except click.Abort:
            fail("aborted", FAILED)
        except Exception as raised:
            failure = sole_error(raised)
            if KernelGroup.debug and not isinstance(failure, click.ClickException):
                traceback.print_exception(raised, file=sys.stderr)
            for line in describe(failure):
                click.echo(f"error: {escape(' '.join(line.split()))}", err=True)
            sys.exit(exit_status(failure))
        sys.exit(result if isinstance(result, int) else 0)


def fail(message: str, status: int) -> NoReturn:
    click.echo(f"error: {escape(' '.join(message.split()))}", err=True)
    sys.exit(status)


def table(rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` (the first is the header) in aligned columns, each cell
    on one line with its control characters escaped."""
    cells = [[escape(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        padded = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(padded).rstrip())

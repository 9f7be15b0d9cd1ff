"""``kernel jobs``: look at and repair the jobs of a durable job store.

The operator's side of the queue, as Sidekiq's and Hangfire's dashboards or
``celery inspect`` give it: list jobs (paged by id, so a million dead letters
stay readable), show one with its full traceback, put a dead job back,
cancel a live one, and purge the dead letters.

Every command names its store the same way: ``--store URL`` (or the
``KERNEL_STORE`` environment variable, which keeps a password out of the
process list and the shell history) or ``--config CONFIG.toml`` (its
``[kernel] storage``), exactly one. The
commands talk to the store directly, not to a running kernel: a kernel
notices a job cancelled here at its next lease heartbeat, and claims a job
put back here when that queue next wakes. ``memory://`` (and
``sqlite://:memory:``) is refused: it lives inside one process, so another
process can never see its jobs.

`kernel.cli.commands` registers `jobs_group` on its ``main``. Errors reach
``main`` (a `kernel.cli._output.KernelGroup`), which prints them as one
line with the status of their kind. Human output escapes control
characters (error texts come from task code); ``--json`` is exact.

Exit codes: 0 done; 1 the job is not there, or not in a state the command
acts on, or the store failed; 2 a usage error (a malformed id, URL, state
or duration, a store that keeps no jobs).
"""

from __future__ import annotations

import json
import os
import shlex
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import attrs
import click
import trio

from kernel.cli._output import escape, format_time, table
from kernel.config.durations import parse_duration
from kernel.config.files import KernelSettings, load_config
from kernel.errors import InvalidJob
from kernel.jobs.record import JobRecord, JobState
from kernel.ports import JobStore
from kernel.runtime.discovery import open_storage
from kernel.storage.base import MAX_LIST_LIMIT, validate_job_id
from kernel.storage.sqlite import MEMORY, parse_sqlite_url
from kernel.urls import redact_url

__all__ = ["DEFAULT_PAGE", "StoreSource", "error_summary", "jobs_group"]

T = TypeVar("T")

DEFAULT_PAGE: Final = 50
"""Rows a listing prints unless ``--limit`` says otherwise."""

STORE_ENV: Final = "KERNEL_STORE"
"""The environment variable ``--store`` falls back to."""

_SUMMARY_WIDTH: Final = 60
_TRACEBACK: Final = "Traceback (most recent call last):"


@attrs.frozen
class StoreSource:
    """Where the job store comes from: its ``url``, and the ``option`` words
    that named it (``("--store", url)``, ``("--config", path)``, or none for
    ``KERNEL_STORE``), so a printed next-page command names the store the
    same way."""

    url: str
    option: tuple[str, ...]


def _source(store_url: str | None, config_path: str | None) -> StoreSource:
    from_env = (
        store_url is not None
        and click.get_current_context().get_parameter_source("store_url")
        is click.core.ParameterSource.ENVIRONMENT
    )
    if from_env and config_path is not None:
        store_url = None  # an explicit --config wins over the environment
    if store_url is not None and config_path is not None:
        raise click.UsageError("give --store or --config, not both")
    if store_url is not None:
        return StoreSource(store_url, () if from_env else ("--store", store_url))
    if config_path is not None:
        url = load_config(config_path).kernel.storage
        return StoreSource(url, ("--config", config_path))
    runner_default = _runner_default()
    if runner_default is not None:
        return StoreSource(runner_default, ())  # found the same way next time
    raise click.UsageError(
        "no job store: give --store URL (e.g. --store sqlite:///state.db), "
        f"set {STORE_ENV}, or give --config CONFIG.toml"
        f" (there is no ./{_RUNNER_FILE}, where `kernel run` stores by default)"
    )


_RUNNER_URL: Final = str(attrs.fields(KernelSettings).storage.default)
_RUNNER_FILE: Final = _RUNNER_URL.removeprefix("sqlite:///")


def _runner_default() -> str | None:
    """`kernel run`'s own default store, when its file is in the working
    directory: what a user who just ran ``kernel run`` here expects to see."""
    return _RUNNER_URL if os.path.isfile(_RUNNER_FILE) else None


def _check_url(url: str) -> None:
    """Refuse, before opening anything, a store no other process can see, and
    a SQLite file that does not exist (opening would create an empty one)."""
    shown = redact_url(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "memory":
        raise click.UsageError(
            f"{shown} keeps nothing across processes, so there are no jobs to see from here; "
            "point --store (or [kernel] storage) at a durable store such as sqlite:///state.db"
        )
    if scheme != "sqlite":
        return
    path = parse_sqlite_url(url).path
    if path == MEMORY:
        raise click.UsageError(
            f"{shown} is a private in-memory database, empty in every process; "
            "point --store at the database file the kernel uses, e.g. sqlite:///state.db"
        )
    if not os.path.isfile(path):
        raise click.UsageError(
            f"no SQLite database at {os.path.abspath(path)} (from {shown}): sqlite:///name.db "
            "is relative to the working directory, sqlite:////abs/path.db is absolute"
        )


async def _with_store(url: str, action: Callable[[JobStore], Awaitable[T]]) -> T:
    storage = await open_storage(url)
    try:
        if not isinstance(storage, JobStore):
            raise click.UsageError(
                f"the storage {redact_url(url)} ({type(storage).__name__}) keeps no jobs: "
                "it does not implement JobStore; use sqlite:// or another job store"
            )
        return await action(storage)
    finally:
        await storage.aclose()


def _run(source: StoreSource, action: Callable[[JobStore], Awaitable[T]]) -> T:
    """Run ``action`` on the opened store in `trio.run`, closing it after."""
    _check_url(source.url)
    return trio.run(_with_store, source.url, action)


def _store_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--config",
        "config_path",
        metavar="CONFIG.toml",
        help="Use the [kernel] storage of this config file.",
    )(command)
    return click.option(
        "--store",
        "store_url",
        metavar="URL",
        envvar=STORE_ENV,
        help=(
            f"The job store, e.g. sqlite:///state.db (default: ${STORE_ENV}, else"
            " ./kernel.db, kernel run's default, when it is here)."
        ),
    )(command)


def _job_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return validate_job_id(value)
    except InvalidJob as error:
        raise click.BadParameter(error.reason) from None


def _cutoff(_ctx: click.Context, _param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


_LIMIT = click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIST_LIMIT),
    default=DEFAULT_PAGE,
    show_default=True,
    help="Rows per page.",
)
_AFTER = click.option(
    "--after", "after_id", metavar="ID", help="Start after this job id (the next page)."
)
_JSON = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"jobs": [...], "next_after": ID or null} (payloads left out).',
)


# -- formatting -------------------------------------------------------------------


def error_summary(text: str | None, width: int = _SUMMARY_WIDTH) -> str:
    """One line of a job's ``last_error`` for a table, at most ``width`` characters.

    The first line, except that a Python traceback (which the queue stores
    whole) is replaced by its last line, the exception: ``Traceback (most
    recent call last):`` says nothing, ``ValueError: bad input`` does.
    """
    if not text or not text.strip():
        return "-"
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0].strip()
    if first.endswith(_TRACEBACK) and len(lines) > 1:
        first = first[: -len(_TRACEBACK)] + lines[-1].strip()
    return first if len(first) <= width else first[: width - 3] + "..."


def _rows(jobs: list[JobRecord]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("ID", "TASK", "QUEUE", "STATE", "PRIORITY", "ATTEMPTS", "RUN AT", "LAST ERROR")
    ]
    rows += [
        (
            job.id,
            job.task,
            job.queue,
            job.state.value,
            str(job.priority),
            str(job.attempts),
            format_time(job.run_at),
            error_summary(job.last_error),
        )
        for job in jobs
    ]
    return rows


def _list_page(
    source: StoreSource,
    command: list[str],
    *,
    state: JobState | None,
    queue: str | None,
    limit: int,
    after_id: str | None,
    as_json: bool,
) -> None:
    """Print one page, and when more follow, the command that prints the next
    (with ``--json``, the id to pass as ``--after``).

    Keyset paging on the id (``id > after``), as the stores order listings:
    a page is one index range scan however deep, and jobs added or removed
    meanwhile never shift a page the way an offset would."""
    if after_id is not None:
        try:
            validate_job_id(after_id)
        except InvalidJob as error:
            raise click.BadParameter(error.reason, param_hint="'--after'") from None

    async def page(store: JobStore) -> list[JobRecord]:
        fetch = min(limit + 1, MAX_LIST_LIMIT)
        return await store.list_jobs(
            state=state, queue=queue, limit=fetch, after_id=after_id, payloads=False
        )

    jobs = _run(source, page)
    more = len(jobs) > limit or (len(jobs) == limit == MAX_LIST_LIMIT)
    jobs = jobs[:limit]
    if as_json:
        listed = [_without_payload(job.to_json()) for job in jobs]
        next_after = jobs[-1].id if more else None
        click.echo(json.dumps({"jobs": listed, "next_after": next_after}, ensure_ascii=False))
        return
    if not jobs:
        click.echo("no more jobs" if after_id is not None else "no jobs")
        return
    table(_rows(jobs))
    if more:
        click.echo(
            f"more jobs follow; next page: {_next_page(source, command, limit, jobs[-1].id)}"
        )


def _without_payload(fields: dict[str, Any]) -> dict[str, Any]:
    """A listed job: every field but its arguments (``kernel jobs show`` has them)."""
    return {name: value for name, value in fields.items() if name not in ("args", "kwargs")}


def _next_page(source: StoreSource, command: list[str], limit: int, last_id: str) -> str:
    """The command that prints the next page, naming the store as this one
    did, but never with a secret: a password in ``--store`` shows as ``***``."""
    option = source.option
    hidden = False
    if option[:1] == ("--store",):
        shown = redact_url(source.url)
        hidden = shown != source.url
        option = ("--store", shown)
    words = ["kernel", "jobs", *command, *option]
    if limit != DEFAULT_PAGE:
        words += ["--limit", str(limit)]
    words += ["--after", last_id]
    hint = shlex.join(words)
    if hidden:
        hint += f" (put the hidden secret back, or set {STORE_ENV} and leave out --store)"
    return hint


def _describe(job: JobRecord) -> list[str]:
    """``name: value`` lines, times in the one human format, then the full
    last error indented below ``last_error:``."""
    fields = job.to_json()
    last_error = fields.pop("last_error")
    width = max(len(name) for name in fields) + 1
    lines = []
    for name, value in fields.items():
        if value is None:
            shown = "-"
        elif name in _TIME_FIELDS:
            shown = format_time(getattr(job, name))
        elif isinstance(value, str):
            shown = value
        else:
            shown = json.dumps(value, ensure_ascii=False)
        lines.append(f"{name + ':':<{width}} {shown}")
    if last_error is None:
        lines.append("last_error: -")
    else:
        lines.append("last_error:")
        # only a newline ends a line: a bare CR is shown (escaped), never obeyed
        text = str(last_error).replace("\r\n", "\n").rstrip("\n")
        lines += [f"  {line}" for line in text.split("\n")]
    return [escape(line) for line in lines]


_TIME_FIELDS: Final = frozenset(
    {"run_at", "enqueued_at", "lease_expires_at", "finished_at", "fire_time"}
)


async def _existing(store: JobStore, job_id: str) -> JobRecord:
    job = await store.get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id!r} in this store")
    return job


# -- the commands -----------------------------------------------------------------


@click.group("jobs")
def jobs_group() -> None:
    """List, inspect, retry, cancel and purge the jobs of a job store.

    Every command takes --store URL or --config CONFIG.toml. Exit codes:
    0 done; 1 no such job, a job in the wrong state, or a store failure;
    2 a usage error.
    """


@jobs_group.command("ls")
@_store_options
@click.option(
    "--state",
    type=click.Choice([state.value for state in JobState], case_sensitive=False),
    help="Only jobs in this state.",
)
@click.option("--queue", metavar="QUEUE", help="Only jobs of this queue.")
@_LIMIT
@_AFTER
@_JSON
def jobs_ls(
    store_url: str | None,
    config_path: str | None,
    state: str | None,
    queue: str | None,
    limit: int,
    after_id: str | None,
    as_json: bool,
) -> None:
    """List jobs by id, a page at a time; the last line gives the next page's command."""
    source = _source(store_url, config_path)
    command = ["ls"]
    if state is not None:
        command += ["--state", state.lower()]
    if queue is not None:
        command += ["--queue", queue]
    _list_page(
        source,
        command,
        state=None if state is None else JobState(state.lower()),
        queue=queue,
        limit=limit,
        after_id=after_id,
        as_json=as_json,
    )


@jobs_group.command("dead")
@_store_options
@_LIMIT
@_AFTER
@_JSON
def jobs_dead(
    store_url: str | None, config_path: str | None, limit: int, after_id: str | None, as_json: bool
) -> None:
    """List the dead letters: jobs that failed for good (like ls --state dead)."""
    source = _source(store_url, config_path)
    _list_page(
        source,
        ["dead"],
        state=JobState.dead,
        queue=None,
        limit=limit,
        after_id=after_id,
        as_json=as_json,
    )


@jobs_group.command("show")
@click.argument("job_id", metavar="ID", callback=_job_id)
@_store_options
@click.option("--json", "as_json", is_flag=True, help="Print the job as one JSON object.")
def jobs_show(store_url: str | None, config_path: str | None, job_id: str, as_json: bool) -> None:
    """Print every field of job ID, one per line, and its full last error."""
    source = _source(store_url, config_path)
    job = _run(source, lambda store: _existing(store, job_id))
    if as_json:
        click.echo(json.dumps(job.to_json(), indent=2, ensure_ascii=False))
        return
    for line in _describe(job):
        click.echo(line)


@jobs_group.command("retry")
@click.argument("job_id", metavar="ID", callback=_job_id)
@_store_options
def jobs_retry(store_url: str | None, config_path: str | None, job_id: str) -> None:
    """Put the dead job ID back in its queue, due now, with its attempts reset."""
    source = _source(store_url, config_path)

    async def retry(store: JobStore) -> JobRecord:
        job = await _existing(store, job_id)
        if job.state is JobState.dead:
            requeued = await store.retry_dead(job_id)
            if requeued is not None:
                return requeued
            job = await _existing(store, job_id)  # changed under us
        raise click.ClickException(
            f"job {job_id!r} is {job.state.value}, not dead: only dead jobs can be retried"
        )

    job = _run(source, retry)
    click.echo(f"job {job.id} ({job.task}) requeued on queue {job.queue!r}, attempts reset")


@jobs_group.command("cancel")
@click.argument("job_id", metavar="ID", callback=_job_id)
@_store_options
def jobs_cancel(store_url: str | None, config_path: str | None, job_id: str) -> None:
    """Cancel job ID if it is queued or running.

    A running job's worker stops it at its next lease heartbeat.
    """
    source = _source(store_url, config_path)

    async def cancel(store: JobStore) -> tuple[JobState, JobRecord]:
        job = await _existing(store, job_id)
        if job.state in (JobState.queued, JobState.running):
            cancelled = await store.cancel(job_id)
            if cancelled is not None:
                return job.state, cancelled
            job = await _existing(store, job_id)  # finished under us
        raise click.ClickException(
            f"job {job_id!r} is already {job.state.value}: "
            "only queued or running jobs can be cancelled"
        )

    was, job = _run(source, cancel)
    click.echo(f"job {job.id} ({job.task}) cancelled (was {was.value})")


@jobs_group.command("purge-dead")
@_store_options
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=_cutoff,
    help="Only dead jobs that died longer ago than this (e.g. 7d, 12h); default all.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def jobs_purge_dead(
    store_url: str | None, config_path: str | None, older_than: timedelta | None, yes: bool
) -> None:
    """Delete dead letters for good and print how many were deleted."""
    source = _source(store_url, config_path)
    cutoff = None if older_than is None else datetime.now(UTC) - older_than

    async def count(store: JobStore) -> int:
        found, after = 0, None
        while page := await store.list_jobs(
            state=JobState.dead, limit=MAX_LIST_LIMIT, after_id=after, payloads=False
        ):
            found += sum(
                1
                for job in page
                if cutoff is None or (job.finished_at is not None and job.finished_at < cutoff)
            )
            after = page[-1].id
        return found

    if not yes:
        doomed = _run(source, count)
        if doomed == 0:
            click.echo("no dead jobs to purge")
            return
        which = "" if cutoff is None else f" that died before {format_time(cutoff)}"
        question = f"delete {doomed} dead job(s){which} from {redact_url(source.url)}?"
        if not click.confirm(question, default=False):
            raise click.ClickException("not confirmed: nothing purged")

    async def purge(store: JobStore) -> int:
        return await store.purge_dead(older_than=cutoff)

    click.echo(f"purged {_run(source, purge)} dead job(s)")

"""The ``kernel`` command line.

One click group, `main`; each subcommand is a thin shell over the library.
A failure is one ``error: ...`` line on stderr, never a traceback:
`KernelGroup` turns every click usage error and every error a command lets
out into that line, with exit status 2 for a usage error and 1 for the rest
(`kernel.cli._output`), so commands simply let the library's errors
through. Add a command with ``@main.command()``; it inherits the error
style. ``kernel --version`` prints the version; ``kernel --debug COMMAND``
adds the traceback of an unexpected error.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
import urllib.parse
from collections.abc import Sequence
from datetime import datetime, tzinfo
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import trio

from kernel.cli._output import (
    KernelGroup,
    LogFormatter,
    escape,
    fail,
    format_time,
    sole_error,
    table,
)
from kernel.cli.jobs import jobs_group
from kernel.config.durations import describe_duration, parse_duration
from kernel.config.files import KernelConfig, load_config
from kernel.errors import KernelError, StatusUnavailable
from kernel.runtime.contrib import ContribEntry, load_contribs, open_contribs
from kernel.runtime.discovery import load_plugin_factory, open_storage, upgrade_storage
from kernel.runtime.kernel import STATE_NAMESPACE, ExitCode, Kernel, PluginSpec
from kernel.runtime.plugins import Manifest
from kernel.runtime.status import read_status, serve_status
from kernel.storage.sqlite import MEMORY, parse_sqlite_url
from kernel.time.cron import CronExpression
from kernel.urls import redact_url

__all__ = ["main"]


def _version() -> str:
    try:
        return version("trio-kernel")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _debug(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        KernelGroup.debug = True


@click.group(cls=KernelGroup)
@click.version_option(
    _version(), "-V", "--version", prog_name="trio-kernel", message="%(prog)s %(version)s"
)
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_debug,
    help="On an unexpected error, print its traceback too (or set KERNEL_DEBUG=1).",
)
def main() -> None:
    """trio-kernel: an embeddable scheduler microkernel on trio.

    Exit status: 0 done; 1 not found, wrong state, or a backend failed;
    2 a usage error (argument, config file, URL). `kernel run` adds 3, 4 and 5.
    """


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
    cron = CronExpression.parse(expression)
    moment = _start(start_text, zone)
    for _ in range(count):
        try:
            moment = cron.next_after(moment, zone)
        except (ValueError, OverflowError) as error:
            fail(str(error), 1)
        click.echo(f"{moment.isoformat()} {moment:%a}")


# -- the runner -----------------------------------------------------------------


def _load(config_path: str) -> tuple[KernelConfig, list[PluginSpec]]:
    """The config file and the plugins it names (errors are usage errors).

    Like ``python -m`` (and uvicorn), the working directory is importable, so
    ``use = "mymodule:MyPlugin"`` finds a module next to where you run."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    config = load_config(config_path)
    specs = []
    for name, entry in config.plugins.items():
        factory = load_plugin_factory(entry.use)
        plugin = factory()
        if not isinstance(getattr(type(plugin), "manifest", None), Manifest):
            raise click.UsageError(
                f"plugin {name!r}: {entry.use!r} made a {type(plugin).__name__},"
                " which has no Manifest (is it a kernel.Plugin?)"
            )
        specs.append(
            PluginSpec(
                plugin,  # type: ignore[arg-type]
                name=name,
                config=entry.config,
                enabled=entry.enabled,
                source=config.source,
            )
        )
    return config, specs


def _kernel(config: KernelConfig, specs: list[PluginSpec]) -> Kernel:
    settings = config.kernel
    return Kernel(
        specs,
        storage=settings.storage,
        bus=settings.bus,
        notifier=settings.notifiers,
        shutdown_grace=settings.shutdown_grace.total_seconds(),
        health_interval=settings.health_interval.total_seconds(),
        job_lease=settings.job_lease,
        job_heartbeat=settings.job_heartbeat,
        loop_stall=settings.loop_stall.total_seconds(),
        unknown_task_grace=settings.unknown_task_grace,
        storage_failure_limit=settings.storage_failure_limit.total_seconds(),
        exit_when_all_failed=settings.exit_when_all_failed,
        max_payload_bytes=settings.max_payload_bytes,
    )


def _contribs(config: KernelConfig) -> list[ContribEntry]:
    """The contribs the file configures (``[http]``...), their tables checked."""
    try:
        return load_contribs(config.contrib, source=config.source)
    except KernelError as error:
        raise click.UsageError(str(error)) from None


async def _serve(
    kernel: Kernel,
    socket_path: Path | None,
    stop_after: float | None,
    contribs: Sequence[ContribEntry] = (),
) -> ExitCode:
    # contribs start first (a port in use stops the run before any plugin
    # starts) and stop last
    async with open_contribs(kernel, contribs), trio.open_nursery() as nursery:
        if socket_path is not None:
            await nursery.start(serve_status, kernel, socket_path)
        if stop_after is not None:
            await nursery.start(_stop_later, kernel, stop_after)
        codes: list[ExitCode] = []

        async def serving(*, task_status: trio.TaskStatus[None]) -> None:
            codes.append(await kernel.serve(task_status=task_status))
            nursery.cancel_scope.cancel()

        await nursery.start(serving)
        # every plugin has started: what start-up made (modules, plugins,
        # config) lives as long as the run, so full collections skip it
        gc.freeze()
    return codes[0]


async def _stop_later(
    kernel: Kernel, seconds: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await trio.sleep(seconds)
    logging.getLogger("kernel").info(
        "--stop-after %s reached: stopping", describe_duration(seconds)
    )
    kernel.request_stop()


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """A duration as config files spell it; a plain number is seconds there,
    and so it is here (``--stop-after 5``)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        spelled: object = value
    else:
        spelled = seconds if math.isfinite(seconds) else value
    try:
        duration = parse_duration(spelled).total_seconds()
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if duration <= 0:
        raise click.BadParameter(f"expected a positive duration, got {value!r}")
    return duration


@main.command("run")
@click.argument("config_path", metavar="CONFIG.toml")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides [kernel] log_level.",
)
@click.option(
    "--stop-after",
    metavar="DURATION",
    callback=_duration,
    help="Stop gracefully after this long (30s, 5m, or plain seconds): for demos and smoke tests.",
)
def run_command(config_path: str, log_level: str | None, stop_after: float | None) -> None:
    """Run the plugins of CONFIG.toml until SIGINT or SIGTERM.

    Top-level tables other than [kernel] and [plugins] configure installed
    contribs, which run beside the kernel ([http]: trio-kernel-http, [otel]:
    trio-kernel-otel).

    Exit codes: 0 stopped cleanly; 1 the kernel failed; 2 bad configuration;
    3 a second signal or a plugin past its grace period; 4 a plugin failed
    past its restart budget.
    """
    config, specs = _load(config_path)
    contribs = _contribs(config)
    kernel = _kernel(config, specs)
    level = (log_level or config.kernel.log_level).upper()
    handler = logging.StreamHandler()
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    socket_path = config.kernel.status_socket
    try:
        code = trio.run(_serve, kernel, socket_path, stop_after, contribs)
    except Exception as raised:
        error = sole_error(raised)
        if isinstance(error, KernelError):  # a plugin config, an adapter URL, the store
            raise error from None
        logging.getLogger("kernel").debug("the kernel failed", exc_info=raised)
        if KernelGroup.debug:
            raise
        fail(f"the kernel failed: {type(error).__name__}: {error}", ExitCode.ERROR)
    sys.exit(int(code))


@main.group("plugins", cls=KernelGroup)
def plugins_group() -> None:
    """Inspect the plugins of a configuration."""


_JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON instead of a table."
)


@plugins_group.command("ls")
@click.argument("config_path", metavar="CONFIG.toml")
@_JSON_OPTION
def plugins_ls(config_path: str, as_json: bool) -> None:
    """List the plugins of CONFIG.toml: version, permissions and stored state.

    Reads the stored states from [kernel] storage without changing it: a
    SQLite file that does not exist yet is not created.
    """
    config, specs = _load(config_path)
    states = trio.run(_stored_states, config.kernel.storage, [s.instance_name for s in specs])
    plugins = [
        {
            "name": spec.instance_name,
            "version": spec.manifest.version,
            "description": spec.manifest.description,
            "state": states.get(spec.instance_name),
            "enabled": spec.enabled,
            "permissions": sorted(p.value for p in spec.manifest.permissions),
            "requires": list(spec.manifest.requires),
            "use": entry.use,
        }
        for spec, entry in zip(specs, config.plugins.values(), strict=True)
    ]
    if as_json:
        click.echo(json.dumps({"plugins": plugins}, indent=2, ensure_ascii=False))
        return
    rows: list[tuple[str, ...]] = [
        ("NAME", "VERSION", "STATE", "CONFIGURED", "PERMISSIONS", "USES")
    ]
    rows += [
        (
            str(plugin["name"]),
            str(plugin["version"]),
            str(plugin["state"] or "not installed"),
            "enabled" if plugin["enabled"] else "disabled",
            ",".join(plugin["permissions"]) or "-",  # type: ignore[arg-type]
            str(plugin["use"]),
        )
        for plugin in plugins
    ]
    table(rows)


def _stored_nowhere(url: str) -> bool:
    """Whether ``url`` names a store that cannot hold state yet: a SQLite file
    that does not exist (opening it would create it) or an in-memory one."""
    if urllib.parse.urlsplit(url).scheme.lower() == "memory":
        return True
    if urllib.parse.urlsplit(url).scheme.lower() != "sqlite":
        return False
    path = parse_sqlite_url(url).path
    return path == MEMORY or not os.path.exists(path)


async def _stored_states(url: str, names: list[str]) -> dict[str, str]:
    if _stored_nowhere(url):
        return {}
    storage = await open_storage(url)
    try:
        states = {}
        for name in names:
            stored = await storage.get(STATE_NAMESPACE, f"plugin/{name}")
            if isinstance(stored, dict) and isinstance(stored.get("state"), str):
                states[name] = str(stored["state"])
        return states
    finally:
        await storage.aclose()


@main.command("status")
@click.argument("config_path", metavar="[CONFIG.toml]", required=False)
@click.option("--socket", "socket_option", metavar="PATH", help="The status socket to ask.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON status.")
def status_command(config_path: str | None, socket_option: str | None, as_json: bool) -> None:
    """Show health, plugins, schedules, job queues and metrics of a running kernel.

    The kernel answers on the Unix socket named by [kernel] status_socket;
    give the config file or --socket (default: kernel.sock here).
    """
    if socket_option:
        path = Path(socket_option)
    elif config_path:
        configured = _load(config_path)[0].kernel.status_socket
        if configured is None:
            raise click.UsageError(f"{config_path} sets no [kernel] status_socket")
        path = configured
    else:
        path = Path("kernel.sock")
    try:
        status = read_status(path)
    except StatusUnavailable as error:
        fail(f"{error} (is `kernel run` going, with this status_socket?)", 1)
    except (OSError, ValueError) as error:
        fail(f"cannot read the status at {path}: {error}", 1)
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    _show_status(status)


def _show_status(status: dict[str, Any]) -> None:
    health = status["health"]
    reasons = "; ".join(health.get("reasons", []))
    click.echo(escape(f"health: {health['status']}" + (f" ({reasons})" if reasons else "")))
    rows: list[tuple[str, ...]] = [("PLUGIN", "STATE", "RESTARTS", "REASON")]
    rows += [
        (name, p["state"], str(p["restarts"]), p["reason"] or "-")
        for name, p in status["plugins"].items()
    ]
    click.echo()
    table(rows)
    schedules = status.get("schedules", [])
    if schedules:
        rows = [("SCHEDULE", "NEXT FIRE", "RUNS", "FAILED", "SKIPPED", "MISSED")]
        rows += [
            (
                s["name"],
                _time_text(s["next_fire_time"]),
                str(s["started"]),
                str(s["failed"]),
                str(s["skipped"]),
                str(s["missed"]),
            )
            for s in schedules
        ]
        click.echo()
        table(rows)
    queues = status.get("queues", [])
    if queues:
        rows = [("QUEUE", "RUNNING", "CONCURRENCY", "PAUSED")]
        rows += [
            (q["name"], str(q["running"]), str(q["concurrency"]), "yes" if q["paused"] else "no")
            for q in queues
        ]
        click.echo()
        table(rows)
    metrics = status.get("metrics", {})
    if metrics:
        rows = [("METRIC", "LABELS", "VALUE")]
        for name, family in metrics.items():
            for series in family["series"]:
                labels = ",".join(f"{k}={v}" for k, v in series["labels"].items()) or "-"
                rows.append((name, labels, _metric_text(name, family["kind"], series)))
        click.echo()
        table(rows)


def _time_text(text: str | None) -> str:
    if not text:
        return "-"
    try:
        return format_time(datetime.fromisoformat(text))
    except ValueError:
        return text


def _metric_text(name: str, kind: str, series: dict[str, Any]) -> str:
    """A counter or gauge's value; a histogram's count, p50, p99 and max,
    as durations when the metric counts seconds."""
    if kind != "histogram":
        return _number(series["value"])
    if not series["count"]:
        return "count 0"
    shown = describe_duration if name.endswith("_seconds") else _number
    parts = [f"count {series['count']}"]
    parts += [
        f"{key} {shown(series[key])}" for key in ("p50", "p99", "max") if series[key] is not None
    ]
    return ", ".join(parts)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


@main.group("db", cls=KernelGroup)
def db_group() -> None:
    """Manage a storage database's schema."""


@db_group.command("upgrade")
@click.argument("url")
def db_upgrade(url: str) -> None:
    """Apply the missing schema migrations of the storage at URL.

    Shared databases (postgresql://) are never migrated when a kernel
    starts: a kernel finding an old schema refuses to start and names this
    command. Safe to run while kernels run, and from several hosts at once.
    """
    applied = trio.run(upgrade_storage, url)
    where = redact_url(url)
    if applied:
        click.echo(f"{where}: applied schema version(s) {', '.join(map(str, applied))}")
    else:
        click.echo(f"{where}: the schema is up to date")


main.add_command(jobs_group)

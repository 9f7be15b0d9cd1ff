"""The ``kernel`` command line.

One click group, `main`; each subcommand is a thin shell over the library.
A bad argument is one ``error: ...`` line on stderr and exit status 2, never
a traceback: `KernelGroup` turns every click usage error into that line, and
commands turn the library's own errors into `click.UsageError`. Add a
command with ``@main.command()``; it inherits the error style.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
import trio

from kernel.cli._output import KernelGroup, fail, table
from kernel.cli.jobs import jobs_group
from kernel.config.durations import parse_duration
from kernel.config.files import KernelConfig, load_config
from kernel.errors import (
    AdapterLoadError,
    AdapterNotFound,
    CronSyntaxError,
    EntryPointConflict,
    InvalidAdapterURL,
    KernelError,
    StatusUnavailable,
)
from kernel.runtime.discovery import load_plugin_factory, open_storage, upgrade_storage
from kernel.runtime.kernel import STATE_NAMESPACE, ExitCode, Kernel, PluginSpec
from kernel.runtime.plugins import Manifest
from kernel.runtime.status import read_status, serve_status
from kernel.time.cron import CronExpression
from kernel.urls import redact_url

__all__ = ["main"]

_URL_ERRORS = (InvalidAdapterURL, AdapterNotFound, AdapterLoadError, EntryPointConflict)
"""Errors that mean the URL on the command line is wrong (exit 2)."""


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
            fail(str(error), 1)
        click.echo(f"{moment.isoformat()} {moment:%a}")


# -- the runner -----------------------------------------------------------------


def _load(config_path: str) -> tuple[KernelConfig, list[PluginSpec]]:
    """The config file and the plugins it names, or a one-line usage error.

    Like ``python -m`` (and uvicorn), the working directory is importable, so
    ``use = "mymodule:MyPlugin"`` finds a module next to where you run."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
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
    except KernelError as error:
        raise click.UsageError(str(error)) from None
    return config, specs


def _kernel(config: KernelConfig, specs: list[PluginSpec]) -> Kernel:
    settings = config.kernel
    try:
        return Kernel(
            specs,
            storage=settings.storage,
            bus=settings.bus,
            notifier=settings.notifiers,
            shutdown_grace=settings.shutdown_grace.total_seconds(),
            health_interval=settings.health_interval.total_seconds(),
        )
    except KernelError as error:
        raise click.UsageError(str(error)) from None


async def _serve(kernel: Kernel, socket_path: Path | None, stop_after: float | None) -> ExitCode:
    async with trio.open_nursery() as nursery:
        if socket_path is not None:
            await nursery.start(serve_status, kernel, socket_path)
        if stop_after is not None:
            await nursery.start(_stop_later, kernel, stop_after)
        code = await kernel.serve()
        nursery.cancel_scope.cancel()
    return code


async def _stop_later(
    kernel: Kernel, seconds: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await trio.sleep(seconds)
    logging.getLogger("kernel").info("--stop-after %gs reached: stopping", seconds)
    kernel.request_stop()


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value).total_seconds()
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


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
    help="Stop gracefully after this long (e.g. 30s, 5m): for demos and smoke tests.",
)
def run_command(config_path: str, log_level: str | None, stop_after: float | None) -> None:
    """Run the plugins of CONFIG.toml until SIGINT or SIGTERM.

    Exit codes: 0 stopped cleanly; 1 the kernel failed; 2 bad configuration;
    3 a second signal or a plugin past its grace period; 4 a plugin failed
    past its restart budget.
    """
    config, specs = _load(config_path)
    kernel = _kernel(config, specs)
    level = (log_level or config.kernel.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    socket_path = config.kernel.status_socket
    try:
        code = trio.run(_serve, kernel, socket_path, stop_after)
    except Exception as raised:
        error = _sole_error(raised)
        if isinstance(error, KernelError):  # while starting: a plugin config, an adapter URL
            fail(str(error), ExitCode.USAGE)
        logging.getLogger("kernel").debug("kernel failed", exc_info=True)
        fail(f"the kernel failed: {type(error).__name__}: {error}", ExitCode.ERROR)
    sys.exit(int(code))


def _sole_error(error: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@main.group("plugins", cls=KernelGroup)
def plugins_group() -> None:
    """Inspect the plugins of a configuration."""


@plugins_group.command("ls")
@click.argument("config_path", metavar="CONFIG.toml")
def plugins_ls(config_path: str) -> None:
    """List the plugins of CONFIG.toml: version, permissions and stored state."""
    config, specs = _load(config_path)
    try:
        states = trio.run(_stored_states, config.kernel.storage, [s.instance_name for s in specs])
    except KernelError as error:
        fail(str(error), ExitCode.USAGE)
    rows: list[tuple[str, ...]] = [
        ("NAME", "VERSION", "STATE", "CONFIGURED", "PERMISSIONS", "USES")
    ]
    for spec, entry in zip(specs, config.plugins.values(), strict=True):
        manifest = spec.manifest
        rows.append(
            (
                spec.instance_name,
                manifest.version,
                states.get(spec.instance_name, "not installed"),
                "enabled" if spec.enabled else "disabled",
                ",".join(sorted(p.value for p in manifest.permissions)) or "-",
                entry.use,
            )
        )
    table(rows)


async def _stored_states(url: str, names: list[str]) -> dict[str, str]:
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
    """Show health, plugins, schedules and metrics of a running kernel.

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
    except OSError as error:
        fail(f"cannot read the status at {path}: {error}", 1)
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    health = status["health"]
    reasons = "; ".join(health.get("reasons", []))
    click.echo(f"health: {health['status']}" + (f" ({reasons})" if reasons else ""))
    rows: list[tuple[str, ...]] = [("PLUGIN", "STATE", "RESTARTS", "REASON")]
    rows += [
        (name, p["state"], str(p["restarts"]), p["reason"]) for name, p in status["plugins"].items()
    ]
    table(rows)
    rows = [("SCHEDULE", "NEXT FIRE", "RUNS", "FAILED", "SKIPPED", "MISSED")]
    rows += [
        (
            s["name"],
            s["next_fire_time"] or "-",
            str(s["started"]),
            str(s["failed"]),
            str(s["skipped"]),
            str(s["missed"]),
        )
        for s in status["schedules"]
    ]
    table(rows)
    queues = status.get("queues", [])
    if queues:
        rows = [("QUEUE", "RUNNING", "CONCURRENCY", "PAUSED")]
        rows += [
            (q["name"], str(q["running"]), str(q["concurrency"]), "yes" if q["paused"] else "no")
            for q in queues
        ]
        table(rows)


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
    try:
        applied = trio.run(upgrade_storage, url)
    except _URL_ERRORS as error:
        raise click.UsageError(str(error)) from None
    except KernelError as error:
        fail(str(error), 1)
    where = redact_url(url)
    if applied:
        click.echo(f"{where}: applied schema version(s) {', '.join(map(str, applied))}")
    else:
        click.echo(f"{where}: the schema is up to date")


main.add_command(jobs_group)

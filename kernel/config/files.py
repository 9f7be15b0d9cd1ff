"""The kernel's config file: ``[kernel]`` settings and ``[plugins.NAME]``
entries, read from TOML (`load_config`, `parse_config`)."""

from __future__ import annotations

import datetime
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs

from kernel.config._messages import BadValue, format_duration, join_key_path, unknown_key_reason
from kernel.config.structure import key_path, structure_config
from kernel.errors import ConfigError
from kernel.notifier.routing import NotifyRoute, routes_from
from kernel.runtime.contrib import contrib_tables as installed_contrib_tables
from kernel.serialization import DEFAULT_MAX_PAYLOAD
from kernel.urls import redact_url

__all__ = [
    "KernelConfig",
    "KernelSettings",
    "LogLevel",
    "PluginEntry",
    "load_config",
    "parse_config",
]

T = TypeVar("T")

# ---------------------------------------------------------------------------
# The kernel's own schema
# ---------------------------------------------------------------------------

LogLevel = Literal["debug", "info", "warning", "error"]
"""The levels ``kernel.log_level`` accepts (the `logging` names, lower case)."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_PLUGIN_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_PLUGIN_NAME_RULE = "1-63 characters of a-z, 0-9, '_', '.', '-' starting with a letter or digit"


def _adapter_url(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise BadValue("a URL string", value)
    if not _URL.match(value) or value != value.strip():
        raise BadValue(
            "a URL like 'scheme://...' (e.g. 'memory://', 'sqlite:///state.db')", redact_url(value)
        )


def _notifier_urls(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # each URL is checked as a route, whose errors never show the URL (secrets)
    urls = [value] if isinstance(value, str) else value
    assert isinstance(urls, list)  # the structuring hook gave a str or a list of str
    for url in urls:
        NotifyRoute(url)


def _positive_duration(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, datetime.timedelta) or value <= datetime.timedelta(0):
        raise BadValue("a positive duration", value)


def _under_the_lease(instance: Any, _attribute: object, value: datetime.timedelta) -> None:
    if value >= instance.job_lease:
        raise BadValue(
            f"a duration shorter than job_lease ({format_duration(instance.job_lease)})", value
        )


def _plugin_reference(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value or value != value.strip() or value.count(":") > 1:
        raise BadValue("an entry-point name or 'package.module:attribute'", value)


def _plugin_name_problem(name: object) -> str | None:
    if isinstance(name, str) and _PLUGIN_NAME.fullmatch(name):
        return None
    return f"invalid plugin name {name!r}: expected {_PLUGIN_NAME_RULE}"


def _plugin_names(_: object, attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    for name in value:
        problem = _plugin_name_problem(name)
        if problem is not None:
            raise ValueError(problem)


@attrs.frozen
class KernelSettings:
    """The ``[kernel]`` table: which adapters to open and how the kernel
    paces itself. Adapter URLs are only checked for a ``scheme://`` shape
    here; `kernel.runtime.discovery` finds (or fails to find) the adapter."""

    #: The runner's durable default: jobs, schedules and plugin states in a
    #: SQLite file in the working directory (embedding defaults to memory).
    storage: str = attrs.field(default="sqlite:///kernel.db", validator=_adapter_url)
    bus: str = attrs.field(default="local://", validator=_adapter_url)
    #: One notifier URL or a list; each notification goes to every one.
    notifier: str | list[str] = attrs.field(default="log://", validator=_notifier_urls)
    #: ``[[kernel.notify]]`` tables: more notifiers, each with its routing
    #: and noise rules (`kernel.notifier.routing.NotifyRoute`).
    notify: list[NotifyRoute] = attrs.Factory(list)
    #: How long each plugin may take to stop before it is cancelled.
    shutdown_grace: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=10), validator=_positive_duration
    )
    #: How often health checks run.
    health_interval: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=30), validator=_positive_duration
    )
    #: How long a claimed job is this kernel's without a renewal, and how
    #: often running jobs' leases are renewed (well under the lease).
    job_lease: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=30), validator=_positive_duration
    )
    job_heartbeat: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=10), validator=[_positive_duration, _under_the_lease]
    )
    #: How long the event loop may be blocked before the watchdog warns.
    loop_stall: datetime.timedelta = attrs.field(
        default=datetime.timedelta(seconds=1), validator=_positive_duration
    )
    #: How long jobs of a task no plugin registers wait before they are buried.
    unknown_task_grace: datetime.timedelta = attrs.field(
        default=datetime.timedelta(hours=1), validator=_positive_duration
    )
    #: How long the store may fail with no call succeeding before the runner
    #: stops, exit 5, for a supervisor to restart it (at once if the store is
    #: lost: its SQLite file deleted or replaced).
    storage_failure_limit: datetime.timedelta = attrs.field(
        default=datetime.timedelta(minutes=3), validator=_positive_duration
    )
    #: The largest a job's arguments may be, in bytes of JSON.
    max_payload_bytes: int = attrs.field(
        default=DEFAULT_MAX_PAYLOAD, validator=attrs.validators.gt(0)
    )
    #: Stop (exit 4) once every plugin not disabled has failed past its
    #: restart budget, instead of idling until a signal.
    exit_when_all_failed: bool = True
    #: The Unix socket `kernel status` talks to; ``None`` (the default) opens none.
    status_socket: Path | None = None
    log_level: LogLevel = "info"

    def __attrs_post_init__(self) -> None:
        routes_from(self.notifiers)  # two notifiers with one label are an error
        if self.job_heartbeat >= self.job_lease:
            raise BadValue(
                f"a job_heartbeat shorter than job_lease ({self.job_lease})", self.job_heartbeat
            )

    @property
    def notifiers(self) -> list[str | NotifyRoute]:
        """What `Kernel` takes as ``notifier``: the ``notifier`` URLs, then
        the ``[[kernel.notify]]`` routes."""
        urls = [self.notifier] if isinstance(self.notifier, str) else self.notifier
        return [*urls, *self.notify]


@attrs.frozen
class PluginEntry:
    """One ``[plugins.NAME]`` table: which plugin to load, whether to enable
    it, and its own config, kept raw until the runtime knows the plugin's
    config class (``structure_config(entry.config, manifest.config,
    source=..., prefix="plugins.NAME.config")``)."""

    use: str = attrs.field(validator=_plugin_reference)
    enabled: bool = True
    config: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class KernelConfig:
    """A whole config file: kernel settings, plugin instances by name (in
    file order), the tables of installed contribs (``[http]``, kept raw
    until `kernel.runtime.contrib.load_contribs` knows their classes), and
    the ``source`` errors name."""

    kernel: KernelSettings = KernelSettings()
    plugins: dict[str, PluginEntry] = attrs.field(factory=dict, validator=_plugin_names)
    source: str = "<defaults>"
    contrib: dict[str, dict[str, Any]] = attrs.Factory(dict)


_TOP_LEVEL_KEYS = ["kernel", "plugins"]
_TOML_POSITION = re.compile(r"(.*) \((at line \d+, column \d+|at end of document)\)", re.DOTALL)


def _toml_reason(error: ValueError) -> str:
    message = str(error)
    if message.startswith("Exceeds the limit"):  # Python's guard against huge integers
        return f"invalid TOML: an integer with too many digits ({message.split(';')[0]})"
    match = _TOML_POSITION.fullmatch(message)
    if match is None:
        return f"invalid TOML: {message}"
    text, where = match.groups()
    return f"invalid TOML {where}: {text[:1].lower()}{text[1:]}"


def _unknown_table(key: str, claimed: Collection[str]) -> str:
    reason = unknown_key_reason(key, [*_TOP_LEVEL_KEYS, *sorted(claimed)])
    if "did you mean" in reason:
        return reason
    return (
        f"{reason} (any other top-level table needs the contrib that claims it installed, "
        "e.g. [http] from trio-kernel-http)"
    )


def _kernel_config(
    document: Mapping[str, Any], source: str, claimed: Collection[str]
) -> KernelConfig:
    problems: list[ConfigError] = []
    contrib: dict[str, dict[str, Any]] = {}
    for key, value in document.items():
        if key in _TOP_LEVEL_KEYS:
            continue
        path = join_key_path("", (key,))
        if key not in claimed:
            problems.append(ConfigError(source, path, _unknown_table(key, claimed)))
        elif not isinstance(value, Mapping):
            problems.append(
                ConfigError(source, path, str(BadValue("a table", value)), expected="a table")
            )
        else:
            contrib[key] = dict(value)
    settings = KernelSettings()
    try:
        settings = structure_config(
            document.get("kernel", {}), KernelSettings, source=source, prefix="kernel"
        )
    except ConfigError as error:
        problems += error.problems
    plugins: dict[str, PluginEntry] = {}
    table = document.get("plugins", {})
    if not isinstance(table, Mapping):
        problems.append(
            ConfigError(source, "plugins", str(BadValue("a table", table)), expected="a table")
        )
        table = {}
    for name, entry in table.items():
        path = key_path("plugins", name)
        name_problem = _plugin_name_problem(name)
        if name_problem is not None:
            problems.append(ConfigError(source, path, name_problem, expected=_PLUGIN_NAME_RULE))
        try:
            plugins[name] = structure_config(entry, PluginEntry, source=source, prefix=path)
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError.from_problems(problems)
    return KernelConfig(kernel=settings, plugins=plugins, source=source, contrib=contrib)


def parse_config(
    text: str, *, source: str, contrib_tables: Collection[str] | None = None
) -> KernelConfig:
    """The `KernelConfig` in TOML ``text``; ``source`` names it in errors.

    Raises `ConfigError`: invalid TOML (with tomllib's line and column),
    unknown keys, wrong types, invalid plugin names, malformed adapter URLs,
    durations that are not positive. All problems are reported at once.
    Top-level tables other than ``[kernel]`` and ``[plugins]`` must be
    claimed by a contrib: ``contrib_tables`` names them (default: the
    installed contribs', `kernel.runtime.contrib.contrib_tables`); their
    contents are checked when the contrib is loaded.
    """
    try:
        document = tomllib.loads(text)
    except ValueError as error:  # TOMLDecodeError, or an integer past Python's digit limit
        raise ConfigError(source, "", _toml_reason(error)) from None
    except RecursionError:
        raise ConfigError(source, "", "invalid TOML: nested too deeply") from None
    claimed = installed_contrib_tables() if contrib_tables is None else contrib_tables
    return _kernel_config(document, source, claimed)


def load_config(path: str | Path, *, contrib_tables: Collection[str] | None = None) -> KernelConfig:
    """The `KernelConfig` in the TOML file at ``path`` (UTF-8, a leading
    byte-order mark tolerated); errors name the file as ``path`` was given.

    Raises `ConfigError` for a missing or unreadable file as for a bad one.
    """
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(source, "", "permission denied") from None
    except OSError as error:
        raise ConfigError(source, "", f"cannot read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise ConfigError(
            source, "", f"not UTF-8 text (invalid byte at line {line}, column {column})"
        ) from None
    return parse_config(text, source=source, contrib_tables=contrib_tables)

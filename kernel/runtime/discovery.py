"""Finding adapters and plugins: entry points, chosen by URL scheme.

An adapter package registers a factory under the URL scheme it handles, in
the entry-point group of its port (the mechanism of pytest plugins and
SQLAlchemy dialects)::

    [project.entry-points."kernel.storage"]
    sqlite = "kernel_sqlite:open_storage"

and ``await open_storage("sqlite:///state.db")`` calls that factory with the
whole URL. A scheme ``family+variant`` that no entry point claims goes to
the one named ``family``, with the whole URL (SQLAlchemy's
``dialect+driver``): the Apprise adapter, registered as ``apprise``, opens
``apprise+slack://...`` and every other ``apprise+<service>`` URL. A
factory may be a coroutine function (when opening does I/O, so a wrong
password fails at start-up, not at first use) or a plain function.

The built-in adapters (``memory://`` storage, ``local://`` bus, ``log://``
notifier) are registered here in code, so they work with nothing installed.
Their schemes are reserved: an entry point claiming one is not allowed to
replace it silently, nor is it ignored silently; opening that scheme raises
`EntryPointConflict`, naming the distribution to uninstall. Two entry
points claiming one scheme are the same error (identical duplicates, such as
one distribution seen twice on ``sys.path``, are not a conflict). Schemes
are case-insensitive (RFC 3986); entry-point names are matched lower-cased.

`load_plugin_factory` resolves a plugin reference for the runner: an entry
point name in ``kernel.plugins`` or a ``module:attribute`` path.

Every lookup goes through an `EntryPointSource` (by default
`installed_entry_points`), the seam tests replace with fakes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import cast

import attrs

from kernel.errors import (
    AdapterLoadError,
    AdapterNotFound,
    EntryPointConflict,
    InvalidAdapterURL,
    PluginLoadError,
    PluginNotFound,
)
from kernel.ports import Bus, Notifier, Storage
from kernel.urls import redact_url, url_options, url_scheme

__all__ = [
    "BUS_ADAPTERS",
    "BUS_GROUP",
    "MIGRATE_GROUP",
    "MIGRATIONS",
    "NOTIFIER_ADAPTERS",
    "NOTIFIER_GROUP",
    "PLUGINS_GROUP",
    "STORAGE_ADAPTERS",
    "STORAGE_GROUP",
    "AdapterRegistry",
    "EntryPointSource",
    "installed_entry_points",
    "load_plugin_factory",
    "open_bus",
    "open_notifier",
    "open_storage",
    "redact_url",
    "upgrade_storage",
    "url_options",
    "url_scheme",
]

STORAGE_GROUP = "kernel.storage"
BUS_GROUP = "kernel.bus"
NOTIFIER_GROUP = "kernel.notifier"
PLUGINS_GROUP = "kernel.plugins"
MIGRATE_GROUP = "kernel.migrate"

EntryPointSource = Callable[[str], Iterable[importlib.metadata.EntryPoint]]
"""Returns the entry points of one group; `installed_entry_points` or a fake."""


def installed_entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The entry points of ``group`` in the installed distributions."""
    return list(importlib.metadata.entry_points(group=group))


# ---------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------


def _describe(entry_point: importlib.metadata.EntryPoint) -> str:
    text = f"entry point {entry_point.name} = {entry_point.value}"
    dist = entry_point.dist
    if dist is not None:
        text += f" (distribution {dist.metadata['Name']} {dist.version})"
    return text


def _unique(
    entry_points: Iterable[importlib.metadata.EntryPoint],
) -> list[importlib.metadata.EntryPoint]:
    """One entry point per target: a distribution seen twice is no conflict."""
    by_value: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in entry_points:
        by_value.setdefault(entry_point.value, entry_point)
    return list(by_value.values())


def _import_attribute(path: str) -> object:
    """``module:attribute.attribute`` -> the object (for built-ins: no error
    handling, a failure here is a bug in kernel)."""
    module_name, _, attribute = path.partition(":")
    found: object = importlib.import_module(module_name)
    for name in attribute.split("."):
        found = getattr(found, name)
    return found


def _protocol_members(protocol: type) -> list[str]:
    return sorted(name for name in vars(protocol) if not name.startswith("_"))


@attrs.frozen
class AdapterRegistry:
    """The adapters of one port: built-ins plus one entry-point group.

    ``builtins`` maps a scheme to the ``module:attribute`` of its factory,
    imported only when that scheme is opened. ``protocol`` is the port the
    opened object must satisfy.
    """

    port: str
    group: str
    protocol: type
    builtins: Mapping[str, str] = attrs.field(factory=dict)
    find_entry_points: EntryPointSource = installed_entry_points

    def schemes(self) -> list[str]:
        """Every scheme this port can open: built-in and installed."""
        names = {entry_point.name.lower() for entry_point in self.find_entry_points(self.group)}
        return sorted(names | set(self.builtins))

    def factory_for(self, scheme: str, *, url: str = "") -> Callable[[str], object]:
        """The factory registered for ``scheme`` (lower case).

        Raises `AdapterNotFound`, `EntryPointConflict` or `AdapterLoadError`.
        """
        return self._resolve(scheme, url)[0]

    def _resolve(self, scheme: str, url: str) -> tuple[Callable[[str], object], str]:
        claims = self._claims(scheme)
        family = scheme.partition("+")[0]
        if not claims and family != scheme and scheme not in self.builtins:
            claims = self._claims(family)  # apprise+slack: the apprise adapter
        if scheme in self.builtins:
            if claims:
                raise EntryPointConflict(
                    self.group,
                    scheme,
                    [f"the built-in {self.port} adapter (a reserved scheme)"]
                    + [_describe(entry_point) for entry_point in claims],
                )
            factory = _import_attribute(self.builtins[scheme])
            return cast(Callable[[str], object], factory), "built-in"
        if not claims:
            raise AdapterNotFound(
                self.port, scheme, redact_url(url) or f"{scheme}:", self.group, self.schemes()
            )
        if len(claims) > 1:
            raise EntryPointConflict(
                self.group, scheme, [_describe(entry_point) for entry_point in claims]
            )
        (entry_point,) = claims
        source = _describe(entry_point)
        try:
            factory = entry_point.load()
        except Exception as error:
            raise AdapterLoadError(
                self.port, scheme, source, f"loading failed: {type(error).__name__}: {error}"
            ) from error
        if not callable(factory):
            raise AdapterLoadError(
                self.port, scheme, source, f"names a {type(factory).__name__}, not a callable"
            )
        return cast(Callable[[str], object], factory), source

    def _claims(self, name: str) -> list[importlib.metadata.EntryPoint]:
        return _unique(
            entry_point
            for entry_point in self.find_entry_points(self.group)
            if entry_point.name.lower() == name
        )

    async def open(self, url: str) -> object:
        """Call the factory for ``url``'s scheme with ``url`` (awaiting it if
        it is async) and check that the result satisfies ``protocol``.

        Raises `InvalidAdapterURL`, `AdapterNotFound` (listing the known
        schemes), `EntryPointConflict` or `AdapterLoadError`; errors the
        factory raises (`InvalidAdapterURL`, a `StorageError` for a refused
        connection...) propagate unchanged.
        """
        if isinstance(url, str) and url.lower() in self.schemes():
            raise InvalidAdapterURL(url, f"has no scheme; did you mean {url.lower()}:// ?")
        scheme = url_scheme(url)
        factory, source = self._resolve(scheme, url)
        adapter = factory(url)
        if inspect.isawaitable(adapter):
            adapter = await adapter
        if not isinstance(adapter, self.protocol):
            missing = [
                name for name in _protocol_members(self.protocol) if not hasattr(adapter, name)
            ]
            raise AdapterLoadError(
                self.port,
                scheme,
                source,
                f"the factory returned a {type(adapter).__name__}, which is not a "
                f"{self.protocol.__name__} (missing: {', '.join(missing)})",
            )
        return adapter


STORAGE_ADAPTERS = AdapterRegistry(
    "storage",
    STORAGE_GROUP,
    Storage,
    {
        "memory": "kernel.storage.memory:open_memory_storage",
        "sqlite": "kernel.storage.sqlite:open_sqlite_storage",
    },
)
BUS_ADAPTERS = AdapterRegistry(
    "bus",
    BUS_GROUP,
    Bus,
    {"local": "kernel.bus.local:open_local_bus"},
)
NOTIFIER_ADAPTERS = AdapterRegistry(
    "notifier",
    NOTIFIER_GROUP,
    Notifier,
    {"log": "kernel.notifier.log:open_log_notifier"},
)


MIGRATIONS = AdapterRegistry(
    "schema migration",
    MIGRATE_GROUP,
    object,
    {
        "memory": "kernel.storage.memory:upgrade_memory_storage",
        "sqlite": "kernel.storage.sqlite:upgrade_sqlite_storage",
    },
)
"""How each storage scheme brings its schema up to date: a callable taking
the URL and returning the schema versions it applied (awaitable or not)."""


async def upgrade_storage(url: str) -> list[int]:
    """Apply the missing schema migrations of the storage at ``url`` (``kernel
    db upgrade``); the versions applied, [] if it was up to date. Shared
    databases (PostgreSQL) are only ever migrated this way, never at start."""
    if not isinstance(url, str):
        raise InvalidAdapterURL(url, "must be a URL string")
    upgrade = MIGRATIONS.factory_for(url_scheme(url), url=url)
    applied = upgrade(url)
    if inspect.isawaitable(applied):
        applied = await applied
    return sorted(cast("list[int]", applied))


async def open_storage(url: str) -> Storage:
    """Open the storage adapter for ``url`` (``memory://``, ``sqlite:///state.db``...).

    Raises `InvalidAdapterURL`, `AdapterNotFound` (listing the known
    schemes), `EntryPointConflict` or `AdapterLoadError`.
    """
    return cast(Storage, await STORAGE_ADAPTERS.open(url))


async def open_bus(url: str) -> Bus:
    """Open the bus adapter for ``url`` (``local://``, ``nats://host``...)."""
    return cast(Bus, await BUS_ADAPTERS.open(url))


async def open_notifier(url: str) -> Notifier:
    """Open the notifier adapter for ``url`` (``log://``, ``smtp://host``...)."""
    return cast(Notifier, await NOTIFIER_ADAPTERS.open(url))


# ---------------------------------------------------------------------------
# Plugins
# ---------------------------------------------------------------------------

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _import_module(reference: str, module_name: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise PluginNotFound(reference, f"no module named {missing!r}") from None
        raise PluginLoadError(
            reference, f"importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error
    except Exception as error:
        raise PluginLoadError(
            reference, f"importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error


def _load_path(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    if _DOTTED.fullmatch(module_name) is None or _DOTTED.fullmatch(attribute) is None:
        raise PluginNotFound(
            reference, "malformed; expected 'package.module:attribute' or an entry-point name"
        )
    found = _import_module(reference, module_name)
    where = module_name
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise PluginNotFound(reference, f"{where!r} has no attribute {name!r}") from None
        where = f"{where}.{name}" if where != module_name else f"{module_name}:{name}"
    return found


def _load_entry_point(reference: str, find_entry_points: EntryPointSource) -> object:
    installed = list(find_entry_points(PLUGINS_GROUP))
    claims = _unique(entry_point for entry_point in installed if entry_point.name == reference)
    if not claims:
        names = ", ".join(sorted({entry_point.name for entry_point in installed})) or "none"
        raise PluginNotFound(
            reference,
            f"no entry point of that name in group {PLUGINS_GROUP!r} (installed: {names}); "
            "to load from a module, write 'package.module:attribute'",
        )
    if len(claims) > 1:
        raise EntryPointConflict(
            PLUGINS_GROUP, reference, [_describe(entry_point) for entry_point in claims]
        )
    (entry_point,) = claims
    try:
        return entry_point.load()
    except Exception as error:
        raise PluginLoadError(
            reference, f"{_describe(entry_point)}: {type(error).__name__}: {error}"
        ) from error


def load_plugin_factory(
    reference: str, *, find_entry_points: EntryPointSource = installed_entry_points
) -> Callable[..., object]:
    """The plugin factory ``reference`` names: an entry point in group
    ``kernel.plugins`` (``"retention"``) or ``"package.module:attribute"``
    (what the runner's ``--plugin`` option and config files hold).

    Raises `PluginNotFound` for a malformed reference or a missing module,
    attribute or entry point; `PluginLoadError` when the module raises while
    importing or the object is not callable; `EntryPointConflict` when two
    distributions claim the name.
    """
    if not isinstance(reference, str) or not reference.strip():
        raise PluginNotFound(str(reference), "must be a non-empty str")
    if ":" in reference:
        found = _load_path(reference)
    else:
        found = _load_entry_point(reference, find_entry_points)
    if not callable(found):
        raise PluginLoadError(reference, f"names a {type(found).__name__}, which is not callable")
    return cast(Callable[..., object], found)

"""Contrib packages: optional integrations run beside a kernel, found by entry point.

A contrib (``contrib/<name>/``, distribution ``trio-kernel-<name>``, import
``kernel_<name>``) is not a port: it does not store, carry or notify, it
*faces* a kernel, as the HTTP face (health probes, Prometheus, a JSON API, a
dashboard) or OpenTelemetry does. It registers one object under the name of
its config table, in the entry-point group ``kernel.contrib``::

    [project.entry-points."kernel.contrib"]
    http = "kernel_http:contrib"

and ``kernel run`` runs it when the config file has that table (``[http]``),
structured into the contrib's own attrs class (``config_type``) by the
kernel's config structuring, so a mistake is one line naming the file and
the key path. The object is a `Contrib`: its ``serve(kernel, config,
source=...)`` is an async context manager the runner enters *before* the
kernel starts (so a port in use fails before anything runs) and leaves after
the kernel has stopped; what it serves must therefore cope with a kernel
that is not running yet, or any more (`KernelControl` raises
`KernelNotRunning` then). Embedding applications enter the same context
manager themselves. Entry points are only loaded for the tables a file has:
installing a contrib changes nothing until it is configured.

The config loader accepts exactly the tables that installed contribs claim
(`contrib_tables`); any other unknown table stays an error.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import attrs

from kernel.config.structure import key_path, structure_config
from kernel.errors import AdapterLoadError, AdapterNotFound, EntryPointConflict
from kernel.runtime.discovery import EntryPointSource, installed_entry_points

if TYPE_CHECKING:
    from kernel.runtime.kernel import Kernel

__all__ = [
    "CONTRIB_GROUP",
    "RESERVED_TABLES",
    "Contrib",
    "ContribEntry",
    "contrib_tables",
    "load_contrib",
    "load_contribs",
    "open_contribs",
]

CONTRIB_GROUP: Final = "kernel.contrib"
"""The entry-point group contrib packages register in; the name is the table."""

RESERVED_TABLES: Final = ("kernel", "plugins")
"""The kernel's own tables, which no contrib may claim."""


@runtime_checkable
class Contrib(Protocol):
    """What an entry point in ``kernel.contrib`` names (see the module docstring)."""

    #: The attrs class the contrib's table is structured into.
    config_type: type[Any]

    def serve(
        self, kernel: Kernel, config: Any, *, source: str
    ) -> AbstractAsyncContextManager[object]:
        """Run beside ``kernel`` while the context is entered. ``source``
        names the config file, for errors raised on entry (a `ConfigError`
        for a port in use, a missing token...)."""
        ...


@attrs.frozen
class ContribEntry:
    """A contrib chosen by a config file: its table ``name``, the loaded
    `Contrib`, its structured ``config`` and the file (``source``)."""

    name: str
    contrib: Contrib
    config: Any
    source: str


def _describe(entry_point: importlib.metadata.EntryPoint) -> str:
    text = f"entry point {entry_point.name} = {entry_point.value}"
    if entry_point.dist is not None:
        text += f" (distribution {entry_point.dist.metadata['Name']} {entry_point.dist.version})"
    return text


def contrib_tables(find_entry_points: EntryPointSource = installed_entry_points) -> list[str]:
    """The top-level config tables installed contribs claim (nothing is
    imported: only the entry points' names are read)."""
    names = {entry_point.name for entry_point in find_entry_points(CONTRIB_GROUP)}
    return sorted(names - set(RESERVED_TABLES))


def load_contrib(
    name: str, *, find_entry_points: EntryPointSource = installed_entry_points
) -> Contrib:
    """The `Contrib` registered for table ``name``.

    Raises `AdapterNotFound` when none is installed, `EntryPointConflict`
    when two distributions (or the kernel's own tables) claim it, and
    `AdapterLoadError` when it fails to import or is not a `Contrib`.
    """
    claims = {
        entry_point.value: entry_point
        for entry_point in find_entry_points(CONTRIB_GROUP)
        if entry_point.name == name
    }
    if name in RESERVED_TABLES and claims:
        raise EntryPointConflict(
            CONTRIB_GROUP,
            name,
            ["the kernel's own table"] + [_describe(ep) for ep in claims.values()],
        )
    if not claims:
        raise AdapterNotFound(
            "contrib", name, f"[{name}]", CONTRIB_GROUP, contrib_tables(find_entry_points)
        )
    if len(claims) > 1:
        raise EntryPointConflict(CONTRIB_GROUP, name, [_describe(ep) for ep in claims.values()])
    (entry_point,) = claims.values()
    try:
        found = entry_point.load()
    except Exception as error:
        raise AdapterLoadError(
            "contrib",
            name,
            _describe(entry_point),
            f"loading failed: {type(error).__name__}: {error}",
        ) from error
    if not isinstance(found, Contrib) or not isinstance(getattr(found, "config_type", None), type):
        raise AdapterLoadError(
            "contrib",
            name,
            _describe(entry_point),
            f"names a {type(found).__name__}, not a Contrib (config_type and serve())",
        )
    return found


def load_contribs(
    tables: Mapping[str, Mapping[str, Any]],
    *,
    source: str,
    find_entry_points: EntryPointSource = installed_entry_points,
) -> list[ContribEntry]:
    """Load the contrib of each table in ``tables`` (`KernelConfig.contrib`)
    and structure the table into its ``config_type``: a bad value is a
    `ConfigError` naming ``source`` and the key path (``http.listen``)."""
    entries = []
    for name, table in tables.items():
        contrib = load_contrib(name, find_entry_points=find_entry_points)
        config = structure_config(table, contrib.config_type, source=source, prefix=key_path(name))
        entries.append(ContribEntry(name, contrib, config, source))
    return entries


@asynccontextmanager
async def open_contribs(kernel: Kernel, entries: Sequence[ContribEntry]) -> AsyncIterator[None]:
    """Enter every contrib's ``serve`` in order (leaving them in reverse)."""
    async with AsyncExitStack() as stack:
        for entry in entries:
            await stack.enter_async_context(
                entry.contrib.serve(kernel, entry.config, source=entry.source)
            )
        yield

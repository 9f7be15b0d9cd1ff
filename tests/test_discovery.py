"""Finding adapters by URL scheme and plugins by reference, with fake entry
points (an `EntryPointSource` seam, and importlib.metadata patched once to
show the module-level functions read the installed ones)."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import types
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from kernel.bus.local import LocalBus
from kernel.errors import (
    AdapterLoadError,
    AdapterNotFound,
    EntryPointConflict,
    InvalidAdapterURL,
    PluginLoadError,
    PluginNotFound,
)
from kernel.notifier.log import LogNotifier
from kernel.ports import Storage
from kernel.runtime import discovery
from kernel.runtime.discovery import (
    STORAGE_GROUP,
    AdapterRegistry,
    load_plugin_factory,
    open_bus,
    open_notifier,
    open_storage,
)
from kernel.storage.memory import MemoryStorage
from kernel.urls import redact_url, url_options, url_scheme

EntryPoint = importlib.metadata.EntryPoint


def entry_points(*triples: tuple[str, str, str]) -> Callable[[str], list[EntryPoint]]:
    """A fake `EntryPointSource` holding ``(group, name, value)`` triples."""
    points = [EntryPoint(name, value, group) for group, name, value in triples]

    def find(group: str) -> list[EntryPoint]:
        return [point for point in points if point.group == group]

    return find


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Registers an in-memory module with the given attributes; returns its name."""

    def make(**attributes: Any) -> str:
        name = f"fake_adapter_{uuid.uuid4().hex[:8]}"
        module = types.ModuleType(name)
        for key, value in attributes.items():
            setattr(module, key, value)
        monkeypatch.setitem(sys.modules, name, module)
        return name

    return make


def registry(*triples: tuple[str, str, str]) -> AdapterRegistry:
    return AdapterRegistry(
        "storage",
        STORAGE_GROUP,
        Storage,
        {"memory": "kernel.storage.memory:open_memory_storage"},
        find_entry_points=entry_points(*triples),
    )


# -- built-ins -------------------------------------------------------------------


async def test_the_built_ins_open_with_nothing_installed() -> None:
    assert isinstance(await open_storage("memory://"), MemoryStorage)
    assert isinstance(await open_bus("local://?buffer=4"), LocalBus)
    assert isinstance(await open_notifier("log://"), LogNotifier)


async def test_schemes_are_case_insensitive() -> None:
    assert isinstance(await open_storage("MEMORY://"), MemoryStorage)


async def test_each_open_makes_a_new_adapter() -> None:
    first, second = await open_storage("memory://"), await open_storage("memory://")
    await first.put("ns", "k", 1)
    assert await second.get("ns", "k") is None


# -- URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "has no scheme"),
        ("state.db", "has no scheme"),
        ("://host", "has no scheme"),
        ("1db://host", "has no scheme"),
        (" memory://", "leading or trailing whitespace"),
        ("memory", "did you mean memory:// ?"),
        (5, "must be a str, not int"),
    ],
)
async def test_malformed_urls_are_refused(url: object, reason: str) -> None:
    with pytest.raises(InvalidAdapterURL, match=re.escape(reason)):
        await open_storage(url)  # type: ignore[arg-type]


async def test_an_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(AdapterNotFound) as missing:
        await registry((STORAGE_GROUP, "sqlite", "x:y")).open("postgresql://app:s3cret@db/jobs")
    error = missing.value
    assert (error.port, error.scheme, error.known) == (
        "storage",
        "postgresql",
        ["memory", "sqlite"],
    )
    assert str(error) == (
        "no storage adapter for scheme 'postgresql' in 'postgresql://app:***@db/jobs'; "
        "known schemes: memory, sqlite (adapters register in entry-point group 'kernel.storage')"
    )
    assert "s3cret" not in str(error)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/jobs", "postgresql://app:***@db:5432/jobs"),
        ("redis://:s3cret@cache/0", "redis://:***@cache/0"),
        ("redis://user@cache/0", "redis://user@cache/0"),
        ("sqlite:///state.db", "sqlite:///state.db"),
        ("nats://host/a:b@c", "nats://host/a:b@c"),
    ],
)
def test_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_url_scheme_lower_cases() -> None:
    assert url_scheme("PostgreSQL+psycopg://host") == "postgresql+psycopg"


def test_url_options_are_parsed_and_checked() -> None:
    assert url_options("x://?a=1&b=", allowed={"a", "b"}) == {"a": "1", "b": ""}
    assert url_options("x://host/path?a=1", allowed={"a"}, location=True) == {"a": "1"}
    with pytest.raises(InvalidAdapterURL, match="known options: a, b"):
        url_options("x://?c=1", allowed={"a", "b"})
    with pytest.raises(InvalidAdapterURL, match="cannot be parsed"):
        url_options("x://?novalue", allowed={"novalue"})


# -- entry points ----------------------------------------------------------------


class FakeStorage(MemoryStorage):
    """A storage an entry point can return, remembering its URL."""

    url: str = ""


def sync_factory(url: str) -> FakeStorage:
    storage = FakeStorage()
    storage.url = url
    return storage


async def async_factory(url: str) -> FakeStorage:
    return sync_factory(url)


@pytest.mark.parametrize("factory", [sync_factory, async_factory], ids=["sync", "async"])
async def test_an_entry_point_factory_gets_the_whole_url(
    fake_module: Callable[..., str], factory: Callable[[str], Any]
) -> None:
    module = fake_module(open_storage=factory)
    adapters = registry((STORAGE_GROUP, "fake", f"{module}:open_storage"))
    opened = await adapters.open("Fake://host/db?x=1")
    assert isinstance(opened, FakeStorage)
    assert opened.url == "Fake://host/db?x=1"
    assert adapters.schemes() == ["fake", "memory"]


async def test_a_factory_must_return_the_port(fake_module: Callable[..., str]) -> None:
    class HalfStorage:
        async def get(self, namespace: str, key: str) -> None: ...

    module = fake_module(factory=lambda url: HalfStorage())
    adapters = registry((STORAGE_GROUP, "half", f"{module}:factory"))
    with pytest.raises(AdapterLoadError) as refused:
        await adapters.open("half://")
    assert "returned a HalfStorage, which is not a Storage" in str(refused.value)
    assert "missing: aclose, clear, delete, get_many, items, keys, put" in str(refused.value)


async def test_a_factory_error_propagates(fake_module: Callable[..., str]) -> None:
    def factory(url: str) -> Storage:
        raise InvalidAdapterURL(url, "needs a path")

    module = fake_module(factory=factory)
    with pytest.raises(InvalidAdapterURL, match="needs a path"):
        await registry((STORAGE_GROUP, "picky", f"{module}:factory")).open("picky://")


async def test_an_entry_point_that_fails_to_load_names_itself() -> None:
    adapters = registry((STORAGE_GROUP, "broken", "no_such_module_anywhere:factory"))
    with pytest.raises(AdapterLoadError) as refused:
        await adapters.open("broken://")
    assert str(refused.value).startswith(
        "storage adapter 'broken' (entry point broken = no_such_module_anywhere:factory): "
        "loading failed: ModuleNotFoundError"
    )
    assert isinstance(refused.value.__cause__, ModuleNotFoundError)


async def test_an_entry_point_must_name_a_callable(fake_module: Callable[..., str]) -> None:
    module = fake_module(factory=42)
    with pytest.raises(AdapterLoadError, match="names a int, not a callable"):
        await registry((STORAGE_GROUP, "num", f"{module}:factory")).open("num://")


async def test_an_entry_point_cannot_take_a_built_in_scheme(
    fake_module: Callable[..., str],
) -> None:
    module = fake_module(factory=sync_factory)
    adapters = registry((STORAGE_GROUP, "Memory", f"{module}:factory"))
    with pytest.raises(EntryPointConflict) as conflict:
        await adapters.open("memory://")
    assert conflict.value.providers == [
        "the built-in storage adapter (a reserved scheme)",
        f"entry point Memory = {module}:factory",
    ]
    assert "uninstall one or rename its entry point" in str(conflict.value)


def test_a_conflict_names_the_distribution() -> None:
    (real,) = [
        point for point in importlib.metadata.entry_points(group="pytest11") if point.name == "trio"
    ]
    adapters = AdapterRegistry(
        "storage", "pytest11", Storage, {"trio": "x:y"}, find_entry_points=lambda group: [real]
    )
    with pytest.raises(EntryPointConflict, match=r"\(distribution pytest-trio [\d.]+\)"):
        adapters.factory_for("trio")


async def test_two_entry_points_for_one_scheme_conflict(fake_module: Callable[..., str]) -> None:
    first, second = fake_module(factory=sync_factory), fake_module(factory=sync_factory)
    adapters = registry(
        (STORAGE_GROUP, "dup", f"{first}:factory"), (STORAGE_GROUP, "dup", f"{second}:factory")
    )
    with pytest.raises(
        EntryPointConflict, match=re.escape("'dup' in entry-point group 'kernel.storage'")
    ):
        await adapters.open("dup://")
    assert isinstance(await adapters.open("memory://"), MemoryStorage)  # others unaffected


async def test_one_entry_point_seen_twice_is_no_conflict(fake_module: Callable[..., str]) -> None:
    module = fake_module(factory=sync_factory)
    adapters = registry(
        (STORAGE_GROUP, "twice", f"{module}:factory"), (STORAGE_GROUP, "twice", f"{module}:factory")
    )
    assert isinstance(await adapters.open("twice://"), FakeStorage)


async def test_the_module_level_functions_read_installed_entry_points(
    monkeypatch: pytest.MonkeyPatch, fake_module: Callable[..., str]
) -> None:
    module = fake_module(factory=sync_factory)
    real = importlib.metadata.entry_points

    def patched(**params: Any) -> Iterable[EntryPoint]:
        if params.get("group") == STORAGE_GROUP:
            return [EntryPoint("installed", f"{module}:factory", STORAGE_GROUP)]
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", patched)
    opened = await open_storage("installed://x")
    assert isinstance(opened, FakeStorage)
    assert discovery.STORAGE_ADAPTERS.schemes() == ["installed", "memory", "sqlite"]


# -- plugins -----------------------------------------------------------------------


def plugin_factory() -> str:
    return "plugin"


class PluginHolder:
    @staticmethod
    def create() -> str:
        return "created"


def test_a_plugin_loads_from_module_and_attribute(fake_module: Callable[..., str]) -> None:
    module = fake_module(factory=plugin_factory, Holder=PluginHolder)
    assert load_plugin_factory(f"{module}:factory")() == "plugin"
    assert load_plugin_factory(f"{module}:Holder.create")() == "created"


def test_a_plugin_loads_from_an_entry_point(fake_module: Callable[..., str]) -> None:
    module = fake_module(factory=plugin_factory)
    found = load_plugin_factory(
        "retention",
        find_entry_points=entry_points(("kernel.plugins", "retention", f"{module}:factory")),
    )
    assert found is plugin_factory


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        ("", "must be a non-empty str"),
        ("mod:", "malformed"),
        (":attr", "malformed"),
        ("a b:c", "malformed"),
        ("a:b:c", "malformed"),
        ("a.:b", "malformed"),
        ("no_such_plugin_module_xyz:factory", "no module named 'no_such_plugin_module_xyz'"),
        ("no_such_pkg_xyz.sub:factory", "no module named 'no_such_pkg_xyz'"),
        (
            "missing-entry",
            "no entry point of that name in group 'kernel.plugins' (installed: other)",
        ),
    ],
)
def test_plugin_references_that_name_nothing(reference: str, reason: str) -> None:
    source = entry_points(("kernel.plugins", "other", "x:y"))
    with pytest.raises(PluginNotFound, match=re.escape(reason)):
        load_plugin_factory(reference, find_entry_points=source)


def test_a_missing_attribute_is_named(fake_module: Callable[..., str]) -> None:
    module = fake_module(Holder=PluginHolder)
    with pytest.raises(PluginNotFound) as missing:
        load_plugin_factory(f"{module}:Holder.nope")
    assert str(missing.value) == (
        f"plugin '{module}:Holder.nope' not found: '{module}:Holder' has no attribute 'nope'"
    )
    with pytest.raises(PluginNotFound, match=f"'{module}' has no attribute 'absent'"):
        load_plugin_factory(f"{module}:absent")


def test_a_plugin_whose_module_fails_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"crashing_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import numpy_that_is_not_installed_xyz\n")
    broken = f"{name}_raises"
    (tmp_path / f"{broken}.py").write_text("raise RuntimeError('config missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match="No module named 'numpy_that_is_not_installed_xyz'"):
        load_plugin_factory(f"{name}:factory")
    with pytest.raises(PluginLoadError, match="RuntimeError: config missing") as failed:
        load_plugin_factory(f"{broken}:factory")
    assert isinstance(failed.value.__cause__, RuntimeError)


def test_a_plugin_must_be_callable(fake_module: Callable[..., str]) -> None:
    module = fake_module(CONSTANT=3)
    with pytest.raises(PluginLoadError, match="names a int, which is not callable"):
        load_plugin_factory(f"{module}:CONSTANT")


def test_a_broken_plugin_entry_point_is_a_load_error() -> None:
    source = entry_points(("kernel.plugins", "gone", "no_such_module_xyz:factory"))
    with pytest.raises(PluginLoadError, match="entry point gone = no_such_module_xyz:factory"):
        load_plugin_factory("gone", find_entry_points=source)


def test_two_plugin_entry_points_with_one_name_conflict() -> None:
    source = entry_points(("kernel.plugins", "dup", "a:b"), ("kernel.plugins", "dup", "c:d"))
    with pytest.raises(EntryPointConflict):
        load_plugin_factory("dup", find_entry_points=source)


async def test_a_scheme_family_plus_variant_falls_back_to_the_family(
    fake_module: Callable[..., str],
) -> None:
    """``apprise+slack://`` opens the adapter registered as ``apprise`` (with
    the whole URL), unless an entry point claims the exact scheme."""
    module = fake_module(family=sync_factory, exact=async_factory)
    adapters = registry(
        (STORAGE_GROUP, "fake", f"{module}:family"),
        (STORAGE_GROUP, "fake+exact", f"{module}:exact"),
    )
    opened = await adapters.open("fake+anything://host/x")
    assert isinstance(opened, FakeStorage)
    assert opened.url == "fake+anything://host/x"
    assert adapters.factory_for("fake+exact") is async_factory
    with pytest.raises(AdapterNotFound):
        await adapters.open("other+variant://")

"""The memory storage against the storage contract, plus the JSON and name
rules of `kernel.ports` it applies, and checks that the contract catches
broken adapters."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.errors import InvalidAdapterURL, InvalidStorageKey, NotJSONSerializable
from kernel.ports import JSON, Storage, copy_json
from kernel.storage.base import validate_key, validate_namespace
from kernel.storage.memory import MemoryStorage, open_memory_storage
from kernel.testing.storage_contract import StorageContract


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    async def storage(self) -> AsyncIterator[MemoryStorage]:
        async with MemoryStorage() as storage:
            yield storage

    @pytest.fixture
    def contract_clock(self) -> trio.abc.Clock:
        return trio.testing.MockClock(autojump_threshold=0)


# -- copy_json -------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def _containers(value: object) -> list[object]:
    found: list[object] = []
    if isinstance(value, dict | list):
        found.append(value)
        for item in value.values() if isinstance(value, dict) else value:
            found.extend(_containers(item))
    return found


@given(json_values)
@settings(max_examples=200)
def test_copy_json_returns_an_equal_value_sharing_no_container(value: JSON) -> None:
    copied = copy_json(value)
    assert copied == value
    assert json.loads(json.dumps(copied)) == value
    original_ids = {id(container) for container in _containers(value)}
    assert not original_ids & {id(container) for container in _containers(copied)}


@st.composite
def poisoned(draw: st.DrawFn) -> tuple[object, str, type]:
    """A JSON tree with one non-JSON value planted at a known path."""
    poison = draw(
        st.sampled_from([{1}, b"x", object(), math.nan, -math.inf, 1j, frozenset(), bytearray()])
    )
    steps = draw(st.lists(st.one_of(st.integers(0, 3), st.text(max_size=4)), max_size=6))
    value: object = poison
    path = ""
    for step in reversed(steps):
        if isinstance(step, int):
            siblings = draw(st.lists(json_values, min_size=step, max_size=step))
            value = [*siblings, value]
            path = f"[{step}]" + path
        else:
            siblings_map = draw(st.dictionaries(st.text(max_size=4), json_values, max_size=3))
            siblings_map.pop(step, None)
            value = {**siblings_map, step: value}
            path = f"[{step!r}]" + path
    return value, "value" + path, type(poison)


@given(poisoned())
@settings(max_examples=100)
def test_copy_json_names_the_path_of_the_first_bad_part(case: tuple[object, str, type]) -> None:
    value, path, kind = case
    with pytest.raises(NotJSONSerializable) as refused:
        copy_json(value)
    assert refused.value.path == path
    assert type(refused.value.value) is kind
    assert str(refused.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1, 2, {3}]}, "value['a'][2]: set is not JSON (use a list)"),
        ({"t": math.nan}, "value['t']: float nan is not JSON (JSON has no NaN or Infinity)"),
        ({1: "x"}, "value: key 1 is int, not str (JSON object keys are text)"),
        ([b"x"], "value[0]: bytes is not JSON (decode it, or encode it as base64 text)"),
    ],
)
def test_copy_json_messages_read_well(value: object, message: str) -> None:
    with pytest.raises(NotJSONSerializable, match=None) as refused:
        copy_json(value)
    assert str(refused.value) == message
    assert isinstance(refused.value, TypeError)
    assert isinstance(refused.value, ValueError)


def test_copy_json_normalises_subclasses_to_plain_types() -> None:
    class Text(str):
        pass

    copied = copy_json(OrderedDict(a=(1, 2.5, Text("x"), True)))
    assert copied == {"a": [1, 2.5, "x", True]}
    assert type(copied) is dict
    assert type(copied["a"]) is list
    assert [type(item) for item in copied["a"]] == [int, float, str, bool]


def test_copy_json_uses_the_given_root_name() -> None:
    with pytest.raises(NotJSONSerializable, match=r"^payload\[0\]: set"):
        copy_json([set()], path="payload")


def test_a_value_repeated_without_a_cycle_is_fine() -> None:
    shared = [1, 2]
    assert copy_json({"a": shared, "b": shared, "c": [shared]}) == {
        "a": [1, 2],
        "b": [1, 2],
        "c": [[1, 2]],
    }


# -- names -----------------------------------------------------------------


def test_name_errors_say_what_and_where() -> None:
    with pytest.raises(InvalidStorageKey) as refused:
        validate_key("ab\x00c")
    assert str(refused.value) == (
        "invalid storage key 'ab\\x00c': contains a control character (U+0000) at index 2"
    )
    with pytest.raises(
        InvalidStorageKey, match=r"namespace .* is 256 bytes in UTF-8, more than 255"
    ):
        validate_namespace("n" * 256)
    with pytest.raises(InvalidStorageKey, match="must be a str, not int"):
        validate_key(1)


# -- the memory storage's own behaviour --------------------------------------


async def test_a_cancelled_put_stores_nothing() -> None:
    storage = MemoryStorage()
    with trio.CancelScope() as scope:
        scope.cancel()
        await storage.put("ns", "k", 1)
    assert scope.cancelled_caught
    assert await storage.keys("ns") == []


async def test_the_factory_opens_a_new_empty_storage_each_time() -> None:
    first = open_memory_storage("memory://")
    await first.put("ns", "k", 1)
    second = open_memory_storage("memory://")
    assert await second.keys("ns") == []
    assert first is not second


@pytest.mark.parametrize("url", ["memory://somewhere", "memory:///path", "memory://?size=1"])
def test_the_factory_refuses_what_it_does_not_understand(url: str) -> None:
    with pytest.raises(InvalidAdapterURL):
        open_memory_storage(url)


operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete", "clear"]),
        st.sampled_from(["ns1", "ns2"]),
        st.sampled_from(["a", "ab", "b", "é", "a/b"]),
        json_values,
    ),
    max_size=30,
)


@given(operations)
@settings(max_examples=60, deadline=None)
async def test_behaves_like_a_dict_of_dicts(ops: list[tuple[str, str, str, Any]]) -> None:
    storage = MemoryStorage()
    model: dict[str, dict[str, JSON]] = {"ns1": {}, "ns2": {}}
    for op, namespace, key, value in ops:
        if op == "put":
            await storage.put(namespace, key, value)
            model[namespace][key] = value
        elif op == "delete":
            assert await storage.delete(namespace, key) == (key in model[namespace])
            model[namespace].pop(key, None)
        else:
            assert await storage.clear(namespace) == len(model[namespace])
            model[namespace].clear()
    for namespace, stored in model.items():
        assert await storage.items(namespace) == sorted(stored.items())
        assert await storage.keys(namespace, "a") == sorted(k for k in stored if k[0] == "a")


# -- the contract catches broken adapters ------------------------------------


class SharingStorage(MemoryStorage):
    """Broken: keeps and hands out the caller's objects themselves."""

    shared: dict[tuple[str, str], Any]

    async def put(self, namespace: str, key: str, value: Any) -> None:
        await super().put(namespace, key, value)
        if not hasattr(self, "shared"):
            self.shared = {}
        self.shared[namespace, key] = value

    async def get(self, namespace: str, key: str, default: JSON = None) -> JSON:
        got = self.shared.get((namespace, key), default)
        return got  # type: ignore[no-any-return]


class UnsortedStorage(MemoryStorage):
    """Broken: keys in insertion order."""

    async def keys(self, namespace: str, prefix: str = "") -> list[str]:
        return list(reversed(await super().keys(namespace, prefix)))


class WriteThenCheckStorage(MemoryStorage):
    """Broken: writes a placeholder before validating."""

    async def put(self, namespace: str, key: str, value: Any) -> None:
        await super().put(namespace, key, None)
        await super().put(namespace, key, value)


class LikePrefixStorage(MemoryStorage):
    """Broken: treats the prefix as a SQL LIKE pattern without escaping."""

    async def keys(self, namespace: str, prefix: str = "") -> list[str]:
        import fnmatch

        everything = await super().keys(namespace)
        pattern = prefix.replace("%", "*").replace("_", "?") + "*"
        return [key for key in everything if fnmatch.fnmatchcase(key, pattern)]


ContractCall = Callable[[StorageContract, Storage], Awaitable[None]]


@pytest.mark.parametrize(
    ("broken", "call"),
    [
        (SharingStorage, lambda c, s: c.test_returned_values_are_copies(s, "ns")),
        (SharingStorage, lambda c, s: c.test_stored_values_are_copies(s, "ns")),
        (UnsortedStorage, lambda c, s: c.test_keys_are_sorted_by_code_point(s, "ns")),
        (LikePrefixStorage, lambda c, s: c.test_prefix_is_literal(s, "ns")),
        (
            WriteThenCheckStorage,
            lambda c, s: c.test_bad_values_are_refused_and_change_nothing(s, "ns", {1, 2}, "value"),
        ),
    ],
    ids=["shares-on-read", "shares-on-write", "unsorted", "like-prefix", "writes-first"],
)
async def test_the_contract_catches(broken: type[Storage], call: ContractCall) -> None:
    storage = broken()
    with pytest.raises(AssertionError):
        await call(StorageContract(), storage)

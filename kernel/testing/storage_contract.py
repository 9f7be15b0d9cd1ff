"""The storage contract: the tests every `kernel.ports.Storage` adapter passes.

Subclass `StorageContract` in a test module and provide a ``storage``
fixture yielding an open adapter (and closing it afterwards)::

    class TestSQLiteStorage(StorageContract):
        @pytest.fixture
        async def storage(self, tmp_path):
            storage = await open_storage(f"sqlite:///{tmp_path}/state.db")
            yield storage
            await storage.aclose()

Each test works in fresh namespaces (``ns`` and ``other_ns``, random
names), so the adapter may share one database across tests. The suite
never sleeps. Override `StorageContract.contract_clock` to return
``trio.testing.MockClock(autojump_threshold=0)`` for an adapter that does no
I/O outside trio (a hang then fails at once instead of after `timeout`
real seconds); leave it None for anything that talks to a server or a
thread, since a mock clock would jump past its real waits.
"""

from __future__ import annotations

import enum
import math
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import ClassVar

import pytest
import trio

from kernel.errors import InvalidStorageKey, NotJSONSerializable, StorageClosed
from kernel.ports import JSON, Storage, copy_json
from kernel.storage.base import MAX_KEY_BYTES, MAX_NAMESPACE_BYTES

__all__ = [
    "BAD_NAMES",
    "BAD_VALUES",
    "JSON_SAMPLES",
    "StorageContract",
    "assert_same_json",
    "random_json",
]


class _Color(enum.IntEnum):
    red = 1


def _circular() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


def _deep(levels: int) -> list[object]:
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


JSON_SAMPLES: list[tuple[str, object]] = [
    ("null", None),
    ("true", True),
    ("false", False),
    ("zero", 0),
    ("negative-int", -17),
    ("int64-max", 2**63 - 1),
    ("int64-min", -(2**63)),
    ("bigint", 2**100 + 1),
    ("float", 1.5),
    ("float-one-stays-float", 1.0),
    ("float-tenth", 0.1),
    ("float-tiny", 5e-324),
    ("float-huge", 1.7976931348623157e308),
    ("float-negative", -2.5e-10),
    ("empty-str", ""),
    ("str", "hello"),
    ("str-unicode", "snow ☃, clef 𝄞, ключ, 键, e\u0301"),
    ("str-escapes", 'quote " backslash \\ slash / tab \t newline \n nul \x00 del \x7f'),
    ("str-long", "x" * 100_000),
    ("empty-list", []),
    ("empty-dict", {}),
    ("list-mixed", [None, True, 0, 1.25, "a", [], {}]),
    ("dict-nested", {"a": {"b": {"c": [1, {"d": None}]}}, "": "empty key", "☃": 1}),
    ("deep", _deep(100)),
    ("tuple-reads-as-list", (1, (2, 3))),
    ("int-enum-reads-as-int", _Color.red),
]
"""``(id, value)`` pairs covering every JSON type and its edges; each must
read back equal (after `copy_json`) and of the same types."""

BAD_VALUES: list[tuple[str, object, str]] = [
    ("set", {1, 2}, "value"),
    ("bytes", b"raw", "value"),
    ("object", object(), "value"),
    ("nan", math.nan, "value"),
    ("infinity", math.inf, "value"),
    ("minus-infinity", -math.inf, "value"),
    ("complex", 1j, "value"),
    ("int-key", {1: "one"}, "value"),
    ("none-key", {None: "none"}, "value"),
    ("lone-surrogate", "\ud800", "value"),
    ("surrogate-key", {"\udfff": 1}, "value"),
    ("nested-set", {"a": [1, 2, {3}]}, "value['a'][2]"),
    ("nested-nan", [{"x": math.nan}], "value[0]['x']"),
    ("circular", _circular(), "value[0]"),
    ("too-deep", _deep(300), "value" + "[0]" * 256),
]
"""``(id, value, path)``: values every adapter refuses with
`NotJSONSerializable` whose ``path`` is ``path``."""

BAD_NAMES: list[tuple[str, object]] = [
    ("empty", ""),
    ("not-str", 7),
    ("none", None),
    ("bytes", b"key"),
    ("nul", "a\x00b"),
    ("newline", "a\nb"),
    ("c1-control", "a\x85b"),
    ("lone-surrogate", "a\ud800b"),
    ("too-long", "k" * (MAX_KEY_BYTES + 1)),
    ("too-long-utf8", "é" * (MAX_KEY_BYTES // 2 + 1)),
]
"""``(id, name)``: keys (and namespaces) every adapter refuses with
`InvalidStorageKey`."""

_ALPHABET = "abcxyzABC019 _-.:/%*?[]\\\"'\t\n\x00éßø☃ключ键𝄞\U0001f511"


def random_json(rng: random.Random, depth: int = 0) -> JSON:
    """A random JSON value from ``rng`` (seeded, so failures reproduce)."""
    kinds = ["null", "bool", "int", "bigint", "float", "str"]
    if depth < 4:
        kinds += ["list", "dict", "dict"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-(2**31), 2**31)
    if kind == "bigint":
        return rng.randint(-(2**80), 2**80)
    if kind == "float":
        return math.ldexp(rng.random() - 0.5, rng.randint(-1000, 1000))
    if kind == "str":
        return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 12)))
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {
        "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 6))): random_json(
            rng, depth + 1
        )
        for _ in range(rng.randint(0, 5))
    }


def assert_same_json(actual: object, expected: object, path: str = "value") -> None:
    """Assert ``actual`` equals ``expected`` with the same JSON types at
    every level (``1.0`` is not ``1``, ``True`` is not ``1``), after
    normalising ``expected`` as `copy_json` does."""
    _assert_same(actual, copy_json(expected), path)


def _assert_same(actual: object, expected: JSON, path: str) -> None:
    assert type(actual) is type(expected), (
        f"{path}: {type(actual).__name__} {actual!r:.80}, expected "
        f"{type(expected).__name__} {expected!r:.80}"
    )
    if isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert sorted(actual) == sorted(expected), f"{path}: keys differ"
        for key, item in expected.items():
            _assert_same(actual[key], item, f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(actual, list)
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for index, item in enumerate(expected):
            _assert_same(actual[index], item, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r:.80} != {expected!r:.80}"


def _namespace() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


StorageCall = Callable[[Storage], Awaitable[object]]


class StorageContract:
    """The storage contract; subclass it and define a ``storage`` fixture."""

    timeout: ClassVar[float] = 30.0
    """Seconds before a test that should be quick is failed as hung."""

    @pytest.fixture
    def storage(self) -> Storage:
        pytest.fail(
            f"{type(self).__name__} must define a `storage` fixture yielding the adapter "
            "under test (see kernel.testing.storage_contract)"
        )

    @pytest.fixture
    def contract_clock(self) -> trio.abc.Clock | None:
        """The clock the timed tests run under; None means trio's real clock."""
        return None

    @pytest.fixture
    def ns(self) -> str:
        return _namespace()

    @pytest.fixture
    def other_ns(self) -> str:
        return _namespace()

    # -- the basics ----------------------------------------------------------

    async def test_satisfies_the_protocol(self, storage: Storage) -> None:
        assert isinstance(storage, Storage)

    async def test_a_missing_key_reads_as_the_default(self, storage: Storage, ns: str) -> None:
        assert await storage.get(ns, "missing") is None
        assert await storage.get(ns, "missing", {"fallback": 1}) == {"fallback": 1}
        assert await storage.get_many(ns, ["missing"]) == {}
        assert await storage.keys(ns) == []
        assert await storage.items(ns) == []
        assert await storage.delete(ns, "missing") is False

    @pytest.mark.parametrize(
        "value", [value for _, value in JSON_SAMPLES], ids=[name for name, _ in JSON_SAMPLES]
    )
    async def test_every_json_value_round_trips(
        self, storage: Storage, ns: str, value: object
    ) -> None:
        await storage.put(ns, "k", value)  # type: ignore[arg-type]
        assert_same_json(await storage.get(ns, "k", "<missing>"), value)
        assert_same_json((await storage.get_many(ns, ["k"]))["k"], value)
        ((key, item),) = await storage.items(ns)
        assert key == "k"
        assert_same_json(item, value)

    async def test_random_values_round_trip(self, storage: Storage, ns: str) -> None:
        rng = random.Random(20240501)
        values = {f"v{index:03d}": random_json(rng) for index in range(150)}
        for key, value in values.items():
            await storage.put(ns, key, value)
        stored = await storage.items(ns)
        assert [key for key, _ in stored] == sorted(values)
        for key, item in stored:
            assert_same_json(item, values[key], path=key)

    async def test_a_stored_null_is_told_apart_from_a_missing_key(
        self, storage: Storage, ns: str
    ) -> None:
        await storage.put(ns, "null", None)
        assert await storage.get(ns, "null", "default") is None
        assert await storage.get_many(ns, ["null", "missing"]) == {"null": None}
        assert await storage.keys(ns) == ["null"]

    async def test_put_overwrites(self, storage: Storage, ns: str) -> None:
        await storage.put(ns, "k", {"version": 1})
        await storage.put(ns, "k", [2])
        assert await storage.get(ns, "k") == [2]
        assert await storage.keys(ns) == ["k"]

    async def test_get_many_returns_only_existing_keys(self, storage: Storage, ns: str) -> None:
        await storage.put(ns, "a", 1)
        await storage.put(ns, "b", 2)
        assert await storage.get_many(ns, ["b", "missing", "a", "b"]) == {"a": 1, "b": 2}
        assert await storage.get_many(ns, []) == {}
        assert await storage.get_many(ns, iter(["a"])) == {"a": 1}
        with pytest.raises(InvalidStorageKey):
            await storage.get_many(ns, "ab")  # a str is not a list of keys

    async def test_delete_removes_once(self, storage: Storage, ns: str) -> None:
        await storage.put(ns, "a", 1)
        await storage.put(ns, "b", 2)
        assert await storage.delete(ns, "a") is True
        assert await storage.delete(ns, "a") is False
        assert await storage.get(ns, "a") is None
        assert await storage.keys(ns) == ["b"]
        await storage.put(ns, "a", 3)
        assert await storage.get(ns, "a") == 3

    async def test_clear_empties_one_namespace(
        self, storage: Storage, ns: str, other_ns: str
    ) -> None:
        for key in ("a", "b", "c"):
            await storage.put(ns, key, key)
        await storage.put(other_ns, "a", "kept")
        assert await storage.clear(ns) == 3
        assert await storage.keys(ns) == []
        assert await storage.clear(ns) == 0
        assert await storage.items(other_ns) == [("a", "kept")]

    async def test_namespaces_are_isolated(self, storage: Storage, ns: str, other_ns: str) -> None:
        await storage.put(ns, "shared", "first")
        await storage.put(other_ns, "shared", "second")
        await storage.put(ns, "only-first", 1)
        assert await storage.get(ns, "shared") == "first"
        assert await storage.get(other_ns, "shared") == "second"
        assert await storage.keys(other_ns) == ["shared"]
        assert await storage.delete(ns, "shared") is True
        assert await storage.get(other_ns, "shared") == "second"
        assert await storage.get_many(other_ns, ["only-first"]) == {}

    async def test_namespaces_are_not_key_prefixes(self, storage: Storage, ns: str) -> None:
        # An adapter that stores "namespace/key" in one column must not let
        # ("a", "b/c") and ("a/b", "c") collide.
        await storage.put(f"{ns}:a", "b:c", "first")
        await storage.put(f"{ns}:a:b", "c", "second")
        await storage.put(f"{ns}/a", "b/c", "third")
        await storage.put(f"{ns}/a/b", "c", "fourth")
        assert await storage.get(f"{ns}:a", "b:c") == "first"
        assert await storage.get(f"{ns}:a:b", "c") == "second"
        assert await storage.get(f"{ns}/a", "b/c") == "third"
        assert await storage.get(f"{ns}/a/b", "c") == "fourth"
        assert await storage.keys(f"{ns}:a") == ["b:c"]

    # -- ordering and prefixes -------------------------------------------------

    async def test_keys_are_sorted_by_code_point(self, storage: Storage, ns: str) -> None:
        keys = ["b", "a", "B", "A", "10", "9", "a-b", "a_b", "aa", "é", "z", "ß", "键", "𝄞", "~"]
        for key in random.Random(7).sample(keys, len(keys)):
            await storage.put(ns, key, key)
        assert await storage.keys(ns) == sorted(keys)
        assert [key for key, _ in await storage.items(ns)] == sorted(keys)

    async def test_prefix_is_literal(self, storage: Storage, ns: str) -> None:
        keys = ["a%b", "a_b", "axb", "a*b", "a?b", "a[b]", "a\\b", "ab", "a", "b.a"]
        for key in keys:
            await storage.put(ns, key, key)
        assert await storage.keys(ns, "a%") == ["a%b"]
        assert await storage.keys(ns, "a_") == ["a_b"]
        assert await storage.keys(ns, "a*") == ["a*b"]
        assert await storage.keys(ns, "a?") == ["a?b"]
        assert await storage.keys(ns, "a[") == ["a[b]"]
        assert await storage.keys(ns, "a\\") == ["a\\b"]
        assert await storage.keys(ns, "a") == sorted(key for key in keys if key.startswith("a"))
        assert await storage.keys(ns, "ab") == ["ab"]
        assert await storage.keys(ns, "abc") == []
        assert await storage.keys(ns, "") == sorted(keys)
        assert await storage.items(ns, "a%") == [("a%b", "a%b")]

    async def test_unicode_names_are_kept_exactly(self, storage: Storage, ns: str) -> None:
        # NFC "é" and NFD "e" + U+0301 are different keys: no normalisation.
        names = ["ключ", "键", "🔑", "\u00e9", "e\u0301", "a b", "x\ufffdy"]
        space = f"{ns}-ünï-☃"
        for index, name in enumerate(names):
            await storage.put(space, name, index)
        assert await storage.keys(space) == sorted(names)
        for index, name in enumerate(names):
            assert await storage.get(space, name) == index
        assert await storage.keys(space, "e") == ["e\u0301"]

    async def test_the_longest_names_are_accepted(self, storage: Storage) -> None:
        namespace = "n" * (MAX_NAMESPACE_BYTES - 12) + uuid.uuid4().hex[:12]
        key = "é" * (MAX_KEY_BYTES // 2)
        await storage.put(namespace, key, 1)
        assert await storage.get(namespace, key) == 1
        assert await storage.keys(namespace, key) == [key]
        await storage.clear(namespace)
        with pytest.raises(InvalidStorageKey):
            await storage.put(namespace + "n", key, 1)
        with pytest.raises(InvalidStorageKey):
            await storage.put(namespace, key + "k", 1)

    # -- copies ----------------------------------------------------------------

    async def test_returned_values_are_copies(self, storage: Storage, ns: str) -> None:
        await storage.put(ns, "k", {"list": [1, 2], "nested": {"a": 1}})
        got = await storage.get(ns, "k")
        assert isinstance(got, dict)
        got["list"].append(3)  # type: ignore[union-attr]
        got["nested"]["a"] = 99  # type: ignore[index, call-overload]
        got["new"] = True
        many = (await storage.get_many(ns, ["k"]))["k"]
        assert isinstance(many, dict)
        many["new"] = True
        ((_, item),) = await storage.items(ns)
        assert isinstance(item, dict)
        item["list"] = None
        assert await storage.get(ns, "k") == {"list": [1, 2], "nested": {"a": 1}}

    async def test_stored_values_are_copies(self, storage: Storage, ns: str) -> None:
        value: dict[str, list[int]] = {"list": [1, 2]}
        await storage.put(ns, "k", value)
        value["list"].append(3)
        value["other"] = []
        assert await storage.get(ns, "k") == {"list": [1, 2]}

    # -- bad input changes nothing ----------------------------------------------

    @pytest.mark.parametrize(
        ("value", "path"),
        [(value, path) for _, value, path in BAD_VALUES],
        ids=[name for name, _, _ in BAD_VALUES],
    )
    async def test_bad_values_are_refused_and_change_nothing(
        self, storage: Storage, ns: str, value: object, path: str
    ) -> None:
        await storage.put(ns, "existing", {"kept": True})
        with pytest.raises(NotJSONSerializable) as refused:
            await storage.put(ns, "existing", value)  # type: ignore[arg-type]
        assert refused.value.path == path
        assert str(refused.value).startswith(f"{path}: ")
        with pytest.raises(NotJSONSerializable):
            await storage.put(ns, "new", value)  # type: ignore[arg-type]
        assert await storage.items(ns) == [("existing", {"kept": True})]

    @pytest.mark.parametrize(
        "name", [name for _, name in BAD_NAMES], ids=[name for name, _ in BAD_NAMES]
    )
    @pytest.mark.parametrize(
        "call",
        [
            "get",
            "get_many",
            "put",
            "delete",
            "keys",
            "items",
            "clear",
            "put-namespace",
            "keys-prefix",
        ],
    )
    async def test_bad_names_are_refused_and_change_nothing(
        self, storage: Storage, ns: str, name: object, call: str
    ) -> None:
        await storage.put(ns, "existing", 1)
        bad: str = name  # type: ignore[assignment]
        calls: dict[str, StorageCall] = {
            "get": lambda s: s.get(ns, bad),
            "get_many": lambda s: s.get_many(ns, ["existing", bad]),
            "put": lambda s: s.put(ns, bad, 2),
            "delete": lambda s: s.delete(ns, bad),
            "keys": lambda s: s.keys(bad),
            "items": lambda s: s.items(bad),
            "clear": lambda s: s.clear(bad),
            "put-namespace": lambda s: s.put(bad, "existing", 2),
            "keys-prefix": lambda s: s.keys(ns, bad),
        }
        if call == "keys-prefix" and name == "":
            assert await calls[call](storage) == ["existing"]  # "" selects every key
        else:
            with pytest.raises(InvalidStorageKey):
                await calls[call](storage)
        assert await storage.items(ns) == [("existing", 1)]

    # -- concurrency -----------------------------------------------------------

    async def test_concurrent_puts_all_land(
        self, storage: Storage, ns: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        async def put(index: int) -> None:
            await storage.put(ns, f"key-{index:03d}", {"index": index})

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for index in range(100):
                    nursery.start_soon(put, index)
        assert await storage.keys(ns) == [f"key-{index:03d}" for index in range(100)]
        assert await storage.get(ns, "key-042") == {"index": 42}

    async def test_concurrent_writes_to_one_key_leave_one_whole_value(
        self, storage: Storage, ns: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        values: list[JSON] = [{"writer": index, "payload": [index] * 50} for index in range(20)]

        async def put(value: JSON) -> None:
            await storage.put(ns, "contended", value)

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for value in values:
                    nursery.start_soon(put, value)
        assert await storage.get(ns, "contended") in values

    async def test_concurrent_deletes_succeed_exactly_once(
        self, storage: Storage, ns: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        await storage.put(ns, "once", 1)
        results: list[bool] = []

        async def delete() -> None:
            results.append(await storage.delete(ns, "once"))

        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(delete)
        assert sorted(results) == [False] * 9 + [True]

    async def test_concurrent_reads_see_whole_values(
        self, storage: Storage, ns: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        versions: list[JSON] = [{"v": version, "body": [version] * 100} for version in range(10)]
        seen: list[JSON] = []

        async def write() -> None:
            for version in versions:
                await storage.put(ns, "k", version)

        async def read() -> None:
            for _ in range(10):
                seen.append(await storage.get(ns, "k"))

        await storage.put(ns, "k", versions[0])
        with trio.fail_after(self.timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                nursery.start_soon(read)
                nursery.start_soon(read)
        assert all(value in versions for value in seen)

    # -- closing ---------------------------------------------------------------

    async def test_closed_storage_refuses_every_call(self, storage: Storage, ns: str) -> None:
        await storage.put(ns, "k", 1)
        await storage.aclose()
        await storage.aclose()  # idempotent
        calls: list[StorageCall] = [
            lambda s: s.get(ns, "k"),
            lambda s: s.get_many(ns, ["k"]),
            lambda s: s.put(ns, "k", 2),
            lambda s: s.delete(ns, "k"),
            lambda s: s.keys(ns),
            lambda s: s.items(ns),
            lambda s: s.clear(ns),
        ]
        for call in calls:
            with pytest.raises(StorageClosed):
                await call(storage)

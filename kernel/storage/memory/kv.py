"""The ``memory://`` storage: a dict per namespace, gone when the process ends.

The default for tests and for kernels with nothing worth keeping. It keeps
every rule of the `kernel.ports.Storage` contract, so code tested against it
behaves the same on SQLite or PostgreSQL: values are validated and stored as
JSON text (``json.dumps`` on write, ``json.loads`` on read), which gives
copy-on-read for free and makes a float come back exactly as a durable
adapter would return it.

Every method completes without yielding once past its checkpoint, so each is
atomic with respect to other trio tasks; there are no threads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

import attrs
import trio

from kernel.errors import StorageClosed
from kernel.ports import JSON, JSONLike, Storage, copy_json
from kernel.storage.base import (
    validate_key,
    validate_keys,
    validate_namespace,
    validate_prefix,
)
from kernel.urls import url_options

__all__ = ["MemoryStorage", "open_memory_storage", "upgrade_memory_storage"]

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


@attrs.define(eq=False)
class MemoryStorage:
    """Key-value storage in process memory; see `kernel.ports.Storage`.

    Usable as ``async with MemoryStorage() as storage:``.
    """

    _namespaces: dict[str, dict[str, str]] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    async def __aenter__(self) -> MemoryStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _enter(self) -> None:
        """The checkpoint every operation starts with (trio's rule that every
        async call can be cancelled and lets others run), then the closed check."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise StorageClosed("the memory storage is closed")

    async def get(self, namespace: str, key: str, default: JSON = None) -> JSON:
        validate_namespace(namespace)
        validate_key(key)
        await self._enter()
        text = self._namespaces.get(namespace, {}).get(key)
        return default if text is None else _decode(text)

    async def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, JSON]:
        validate_namespace(namespace)
        wanted = validate_keys(keys)
        await self._enter()
        stored = self._namespaces.get(namespace, {})
        return {key: _decode(stored[key]) for key in wanted if key in stored}

    async def put(self, namespace: str, key: str, value: JSONLike) -> None:
        validate_namespace(namespace)
        validate_key(key)
        text = _encode(copy_json(value))
        await self._enter()
        self._namespaces.setdefault(namespace, {})[key] = text

    async def delete(self, namespace: str, key: str) -> bool:
        validate_namespace(namespace)
        validate_key(key)
        await self._enter()
        stored = self._namespaces.get(namespace)
        if stored is None or key not in stored:
            return False
        del stored[key]
        if not stored:
            del self._namespaces[namespace]
        return True

    async def keys(self, namespace: str, prefix: str = "") -> list[str]:
        validate_namespace(namespace)
        validate_prefix(prefix)
        await self._enter()
        stored = self._namespaces.get(namespace, {})
        return sorted(key for key in stored if key.startswith(prefix))

    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, JSON]]:
        validate_namespace(namespace)
        validate_prefix(prefix)
        await self._enter()
        stored = self._namespaces.get(namespace, {})
        return [(key, _decode(stored[key])) for key in sorted(stored) if key.startswith(prefix)]

    async def clear(self, namespace: str) -> int:
        validate_namespace(namespace)
        await self._enter()
        return len(self._namespaces.pop(namespace, {}))

    async def aclose(self) -> None:
        """Forget everything; later calls raise `StorageClosed`. Idempotent."""
        self._closed = True
        self._namespaces.clear()
        await trio.lowlevel.checkpoint()


def _decode(text: str) -> JSON:
    return cast("JSON", json.loads(text))


def open_memory_storage(url: str) -> MemoryStorage:
    """The factory for ``memory://`` (no host, path or options): a new,
    empty storage on every call."""
    url_options(url, allowed=())
    return MemoryStorage()


if TYPE_CHECKING:

    def _keeps_the_port(storage: MemoryStorage) -> Storage:
        return storage  # mypy proves MemoryStorage satisfies the Storage protocol


def upgrade_memory_storage(url: str) -> list[int]:
    """``kernel db upgrade`` for ``memory://``: there is no schema to upgrade."""
    return []

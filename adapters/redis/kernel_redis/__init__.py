"""Redis for trio-kernel: one Redis, many kernel nodes.

- `open_storage` (entry point ``kernel.storage``, schemes ``redis`` and
  ``rediss``): `RedisStorage`, the key-value `kernel.ports.Storage`, the
  `kernel.ports.JobStore` (one Lua script per call) and the
  `kernel.ports.EnqueueListener` (wake-ups over pub/sub) in one;
- `open_bus` (entry point ``kernel.bus``): `RedisBus`, publish/subscribe
  over Redis pub/sub, at most once.

Built on coredis, which runs on trio natively (through anyio). URLs are
Redis's plus the kernel's options (`parse_redis_url`)::

    redis://:secret@cache.internal:6379/0?prefix=kernel:prod:&pool_size=20
"""

from __future__ import annotations

from kernel_redis._url import RedisOptions, parse_redis_url
from kernel_redis.bus import RedisBus, RedisSubscription, open_bus
from kernel_redis.storage import RedisStorage, open_storage

__all__ = [
    "RedisBus",
    "RedisOptions",
    "RedisStorage",
    "RedisSubscription",
    "open_bus",
    "open_storage",
    "parse_redis_url",
]

__version__ = "0.1.0.dev0"

"""The kernel's contract suites, unchanged, against a real Redis server.

Each test works under a key prefix of its own (deleted afterwards), so the
job-store suite starts from an empty store and runs never meet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kernel.testing.bus_contract import BusContract
from kernel.testing.jobstore_contract import JobStoreContract
from kernel.testing.storage_contract import StorageContract
from kernel_redis import RedisBus, RedisStorage, open_bus, open_storage


class TestRedisStorage(StorageContract):
    @pytest.fixture
    async def storage(self, redis_url: str) -> AsyncIterator[RedisStorage]:
        async with await open_storage(redis_url) as storage:
            yield storage


class TestRedisJobStore(JobStoreContract):
    @pytest.fixture
    async def job_store(self, redis_url: str) -> AsyncIterator[RedisStorage]:
        async with await open_storage(redis_url) as storage:
            yield storage


class TestRedisBus(BusContract):
    settle = 0.3  # a real server: wait this long for stragglers

    @pytest.fixture
    async def bus(self, redis_url: str) -> AsyncIterator[RedisBus]:
        async with await open_bus(redis_url) as bus:
            yield bus

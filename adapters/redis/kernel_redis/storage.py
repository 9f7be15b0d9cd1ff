"""The ``redis://`` storage: key-value state and jobs shared by many nodes.

`RedisStorage` is one object with three ports, as the PostgreSQL adapter's
is: `kernel.ports.Storage` (JSON values in namespaces),
`kernel.ports.JobStore` (jobs under leases, once-only schedule slots,
schedule state), with exactly the memory store's semantics so the
kernel's contract suites pass against a real server, and
`kernel.ports.EnqueueListener`: idle nodes wake when any node makes a job
claimable, through a pub/sub channel, instead of polling.

What holds across nodes, and how:

- **every job-store call is atomic**: each is one Lua script
  (`kernel_redis._lua`), which Redis runs with nothing in between: a claim
  cannot hand out a job twice, a slot is claimed with its job or not at
  all, a dedup key is checked and taken in the same step;
- **a key-value namespace** is a hash (values) beside a sorted set (keys,
  for sorted prefix scans by ``ZRANGEBYLEX``), changed together by scripts;
- **durability is the server's**: a call returns once Redis has applied it
  in memory. What survives a crash of the server depends on its
  persistence settings (``adapters/redis/README.md``).

A call that the connection was lost under is tried again on a fresh
connection only when doing it twice means the same (reads, `put`,
`heartbeat`, `complete`, which acts only on a job the worker still holds);
others raise `StorageError`, and what they did, if anything, stands.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import trio
from coredis.commands.script import Script

from kernel.errors import JobConflict, StorageClosed, StorageError
from kernel.ports import (
    JSON,
    EnqueueListener,
    JobRecord,
    JobState,
    JobStore,
    JSONLike,
    Storage,
    copy_json,
)
from kernel.storage.base import (
    MAX_CLAIM_LIMIT,
    MAX_LIST_LIMIT,
    check_enqueue,
    checked_name,
    clean_error_text,
    dedup_conflict_reason,
    finished_state,
    lease_expired_error,
    now_or_wall_clock,
    schedule_state_object,
    slot_of,
    to_epoch_micros,
    utc_datetime,
    validate_aging,
    validate_job_id,
    validate_job_ids,
    validate_key,
    validate_keys,
    validate_lease,
    validate_limit,
    validate_name,
    validate_namespace,
    validate_prefix,
    validate_state,
)
from kernel_redis import _lua
from kernel_redis._client import Client, RedisConnection, log, redis_error_in
from kernel_redis._records import (
    encode_json,
    job_fields,
    job_from_fields,
    sortable_time,
    stored_copy,
    time_from_sortable,
)
from kernel_redis._url import STORAGE_OPTIONS, RedisOptions, parse_redis_url

__all__ = ["RedisStorage", "open_storage"]

_PURGE_BATCH: Final = 1000
"""Jobs one purge script deletes before the next (a script blocks the server)."""
_RECONNECT_DELAYS: Final = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_MICROSECOND: Final = timedelta(microseconds=1)


def _decode(text: str) -> JSON:
    return cast("JSON", json.loads(text))


def _byte_range(prefix: str) -> tuple[str | bytes, str | bytes]:
    """The ``ZRANGEBYLEX`` bounds of the members starting with ``prefix``: no
    UTF-8 text holds the byte 0xFF, so ``[prefix, prefix + 0xFF)`` is exactly
    them (and byte order is code-point order)."""
    if not prefix:
        return "-", "+"
    encoded = prefix.encode()
    return b"[" + encoded, b"(" + encoded + b"\xff"


@attrs.define(eq=False)
class _Scripts:
    """The job store's scripts, registered on one client (EVALSHA, loaded
    again by coredis when the server has forgotten them, as after a restart)."""

    enqueue: Script[str]
    complete_claim: Script[str]
    heartbeat: Script[str]
    requeue: Script[str]
    bury: Script[str]
    cancel: Script[str]
    expired: Script[str]
    requeue_expired: Script[str]
    retry_dead: Script[str]
    list: Script[str]
    purge: Script[str]
    next_due: Script[str]
    claim_slot: Script[str]
    kv_put: Script[str]
    kv_delete: Script[str]
    kv_clear: Script[str]
    kv_range: Script[str]

    @classmethod
    def register(cls, client: Client) -> _Scripts:
        sources = {field.name: getattr(_lua, field.name.upper()) for field in attrs.fields(cls)}
        return cls(**{name: client.register_script(text) for name, text in sources.items()})


@attrs.define(eq=False)
class RedisStorage:
    """`kernel.ports.Storage`, `kernel.ports.JobStore` and
    `kernel.ports.EnqueueListener` on one Redis database, under a key prefix.

    Open with `open_storage` (or ``await RedisStorage.open(options)``);
    usable as ``async with``. See the module docstring for what holds
    across nodes.
    """

    options: RedisOptions
    _redis: RedisConnection = attrs.field(alias="redis")
    _scripts: _Scripts = attrs.field(init=False)
    _prefix: str = attrs.field(init=False)
    _listeners: set[trio.CancelScope] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        self._scripts = _Scripts.register(self._redis.client)
        self._prefix = self.options.prefix

    @classmethod
    async def open(cls, options: RedisOptions) -> RedisStorage:
        """Connect and check the server answers; `StorageError` if not."""
        redis = await RedisConnection.open(
            options, what="storage", error=StorageError, closed_error=StorageClosed
        )
        return cls(options, redis=redis)

    async def __aenter__(self) -> RedisStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._redis.closed else "open"
        return f"<RedisStorage {self.options.where} ({state})>"

    @property
    def closed(self) -> bool:
        return self._redis.closed

    @property
    def where(self) -> str:
        return self.options.where

    async def aclose(self) -> None:
        """Stop the listeners and close the client; later calls raise
        `StorageClosed`. Idempotent."""
        for scope in self._listeners:
            scope.cancel()
        await self._redis.close()

    async def _script(
        self, script: Script[str], args: Sequence[str | bytes | int], *, idempotent: bool = False
    ) -> Any:
        async def call(_client: Client) -> Any:
            return await script(keys=[], args=[self._prefix, *args])

        return await self._redis.run(call, idempotent=idempotent)

    async def _closed_check(self) -> None:
        self._redis.check_open()
        await trio.lowlevel.checkpoint()

    # -- key-value state (kernel.ports.Storage) --------------------------------

    def _kv(self, namespace: str) -> str:
        return f"{self._prefix}kv:{namespace}"

    async def get(self, namespace: str, key: str, default: JSON = None) -> JSON:
        validate_namespace(namespace)
        validate_key(key)
        text = await self._redis.run(
            lambda client: client.hget(self._kv(namespace), key), idempotent=True
        )
        return default if text is None else _decode(text)

    async def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, JSON]:
        validate_namespace(namespace)
        wanted = sorted(set(validate_keys(keys)))
        if not wanted:
            await self._closed_check()
            return {}
        values = await self._redis.run(
            lambda client: client.hmget(self._kv(namespace), wanted), idempotent=True
        )
        return {
            key: _decode(text) for key, text in zip(wanted, values, strict=True) if text is not None
        }

    async def put(self, namespace: str, key: str, value: JSONLike) -> None:
        validate_namespace(namespace)
        validate_key(key)
        text = encode_json(copy_json(value))
        await self._script(self._scripts.kv_put, [namespace, key, text], idempotent=True)

    async def delete(self, namespace: str, key: str) -> bool:
        validate_namespace(namespace)
        validate_key(key)
        return bool(await self._script(self._scripts.kv_delete, [namespace, key]))

    async def keys(self, namespace: str, prefix: str = "") -> list[str]:
        keys, _ = await self._range(namespace, prefix, values=False)
        return keys

    async def items(self, namespace: str, prefix: str = "") -> list[tuple[str, JSON]]:
        keys, values = await self._range(namespace, prefix, values=True)
        return [(key, _decode(text)) for key, text in zip(keys, values, strict=True)]

    async def _range(
        self, namespace: str, prefix: str, *, values: bool
    ) -> tuple[list[str], list[str]]:
        validate_namespace(namespace)
        validate_prefix(prefix)
        low, high = _byte_range(prefix)
        keys, texts = await self._script(
            self._scripts.kv_range,
            [namespace, low, high, "1" if values else "0"],
            idempotent=True,
        )
        return list(keys), list(texts)

    async def clear(self, namespace: str) -> int:
        validate_namespace(namespace)
        return int(await self._script(self._scripts.kv_clear, [namespace]))

    # -- jobs (kernel.ports.JobStore) ------------------------------------------

    async def enqueue(self, job: JobRecord) -> tuple[JobRecord, bool]:
        check_enqueue(job)
        slot = slot_of(job)
        slot_member, slot_score = "", "0"
        if slot is not None:
            schedule, fire_time = slot
            slot_member = sortable_time(fire_time) + schedule
            slot_score = str(to_epoch_micros(fire_time))
        args = [
            job.id,
            job.queue,
            str(job.priority),
            sortable_time(job.run_at),
            sortable_time(job.enqueued_at),
            slot_member,
            slot_score,
            job.dedup_key or "",
            *job_fields(job),
        ]
        answer = await self._script(self._scripts.enqueue, args)
        status = answer[0]
        if status == "ok":
            return stored_copy(job), True
        if status == "conflict":
            raise JobConflict(job.id, "a job with this id is already stored")
        if status == "slot":
            return stored_copy(job), False
        return job_from_fields(answer[1]), False

    async def claim(
        self,
        queue: str,
        *,
        worker: str,
        now: datetime,
        lease: timedelta,
        limit: int = 1,
        aging: timedelta | None = None,
    ) -> list[JobRecord]:
        validate_limit(limit, maximum=MAX_CLAIM_LIMIT)
        _, claimed = await self._complete_and_claim(queue, worker, now, (), lease, limit, aging)
        return claimed

    async def complete_and_claim(
        self,
        queue: str,
        *,
        worker: str,
        now: datetime,
        completed: Sequence[str] = (),
        lease: timedelta,
        limit: int = 0,
        aging: timedelta | None = None,
    ) -> tuple[set[str], list[JobRecord]]:
        validate_limit(limit, minimum=0, maximum=MAX_CLAIM_LIMIT)
        return await self._complete_and_claim(queue, worker, now, completed, lease, limit, aging)

    async def _complete_and_claim(
        self,
        queue: str,
        worker: str,
        now: datetime,
        completed: Sequence[str],
        lease: timedelta,
        limit: int,
        aging: timedelta | None,
    ) -> tuple[set[str], list[JobRecord]]:
        checked_name("queue", queue)
        checked_name("worker", worker)
        ids = list(dict.fromkeys(validate_job_ids(completed)))
        now = utc_datetime(now, field="now")
        now_us = to_epoch_micros(now)
        lease_us = validate_lease(lease) // _MICROSECOND
        aging = validate_aging(aging)
        aging_us = "" if aging is None else str(max(aging // _MICROSECOND, 1))
        args = [
            queue,
            worker,
            str(now_us),
            sortable_time(now + _MICROSECOND),
            str(now_us + lease_us),
            str(limit),
            aging_us,
            str(now_us),
            *ids,
        ]
        # not retried on a fresh connection: a claim is not idempotent (jobs a
        # lost reply claimed come back when their lease runs out)
        done, rows = await self._script(self._scripts.complete_claim, args)
        return set(done), [job_from_fields(row) for row in rows]

    async def heartbeat(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        ids = list(dict.fromkeys(validate_job_ids(job_ids)))
        validate_name("worker", worker)
        until_us = to_epoch_micros(utc_datetime(lease_until, field="lease_until"))
        if not ids:
            await self._closed_check()
            return set()
        held = await self._script(
            self._scripts.heartbeat, [worker, str(until_us), *ids], idempotent=True
        )
        return set(held)

    async def complete(self, job_id: str, *, worker: str, now: datetime | None = None) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        finished_us = str(to_epoch_micros(now_or_wall_clock(now)))
        # idempotent: it matches only a job still running under this worker, so
        # running it again after a lost reply is harmless (it answers False);
        # not retrying would let the lease run out and the job run twice
        args = ["-", worker, "0", "0", "0", "0", "", finished_us, job_id]
        done, _ = await self._script(self._scripts.complete_claim, args, idempotent=True)
        return bool(done)

    async def retry_later(self, job_id: str, *, worker: str, error: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        error = clean_error_text(error)
        run_at = utc_datetime(run_at, field="run_at")
        return await self._requeue(job_id, worker, run_at, "retry", error)

    async def release(self, job_id: str, *, worker: str, run_at: datetime) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        run_at = utc_datetime(run_at, field="run_at")
        return await self._requeue(job_id, worker, run_at, "release", "")

    async def _requeue(
        self, job_id: str, worker: str, run_at: datetime, mode: str, error: str
    ) -> bool:
        args = [job_id, worker, str(to_epoch_micros(run_at)), sortable_time(run_at), mode, error]
        return bool(await self._script(self._scripts.requeue, args))

    async def bury(
        self, job_id: str, *, worker: str, error: str, now: datetime | None = None
    ) -> bool:
        validate_job_id(job_id)
        validate_name("worker", worker)
        error = clean_error_text(error)
        finished_us = str(to_epoch_micros(now_or_wall_clock(now)))
        return bool(await self._script(self._scripts.bury, [job_id, worker, error, finished_us]))

    async def cancel(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        finished_us = str(to_epoch_micros(now_or_wall_clock(now)))
        fields = await self._script(self._scripts.cancel, [job_id, finished_us])
        return None if fields is None else job_from_fields(fields)

    async def reap_expired(self, now: datetime) -> list[str]:
        """Read which leases ended, then requeue those jobs in a second script
        that checks each is still running under the same worker with its
        lease ended (the message comes from `kernel.storage.base`)."""
        now_us = str(to_epoch_micros(utc_datetime(now, field="now")))
        expired = await self._script(self._scripts.expired, [now_us], idempotent=True)
        if not expired:
            return []
        args = [now_us]
        for job_id, worker, _seq in sorted(expired, key=lambda row: int(row[2])):
            message = clean_error_text(lease_expired_error(worker or None))
            args += (job_id, worker, message)
        return list(await self._script(self._scripts.requeue_expired, args))

    async def get_job(self, job_id: str) -> JobRecord | None:
        validate_job_id(job_id)
        fields = await self._redis.run(
            lambda client: client.hgetall(f"{self._prefix}job:{job_id}"), idempotent=True
        )
        return job_from_fields(fields) if fields else None

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        limit: int = 100,
        after_id: str | None = None,
        payloads: bool = True,
    ) -> list[JobRecord]:
        state = None if state is None else validate_state(state)
        if queue is not None:
            validate_name("queue", queue)
        validate_limit(limit, maximum=MAX_LIST_LIMIT)
        if after_id is not None:
            validate_job_id(after_id)
        if state is not None:
            index, queue_filter = f"st:{state.value}", queue or ""
        elif queue is not None:
            index, queue_filter = f"jq:{queue}", ""
        else:
            index, queue_filter = "all", ""
        args = [index, after_id or "", str(limit), queue_filter, "1" if payloads else "0"]
        rows = await self._script(self._scripts.list, args, idempotent=True)
        return [job_from_fields(row) for row in rows]

    async def retry_dead(self, job_id: str, *, now: datetime | None = None) -> JobRecord | None:
        validate_job_id(job_id)
        run_at = now_or_wall_clock(now)
        args = [job_id, str(to_epoch_micros(run_at)), sortable_time(run_at)]
        answer = await self._script(self._scripts.retry_dead, args)
        if answer is None:
            return None
        if answer[0] == "conflict":
            raise JobConflict(job_id, dedup_conflict_reason(answer[1]))
        return job_from_fields(answer[1])

    async def purge_dead(self, *, older_than: datetime | None = None) -> int:
        return await self.purge(state=JobState.dead, older_than=older_than)

    async def purge(self, *, state: JobState, older_than: datetime | None = None) -> int:
        """Deletes in batches of 1,000 jobs, one script each, so a large purge
        never blocks the server for long."""
        value = finished_state(state).value
        if older_than is None:
            bound = "+inf"
        else:
            bound = f"({to_epoch_micros(utc_datetime(older_than, field='older_than'))}"
        total = 0
        while True:
            count = int(await self._script(self._scripts.purge, [value, bound, str(_PURGE_BATCH)]))
            total += count
            if count < _PURGE_BATCH:
                return total

    async def next_due(self, queue: str | None = None) -> datetime | None:
        if queue is not None:
            checked_name("queue", queue)
        earliest = await self._script(self._scripts.next_due, [queue or ""], idempotent=True)
        return None if earliest is None else time_from_sortable(earliest)

    # -- schedules (kernel.ports.JobStore) -------------------------------------

    async def claim_slot(self, schedule: str, fire_time: datetime) -> bool:
        validate_name("schedule", schedule)
        fire_time = utc_datetime(fire_time, field="fire_time")
        args = [str(to_epoch_micros(fire_time)), sortable_time(fire_time) + schedule]
        return bool(await self._script(self._scripts.claim_slot, args))

    async def prune_slots(self, *, older_than: datetime) -> int:
        cutoff = to_epoch_micros(utc_datetime(older_than, field="older_than"))
        return int(
            await self._redis.run(
                # scores are whole microseconds: before the cutoff is at most cutoff - 1
                lambda client: client.zremrangebyscore(
                    f"{self._prefix}slots", float("-inf"), cutoff - 1
                )
            )
        )

    async def get_schedule_state(self, schedule: str) -> dict[str, JSON] | None:
        validate_name("schedule", schedule)
        text = await self._redis.run(
            lambda client: client.hget(f"{self._prefix}sched", schedule), idempotent=True
        )
        return None if text is None else cast("dict[str, JSON]", _decode(text))

    async def put_schedule_state(self, schedule: str, state: Mapping[str, JSONLike]) -> None:
        validate_name("schedule", schedule)
        text = encode_json(schedule_state_object(state))
        await self._redis.run(
            lambda client: client.hset(f"{self._prefix}sched", {schedule: text}), idempotent=True
        )

    # -- waking idle nodes (kernel.ports.EnqueueListener) ----------------------

    async def listen_enqueued(
        self,
        wake: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Until cancelled, call ``wake(queue)`` whenever any node makes a job
        of ``queue`` claimable or moves its due time (the scripts publish the
        queue's name on ``<prefix>wake``); ``task_status.started()`` once
        subscribed.

        A lost subscription is opened again with backoff (logged), and then
        every queue with queued jobs is woken, since messages published
        meanwhile were lost. `StorageError` if the first subscription fails;
        `StorageClosed` once the storage is closed.
        """
        self._redis.check_open()
        channel = f"{self._prefix}wake"
        started = False
        failures = 0
        with trio.CancelScope() as scope:
            self._listeners.add(scope)
            try:
                while True:
                    try:
                        async with self._redis.client.pubsub(
                            channels=[channel], retry_policy=None, ignore_subscribe_messages=True
                        ) as pubsub:
                            if not started:
                                started = True
                                task_status.started()
                            else:
                                log.info("storage %s: listening for jobs again", self.where)
                                await self._wake_every_queue(wake)
                            failures = 0
                            async for message in pubsub:
                                if message["type"] == "message":
                                    wake(str(message["data"]))
                    except BaseException as failure:
                        cause = redis_error_in(failure)
                        if cause is None:
                            raise
                        if not started:
                            raise StorageError(
                                f"Redis storage {self.options.where}: cannot listen for new "
                                f"jobs: {cause}"
                            ) from cause
                        delay = _RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)]
                        failures += 1
                        log.warning(
                            "storage %s: lost the wake-up subscription (%s); again in %.2f s",
                            self.options.where,
                            cause,
                            delay,
                        )
                        await trio.sleep(delay)
            finally:
                self._listeners.discard(scope)
        raise StorageClosed(f"storage {self.options.where} is closed")

    async def _wake_every_queue(self, wake: Callable[[str], None]) -> None:
        try:
            queues = await self._redis.run(
                lambda client: client.smembers(f"{self._prefix}queues"), idempotent=True
            )
        except StorageError as error:
            if isinstance(error, StorageClosed):
                raise
            return
        for queue in sorted(queues):
            wake(queue)


async def open_storage(url: str) -> RedisStorage:
    """The ``kernel.storage`` factory for ``redis://`` and ``rediss://`` URLs
    (see `kernel_redis.parse_redis_url`): connects and checks the server
    answers, so a wrong URL or a server that is down fails at start-up.
    Raises `InvalidAdapterURL` or `StorageError`."""
    options = parse_redis_url(url, allowed=STORAGE_OPTIONS)
    return await RedisStorage.open(options)


if TYPE_CHECKING:

    def _keeps_the_storage_port(storage: RedisStorage) -> Storage:
        return storage  # mypy proves RedisStorage satisfies the Storage protocol

    def _keeps_the_job_store_port(storage: RedisStorage) -> JobStore:
        return storage  # ... the JobStore protocol

    def _keeps_the_listener_port(storage: RedisStorage) -> EnqueueListener:
        return storage  # ... and the EnqueueListener protocol

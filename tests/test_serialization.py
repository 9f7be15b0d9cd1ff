"""Job arguments through the one cattrs converter: typed values out at
enqueue, back to the annotated types when the task runs."""

from __future__ import annotations

import enum
import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from trio.testing import MockClock

from kernel.config.files import parse_config
from kernel.errors import NotJSONSerializable, PayloadError
from kernel.jobs.queue import JobQueue
from kernel.jobs.record import JobRecord, JobState
from kernel.serialization import converter, dump_arguments, load_arguments
from kernel.storage.memory import MemoryJobStore
from kernel.time.clock import Clock
from kernel.time.scheduler import open_scheduler

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Tier(enum.Enum):
    FREE = "free"
    PRO = "pro"


@attrs.frozen
class Mail:
    to: str
    subject: str
    send_after: datetime
    tier: Tier = Tier.FREE
    tags: tuple[str, ...] = ()


def test_arguments_dump_to_json_and_load_to_the_annotated_types() -> None:
    mail = Mail("ann@example.com", "hi", T0, Tier.PRO, ("a",))
    args, kwargs = dump_arguments([mail, timedelta(minutes=5)], {"day": date(2026, 1, 2)})
    assert args == [
        {
            "to": "ann@example.com",
            "subject": "hi",
            "send_after": "2026-01-01T00:00:00+00:00",
            "tier": "pro",
            "tags": ["a"],
        },
        "5m",
    ]
    assert kwargs == {"day": "2026-01-02"}

    def send(mail: Mail, wait: timedelta, *, day: date) -> None: ...

    loaded_args, loaded_kwargs = load_arguments(send, args, kwargs)
    assert loaded_args == (mail, timedelta(minutes=5))
    assert loaded_kwargs == {"day": date(2026, 1, 2)}


def test_unannotated_parameters_get_the_json() -> None:
    def plain(a, b=None):  # type: ignore[no-untyped-def]
        ...

    def loose(a: Any, *rest: int, **more: str) -> None: ...

    assert load_arguments(plain, [{"x": 1}], {"b": [2]}) == (({"x": 1},), {"b": [2]})
    assert load_arguments(loose, [1, 2], {"c": 3}) == ((1, 2), {"c": 3})


def test_a_payload_that_does_not_fit_names_the_argument() -> None:
    def send(mail: Mail) -> None: ...

    with pytest.raises(PayloadError, match=r"argument 'mail' of .*send is not a Mail"):
        load_arguments(send, [{"to": "ann@example.com"}], {})
    with pytest.raises(PayloadError, match="do not fit"):
        load_arguments(send, [], {"other": 1})


def test_what_cannot_be_stored_is_refused_naming_the_path() -> None:
    with pytest.raises(NotJSONSerializable) as info:
        dump_arguments([1, {"x": object()}], {})
    assert info.value.path == "args[1]['x']"


def test_config_and_jobs_share_the_converter() -> None:
    # the strict config hooks structure job arguments too
    assert converter.structure("1h30m", timedelta) == timedelta(hours=1, minutes=30)
    with pytest.raises(Exception, match="integer"):
        converter.structure("3", int)
    assert parse_config('[kernel]\nshutdown_grace = "5s"\n', source="k.toml").kernel.shutdown_grace


async def test_a_task_receives_its_typed_arguments(autojump_clock: MockClock) -> None:
    received: list[tuple[Mail, Path]] = []
    store = MemoryJobStore()
    clock = Clock.starting_at(T0)
    async with open_scheduler(clock) as scheduler, trio.open_nursery() as nursery:
        queue = JobQueue(store, scheduler, worker="w", rng=random.Random(1))

        async def send(mail: Mail, attachment: Path) -> None:
            received.append((mail, attachment))

        queue.register("send", send)
        await nursery.start(queue.run)
        await queue.enqueue("send", Mail("ann@example.com", "hi", T0), Path("/tmp/a.pdf"))
        # a job stored by hand (or by an older release) that no longer fits
        await store.enqueue(
            JobRecord(id="old", task="send", args=[{"to": 1}, "/x"], run_at=T0, enqueued_at=T0)
        )
        queue.configure("default")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert received == [(Mail("ann@example.com", "hi", T0), Path("/tmp/a.pdf"))]
    dead = await store.get_job("old")
    assert dead is not None
    assert dead.state is JobState.dead
    assert dead.attempts == 1
    assert "argument 'mail'" in (dead.last_error or "")

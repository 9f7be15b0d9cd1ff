"""The bus contract: the tests every `kernel.ports.Bus` adapter passes.

Subclass `BusContract` in a test module and provide a ``bus`` fixture
yielding an open adapter (and closing it afterwards)::

    class TestNatsBus(BusContract):
        settle = 0.5  # a real network: wait this long for stragglers

        @pytest.fixture
        async def bus(self):
            bus = await open_bus("nats://localhost:4222")
            yield bus
            await bus.aclose()

Topics are prefixed per test (``self.topic("...")`` is not needed: every
test subscribes to patterns under a random root segment), so one broker
can serve many test runs at once.

Two class attributes tune the suite to the adapter. `BusContract.timeout`
bounds each wait for a message that must arrive (a hang guard, never
reached when the adapter is correct). `BusContract.settle` is how long a
subscription must stay quiet before the suite concludes nothing more will
arrive; it is only waited for where the contract checks that a message is
*not* delivered beyond what was counted. Override `BusContract.contract_clock`
to return ``trio.testing.MockClock(autojump_threshold=0)`` for an adapter that
does no I/O outside trio (both waits then pass in virtual time); leave it
None for a broker over the network.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import ClassVar

import pytest
import trio
import trio.testing

from kernel.errors import BusClosed, InvalidTopic, NotJSONSerializable
from kernel.ports import JSON, Bus, Message, Subscription, topic_matches
from kernel.testing.storage_contract import JSON_SAMPLES, assert_same_json

__all__ = [
    "BAD_PATTERNS",
    "BAD_TOPICS",
    "PATTERN_CASES",
    "BusContract",
    "check_a_subscription_outlives_an_outage",
]

PATTERN_CASES: list[tuple[str, str, bool]] = [
    ("user.*", "user.activity", True),
    ("user.*", "user.a.b", False),
    ("user.*", "user", False),
    ("user.*", "users.activity", False),
    ("*.activity", "user.activity", True),
    ("*.activity", "activity", False),
    ("*.activity", "a.b.activity", False),
    ("*", "user", True),
    ("*", "user.activity", False),
    ("*.*", "a.b", True),
    ("*.*", "a.b.c", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.d", False),
    ("a.*.c", "a.c", False),
    ("data.#", "data", True),
    ("data.#", "data.changed", True),
    ("data.#", "data.a.b", True),
    ("data.#", "database", False),
    ("data.#", "other.data", False),
    ("#", "anything", True),
    ("#", "a.b.c", True),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c.d", True),
    ("a.*.#", "a", False),
    ("exact.topic", "exact.topic", True),
    ("exact.topic", "exact.topic.more", False),
    ("exact.topic", "exact", False),
    ("Case.Sensitive", "case.sensitive", False),
    ("with-dash.under_score.co:lon", "with-dash.under_score.co:lon", True),
]
"""``(pattern, topic, delivered)``: AMQP-style matching, where ``*`` is one
segment and a final ``#`` is zero or more. The suite runs each row under a
random root segment (``root.`` + pattern, ``root.`` + topic)."""

BAD_TOPICS: list[tuple[str, object]] = [
    ("empty", ""),
    ("leading-dot", ".a"),
    ("trailing-dot", "a."),
    ("empty-segment", "a..b"),
    ("space", "a b"),
    ("star", "a.*"),
    ("hash", "a.#"),
    ("hash-alone", "#"),
    ("partial-wildcard", "a*"),
    ("non-ascii", "é"),
    ("slash", "a/b"),
    ("too-long", "a" * 256),
    ("not-str", 5),
    ("none", None),
]
"""``(id, topic)``: topics `publish` refuses with `InvalidTopic`."""

BAD_PATTERNS: list[tuple[str, object]] = [
    ("empty", ""),
    ("empty-segment", "a..b"),
    ("trailing-dot", "a."),
    ("hash-not-last", "#.a"),
    ("hash-in-middle", "a.#.b"),
    ("partial-star", "a*"),
    ("partial-hash", "a.b#"),
    ("nats-tail", "a.>"),
    ("space", "a b"),
    ("not-str", 5),
]
"""``(id, pattern)``: patterns `subscribe` refuses with `InvalidTopic`."""


def _root() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


def _sentinel(pattern: str) -> str:
    """A topic ``pattern`` certainly matches: published after a probe, its
    arrival first proves the probe was not delivered."""
    segments = ["zz" if segment == "*" else segment for segment in pattern.split(".")]
    if segments[-1] == "#":
        segments.pop()
    return ".".join(segments)


class BusContract:
    """The bus contract; subclass it and define a ``bus`` fixture."""

    timeout: ClassVar[float] = 10.0
    """Seconds to wait for a message that must arrive before failing."""

    settle: ClassVar[float] = 0.2
    """Seconds a subscription must stay quiet to count as drained."""

    @pytest.fixture
    def bus(self) -> Bus:
        pytest.fail(
            f"{type(self).__name__} must define a `bus` fixture yielding the adapter "
            "under test (see kernel.testing.bus_contract)"
        )

    @pytest.fixture
    def contract_clock(self) -> trio.abc.Clock | None:
        """The clock the suite runs under; None means trio's real clock."""
        return None

    @pytest.fixture
    def root(self) -> str:
        """A random first topic segment, so runs sharing a broker never meet."""
        return _root()

    async def next_message(self, subscription: Subscription) -> Message:
        """The next message, or a failure after `timeout`."""
        with trio.fail_after(self.timeout):
            return await subscription.receive()

    async def drain(self, subscription: Subscription) -> list[Message]:
        """Every message that arrives until the subscription has been quiet
        for `settle` seconds (or its iteration ended)."""
        received: list[Message] = []
        while True:
            with trio.move_on_after(self.settle):
                try:
                    received.append(await subscription.receive())
                except trio.EndOfChannel:
                    return received
                continue
            return received

    # -- subscriptions -----------------------------------------------------------

    async def test_satisfies_the_protocol(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        assert isinstance(bus, Bus)
        async with bus.subscribe(f"{root}.#") as subscription:
            assert isinstance(subscription, Subscription)
            assert subscription.pattern == f"{root}.#"
            assert subscription.dropped == 0
            await bus.publish(f"{root}.hello", {"n": 1})
            message = await self.next_message(subscription)
        assert isinstance(message, Message)
        assert (message.topic, message.payload) == (f"{root}.hello", {"n": 1})

    @pytest.mark.parametrize(("pattern", "topic", "delivered"), PATTERN_CASES)
    async def test_patterns_match_topics(
        self,
        bus: Bus,
        root: str,
        contract_clock: trio.abc.Clock | None,
        pattern: str,
        topic: str,
        delivered: bool,
    ) -> None:
        pattern, topic = f"{root}.{pattern}", f"{root}.{topic}"
        assert topic_matches(pattern, topic) is delivered
        sentinel = _sentinel(pattern)
        async with bus.subscribe(pattern) as subscription:
            await bus.publish(topic, "probe")
            await bus.publish(sentinel, "sentinel")
            first = await self.next_message(subscription)
            if delivered:
                assert (first.topic, first.payload) == (topic, "probe")
                first = await self.next_message(subscription)
            assert (first.topic, first.payload) == (sentinel, "sentinel")

    async def test_every_matching_subscription_gets_each_message_once(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        patterns = [f"{root}.user.*", f"{root}.user.#", f"{root}.#", f"{root}.*.login"]
        async with (
            bus.subscribe(patterns[0]) as first,
            bus.subscribe(patterns[1]) as second,
            bus.subscribe(patterns[2]) as third,
            bus.subscribe(patterns[3]) as fourth,
            bus.subscribe(f"{root}.other.*") as unrelated,
        ):
            await bus.publish(f"{root}.user.login", {"user": 7})
            await bus.publish(f"{root}.user.end", None)
            await bus.publish(f"{root}.other.end", None)
            for subscription in (first, second, third):
                login = await self.next_message(subscription)
                end = await self.next_message(subscription)
                assert (login.topic, login.payload) == (f"{root}.user.login", {"user": 7})
                assert end.topic == f"{root}.user.end"
            login = await self.next_message(fourth)
            assert (login.topic, login.payload) == (f"{root}.user.login", {"user": 7})
            assert (await self.next_message(unrelated)).topic == f"{root}.other.end"

    async def test_two_subscriptions_to_one_pattern_both_receive(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        async with bus.subscribe(f"{root}.x") as first, bus.subscribe(f"{root}.x") as second:
            await bus.publish(f"{root}.x", 1)
            assert (await self.next_message(first)).payload == 1
            assert (await self.next_message(second)).payload == 1

    async def test_messages_arrive_in_publish_order(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        count = 200
        async with (
            bus.subscribe(f"{root}.seq.*", buffer=count * 2) as first,
            bus.subscribe(f"{root}.#", buffer=count * 2) as second,
        ):
            for number in range(count):
                # alternate topics: order holds across topics of one publisher
                await bus.publish(f"{root}.seq.{'even' if number % 2 == 0 else 'odd'}", number)
            for subscription in (first, second):
                got = [(await self.next_message(subscription)).payload for _ in range(count)]
                assert got == list(range(count))

    async def test_each_publisher_order_holds_under_concurrency(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        publishers, count = 4, 50

        async def publish(publisher: int) -> None:
            for number in range(count):
                await bus.publish(f"{root}.p{publisher}", {"p": publisher, "n": number})

        async with bus.subscribe(f"{root}.*", buffer=publishers * count * 2) as subscription:
            with trio.fail_after(self.timeout):
                async with trio.open_nursery() as nursery:
                    for publisher in range(publishers):
                        nursery.start_soon(publish, publisher)
            got = [
                (await self.next_message(subscription)).payload for _ in range(publishers * count)
            ]
        for publisher in range(publishers):
            numbers = [
                item["n"]  # type: ignore[index, call-overload]
                for item in got
                if item["p"] == publisher  # type: ignore[index, call-overload]
            ]
            assert numbers == list(range(count))

    async def test_nothing_published_before_subscribing_is_received(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        await bus.publish(f"{root}.early", "early")
        async with bus.subscribe(f"{root}.*") as subscription:
            await bus.publish(f"{root}.late", "late")
            assert (await self.next_message(subscription)).payload == "late"

    async def test_leaving_the_block_unsubscribes(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        async with bus.subscribe(f"{root}.*") as gone:
            await bus.publish(f"{root}.during", 1)
            assert (await self.next_message(gone)).payload == 1
        await bus.publish(f"{root}.between", 2)  # no subscriber: must not fail
        with pytest.raises(trio.ClosedResourceError):
            await gone.receive()
        async with bus.subscribe(f"{root}.*") as fresh:
            await bus.publish(f"{root}.after", 3)
            message = await self.next_message(fresh)
            assert (message.topic, message.payload) == (f"{root}.after", 3)

    # -- payloads ---------------------------------------------------------------

    @pytest.mark.parametrize(
        "value", [value for _, value in JSON_SAMPLES], ids=[name for name, _ in JSON_SAMPLES]
    )
    async def test_every_json_payload_round_trips(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None, value: object
    ) -> None:
        async with bus.subscribe(f"{root}.payload") as subscription:
            await bus.publish(f"{root}.payload", value)  # type: ignore[arg-type]
            assert_same_json((await self.next_message(subscription)).payload, value)

    async def test_payload_defaults_to_null(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        async with bus.subscribe(f"{root}.ping") as subscription:
            await bus.publish(f"{root}.ping")
            assert (await self.next_message(subscription)).payload is None

    async def test_payloads_are_copies(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        original: dict[str, JSON] = {"items": [1, 2], "meta": {"k": "v"}}
        expected = {"items": [1, 2], "meta": {"k": "v"}}
        async with bus.subscribe(f"{root}.c") as first, bus.subscribe(f"{root}.c") as second:
            await bus.publish(f"{root}.c", original)
            original["items"].append(3)  # type: ignore[union-attr]
            original["added"] = True
            mine = (await self.next_message(first)).payload
            assert mine == expected
            assert isinstance(mine, dict)
            mine["items"].append(4)  # type: ignore[union-attr]
            mine["meta"] = None
            assert (await self.next_message(second)).payload == expected

    @pytest.mark.parametrize(
        ("value", "path"),
        [
            ({1, 2}, "payload"),
            ({"a": [1, 2, {3}]}, "payload['a'][2]"),
            ({"x": float("nan")}, "payload['x']"),
            ({3: "int key"}, "payload"),
            (b"bytes", "payload"),
        ],
        ids=["set", "nested-set", "nan", "int-key", "bytes"],
    )
    async def test_bad_payloads_are_refused_and_nothing_is_sent(
        self,
        bus: Bus,
        root: str,
        contract_clock: trio.abc.Clock | None,
        value: object,
        path: str,
    ) -> None:
        async with bus.subscribe(f"{root}.*") as subscription:
            with pytest.raises(NotJSONSerializable) as refused:
                await bus.publish(f"{root}.bad", value)  # type: ignore[arg-type]
            assert refused.value.path == path
            await bus.publish(f"{root}.good", "after")
            message = await self.next_message(subscription)
            assert (message.topic, message.payload) == (f"{root}.good", "after")

    # -- validation -------------------------------------------------------------

    @pytest.mark.parametrize(
        "topic", [topic for _, topic in BAD_TOPICS], ids=[name for name, _ in BAD_TOPICS]
    )
    async def test_bad_topics_are_refused(
        self, bus: Bus, contract_clock: trio.abc.Clock | None, topic: object
    ) -> None:
        with pytest.raises(InvalidTopic):
            await bus.publish(topic, "x")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "pattern", [pattern for _, pattern in BAD_PATTERNS], ids=[name for name, _ in BAD_PATTERNS]
    )
    async def test_bad_patterns_are_refused(
        self, bus: Bus, contract_clock: trio.abc.Clock | None, pattern: object
    ) -> None:
        with pytest.raises(InvalidTopic):
            async with bus.subscribe(pattern):  # type: ignore[arg-type]
                pass

    # -- slow subscribers -------------------------------------------------------

    async def test_a_slow_subscriber_blocks_neither_publisher_nor_others(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        count, small = 60, 4
        fast_got: list[JSON] = []
        async with (
            bus.subscribe(f"{root}.load", buffer=small) as slow,
            bus.subscribe(f"{root}.load", buffer=count * 2) as fast,
        ):

            async def read_fast() -> None:
                for _ in range(count):
                    fast_got.append((await self.next_message(fast)).payload)

            # The slow subscriber reads nothing until all is published; a bus
            # that waited for it would trip the deadline.
            with trio.fail_after(self.timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_fast)
                    for number in range(count):
                        await bus.publish(f"{root}.load", number)
            assert fast_got == list(range(count))
            slow_got = [message.payload for message in await self.drain(slow)]
            assert slow_got, "the slow subscriber received nothing at all"
            assert all(isinstance(number, int) for number in slow_got)
            assert slow_got == sorted(set(slow_got)), "out of order or duplicated"  # type: ignore[type-var]
            assert set(slow_got) <= set(range(count))
            assert slow.dropped > 0, f"a buffer of {small} held {len(slow_got)} messages"
            assert len(slow_got) + slow.dropped == count, "messages lost without being counted"
            assert fast.dropped == 0

    # -- closing ----------------------------------------------------------------

    async def test_closing_ends_iteration_and_refuses_further_use(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        got: list[JSON] = []
        first_arrived = trio.Event()
        async with bus.subscribe(f"{root}.#") as subscription:

            async def consume() -> None:
                async for message in subscription:
                    got.append(message.payload)
                    first_arrived.set()

            with trio.fail_after(self.timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(consume)
                    await bus.publish(f"{root}.x", 1)
                    await first_arrived.wait()
                    await bus.aclose()
                    # the nursery exits only when consume's loop has ended
        assert got == [1]
        await bus.aclose()  # idempotent
        with pytest.raises(BusClosed):
            await bus.publish(f"{root}.x", 2)
        with pytest.raises(BusClosed):
            async with bus.subscribe(f"{root}.#"):
                pass

    async def test_closing_wakes_a_waiting_subscriber(
        self, bus: Bus, root: str, contract_clock: trio.abc.Clock | None
    ) -> None:
        async with bus.subscribe(f"{root}.#") as subscription:

            async def consume() -> None:
                async for _ in subscription:
                    raise AssertionError("nothing was published")

            with trio.fail_after(self.timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(consume)
                    await trio.testing.wait_all_tasks_blocked()  # consume waits in receive
                    await bus.aclose()


async def check_a_subscription_outlives_an_outage(
    bus: Bus, cut: Callable[[], Awaitable[object]], *, wait: float = 10.0
) -> None:
    """For a bus over the network: ``cut()`` kills the connections under a
    live subscription (the adapter's test knows how); the subscription must
    receive again once the bus has reconnected (messages published during
    the outage may be lost: the bus is at most once), and a subscription
    made after the outage works as any other. ``wait`` bounds each step."""
    async with bus.subscribe("t.*") as subscription:
        await cut()
        received = trio.Event()

        async def publish_until_received() -> None:
            number = 0
            while not received.is_set():
                await bus.publish("t.x", number)
                number += 1
                await trio.sleep(0.05)

        with trio.fail_after(wait):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_until_received)
                message = await subscription.receive()
                received.set()
        assert message.topic == "t.x"
    async with bus.subscribe("t.*") as again:
        await bus.publish("t.y", "fresh")
        with trio.fail_after(wait):
            assert (await again.receive()).payload == "fresh"

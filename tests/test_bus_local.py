"""The local bus against the bus contract, plus its own policy: overflow,
drop counting, draining on close, and topic matching against an oracle."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.bus.local import (
    DEFAULT_BUFFER,
    LocalBus,
    LocalSubscription,
    Overflow,
    open_local_bus,
)
from kernel.errors import InvalidAdapterURL, InvalidTopic
from kernel.ports import JSONLike, Message, topic_matches, validate_pattern
from kernel.testing.bus_contract import BAD_PATTERNS, BAD_TOPICS, PATTERN_CASES, BusContract


class TestLocalBus(BusContract):
    @pytest.fixture
    async def bus(self) -> AsyncIterator[LocalBus]:
        async with LocalBus() as bus:
            yield bus

    @pytest.fixture
    def contract_clock(self) -> trio.abc.Clock:
        return trio.testing.MockClock(autojump_threshold=0)


class TestLocalBusDroppingNewest(TestLocalBus):
    """The contract holds under the other overflow policy too."""

    @pytest.fixture
    async def bus(self) -> AsyncIterator[LocalBus]:
        async with LocalBus(overflow=Overflow.drop_newest) as bus:
            yield bus


# -- topic matching ------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "topic", "expected"), PATTERN_CASES)
def test_topic_matches_the_table(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


def _oracle(pattern: str, topic: str) -> bool:
    """AMQP matching by regular expression, independent of the segment walk."""
    if pattern == "#":
        return True
    body = pattern[:-2] if pattern.endswith(".#") else pattern
    regex = r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in body.split("."))
    if pattern.endswith(".#"):
        regex += r"(\..+)?"
    return re.fullmatch(regex, topic) is not None


segments = st.sampled_from(["a", "b", "ab"])
topics = st.lists(segments, min_size=1, max_size=5).map(".".join)
patterns = st.builds(
    lambda parts, tail: ".".join(parts + (["#"] if tail else [])),
    st.lists(st.sampled_from(["a", "b", "ab", "*"]), min_size=0, max_size=5),
    st.booleans(),
).filter(bool)


@given(patterns, topics)
@settings(max_examples=300)
def test_topic_matches_agrees_with_a_regex_oracle(pattern: str, topic: str) -> None:
    assert topic_matches(pattern, topic) is _oracle(pattern, topic)


@pytest.mark.parametrize("topic", [topic for _, topic in BAD_TOPICS])
def test_topic_matches_refuses_bad_topics(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        topic_matches("#", topic)


@pytest.mark.parametrize("pattern", [pattern for _, pattern in BAD_PATTERNS])
def test_validate_pattern_refuses_bad_patterns(pattern: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_pattern(pattern)


def test_topic_errors_say_what_is_wrong() -> None:
    with pytest.raises(InvalidTopic) as refused:
        validate_pattern("data.#.x")
    assert (
        str(refused.value)
        == "invalid bus pattern 'data.#.x': '#' is only allowed as the last segment"
    )
    with pytest.raises(InvalidTopic, match="segment 1 is empty"):
        topic_matches("#", "a..b")
    with pytest.raises(InvalidTopic, match="wildcard '\\*'; publish on a topic"):
        topic_matches("#", "a.*")


# -- overflow policy -------------------------------------------------------------


@attrs.define
class DropLog:
    drops: list[tuple[str, JSONLike]] = attrs.Factory(list)

    def __call__(self, subscription: LocalSubscription, lost: Message) -> None:
        self.drops.append((subscription.pattern, lost.payload))


async def _publish_numbers(bus: LocalBus, count: int) -> None:
    for number in range(count):
        await bus.publish("tick", number)


async def test_drop_oldest_keeps_the_newest_messages() -> None:
    log = DropLog()
    async with LocalBus(buffer=3, on_drop=log) as bus, bus.subscribe("tick") as sub:
        await _publish_numbers(bus, 10)
        assert sub.pending == 3
        assert [(await sub.receive()).payload for _ in range(3)] == [7, 8, 9]
        assert sub.dropped == 7
        assert bus.dropped == 7
        assert log.drops == [("tick", number) for number in range(7)]


async def test_drop_newest_keeps_the_oldest_messages() -> None:
    log = DropLog()
    async with (
        LocalBus(buffer=3, overflow=Overflow.drop_newest, on_drop=log) as bus,
        bus.subscribe("tick") as sub,
    ):
        await _publish_numbers(bus, 10)
        assert [(await sub.receive()).payload for _ in range(3)] == [0, 1, 2]
        assert sub.dropped == 7
        assert log.drops == [("tick", number) for number in range(3, 10)]


async def test_each_subscription_may_override_buffer_and_policy() -> None:
    async with (
        LocalBus(buffer=2) as bus,
        bus.subscribe("tick") as default,
        bus.subscribe("tick", buffer=5, overflow=Overflow.drop_newest) as custom,
    ):
        assert (default.buffer, default.overflow) == (2, Overflow.drop_oldest)
        await _publish_numbers(bus, 6)
        assert [(await default.receive()).payload for _ in range(2)] == [4, 5]
        assert [(await custom.receive()).payload for _ in range(5)] == [0, 1, 2, 3, 4]
        assert (default.dropped, custom.dropped, bus.dropped) == (4, 1, 5)


async def test_a_reader_that_keeps_up_loses_nothing(autojump_clock: trio.abc.Clock) -> None:
    got: list[JSONLike] = []
    async with LocalBus(buffer=1) as bus, bus.subscribe("tick") as sub:

        async def read() -> None:
            async for message in sub:
                got.append(message.payload)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for number in range(50):
                await bus.publish("tick", number)
                await trio.testing.wait_all_tasks_blocked()
            await bus.aclose()
    assert got == list(range(50))
    assert sub.dropped == 0


def test_the_default_buffer_is_documented() -> None:
    assert LocalBus().buffer == DEFAULT_BUFFER == 1024
    assert LocalBus().overflow is Overflow.drop_oldest


# -- lifecycle -----------------------------------------------------------------


async def test_closing_delivers_what_is_buffered_then_ends() -> None:
    bus = LocalBus()
    async with bus.subscribe("tick") as sub:
        await _publish_numbers(bus, 3)
        await bus.aclose()
        assert [message.payload async for message in sub] == [0, 1, 2]
        with pytest.raises(trio.EndOfChannel):
            await sub.receive()


async def test_subscriptions_are_counted_while_entered() -> None:
    bus = LocalBus()
    subscription = bus.subscribe("a.#")
    assert bus.subscription_count == 0
    async with subscription, bus.subscribe("b"):
        assert bus.subscription_count == 2
    assert bus.subscription_count == 0
    await bus.publish("a.x", 1)  # nobody left to deliver to


async def test_a_subscription_is_entered_once() -> None:
    bus = LocalBus()
    subscription = bus.subscribe("a")
    async with subscription:
        pass
    with pytest.raises(RuntimeError, match="entered only once"):
        async with subscription:
            pass


async def test_a_cancelled_publish_delivers_nothing() -> None:
    async with LocalBus() as bus, bus.subscribe("tick") as sub:
        with trio.CancelScope() as scope:
            scope.cancel()
            await bus.publish("tick", 1)
        assert scope.cancelled_caught
        assert sub.pending == 0


async def test_the_only_subscriber_gets_a_copy_not_the_publishers_object() -> None:
    payload = {"a": [1]}
    async with LocalBus() as bus, bus.subscribe("x") as sub:
        await bus.publish("x", payload)
        got = (await sub.receive()).payload
    assert got == payload
    assert got is not payload


@pytest.mark.parametrize("buffer", [0, -1])
def test_buffer_must_be_positive(buffer: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LocalBus().subscribe("a", buffer=buffer)
    with pytest.raises(ValueError, match="at least 1"):
        LocalBus(buffer=buffer)


@pytest.mark.parametrize("buffer", [True, 1.5, "3"])
def test_buffer_must_be_an_int(buffer: object) -> None:
    with pytest.raises(TypeError, match="must be an int"):
        LocalBus().subscribe("a", buffer=buffer)  # type: ignore[arg-type]


def test_overflow_must_be_an_overflow() -> None:
    with pytest.raises(TypeError):
        LocalBus().subscribe("a", overflow="drop-oldest")  # type: ignore[arg-type]


# -- the URL factory -------------------------------------------------------------


def test_the_factory_reads_its_options() -> None:
    bus = open_local_bus("local://?buffer=8&overflow=drop-newest")
    assert (bus.buffer, bus.overflow) == (8, Overflow.drop_newest)
    plain = open_local_bus("local://")
    assert (plain.buffer, plain.overflow) == (DEFAULT_BUFFER, Overflow.drop_oldest)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("local://?buffer=0", "buffer must be a whole number >= 1"),
        ("local://?buffer=x", "buffer must be a whole number >= 1"),
        ("local://?buffer=²", "buffer must be a whole number >= 1"),
        ("local://?overflow=block", "overflow must be one of drop-oldest, drop-newest"),
        ("local://?size=3", "unknown option 'size'"),
        ("local://?buffer=1&buffer=2", "option 'buffer' is given twice"),
        ("local://host", "takes no host or path"),
        ("local://#frag", "fragment"),
    ],
)
def test_the_factory_refuses_bad_options(url: str, reason: str) -> None:
    with pytest.raises(InvalidAdapterURL, match=re.escape(reason)):
        open_local_bus(url)


# -- the contract catches broken buses -------------------------------------------


class BlockingBus(LocalBus):
    """Broken: the publisher waits for room in each subscriber's buffer."""

    async def publish(self, topic: str, payload: JSONLike = None) -> None:
        await trio.lowlevel.checkpoint()
        for sub in list(self._subscriptions):
            if sub._matches(topic.split(".")):
                await sub._send.send(Message(topic, payload))  # waits when full


class SilentDropSubscription(LocalSubscription):
    """Broken: loses messages without counting them."""

    def _deliver(self, message: Message) -> None:
        with contextlib.suppress(trio.WouldBlock):
            self._send.send_nowait(message)


class SilentDropBus(LocalBus):
    def subscribe(
        self, pattern: str, *, buffer: int | None = None, overflow: Overflow | None = None
    ) -> LocalSubscription:
        return SilentDropSubscription(self, pattern, buffer or self.buffer, Overflow.drop_newest)


async def test_the_contract_catches_a_bus_that_blocks_the_publisher(
    autojump_clock: trio.abc.Clock,
) -> None:
    with pytest.raises(trio.TooSlowError):
        await BusContract().test_a_slow_subscriber_blocks_neither_publisher_nor_others(
            BlockingBus(), "root", autojump_clock
        )


async def test_the_contract_catches_uncounted_drops(autojump_clock: trio.abc.Clock) -> None:
    with pytest.raises(AssertionError, match=r"lost without being counted|held"):
        await BusContract().test_a_slow_subscriber_blocks_neither_publisher_nor_others(
            SilentDropBus(), "root", autojump_clock
        )

"""A service's Retry-After as a floor on the retry delay: `retry_after_of`
reads it from an error, `RetryPolicy.delay` honours it (property tests), and
the queue waits at least that long before the next attempt."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from kernel import Clock, JobQueue, RetryPolicy, open_scheduler
from kernel.errors import NotificationFailed
from kernel.resilience.retry import MAX_RETRY_AFTER, Jitter, retry_after_of
from kernel.storage.memory import MemoryJobStore

US = timedelta(microseconds=1)


class Throttled(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__(f"retry after {retry_after!r}")
        self.retry_after = retry_after


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 10),
    initial=st.integers(0, 60_000_000).map(lambda us: timedelta(microseconds=us)),
    max_delay=st.just(timedelta(minutes=2)),
    jitter=st.sampled_from(Jitter),
)
waits = st.floats(0, 3 * 86_400, allow_nan=False, allow_infinity=False)


@given(policy=policies, attempt=st.integers(1, 50), seed=st.integers(), wait=waits)
def test_the_delay_is_at_least_the_retry_after(
    policy: RetryPolicy, attempt: int, seed: int, wait: float
) -> None:
    delay = policy.delay(attempt, random.Random(seed), Throttled(wait))
    floor = min(timedelta(seconds=wait), MAX_RETRY_AFTER)
    assert delay >= floor - US  # the floor is rounded to the microsecond
    assert delay <= max(policy.max_delay, floor + US)


@given(policy=policies, attempt=st.integers(1, 50), seed=st.integers())
def test_an_error_without_retry_after_changes_nothing(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    plain = policy.delay(attempt, random.Random(seed))
    assert policy.delay(attempt, random.Random(seed), ValueError("x")) == plain
    assert policy.delay(attempt, random.Random(seed), Throttled(None)) == plain


@given(
    bad=st.one_of(
        st.just(float("nan")),
        st.just(float("inf")),
        st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
        st.booleans(),
        st.just(timedelta(seconds=-1)),
    )
)
def test_nonsense_retry_after_is_ignored(bad: object) -> None:
    assert retry_after_of(Throttled(bad)) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, timedelta(seconds=30)),
        (0.25, timedelta(milliseconds=250)),
        (timedelta(minutes=5), timedelta(minutes=5)),
        (0, timedelta(0)),
        (10 * 86_400, MAX_RETRY_AFTER),
    ],
)
def test_retry_after_values(value: object, expected: timedelta) -> None:
    assert retry_after_of(Throttled(value)) == expected


def test_a_group_waits_for_its_longest_leaf() -> None:
    group = ExceptionGroup("two", [Throttled(5), ValueError(), Throttled(12)])
    assert retry_after_of(group) == timedelta(seconds=12)
    assert retry_after_of(ExceptionGroup("none", [ValueError()])) is None


def test_notification_failed_carries_it() -> None:
    error = NotificationFailed("apprise+json://…", "HTTP 429", retry_after=90)
    assert retry_after_of(error) == timedelta(seconds=90)
    assert "HTTP 429" in str(error)
    assert retry_after_of(NotificationFailed("x", "down")) is None


async def test_the_queue_waits_out_the_retry_after(autojump_clock: MockClock) -> None:
    """The job's next attempt is not before what the service asked for, even
    though the policy's own backoff is one second."""
    attempts: list[float] = []
    second = trio.Event()

    async def flaky() -> None:
        attempts.append(trio.current_time())
        if len(attempts) == 1:
            raise Throttled(600)
        second.set()

    store = MemoryJobStore()
    clock = Clock.starting_at(datetime(2026, 1, 5, tzinfo=UTC))
    async with open_scheduler(clock) as scheduler, trio.open_nursery() as nursery:
        queue = JobQueue(store, scheduler)
        queue.register(
            "flaky",
            flaky,
            retry=RetryPolicy(initial=timedelta(seconds=1), jitter=Jitter.NONE),
        )
        await nursery.start(queue.run)
        await queue.enqueue("flaky")
        await second.wait()
        nursery.cancel_scope.cancel()
    assert attempts[1] - attempts[0] >= 600
    assert attempts[1] - attempts[0] < 602

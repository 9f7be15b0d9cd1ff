"""The circuit breaker: exact transitions at exact times on a fake clock, the
minimum-throughput guard, half-open probes, cancellation, the sliding window,
a stateful test against a reference model, and the docs' examples."""

from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kernel.errors import CircuitOpen, InvalidCircuitBreaker, KernelError
from kernel.resilience.breaker import BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
DOCS = Path(__file__).resolve().parent.parent / "docs" / "retries.md"


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Transitions:
    """An ``on_transition`` observer that remembers what it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, BreakerState, BreakerState]] = []

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.seen.append((name, old, new))


def make(clock: FakeClock, **kwargs: Any) -> tuple[CircuitBreaker, Transitions]:
    transitions = Transitions()
    breaker = CircuitBreaker("payments", clock=clock, on_transition=transitions, **kwargs)
    return breaker, transitions


def trip(breaker: CircuitBreaker) -> None:
    """Open a breaker with default thresholds: ten failures."""
    for _ in range(breaker.minimum_calls):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is OPEN


class Boom(Exception):
    pass


# -- closed -> open ---------------------------------------------------------------


def test_a_new_breaker_is_closed_and_lets_calls_through() -> None:
    breaker, transitions = make(FakeClock())
    assert breaker.state is CLOSED
    assert breaker.allow()
    assert breaker.retry_after() == 0
    assert (breaker.calls, breaker.failures, breaker.rejections, breaker.transitions) == (
        0,
        0,
        0,
        0,
    )
    assert transitions.seen == []


def test_opens_when_the_failure_rate_reaches_the_threshold_at_minimum_calls() -> None:
    clock = FakeClock()
    breaker, transitions = make(clock)
    for _ in range(5):
        breaker.record_success()
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is CLOSED  # 4 of 9: below the minimum number of calls anyway
    breaker.record_failure()  # 5 of 10 = 50 %
    assert breaker.state is OPEN
    assert transitions.seen == [("payments", CLOSED, OPEN)]
    assert breaker.retry_after() == 30
    assert (breaker.calls, breaker.failures, breaker.transitions) == (10, 5, 1)


def test_minimum_throughput_guard_nine_failures_of_nine_calls_stay_closed() -> None:
    breaker, _ = make(FakeClock())
    for _ in range(9):
        breaker.record_failure()
    assert breaker.state is CLOSED
    assert breaker.window_failures == 9
    breaker.record_failure()
    assert breaker.state is OPEN


def test_a_rate_below_the_threshold_stays_closed_however_many_calls() -> None:
    breaker, _ = make(FakeClock(), failure_rate=0.3)
    for _ in range(100):
        for _ in range(3):
            breaker.record_success()
        breaker.record_failure()  # 25 %
    assert breaker.state is CLOSED
    assert breaker.window_calls == 400


def test_the_threshold_is_compared_exactly() -> None:
    # 0.3 * 10 is 3.0000000000000004 in floats; 3 failures of 10 must still open.
    breaker, _ = make(FakeClock(), failure_rate=0.3)
    for _ in range(7):
        breaker.record_success()
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is OPEN


def test_a_success_can_complete_the_minimum_and_open() -> None:
    # As in resilience4j, the thresholds are checked after every recorded call.
    breaker, _ = make(FakeClock(), minimum_calls=4)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    assert breaker.state is CLOSED
    breaker.record_success()  # 2 of 4 = 50 %
    assert breaker.state is OPEN


# -- open -> half-open -------------------------------------------------------------


def test_open_rejects_until_exactly_open_for_then_half_opens() -> None:
    clock = FakeClock()
    breaker, transitions = make(clock)
    trip(breaker)
    clock.advance(29.999)
    assert breaker.state is OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.001)
    assert breaker.rejections == 1
    clock.advance(0.001)
    assert breaker.retry_after() == 0
    assert breaker.state is HALF_OPEN
    assert transitions.seen == [("payments", CLOSED, OPEN), ("payments", OPEN, HALF_OPEN)]


def test_half_open_admits_three_probes_and_rejects_the_fourth() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker)
    clock.advance(30)
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]
    assert breaker.rejections == 1


def test_all_probes_succeeding_closes_with_an_empty_window() -> None:
    clock = FakeClock()
    breaker, transitions = make(clock)
    trip(breaker)
    clock.advance(30)
    for _ in range(3):
        assert breaker.allow()
    breaker.record_success()
    breaker.record_success()
    assert breaker.state is HALF_OPEN
    breaker.record_success()
    assert breaker.state is CLOSED
    assert (breaker.window_calls, breaker.window_failures) == (0, 0)
    assert transitions.seen[-1] == ("payments", HALF_OPEN, CLOSED)
    # The old failures are gone: nine new ones do not reopen it.
    for _ in range(9):
        breaker.record_failure()
    assert breaker.state is CLOSED


def test_a_failed_probe_reopens_for_another_open_for() -> None:
    clock = FakeClock()
    breaker, transitions = make(clock)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()
    assert breaker.allow()
    breaker.record_success()
    clock.advance(2)
    breaker.record_failure()
    assert breaker.state is OPEN
    assert breaker.retry_after() == 30
    assert transitions.seen[-1] == ("payments", HALF_OPEN, OPEN)
    breaker.record_success()  # the other probe, late: it changes nothing
    assert breaker.state is OPEN
    clock.advance(30)
    assert breaker.state is HALF_OPEN
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]


def test_a_released_probe_gives_its_permit_back() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, half_open_probes=1)
    trip(breaker)
    clock.advance(30)
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED


def test_release_when_closed_changes_nothing() -> None:
    breaker, _ = make(FakeClock())
    breaker.release()
    assert breaker.state is CLOSED
    assert breaker.calls == 0


def test_reset_closes_at_once() -> None:
    clock = FakeClock()
    breaker, transitions = make(clock)
    trip(breaker)
    breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.allow()
    assert transitions.seen[-1] == ("payments", OPEN, CLOSED)
    breaker.record_failure()
    breaker.reset()  # already closed: no transition, but the window is emptied
    assert breaker.window_calls == 0
    assert breaker.transitions == 2


# -- the sliding window ---------------------------------------------------------------


def test_old_failures_are_forgotten_as_the_window_slides() -> None:
    clock = FakeClock(0.0)
    breaker, _ = make(clock)  # 60 s window in 60 buckets of 1 s
    for _ in range(9):
        breaker.record_failure()
    clock.now = 60.0  # exactly one window later: still counted
    assert breaker.window_failures == 9
    clock.now = 60.999
    assert breaker.window_failures == 9
    clock.now = 61.0  # past window + one bucket: forgotten
    assert breaker.window_failures == 0
    breaker.record_failure()
    assert breaker.state is CLOSED
    assert (breaker.window_calls, breaker.window_failures) == (1, 1)


def test_failures_spread_over_the_window_still_add_up() -> None:
    clock = FakeClock(0.0)
    breaker, _ = make(clock)
    for _ in range(9):
        breaker.record_failure()
        clock.advance(6)  # the last one at 48 s
    clock.now = 60.5
    breaker.record_failure()  # the first (at 0 s) still counts: 10 of 10
    assert breaker.state is OPEN


def test_the_window_slides_bucket_by_bucket() -> None:
    clock = FakeClock(0.0)
    breaker, _ = make(clock, window=timedelta(seconds=10), buckets=5)  # 2 s buckets
    breaker.record_failure()  # at 0 s, bucket [0, 2)
    clock.now = 1.5
    breaker.record_success()  # same bucket
    clock.now = 2.0
    breaker.record_success()  # bucket [2, 4)
    clock.now = 11.999
    assert breaker.window_calls == 3
    clock.now = 12.0  # bucket [0, 2) ended more than 10 s ago
    assert (breaker.window_calls, breaker.window_failures) == (1, 0)
    clock.now = 14.0
    assert breaker.window_calls == 0


# -- the context managers and the decorator ---------------------------------------------


async def test_async_with_records_success_and_failure() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, minimum_calls=2)
    async with breaker:
        pass
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    assert (breaker.calls, breaker.failures) == (2, 1)
    assert breaker.state is OPEN


async def test_async_with_raises_circuit_open_without_running_the_body() -> None:
    clock = FakeClock()
    breaker, _ = make(clock)
    trip(breaker)
    clock.advance(12.5)
    ran = False
    with pytest.raises(CircuitOpen) as caught:
        async with breaker:
            ran = True
    assert not ran
    error = caught.value
    assert isinstance(error, KernelError)
    assert (error.name, error.state, error.retry_after) == ("payments", "open", 17.5)
    assert str(error) == (
        "circuit breaker 'payments' is open: calls are rejected for another 17.5 s,"
        " then it half-opens"
    )
    assert breaker.rejections == 1
    assert breaker.calls == 10


async def test_exceptions_outside_failure_on_count_as_successes() -> None:
    breaker, _ = make(FakeClock(), minimum_calls=1, failure_on=(OSError,))
    with pytest.raises(ValueError, match="bad answer"):
        async with breaker:
            raise ValueError("bad answer")
    assert breaker.state is CLOSED
    assert (breaker.calls, breaker.failures) == (1, 0)
    with pytest.raises(ConnectionError):
        async with breaker:
            raise ConnectionError
    assert breaker.state is OPEN


def test_exception_groups_fail_when_any_leaf_is_in_failure_on() -> None:
    breaker, _ = make(FakeClock(), failure_on=OSError)
    assert breaker.failure_on == (OSError,)
    assert breaker.is_failure(ExceptionGroup("", [ValueError(), TimeoutError()])) is True
    assert breaker.is_failure(ExceptionGroup("", [ValueError()])) is False
    assert breaker.is_failure(BaseExceptionGroup("", [OSError(), KeyboardInterrupt()])) is None
    assert breaker.is_failure(KeyboardInterrupt()) is None


async def test_cancellation_is_not_recorded(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("slow", minimum_calls=1)
    with trio.move_on_after(1):
        async with breaker:
            await trio.sleep(10)
    assert (breaker.calls, breaker.failures) == (0, 0)
    assert breaker.state is CLOSED


async def test_a_cancelled_probe_frees_its_permit(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("slow", minimum_calls=1, half_open_probes=1)
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    await trio.sleep(30)
    assert breaker.state is HALF_OPEN
    with trio.move_on_after(1):
        async with breaker:
            await trio.sleep(10)
    assert breaker.state is HALF_OPEN
    async with breaker:  # the permit came back
        pass
    assert breaker.state is CLOSED


async def test_the_fourth_concurrent_probe_is_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("api", minimum_calls=1)
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    await trio.sleep(30)
    release = trio.Event()
    entered = 0

    async def probe() -> None:
        nonlocal entered
        async with breaker:
            entered += 1
            await release.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(probe)
        await trio.testing.wait_all_tasks_blocked()
        assert entered == 3
        with pytest.raises(CircuitOpen) as caught:
            async with breaker:
                pass
        assert (caught.value.state, caught.value.retry_after) == ("half-open", 0)
        assert "probe calls are all taken" in str(caught.value)
        release.set()
    assert breaker.state is CLOSED
    assert breaker.rejections == 1


async def test_the_default_clock_is_trios(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("mocked", minimum_calls=1, open_for=timedelta(hours=1))
    breaker.record_failure()
    assert breaker.retry_after() == 3600
    await trio.sleep(3599)
    assert breaker.state is OPEN
    await trio.sleep(1)
    assert breaker.state is HALF_OPEN


def test_the_default_clock_outside_trio_is_monotonic() -> None:
    breaker = CircuitBreaker("sync", minimum_calls=1)
    breaker.record_failure()
    assert 29 < breaker.retry_after() <= 30
    assert "monotonic" in repr(breaker.clock)
    opened = time.monotonic()

    async def look() -> float:
        return breaker.retry_after()

    # Chosen once: used later inside trio it keeps the clock it started with.
    remaining = trio.run(look, clock=trio.testing.MockClock(autojump_threshold=0))
    assert remaining == pytest.approx(30 - (time.monotonic() - opened), abs=1)


def test_a_breaker_made_outside_trio_follows_trio_when_first_used_there() -> None:
    breaker = CircuitBreaker("module-level", minimum_calls=1)

    async def main() -> BreakerState:
        breaker.record_failure()
        await trio.sleep(30)
        return breaker.state

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) is HALF_OPEN


def test_sync_with_and_decorators() -> None:
    clock = FakeClock()
    breaker, _ = make(clock, minimum_calls=2)

    @breaker
    def parse(text: str) -> int:
        return int(text)

    @breaker
    async def fetch(url: str) -> str:
        raise ConnectionError(url)

    assert parse.__name__ == "parse"
    assert parse("42") == 42
    with pytest.raises(ConnectionError):
        trio.run(fetch, "https://example.invalid")
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen), breaker:
        pytest.fail("the body of a rejected call ran")
    with pytest.raises(CircuitOpen):
        parse("1")
    with pytest.raises(CircuitOpen):
        trio.run(fetch, "https://example.invalid")
    assert (breaker.calls, breaker.failures, breaker.rejections) == (2, 1, 3)


def test_a_raising_observer_is_logged_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    def observer(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("metrics are down")

    breaker = CircuitBreaker("x", minimum_calls=1, clock=FakeClock(), on_transition=observer)
    with caplog.at_level(logging.ERROR, logger="kernel.breaker"):
        breaker.record_failure()
    assert breaker.state is OPEN
    assert "on_transition raised on closed -> open" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_rate": 0}, "failure_rate=0: must be a fraction in \\(0, 1\\]"),
        ({"failure_rate": 1.5}, "failure_rate=1.5"),
        ({"failure_rate": float("nan")}, "failure_rate=nan"),
        ({"minimum_calls": 0}, "minimum_calls=0: must be an integer >= 1"),
        ({"half_open_probes": 2.0}, "half_open_probes=2.0: must be an integer >= 1"),
        ({"buckets": 0}, "buckets=0"),
        ({"window": timedelta(0)}, "window=.*: must be a positive datetime.timedelta"),
        ({"open_for": 30}, "open_for=30: must be a positive datetime.timedelta"),
        ({"failure_on": (OSError, "x")}, "failure_on=.*: must be a tuple of exception classes"),
        ({"clock": 0.0}, "clock=0.0: must be callable"),
        ({"on_transition": "print"}, "on_transition='print': must be callable or None"),
    ],
)
def test_invalid_configuration_names_the_breaker_and_field(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidCircuitBreaker, match=f"circuit breaker 'db': {message}"):
        CircuitBreaker("db", **kwargs)


def test_a_breaker_needs_a_name() -> None:
    with pytest.raises(InvalidCircuitBreaker, match="name='': must be a non-empty string"):
        CircuitBreaker("")


# -- a stateful test against a reference model --------------------------------------------


class BreakerModel(RuleBasedStateMachine):
    """The breaker against a direct reading of its rules: every call is kept
    with its time, and one counts when it is at most ``window`` old. The clock
    moves in whole seconds and buckets are 1 s wide, so the bucketed window
    must agree exactly."""

    @initialize(
        minimum_calls=st.integers(1, 6),
        failure_rate=st.sampled_from([0.25, 0.3, 0.5, 2 / 3, 1.0]),
        window=st.integers(1, 15),
        open_for=st.integers(1, 15),
        probes=st.integers(1, 3),
    )
    def build(
        self, minimum_calls: int, failure_rate: float, window: int, open_for: int, probes: int
    ) -> None:
        self.clock = FakeClock(0.0)
        self.seen: list[tuple[BreakerState, BreakerState]] = []
        self.breaker = CircuitBreaker(
            "model",
            failure_rate=failure_rate,
            minimum_calls=minimum_calls,
            window=timedelta(seconds=window),
            buckets=window,
            open_for=timedelta(seconds=open_for),
            half_open_probes=probes,
            clock=self.clock,
            on_transition=lambda _name, old, new: self.seen.append((old, new)),
        )
        self.params = (minimum_calls, failure_rate, window, open_for, probes)
        self.state = CLOSED
        self.opened_at = 0.0
        self.calls: list[tuple[float, bool]] = []  # (time, failed) while closed
        self.admitted = 0
        self.succeeded = 0
        self.expected_seen: list[tuple[BreakerState, BreakerState]] = []
        self.rejections = 0

    # the model's rules

    def move_to(self, new: BreakerState) -> None:
        self.expected_seen.append((self.state, new))
        self.state = new
        self.calls, self.admitted, self.succeeded = [], 0, 0
        if new is OPEN:
            self.opened_at = self.clock.now

    def model_state(self) -> BreakerState:
        open_for = self.params[3]
        if self.state is OPEN and self.clock.now >= self.opened_at + open_for:
            self.move_to(HALF_OPEN)
        return self.state

    def in_window(self) -> list[bool]:
        window = self.params[2]
        return [failed for at, failed in self.calls if self.clock.now - at <= window]

    def model_record(self, *, failed: bool) -> None:
        minimum_calls, failure_rate, _window, _open_for, probes = self.params
        state = self.model_state()
        if state is CLOSED:
            self.calls.append((self.clock.now, failed))
            counted = self.in_window()
            if len(counted) >= minimum_calls and sum(counted) / len(counted) >= failure_rate:
                self.move_to(OPEN)
        elif state is HALF_OPEN:
            if failed:
                self.move_to(OPEN)
            else:
                self.succeeded += 1
                if self.succeeded >= probes:
                    self.move_to(CLOSED)

    # the rules

    @rule(seconds=st.integers(0, 20))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def allow(self) -> None:
        state = self.model_state()
        expected = state is CLOSED or (state is HALF_OPEN and self.admitted < self.params[4])
        if state is HALF_OPEN and expected:
            self.admitted += 1
        if not expected:
            self.rejections += 1
        assert self.breaker.allow() is expected

    @rule()
    def succeed(self) -> None:
        self.model_record(failed=False)
        self.breaker.record_success()

    @rule()
    def fail(self) -> None:
        self.model_record(failed=True)
        self.breaker.record_failure()

    @rule()
    def release(self) -> None:
        if self.state is HALF_OPEN and self.admitted > 0:
            self.admitted -= 1
        self.breaker.release()

    @invariant()
    def agrees(self) -> None:
        if not hasattr(self, "breaker"):
            return
        assert self.breaker.state is self.model_state()
        assert self.seen == self.expected_seen
        assert self.breaker.rejections == self.rejections
        if self.state is CLOSED:
            counted = self.in_window()
            assert self.breaker.window_calls == len(counted)
            assert self.breaker.window_failures == sum(counted)
        expected_wait = (
            self.opened_at + self.params[3] - self.clock.now if self.state is OPEN else 0
        )
        assert self.breaker.retry_after() == expected_wait


TestBreakerModel = BreakerModel.TestCase
TestBreakerModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- the docs' examples run ---------------------------------------------------------------


def docs_examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOCS.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_docs_have_examples() -> None:
    assert len(docs_examples()) >= 4


@pytest.mark.parametrize("index", range(len(docs_examples()) if DOCS.exists() else 0))
async def test_docs_example_runs(
    index: int, autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each block runs as written; one that defines ``async def main`` is run
    under the mock clock (its ``if __name__ == "__main__"`` guard does not fire),
    and what it prints is checked against the ``# prints:`` lines of the block."""
    source = docs_examples()[index]
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(source, f"{DOCS.name}[{index}]", "exec"), namespace)
    if "main" in namespace:
        await namespace["main"]()
    printed = capsys.readouterr().out.splitlines()
    expected = re.findall(r"^# prints: (.*)$", source, flags=re.MULTILINE)
    assert printed == expected

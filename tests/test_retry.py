"""The retry policy: backoff arithmetic (property tests against exact
rational arithmetic), the retry decision table, and the JSON round trip."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.errors import InvalidRetryPolicy, KernelError
from kernel.resilience.retry import Decision, Jitter, Outcome, RetryPolicy

US = timedelta(microseconds=1)


class Transient(ConnectionError):
    """A module-level error class, so a policy naming it can be stored."""


class Service:
    class Unavailable(Exception):
        """A nested class: stored as ``test_retry.Service.Unavailable``."""


# -- strategies --------------------------------------------------------------------

micros = st.integers(0, 10 * 1_000_000)
factors = st.one_of(
    st.sampled_from([1.0, 1.5, 2.0, 3.0, 10.0]),
    st.floats(1.0, 10.0, allow_nan=False, allow_infinity=False),
)
exception_types = st.sampled_from(
    [Exception, OSError, ConnectionError, TimeoutError, ValueError, Transient, Service.Unavailable]
)


@st.composite
def policies(draw: st.DrawFn, jitter: st.SearchStrategy[Jitter] | None = None) -> RetryPolicy:
    initial_us = draw(micros)
    max_us = initial_us + draw(st.integers(0, 86_400 * 1_000_000))
    return RetryPolicy(
        max_attempts=draw(st.integers(1, 20)),
        initial=timedelta(microseconds=initial_us),
        factor=draw(factors),
        max_delay=timedelta(microseconds=max_us),
        jitter=draw(jitter if jitter is not None else st.sampled_from(Jitter)),
        retry_on=tuple(draw(st.lists(exception_types, max_size=3))),
        give_up_on=tuple(draw(st.lists(exception_types, max_size=3))),
    )


attempts = st.one_of(st.integers(1, 80), st.sampled_from([10**3, 10**6, 10**9, 2**63]))


def exact_base_us(policy: RetryPolicy, attempt: int) -> Fraction:
    """min(max_delay, initial * factor**(attempt-1)) in exact rational microseconds."""
    initial, cap = policy.initial // US, policy.max_delay // US
    if initial == 0:
        return Fraction(0)
    factor = Fraction(policy.factor)
    value = Fraction(initial)
    for _ in range(attempt - 1):  # stop multiplying once capped: attempts may be huge
        if value >= cap:
            break
        value *= factor
    return min(Fraction(cap), value)


# -- backoff arithmetic ------------------------------------------------------------


@settings(max_examples=300)
@given(policies(), attempts, st.integers(0, 2**32))
def test_delay_is_never_negative_nor_above_max_delay(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay = policy.delay(attempt, random.Random(seed))
    assert timedelta(0) <= delay <= policy.max_delay


@settings(max_examples=200)
@given(policies(st.just(Jitter.NONE)), st.integers(1, 80))
def test_no_jitter_is_the_capped_exponential(policy: RetryPolicy, attempt: int) -> None:
    delay_us = policy.delay(attempt, random.Random(0)) // US
    # Float rounding may move the result by at most a microsecond.
    assert abs(delay_us - exact_base_us(policy, attempt)) <= 1
    assert policy.base_delay(attempt) == policy.delay(attempt, random.Random(1))


@settings(max_examples=200)
@given(policies(st.just(Jitter.NONE)), st.integers(1, 200))
def test_no_jitter_never_decreases(policy: RetryPolicy, attempt: int) -> None:
    rng = random.Random(0)
    assert policy.delay(attempt, rng) <= policy.delay(attempt + 1, rng)


def test_no_jitter_doubles_until_capped() -> None:
    policy = RetryPolicy(max_delay=timedelta(seconds=10), jitter=Jitter.NONE)
    rng = random.Random(0)
    seconds = [policy.delay(n, rng) / timedelta(seconds=1) for n in range(1, 8)]
    assert seconds == [1, 2, 4, 8, 10, 10, 10]


def test_a_factor_of_one_is_a_constant_delay() -> None:
    policy = RetryPolicy(initial=timedelta(seconds=3), factor=1, jitter="none")
    assert {policy.delay(n, random.Random(0)) for n in (1, 2, 50, 10**9)} == {timedelta(seconds=3)}


@settings(max_examples=200)
@given(policies(st.just(Jitter.FULL)), attempts, st.integers(0, 2**32))
def test_full_jitter_is_within_zero_and_base(policy: RetryPolicy, attempt: int, seed: int) -> None:
    base = policy.base_delay(attempt)
    assert timedelta(0) <= policy.delay(attempt, random.Random(seed)) <= base


@settings(max_examples=200)
@given(policies(st.just(Jitter.EQUAL)), attempts, st.integers(0, 2**32))
def test_equal_jitter_is_within_half_base_and_base(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    base = policy.base_delay(attempt)
    assert base / 2 <= policy.delay(attempt, random.Random(seed)) <= base


def test_jitter_spreads_over_its_whole_range() -> None:
    # Not a property of one draw: a jitter stuck at one end would pass the bounds above.
    rng = random.Random(42)
    base = timedelta(seconds=8)
    full = RetryPolicy(initial=base, max_delay=base, jitter=Jitter.FULL)
    equal = RetryPolicy(initial=base, max_delay=base, jitter=Jitter.EQUAL)
    full_draws = [full.delay(1, rng) / base for _ in range(2000)]
    equal_draws = [equal.delay(1, rng) / base for _ in range(2000)]
    assert min(full_draws) < 0.01
    assert max(full_draws) > 0.99
    assert 0.45 < sum(full_draws) / len(full_draws) < 0.55
    assert 0.5 <= min(equal_draws) < 0.51
    assert max(equal_draws) > 0.99
    assert 0.72 < sum(equal_draws) / len(equal_draws) < 0.78


def test_the_cap_applies_as_soon_as_the_exponential_passes_it() -> None:
    policy = RetryPolicy(initial=3 * US, max_delay=5 * US, jitter=Jitter.NONE)
    assert [policy.delay(n, random.Random(0)) // US for n in (1, 2, 3)] == [3, 5, 5]


@pytest.mark.parametrize(
    ("jitter", "base_us", "reachable"),
    [
        (Jitter.FULL, 3, {0, 1, 2, 3}),
        (Jitter.EQUAL, 3, {2, 3}),  # never below base/2 = 1.5 µs
        (Jitter.EQUAL, 4, {2, 3, 4}),
        (Jitter.EQUAL, 1, {1}),
        (Jitter.FULL, 0, {0}),
    ],
)
def test_jitter_reaches_both_ends_of_its_range_to_the_microsecond(
    jitter: Jitter, base_us: int, reachable: set[int]
) -> None:
    policy = RetryPolicy(initial=base_us * US, max_delay=base_us * US, jitter=jitter)
    rng = random.Random(7)
    assert {policy.delay(1, rng) // US for _ in range(300)} == reachable


@pytest.mark.parametrize("jitter", list(Jitter))
@pytest.mark.parametrize("attempt", [10**6, 10**9, 2**63])
def test_huge_attempts_are_capped_not_overflowing(jitter: Jitter, attempt: int) -> None:
    policy = RetryPolicy(factor=1.0001, jitter=jitter)
    assert policy.base_delay(attempt) == policy.max_delay
    assert policy.delay(attempt, random.Random(0)) <= policy.max_delay


def test_a_zero_initial_delay_stays_zero_however_many_attempts() -> None:
    policy = RetryPolicy(initial=timedelta(0), jitter=Jitter.NONE)
    assert policy.delay(1, random.Random(0)) == timedelta(0)
    assert policy.delay(10**9, random.Random(0)) == timedelta(0)


@settings(max_examples=100)
@given(policies(), st.integers(0, 2**32))
def test_a_seeded_rng_gives_the_same_delays(policy: RetryPolicy, seed: int) -> None:
    def schedule() -> list[timedelta]:
        rng = random.Random(seed)
        return [policy.delay(n, rng) for n in range(1, 12)]

    assert schedule() == schedule()


@pytest.mark.parametrize("attempt", [0, -1, 1.0, True, "1"])
def test_attempts_count_from_one(attempt: object) -> None:
    policy = RetryPolicy()
    with pytest.raises(ValueError, match="attempt must be an integer >= 1"):
        policy.delay(attempt, random.Random(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempt must be an integer >= 1"):
        policy.decide(attempt, OSError())  # type: ignore[arg-type]


# -- the decision -------------------------------------------------------------------


class FakeCancelled(BaseException):
    """Stands in for trio.Cancelled: a BaseException that is not an Exception."""


NETWORK = RetryPolicy(
    max_attempts=3, retry_on=(OSError, Service.Unavailable), give_up_on=(PermissionError,)
)


@pytest.mark.parametrize(
    ("attempt", "error", "outcome", "reason"),
    [
        (1, ConnectionError(), Outcome.RETRY, "retryable: ConnectionError (attempt 1 of 3)"),
        (2, Transient(), Outcome.RETRY, "retryable: Transient (attempt 2 of 3)"),
        (2, Service.Unavailable(), Outcome.RETRY, "retryable: Unavailable (attempt 2 of 3)"),
        (3, TimeoutError(), Outcome.GIVE_UP, "max attempts (3) reached"),
        (9, TimeoutError(), Outcome.GIVE_UP, "max attempts (3) reached"),
        (1, ValueError(), Outcome.GIVE_UP, "not retryable: ValueError"),
        (1, KernelError(), Outcome.GIVE_UP, "not retryable: KernelError"),
        # give_up_on wins over retry_on (PermissionError is an OSError).
        (1, PermissionError(), Outcome.GIVE_UP, "not retryable: PermissionError (in give_up_on)"),
        # Interruptions never spend an attempt, not even the last one.
        (1, FakeCancelled(), Outcome.NOT_A_FAILURE, "cancelled: the attempt is not spent"),
        (3, KeyboardInterrupt(), Outcome.NOT_A_FAILURE, "cancelled: the attempt is not spent"),
        (9, SystemExit(1), Outcome.NOT_A_FAILURE, "cancelled: the attempt is not spent"),
        (1, GeneratorExit(), Outcome.NOT_A_FAILURE, "cancelled: the attempt is not spent"),
    ],
)
def test_decision_table(attempt: int, error: BaseException, outcome: Outcome, reason: str) -> None:
    decision = NETWORK.decide(attempt, error)
    assert decision == Decision(outcome, reason)
    assert [decision.retry, decision.give_up, decision.not_a_failure] == [
        o is outcome for o in (Outcome.RETRY, Outcome.GIVE_UP, Outcome.NOT_A_FAILURE)
    ]


def test_cancellation_is_not_a_failure_even_when_listed_in_retry_on() -> None:
    policy = RetryPolicy(retry_on=(BaseException,), give_up_on=(FakeCancelled,))
    assert policy.decide(1, FakeCancelled()).outcome is Outcome.NOT_A_FAILURE


def test_one_attempt_means_never_retry() -> None:
    assert RetryPolicy(max_attempts=1).decide(1, OSError()).reason == "max attempts (1) reached"


@pytest.mark.parametrize(
    ("error", "outcome", "reason"),
    [
        (
            ExceptionGroup("", [ConnectionError(), TimeoutError()]),
            Outcome.RETRY,
            "retryable: ExceptionGroup (attempt 1 of 3)",
        ),
        (
            ExceptionGroup("", [ConnectionError(), ExceptionGroup("", [ValueError()])]),
            Outcome.GIVE_UP,
            "not retryable: ValueError",
        ),
        (
            ExceptionGroup("", [ConnectionError(), PermissionError()]),
            Outcome.GIVE_UP,
            "not retryable: PermissionError (in give_up_on)",
        ),
        # A job cancelled while a child task failed: still an interruption.
        (
            BaseExceptionGroup("", [ValueError(), FakeCancelled()]),
            Outcome.NOT_A_FAILURE,
            "cancelled: the attempt is not spent",
        ),
    ],
)
def test_exception_groups_are_judged_by_their_leaves(
    error: BaseException, outcome: Outcome, reason: str
) -> None:
    assert NETWORK.decide(1, error) == Decision(outcome, reason)


def test_a_group_type_in_retry_on_matches_the_whole_group() -> None:
    policy = RetryPolicy(retry_on=(ExceptionGroup,))
    assert policy.decide(1, ExceptionGroup("", [ValueError()])).outcome is Outcome.RETRY


def test_default_policy_retries_every_exception_four_times() -> None:
    policy = RetryPolicy()
    outcomes = [policy.decide(n, ValueError()).outcome for n in range(1, 6)]
    assert outcomes == [Outcome.RETRY] * 4 + [Outcome.GIVE_UP]


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts=0: must be at least 1"),
        ({"max_attempts": 2.5}, "max_attempts=2.5: must be an integer"),
        ({"max_attempts": True}, "max_attempts=True: must be an integer"),
        ({"initial": timedelta(seconds=-1)}, "initial=.*: must not be negative"),
        ({"initial": 1.0}, "initial=1.0: must be a datetime.timedelta"),
        ({"factor": 0.5}, "factor=0.5: must be a finite number >= 1"),
        ({"factor": float("inf")}, "factor=inf: must be a finite number >= 1"),
        ({"factor": "2"}, "factor='2': must be a number"),
        ({"initial": timedelta(minutes=10)}, "max_delay=.*: must not be shorter than initial"),
        ({"jitter": "random"}, "jitter='random': must be one of 'none', 'full', 'equal'"),
        ({"retry_on": (OSError, int)}, "retry_on=<class 'int'>: is not an exception class"),
        ({"give_up_on": "ValueError"}, "give_up_on='ValueError': must be a tuple"),
    ],
)
def test_invalid_policies_are_refused_with_the_field_named(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRetryPolicy, match=message) as caught:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field in kwargs or caught.value.field == "max_delay"
    assert isinstance(caught.value, KernelError)
    assert isinstance(caught.value, ValueError)


def test_friendly_spellings_are_converted() -> None:
    policy = RetryPolicy(jitter="equal", retry_on=OSError, give_up_on=[PermissionError])
    assert policy.jitter is Jitter.EQUAL
    assert policy.retry_on == (OSError,)
    assert policy.give_up_on == (PermissionError,)


def test_policies_are_frozen_values() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 2  # type: ignore[misc]
    assert policy == RetryPolicy()
    assert hash(policy) == hash(RetryPolicy())


# -- JSON --------------------------------------------------------------------------


@settings(max_examples=200)
@given(policies())
def test_json_round_trip(policy: RetryPolicy) -> None:
    stored = json.dumps(policy.to_json())
    assert RetryPolicy.from_json(json.loads(stored)) == policy


@given(st.integers(0, 100 * 365 * 86_400 * 1_000_000))
def test_json_keeps_durations_to_the_microsecond(micros: int) -> None:
    policy = RetryPolicy(initial=timedelta(0), max_delay=timedelta(microseconds=micros))
    assert RetryPolicy.from_json(json.loads(json.dumps(policy.to_json()))) == policy


def test_json_form_is_readable() -> None:
    policy = RetryPolicy(
        max_attempts=8,
        initial=timedelta(milliseconds=250),
        max_delay=timedelta(minutes=1),
        jitter=Jitter.EQUAL,
        retry_on=(OSError, Service.Unavailable),
        give_up_on=(PermissionError,),
    )
    assert policy.to_json() == {
        "max_attempts": 8,
        "initial": 0.25,
        "factor": 2.0,
        "max_delay": 60.0,
        "jitter": "equal",
        "retry_on": ["builtins.OSError", f"{__name__}.Service.Unavailable"],
        "give_up_on": ["builtins.PermissionError"],
    }


def test_missing_json_keys_take_the_defaults() -> None:
    assert RetryPolicy.from_json({}) == RetryPolicy()
    assert RetryPolicy.from_json({"max_attempts": 2}) == RetryPolicy(max_attempts=2)


def test_classes_that_cannot_be_found_by_name_are_refused_when_stored() -> None:
    class LocalError(Exception):
        pass

    policy = RetryPolicy(retry_on=(LocalError,))
    with pytest.raises(InvalidRetryPolicy, match="does not name this class"):
        policy.to_json()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"give_up_on": ["builtins.int"]}, "give_up_on='builtins.int': is not an exception class"),
        ({"retry_on": ["ValueError"]}, "must be a dotted class name"),
        ({"retry_on": ["builtins.Value Error"]}, "must be a dotted class name"),
        ({"retry_on": [42]}, "retry_on=42: must be a dotted class name"),
        ({"retry_on": "builtins.OSError"}, "must be a list of dotted class names"),
        ({"initial": "1s"}, "initial='1s': must be a number of seconds"),
        ({"initial": True}, "must be a number of seconds"),
        ({"max_delay": float("nan")}, "must be a finite number of seconds"),
        ({"max_delay": 1e300}, "is too long for a datetime.timedelta"),
        ({"max_attempts": "5"}, "max_attempts='5': must be an integer"),
        ({"jitter": "FULL"}, "jitter='FULL': must be one of"),
        ({"retries": 3}, "retries=3: is not a retry policy field"),
    ],
)
def test_bad_json_is_refused_with_the_key_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRetryPolicy, match=message):
        RetryPolicy.from_json(data)


def test_reading_a_stored_policy_never_imports_and_keeps_unknown_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shared store must not make a worker execute what it reads: names of
    classes this process has not loaded (a module never imported, a class
    renamed in a deploy) are kept as names, not imported."""
    import builtins
    import sys

    imported: list[str] = []
    real_import = builtins.__import__

    def spy(name: str, *args: object, **kwargs: object) -> object:
        imported.append(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    assert "nowhere_at_all" not in sys.modules
    monkeypatch.setattr(builtins, "__import__", spy)
    policy = RetryPolicy.from_json(
        {"retry_on": ["nowhere_at_all.Error", "builtins.NoSuchError", "builtins.OSError"]}
    )
    monkeypatch.undo()
    assert imported == []
    assert "nowhere_at_all" not in sys.modules
    assert policy.retry_on == ("nowhere_at_all.Error", "builtins.NoSuchError", OSError)
    assert policy.to_json()["retry_on"] == [
        "nowhere_at_all.Error",
        "builtins.NoSuchError",
        "builtins.OSError",
    ]


def test_a_name_kept_as_text_matches_by_the_error_class_hierarchy() -> None:
    policy = RetryPolicy(retry_on=(f"{__name__}.Service.Unavailable",), max_attempts=3)
    assert policy.decide(1, Service.Unavailable()).outcome is Outcome.RETRY
    decision = policy.decide(1, ValueError("x"))
    assert decision.outcome is Outcome.GIVE_UP
    assert "retry_on names classes this process does not have" in decision.reason
    renamed = RetryPolicy(retry_on=("old.module.GoneError",))
    assert renamed.decide(1, OSError()).outcome is Outcome.GIVE_UP


@pytest.mark.parametrize(
    "retry_after", [30, 30.0, timedelta(seconds=30)], ids=["int", "float", "timedelta"]
)
def test_a_retry_after_on_the_error_is_a_floor_on_the_delay(retry_after: object) -> None:
    class Throttled(Exception):
        pass

    error = Throttled()
    error.retry_after = retry_after  # type: ignore[attr-defined]
    policy = RetryPolicy(initial=timedelta(seconds=1), max_delay=timedelta(seconds=5))
    rng = random.Random(1)
    assert policy.delay(1, rng, error) == timedelta(seconds=30)
    assert policy.delay(1, rng, Throttled()) <= timedelta(seconds=1)


def test_json_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRetryPolicy, match="must be a JSON object"):
        RetryPolicy.from_json([1, 2])  # type: ignore[arg-type]

"""Noise control, pure: the dedup window, the rate limit and the digest, with
plain numbers for time (kernel.notifier.noise)."""

from __future__ import annotations

import itertools
import math
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.notifier.noise import (
    DEFAULT_NOISE_RULES,
    NO_NOISE_RULES,
    NoiseFilter,
    NoiseRules,
)
from kernel.ports import Level

MIN = 60.0


def test_duplicates_within_the_window_are_held_and_counted_in_one_digest() -> None:
    noise = NoiseFilter(NoiseRules(dedup_window=timedelta(minutes=10), rate_limit=0))
    admitted = [noise.admit("k", "backup failed", Level.error, t * 1.0) for t in range(10)]
    assert admitted == [True] + [False] * 9
    assert noise.held_back == 9
    assert noise.next_digest_at() == 1.0 + 10 * MIN  # the first held back, plus the window
    assert noise.take_digest(10 * MIN) is None  # not yet due
    digest = noise.take_digest(1.0 + 10 * MIN)
    assert digest is not None
    assert digest.total == 9
    assert digest.level is Level.error
    assert digest.title == "9 notifications held back"
    assert "- error: backup failed (9 times, repeated within 10m)" in digest.message(noise.rules)
    assert noise.take_digest(math.inf) is None  # forgotten once taken
    assert noise.next_digest_at() == math.inf


def test_the_window_starts_at_each_delivery() -> None:
    noise = NoiseFilter(NoiseRules(dedup_window=timedelta(seconds=100), rate_limit=0))
    assert noise.admit("k", "t", Level.info, 0)
    assert not noise.admit("k", "t", Level.info, 99.9)
    assert noise.admit("k", "t", Level.info, 100)  # the window is over: delivered again
    assert not noise.admit("k", "t", Level.info, 150)
    assert noise.admit("other", "t2", Level.info, 150)  # another alert is not a duplicate


def test_the_rate_limit_is_a_sliding_window() -> None:
    noise = NoiseFilter(
        NoiseRules(dedup_window=timedelta(0), rate_limit=3, rate_period=timedelta(seconds=60))
    )
    got = [noise.admit(f"k{i}", f"alert {i}", Level.warning, float(i)) for i in range(5)]
    assert got == [True, True, True, False, False]
    assert noise.admit("k5", "alert 5", Level.warning, 60.0)  # the one at 0 has left the period
    assert not noise.admit("k6", "alert 6", Level.warning, 60.5)
    digest = noise.take_digest(3 + 60.0)  # no dedup window: due a rate period after
    assert digest is not None
    assert [(e.title, e.count, e.reason) for e in digest.held_back] == [
        ("alert 3", 1, "rate limit"),
        ("alert 4", 1, "rate limit"),
        ("alert 6", 1, "rate limit"),
    ]
    assert "over the rate limit of 3 per 1m" in digest.message(noise.rules)


def test_no_rules_hold_nothing() -> None:
    noise = NoiseFilter(NO_NOISE_RULES)
    assert all(noise.admit("k", "t", Level.info, 0.0) for _ in range(1000))
    assert noise.next_digest_at() == math.inf


def test_the_defaults_turn_a_crash_loop_into_a_few_messages() -> None:
    """A plugin failing every 5 s for an hour, with a different traceback each
    time but the same title: one delivery per 10 minutes, plus digests."""
    noise = NoiseFilter(DEFAULT_NOISE_RULES)
    delivered = digests = 0
    for second in range(0, 3600, 5):
        delivered += noise.admit("plugin.failed|x", "plugin x failed", Level.error, second)
        if noise.take_digest(second) is not None:
            digests += 1
    assert delivered == 6
    assert digests <= 6


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        ({"dedup_window": timedelta(seconds=-1)}, "dedup_window must be a duration >= 0"),
        ({"rate_limit": -1}, "rate_limit must be an integer >= 0"),
        ({"rate_limit": True}, "rate_limit must be an integer >= 0"),
        ({"rate_period": timedelta(0)}, "rate_period must be a positive duration"),
    ],
)
def test_bad_rules_are_refused(rules: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        NoiseRules(**rules)  # type: ignore[arg-type]


alerts = st.lists(
    st.tuples(st.sampled_from("abcd"), st.floats(0, 30, allow_nan=False)),
    max_size=80,
)


@given(
    alerts=alerts,
    window=st.integers(0, 50),
    limit=st.integers(0, 5),
    period=st.integers(1, 50),
)
def test_the_rules_hold_for_any_stream(
    alerts: list[tuple[str, float]], window: int, limit: int, period: int
) -> None:
    rules = NoiseRules(
        dedup_window=timedelta(seconds=window),
        rate_limit=limit,
        rate_period=timedelta(seconds=period),
    )
    noise = NoiseFilter(rules)
    now = 0.0
    delivered: list[tuple[str, float]] = []
    held = 0
    for key, step in alerts:
        now += step
        if noise.admit(key, f"title {key}", Level.info, now):
            delivered.append((key, now))
        else:
            held += 1
    # no two deliveries of one alert within the window
    for key in "abcd":
        times = [t for k, t in delivered if k == key]
        assert all(b - a >= window for a, b in itertools.pairwise(times))
    # never more than the limit in any period
    if limit:
        times = [t for _, t in delivered]
        for index, start in enumerate(times):
            assert sum(1 for t in times[index:] if t < start + period) <= limit
    # nothing is lost: what was not delivered is in the digest
    assert noise.held_back == held
    digest = noise.take_digest(math.inf)
    assert (digest.total if digest is not None else 0) == held

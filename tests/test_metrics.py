from __future__ import annotations

import json
import math
import re
import time

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.errors import KernelError, MetricError
from kernel.observe.metrics import (
    MAX_BUCKETS,
    MAX_TRACKABLE,
    MIN_TRACKABLE,
    RELATIVE_ACCURACY,
    Counter,
    Gauge,
    Histogram,
    Metrics,
)

# -- a small parser of the Prometheus text format, to read back what we render --

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    i = 1  # past "{"
    while text[i] != "}":
        eq = text.index("=", i)
        name = text[i:eq]
        assert text[eq + 1] == '"'
        j = eq + 2
        value: list[str] = []
        while text[j] != '"':
            if text[j] == "\\":
                value.append({"\\": "\\", '"': '"', "n": "\n"}[text[j + 1]])
                j += 2
            else:
                value.append(text[j])
                j += 1
        labels[name] = "".join(value)
        i = j + 1
        if text[i] == ",":
            i += 1
    assert i == len(text) - 1
    return labels


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    # Lines end at "\n" only: a raw "\r" inside a label value is legal.
    for line in text.split("\n")[:-1]:
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, line
        name, labels, value = match.groups()
        samples.append((name, _parse_labels(labels) if labels else {}, float(value)))
    return samples


# -- counters and gauges ---------------------------------------------------------


def test_counter_counts_and_same_labels_give_same_object() -> None:
    metrics = Metrics()
    counter = metrics.counter("jobs_failed", plugin="a")
    counter.inc()
    counter.inc(2)
    assert metrics.counter("jobs_failed", plugin="a") is counter
    assert metrics.counter("jobs_failed", plugin="b") is not counter
    assert counter.value == 3
    assert isinstance(counter, Counter)


def test_label_order_does_not_matter() -> None:
    metrics = Metrics()
    assert metrics.gauge("g", a="1", b="2") is metrics.gauge("g", b="2", a="1")


def test_counter_total_suffix_names_the_same_counter() -> None:
    metrics = Metrics()
    assert metrics.counter("restarts_total") is metrics.counter("restarts")
    assert "restarts" in metrics.snapshot()


@pytest.mark.parametrize("bad", [-1, -0.5, math.inf, math.nan])
def test_counter_rejects_decrements_and_non_finite(bad: float) -> None:
    counter = Metrics().counter("c")
    with pytest.raises(MetricError, match=r"^metric 'c': increment must be finite and >= 0"):
        counter.inc(bad)
    assert counter.value == 0


def test_gauge_moves_both_ways() -> None:
    gauge = Metrics().gauge("queue_depth")
    gauge.set(5)
    gauge.inc()
    gauge.dec(3)
    assert gauge.value == 3
    assert isinstance(gauge, Gauge)
    with pytest.raises(MetricError):
        gauge.set(math.nan)
    with pytest.raises(MetricError):
        gauge.inc(math.inf)
    assert gauge.value == 3


# -- names, labels, kinds ------------------------------------------------------------


@given(st.text(alphabet="ab_:0é-. ", max_size=6))
@settings(max_examples=200)
def test_metric_names_are_validated_like_prometheus(name: str) -> None:
    valid = re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name) is not None
    metrics = Metrics()
    if valid:
        metrics.gauge(name)
    else:
        with pytest.raises(MetricError, match="invalid metric name"):
            metrics.gauge(name)


@pytest.mark.parametrize("label", ["1a", "a-b", "__reserved", "", "é"])
def test_bad_label_names_are_rejected(label: str) -> None:
    with pytest.raises(MetricError, match="invalid label name"):
        Metrics().counter("c", **{label: "v"})


def test_label_values_must_be_str() -> None:
    with pytest.raises(MetricError, match="values must be str"):
        Metrics().counter("c", code=200)  # type: ignore[arg-type]


def test_quantile_label_is_reserved_for_histograms_only() -> None:
    metrics = Metrics()
    metrics.gauge("g", quantile="x")
    with pytest.raises(MetricError, match="reserved"):
        metrics.histogram("h", quantile="x")


def test_a_name_belongs_to_one_kind() -> None:
    metrics = Metrics()
    metrics.counter("work")
    with pytest.raises(MetricError, match="already registered as a counter, not a gauge"):
        metrics.gauge("work")
    with pytest.raises(MetricError, match="counter"):
        metrics.histogram("work_total")
    with pytest.raises(MetricError) as caught:
        metrics.gauge("work")
    error = caught.value
    assert isinstance(error, KernelError)
    assert isinstance(error, ValueError)
    assert error.name == "work"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("histogram", "latency"), ("gauge", "latency_sum")),
        (("histogram", "latency"), ("gauge", "latency_count")),
        (("gauge", "latency_count"), ("histogram", "latency")),
        (("gauge", "jobs_total"), ("counter", "jobs")),
    ],
)
def test_families_cannot_write_the_same_prometheus_sample(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    metrics = Metrics()
    getattr(metrics, first[0])(first[1])
    with pytest.raises(MetricError, match="already writes"):
        getattr(metrics, second[0])(second[1])


# -- histogram --------------------------------------------------------------------------


def test_empty_histogram_has_no_statistics() -> None:
    histogram = Metrics().histogram("h")
    assert histogram.count == 0
    assert histogram.total == 0
    assert histogram.min is None
    assert histogram.max is None
    assert histogram.mean is None
    assert histogram.quantile(0.5) is None


def test_histogram_keeps_exact_count_total_min_max() -> None:
    histogram = Histogram()
    for value in [0.5, 0.25, 2.0, 0.0]:
        histogram.observe(value)
    assert histogram.count == 4
    assert histogram.total == 2.75
    assert histogram.min == 0.0
    assert histogram.max == 2.0
    assert histogram.mean == 2.75 / 4
    assert histogram.quantile(0) == 0.0
    assert histogram.quantile(1) == 2.0


@pytest.mark.parametrize("bad", [-1e-12, -1.0, math.nan, math.inf, -math.inf])
def test_histogram_rejects_negative_and_non_finite_values(bad: float) -> None:
    histogram = Metrics().histogram("h")
    with pytest.raises(MetricError, match=r"^metric 'h': observed value must be finite and >= 0"):
        histogram.observe(bad)
    assert histogram.count == 0


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan])
def test_quantile_must_be_within_unit_interval(bad: float) -> None:
    histogram = Histogram()
    histogram.observe(1.0)
    with pytest.raises(MetricError, match="within"):
        histogram.quantile(bad)


def _exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


# log-uniform over the whole trackable range plus exact zeros and sub-ns values
_durations = st.one_of(
    st.floats(min_value=-11, max_value=12).map(lambda exponent: 10.0**exponent),
    st.just(0.0),
    st.floats(min_value=1e-4, max_value=10.0),
)


@given(
    values=st.lists(_durations, min_size=1, max_size=300),
    q=st.one_of(st.floats(min_value=0.0, max_value=1.0), st.sampled_from([0.5, 0.99])),
)
@settings(max_examples=300)
def test_quantiles_are_within_the_documented_relative_error(values: list[float], q: float) -> None:
    histogram = Histogram()
    for value in values:
        histogram.observe(value)
    exact = _exact_quantile(values, q)
    estimate = histogram.quantile(q)
    assert estimate is not None
    # α relative, a hair for float rounding at bucket edges, and the zero
    # bucket's absolute error for values at or below MIN_TRACKABLE.
    assert abs(estimate - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9) + MIN_TRACKABLE
    assert histogram.count == len(values)
    assert histogram.min == min(values)
    assert histogram.max == max(values)


@given(st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=1, max_size=100))
@settings(max_examples=100)
def test_quantiles_are_monotonic_in_q(values: list[float]) -> None:
    histogram = Histogram()
    for value in values:
        histogram.observe(value)
    estimates = histogram.quantiles(0.0, 0.1, 0.5, 0.9, 0.99, 1.0)
    assert list(estimates) == sorted(estimates)  # type: ignore[type-var]


def test_values_beyond_the_trackable_range_keep_exact_extremes() -> None:
    histogram = Histogram()
    histogram.observe(MAX_TRACKABLE * 10)
    histogram.observe(1.0)
    assert histogram.max == MAX_TRACKABLE * 10
    assert histogram.quantile(1.0) == MAX_TRACKABLE * 10


def test_memory_is_bounded_whatever_is_observed() -> None:
    histogram = Histogram()
    value = MIN_TRACKABLE / 10
    while value < MAX_TRACKABLE * 10:
        histogram.observe(value)
        value *= 1.005  # finer than a bucket, so every bucket is hit
    assert histogram.bucket_count == MAX_BUCKETS
    assert MAX_BUCKETS < 2500


def test_timer_uses_the_injected_clock_and_records_on_error() -> None:
    now = iter([10.0, 10.25, 20.0, 21.0])
    histogram = Metrics(clock=lambda: next(now)).histogram("call_seconds")
    with histogram.time() as timer:
        pass
    assert timer.elapsed == 0.25
    with pytest.raises(RuntimeError), histogram.time():
        raise RuntimeError("boom")
    assert histogram.count == 2
    assert histogram.total == 1.25


def test_timer_clamps_a_clock_that_steps_back() -> None:
    now = iter([5.0, 4.0])
    histogram = Metrics(clock=lambda: next(now)).histogram("h")
    with histogram.time():
        pass
    assert histogram.total == 0.0


def test_timer_outside_trio_uses_perf_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([100.0, 100.5])
    monkeypatch.setattr(time, "perf_counter", lambda: next(readings))
    histogram = Metrics().histogram("h")
    with histogram.time():
        pass
    assert histogram.total == 0.5


async def test_timer_inside_trio_measures_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    histogram = Metrics().histogram("job_seconds")
    with histogram.time():
        await trio.sleep(2.5)
    with trio.move_on_after(1.0), histogram.time():
        await trio.sleep(60)  # cancelled after 1 s: still recorded
    assert histogram.count == 2
    assert histogram.total == pytest.approx(3.5, abs=1e-9)
    assert histogram.max == pytest.approx(2.5, abs=1e-9)


# -- scoped views ------------------------------------------------------------------------


def test_scoped_view_adds_its_labels() -> None:
    metrics = Metrics()
    alpha = metrics.scoped(plugin="alpha")
    beta = metrics.scoped(plugin="beta")
    alpha.counter("emails_sent").inc()
    beta.counter("emails_sent").inc(5)
    assert metrics.counter("emails_sent", plugin="alpha").value == 1
    assert metrics.counter("emails_sent", plugin="beta").value == 5
    assert alpha.labels == {"plugin": "alpha"}


def test_scoped_view_cannot_override_its_labels() -> None:
    view = Metrics().scoped(plugin="alpha")
    with pytest.raises(MetricError, match="fixed to 'alpha'"):
        view.counter("emails_sent", plugin="beta")
    with pytest.raises(MetricError, match="fixed"):
        view.scoped(plugin="beta")


def test_nested_scopes_and_prefixes() -> None:
    metrics = Metrics()
    view = metrics.scoped("mail_", plugin="mailer").scoped("smtp_", server="a")
    view.histogram("send_seconds", status="ok").observe(0.1)
    assert view.prefix == "mail_smtp_"
    assert metrics.histogram(
        "mail_smtp_send_seconds", plugin="mailer", server="a", status="ok"
    ).count
    view.describe("send_seconds", "Time to hand a message to SMTP.")
    assert metrics.snapshot()["mail_smtp_send_seconds"]["help"].startswith("Time")


@pytest.mark.parametrize("prefix", ["1x_", "a-b", "é"])
def test_scope_prefix_must_make_valid_names(prefix: str) -> None:
    with pytest.raises(MetricError, match="prefix"):
        Metrics().scoped(prefix)


def test_scope_labels_are_validated() -> None:
    with pytest.raises(MetricError):
        Metrics().scoped(quantile="0.5")
    with pytest.raises(MetricError):
        Metrics().scoped(**{"__name__": "x"})


# -- read-outs ---------------------------------------------------------------------------


def _sample_registry() -> Metrics:
    metrics = Metrics()
    metrics.describe("jobs_total", "Jobs run.")
    metrics.counter("jobs", plugin="mailer").inc(3)
    metrics.gauge("queue_depth", queue="default").set(2.5)
    histogram = metrics.histogram("job_seconds", plugin="mailer")
    for value in [0.5, 1.0, 2.0]:
        histogram.observe(value)
    metrics.histogram("idle_seconds")
    return metrics


def test_snapshot_is_json_and_complete() -> None:
    snapshot = _sample_registry().snapshot()
    assert json.loads(json.dumps(snapshot, allow_nan=False)) == snapshot
    assert list(snapshot) == ["idle_seconds", "job_seconds", "jobs", "queue_depth"]
    assert snapshot["jobs"] == {
        "kind": "counter",
        "help": "Jobs run.",
        "series": [{"labels": {"plugin": "mailer"}, "value": 3}],
    }
    assert snapshot["queue_depth"]["series"] == [{"labels": {"queue": "default"}, "value": 2.5}]
    (row,) = snapshot["job_seconds"]["series"]
    assert row["labels"] == {"plugin": "mailer"}
    assert (row["count"], row["total"], row["min"], row["max"]) == (3, 3.5, 0.5, 2.0)
    assert row["mean"] == pytest.approx(3.5 / 3)
    assert row["p50"] == pytest.approx(1.0, rel=RELATIVE_ACCURACY)
    assert row["p99"] == pytest.approx(1.0, rel=RELATIVE_ACCURACY)  # rank floor(0.99 * 2) = 1
    assert snapshot["idle_seconds"]["series"][0] == {
        "labels": {},
        "count": 0,
        "total": 0.0,
        "min": None,
        "max": None,
        "mean": None,
        "p50": None,
        "p99": None,
    }


def test_prometheus_text_format() -> None:
    text = _sample_registry().render_prometheus()
    p50 = Histogram()
    for value in [0.5, 1.0, 2.0]:
        p50.observe(value)
    median = repr(p50.quantile(0.5))
    assert text == (
        "# TYPE idle_seconds summary\n"
        'idle_seconds{quantile="0.5"} NaN\n'
        'idle_seconds{quantile="0.99"} NaN\n'
        "idle_seconds_sum 0\n"
        "idle_seconds_count 0\n"
        "# TYPE job_seconds summary\n"
        f'job_seconds{{plugin="mailer",quantile="0.5"}} {median}\n'
        f'job_seconds{{plugin="mailer",quantile="0.99"}} {median}\n'
        'job_seconds_sum{plugin="mailer"} 3.5\n'
        'job_seconds_count{plugin="mailer"} 3\n'
        "# HELP jobs_total Jobs run.\n"
        "# TYPE jobs_total counter\n"
        'jobs_total{plugin="mailer"} 3\n'
        "# TYPE queue_depth gauge\n"
        'queue_depth{queue="default"} 2.5\n'
    )


def test_empty_registry_renders_nothing() -> None:
    assert Metrics().render_prometheus() == ""
    assert Metrics().snapshot() == {}


def test_help_text_is_escaped() -> None:
    metrics = Metrics()
    metrics.describe("g", "line one\nback\\slash")
    metrics.gauge("g").set(1)
    assert "# HELP g line one\\nback\\\\slash\n" in metrics.render_prometheus()


@given(st.text(max_size=20))
@settings(max_examples=200)
def test_label_values_round_trip_through_the_text_format(value: str) -> None:
    metrics = Metrics()
    metrics.counter("c", path=value).inc(2)
    metrics.histogram("h", path=value).observe(0.125)
    samples = parse_prometheus(metrics.render_prometheus())
    assert ("c_total", {"path": value}, 2.0) in samples
    assert ("h_count", {"path": value}, 1.0) in samples
    assert ("h", {"path": value, "quantile": "0.5"}, 0.125) in samples


def test_float_values_render_in_a_form_prometheus_parses() -> None:
    metrics = Metrics()
    metrics.gauge("tiny").set(1e-7)
    metrics.gauge("negative").set(-2.25)
    metrics.counter("big").inc(1e20)
    samples = {name: value for name, _, value in parse_prometheus(metrics.render_prometheus())}
    assert samples == {"big_total": 1e20, "negative": -2.25, "tiny": 1e-7}

"""Counters, gauges and timing histograms, with a JSON snapshot and Prometheus text.

One `Metrics` registry per kernel. Every schedule run, job and adapter call is
timed into a `Histogram`; failures and restarts are `Counter`\\s; levels (queue
depth, running jobs) are `Gauge`\\s. Two read-outs serve the consumers:
`Metrics.snapshot` (a JSON-able dict for ``kernel status`` and a JSON API) and
`Metrics.render_prometheus` (the Prometheus text exposition format 0.0.4).

A plugin receives a `MetricsView` from `Metrics.scoped`, which always adds
the plugin's own labels (``plugin="name"``), so it can record its series but
never write another plugin's.

The histogram is a DDSketch-style logarithmic sketch (Masson, Rim & Lee,
"DDSketch", VLDB 2019): bucket ``i`` holds values in ``(γ^(i-1), γ^i]`` with
``γ = (1 + α) / (1 - α)`` and is read back as ``2γ^i / (γ + 1)``, which is
within a relative error ``α`` of every value in the bucket. So a quantile is
within ``α`` (1 %) of the exact sample at that rank, for any distribution,
while memory is bounded by the number of buckets between the smallest and
largest trackable value (`MAX_BUCKETS`). HdrHistogram makes the same trade
with log-linear buckets; count, total, min and max are kept exactly.

Not thread-safe: record from the trio thread (time a worker-thread call
around ``trio.to_thread.run_sync``, not inside it).
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar

import attrs
import trio

from kernel.errors import MetricError

__all__ = [
    "MAX_BUCKETS",
    "MAX_TRACKABLE",
    "MIN_TRACKABLE",
    "RELATIVE_ACCURACY",
    "Counter",
    "Gauge",
    "Histogram",
    "Metrics",
    "MetricsView",
    "Stopwatch",
]

#: Relative accuracy α of `Histogram.quantile`: the estimate ``e`` for the
#: exact sample ``x`` at the requested rank satisfies ``|e - x| <= α·x``.
RELATIVE_ACCURACY = 0.01
#: Non-negative values at or below this (1 ns, in seconds) count as zero.
MIN_TRACKABLE = 1e-9
#: Values above this (about 31,700 years in seconds) share the top bucket;
#: min, max, total and count stay exact.
MAX_TRACKABLE = 1e12

_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_INV_LOG_GAMMA = 1.0 / math.log(_GAMMA)
_MIN_KEY = math.ceil(math.log(MIN_TRACKABLE) * _INV_LOG_GAMMA)
_MAX_KEY = math.ceil(math.log(MAX_TRACKABLE) * _INV_LOG_GAMMA)
#: The key of the bucket that holds zeros (and values up to `MIN_TRACKABLE`).
_ZERO_KEY = _MIN_KEY - 1
#: Upper bound on the buckets one histogram can hold: its memory bound.
MAX_BUCKETS = _MAX_KEY - _ZERO_KEY + 1

_INF = math.inf
_log = math.log
_ceil = math.ceil

#: The quantiles `Metrics.snapshot` and `Metrics.render_prometheus` report.
_REPORTED_QUANTILES = (0.5, 0.99)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Clock: TypeAlias = Callable[[], float]
_LabelKey: TypeAlias = tuple[tuple[str, str], ...]
Kind: TypeAlias = Literal["counter", "gauge", "histogram"]


def _default_clock() -> Clock:
    """The clock a `Stopwatch` uses when the registry was given none.

    Inside a trio run it is ``trio.current_time``, so durations are what the
    run's clock says (virtual seconds under ``MockClock``); elsewhere (a
    worker thread, plain sync code) ``time.perf_counter``. The choice is made
    once per timing, at entry, so start and end always read the same clock.
    """
    return trio.current_time if trio.lowlevel.in_trio_run() else time.perf_counter


def _bucket_value(key: int) -> float:
    """The representative of bucket ``key``: within α of every value in it."""
    if key == _ZERO_KEY:
        return 0.0
    return 2.0 * _GAMMA**key / (_GAMMA + 1.0)


@attrs.define(eq=False)
class Counter:
    """A monotonically increasing count (jobs run, failures, restarts).

    Rendered to Prometheus as ``<name>_total``.
    """

    kind: ClassVar[Kind] = "counter"
    #: The metric name, for error messages.
    name: str = ""
    _value: float = attrs.field(default=0, init=False)

    @property
    def value(self) -> float:
        return self._value

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (finite, >= 0: a counter only goes up; use a `Gauge` otherwise)."""
        if not 0 <= n < _INF:
            raise MetricError(self.name, f"increment must be finite and >= 0, got {n!r}")
        self._value += n


@attrs.define(eq=False)
class Gauge:
    """A value that goes up and down (queue depth, running jobs, last success time)."""

    kind: ClassVar[Kind] = "gauge"
    #: The metric name, for error messages.
    name: str = ""
    _value: float = attrs.field(default=0, init=False)

    @property
    def value(self) -> float:
        return self._value

    def set(self, value: float) -> None:
        if not math.isfinite(value):
            raise MetricError(self.name, f"value must be finite, got {value!r}")
        self._value = value

    def inc(self, n: float = 1) -> None:
        if not math.isfinite(n):
            raise MetricError(self.name, f"increment must be finite, got {n!r}")
        self._value += n

    def dec(self, n: float = 1) -> None:
        self.inc(-n)


@attrs.define(eq=False)
class Histogram:
    """Durations (or any non-negative values): exact count, total, min, max,
    and quantiles within `RELATIVE_ACCURACY` in bounded memory.

    ``quantile(q)`` returns an estimate of the sample of rank
    ``floor(q * (count - 1))`` in sorted order (a sample value, no
    interpolation between two samples); ``quantile(0)`` and ``quantile(1)``
    are the exact min and max.
    """

    kind: ClassVar[Kind] = "histogram"
    #: The metric name, for error messages.
    name: str = ""
    _clock: Clock | None = attrs.field(default=None, alias="clock", kw_only=True)
    _buckets: dict[int, int] = attrs.field(factory=dict, init=False)
    _count: int = attrs.field(default=0, init=False)
    _total: float = attrs.field(default=0.0, init=False)
    _min: float = attrs.field(default=_INF, init=False)
    _max: float = attrs.field(default=-_INF, init=False)

    def observe(self, value: float) -> None:
        """Record one value (seconds, for timings); must be finite and >= 0."""
        if MIN_TRACKABLE < value <= MAX_TRACKABLE:
            key = _ceil(_log(value) * _INV_LOG_GAMMA)
        elif 0.0 <= value <= MIN_TRACKABLE:
            key = _ZERO_KEY
        elif MAX_TRACKABLE < value < _INF:
            key = _MAX_KEY
        else:
            raise MetricError(self.name, f"observed value must be finite and >= 0, got {value!r}")
        buckets = self._buckets
        buckets[key] = buckets.get(key, 0) + 1
        self._count += 1
        self._total += value
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value

    def time(self) -> Stopwatch:
        """A context manager that observes the seconds its body took (even
        when the body raises or is cancelled)."""
        return Stopwatch(self, self._clock)

    @property
    def count(self) -> int:
        return self._count

    @property
    def total(self) -> float:
        return self._total

    @property
    def min(self) -> float | None:
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        return self._max if self._count else None

    @property
    def mean(self) -> float | None:
        return self._total / self._count if self._count else None

    @property
    def bucket_count(self) -> int:
        """Buckets in use; never more than `MAX_BUCKETS`."""
        return len(self._buckets)

    def cumulative_counts(self, bounds: Sequence[float]) -> list[int]:
        """For each of ``bounds`` (ascending), how many values were observed
        at or below it: the ``le`` buckets of a Prometheus histogram. A value
        within `RELATIVE_ACCURACY` of a bound may be counted on either side
        of it (the sketch keeps buckets, not values); values above the last
        bound are in `count` only, as ``le="+Inf"`` is."""
        if any(later < earlier for earlier, later in itertools.pairwise(bounds)):
            raise MetricError(self.name, f"bounds must ascend, got {list(bounds)!r}")
        counts = [0] * len(bounds)
        keys = sorted(self._buckets)
        seen = 0
        index = 0
        for key in keys:
            value = _bucket_value(key)
            while index < len(bounds) and bounds[index] < value:
                counts[index] = seen
                index += 1
            seen += self._buckets[key]
        for rest in range(index, len(bounds)):
            counts[rest] = seen
        return counts

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0 <= q <= 1), or ``None`` when nothing was observed."""
        return self.quantiles(q)[0]

    def quantiles(self, *qs: float) -> tuple[float | None, ...]:
        """Several quantiles in one pass over the buckets."""
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise MetricError(self.name, f"quantile must be within [0, 1], got {q!r}")
        if not self._count:
            return tuple(None for _ in qs)
        keys = sorted(self._buckets)
        results: list[float | None] = []
        for q in qs:
            rank = math.floor(q * (self._count - 1))
            if rank == 0:
                results.append(self._min)
                continue
            if rank == self._count - 1:
                results.append(self._max)
                continue
            seen = 0
            for key in keys:
                seen += self._buckets[key]
                if seen > rank:
                    # The sample of this rank lies in this bucket; clamping to
                    # the exact extremes can only move the estimate closer.
                    results.append(min(max(_bucket_value(key), self._min), self._max))
                    break
        return tuple(results)


class Stopwatch:
    """Times a ``with`` block into a `Histogram`; ``elapsed`` holds the
    duration once the block has exited."""

    __slots__ = ("_clock", "_histogram", "_now", "_start", "elapsed")

    def __init__(self, histogram: Histogram, clock: Clock | None) -> None:
        self._histogram = histogram
        self._clock = clock
        self._now: Clock = time.perf_counter
        self._start = 0.0
        self.elapsed: float | None = None

    def __enter__(self) -> Stopwatch:
        self._now = self._clock if self._clock is not None else _default_clock()
        self._start = self._now()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # max(): an injected clock that steps back must not poison the histogram.
        self.elapsed = max(self._now() - self._start, 0.0)
        self._histogram.observe(self.elapsed)


_Metric: TypeAlias = Counter | Gauge | Histogram
_M = TypeVar("_M", Counter, Gauge, Histogram)


@attrs.define(eq=False)
class _Family:
    """All series of one metric name: one kind, one help text, many label sets."""

    name: str
    kind: Kind
    series: dict[_LabelKey, Any] = attrs.field(factory=dict)

    def exposed_names(self) -> tuple[str, ...]:
        """The sample names this family writes in the Prometheus format."""
        if self.kind == "counter":
            return (self.name + "_total",)
        if self.kind == "histogram":
            return (self.name, self.name + "_sum", self.name + "_count")
        return (self.name,)


def _validate_name(name: object) -> str:
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        raise MetricError(str(name), "invalid metric name: it must match [a-zA-Z_:][a-zA-Z0-9_:]*")
    return name


def _validate_labels(name: str, kind: Kind, labels: Mapping[str, object]) -> None:
    for label, value in labels.items():
        if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
            raise MetricError(
                name,
                f"invalid label name {label!r}: it must match [a-zA-Z_][a-zA-Z0-9_]* "
                "and not start with '__'",
            )
        if kind == "histogram" and label == "quantile":
            raise MetricError(name, "label 'quantile' is reserved for a histogram's quantiles")
        if not isinstance(value, str):
            raise MetricError(
                name, f"label {label}={value!r}: values must be str, got {type(value).__name__}"
            )


@attrs.define(eq=False)
class Metrics:
    """The metric registry of one kernel.

    ``clock`` is what `Histogram.time` reads; ``None`` (the default) means
    ``trio.current_time`` inside a trio run (virtual time under
    ``MockClock``) and ``time.perf_counter`` outside one.

    The same name and labels always return the same metric object, so a hot
    path should look its metric up once and keep it. A name belongs to one
    kind; reusing it for another kind, or so that two families would write
    the same Prometheus sample name, raises `MetricError`. A counter named
    ``x_total`` is the counter ``x`` (rendered ``x_total``), as in the
    official Prometheus clients.
    """

    clock: Clock | None = None
    _families: dict[str, _Family] = attrs.field(factory=dict, init=False)
    _exposed: dict[str, str] = attrs.field(factory=dict, init=False)
    _help: dict[str, str] = attrs.field(factory=dict, init=False)

    # -- recording -----------------------------------------------------------

    def counter(self, name: str, /, **labels: str) -> Counter:
        return self._get(Counter, _counter_family(name), labels)

    def gauge(self, name: str, /, **labels: str) -> Gauge:
        return self._get(Gauge, name, labels)

    def histogram(self, name: str, /, **labels: str) -> Histogram:
        return self._get(Histogram, name, labels)

    def describe(self, name: str, help: str, /) -> None:
        """Set the ``# HELP`` text of metric ``name`` (any kind, before or after use)."""
        self._help[_validate_name(name)] = help

    def scoped(self, prefix: str = "", /, **labels: str) -> MetricsView:
        """A view whose every metric carries ``labels`` (which its user cannot
        override) and whose names start with ``prefix``."""
        return MetricsView(self, "", ()).scoped(prefix, **labels)

    def _get(self, cls: type[_M], name: str, labels: Mapping[str, str]) -> _M:
        family = self._families.get(name)
        if family is not None and family.kind == cls.kind:
            metric: _M | None = family.series.get(tuple(sorted(labels.items())))
            if metric is not None:
                return metric
        return self._create(cls, name, labels)

    def _create(self, cls: type[_M], name: str, labels: Mapping[str, str]) -> _M:
        _validate_name(name)
        _validate_labels(name, cls.kind, labels)
        family = self._families.get(name)
        if family is None:
            family = _Family(name, cls.kind)
            for exposed in family.exposed_names():
                owner = self._exposed.get(exposed)
                if owner is not None:
                    raise MetricError(
                        name,
                        f"a {cls.kind} named {name!r} would write the sample {exposed!r}, "
                        f"which the {self._families[owner].kind} {owner!r} already writes",
                    )
            self._families[name] = family
            for exposed in family.exposed_names():
                self._exposed[exposed] = name
        elif family.kind != cls.kind:
            raise MetricError(name, f"already registered as a {family.kind}, not a {cls.kind}")
        key = tuple(sorted(labels.items()))
        metric: _M = cls(name, clock=self.clock) if cls is Histogram else cls(name)  # type: ignore[call-arg]
        family.series[key] = metric
        return metric

    # -- reading -------------------------------------------------------------

    def _sorted_families(self) -> Iterator[tuple[_Family, list[tuple[_LabelKey, _Metric]]]]:
        for name in sorted(self._families):
            family = self._families[name]
            yield family, sorted(family.series.items())

    def _help_for(self, family: _Family) -> str:
        text = self._help.get(family.name)
        if text is None and family.kind == "counter":
            text = self._help.get(family.name + "_total")
        return text or ""

    def snapshot(self) -> dict[str, Any]:
        """Every series as JSON-able data (no NaN or infinity), sorted by name.

        ``{name: {"kind": "counter"|"gauge"|"histogram", "help": str,
        "series": [{"labels": {...}, "value": v}, ...]}}``; a histogram series
        has ``count, total, min, max, mean, p50, p99`` instead of ``value``
        (``None`` for all but count and total while it is empty). Counters are
        keyed by their name without ``_total``.
        """
        out: dict[str, Any] = {}
        for family, series in self._sorted_families():
            rows: list[dict[str, Any]] = []
            for key, metric in series:
                row: dict[str, Any] = {"labels": dict(key)}
                if isinstance(metric, Histogram):
                    p50, p99 = metric.quantiles(*_REPORTED_QUANTILES)
                    row |= {
                        "count": metric.count,
                        "total": metric.total,
                        "min": metric.min,
                        "max": metric.max,
                        "mean": metric.mean,
                        "p50": p50,
                        "p99": p99,
                    }
                else:
                    row["value"] = metric.value
                rows.append(row)
            out[family.name] = {"kind": family.kind, "help": self._help_for(family), "series": rows}
        return out

    def render_prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4).

        Counters as ``<name>_total``, gauges as is, histograms as a
        ``summary`` with ``quantile="0.5"`` and ``"0.99"`` samples (NaN while
        empty) plus ``<name>_sum`` and ``<name>_count``. Serve it with
        ``Content-Type: text/plain; version=0.0.4; charset=utf-8``.
        """
        lines: list[str] = []
        for family, series in self._sorted_families():
            if family.kind == "counter":
                type_name, prom_type = family.name + "_total", "counter"
            elif family.kind == "gauge":
                type_name, prom_type = family.name, "gauge"
            else:
                type_name, prom_type = family.name, "summary"
            help_text = self._help_for(family)
            if help_text:
                lines.append(f"# HELP {type_name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {type_name} {prom_type}")
            for key, metric in series:
                if isinstance(metric, Histogram):
                    quantiles = metric.quantiles(*_REPORTED_QUANTILES)
                    for q, value in zip(_REPORTED_QUANTILES, quantiles, strict=True):
                        labels = _render_labels((*key, ("quantile", repr(q))))
                        lines.append(f"{family.name}{labels} {_render_value(value)}")
                    labels = _render_labels(key)
                    lines.append(f"{family.name}_sum{labels} {_render_value(metric.total)}")
                    lines.append(f"{family.name}_count{labels} {metric.count}")
                else:
                    lines.append(f"{type_name}{_render_labels(key)} {_render_value(metric.value)}")
        return "\n".join(lines) + "\n" if lines else ""


@attrs.frozen
class MetricsView:
    """What a plugin records through: every metric gets this view's fixed
    labels and name prefix, so its series cannot collide with another
    plugin's. Passing a fixed label again raises `MetricError`."""

    _registry: Metrics
    _prefix: str
    _labels: _LabelKey

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._labels)

    @property
    def prefix(self) -> str:
        return self._prefix

    def counter(self, name: str, /, **labels: str) -> Counter:
        return self._registry.counter(self._prefix + name, **self._merge(name, labels))

    def gauge(self, name: str, /, **labels: str) -> Gauge:
        return self._registry.gauge(self._prefix + name, **self._merge(name, labels))

    def histogram(self, name: str, /, **labels: str) -> Histogram:
        return self._registry.histogram(self._prefix + name, **self._merge(name, labels))

    def describe(self, name: str, help: str, /) -> None:
        self._registry.describe(self._prefix + name, help)

    def scoped(self, prefix: str = "", /, **labels: str) -> MetricsView:
        """A narrower view: more fixed labels, a longer prefix."""
        full_prefix = self._prefix + prefix
        if full_prefix and not _METRIC_NAME.fullmatch(full_prefix):
            raise MetricError(
                full_prefix, "invalid name prefix: it must match [a-zA-Z_:][a-zA-Z0-9_:]*"
            )
        merged = self._merge(prefix, labels)
        # Checked as for a histogram, the strictest kind, since the view may make any.
        _validate_labels(full_prefix or "scope", "histogram", labels)
        return MetricsView(self._registry, full_prefix, tuple(sorted(merged.items())))

    def _merge(self, name: str, labels: Mapping[str, str]) -> dict[str, str]:
        merged = dict(self._labels)
        for label, value in labels.items():
            if label in merged:
                raise MetricError(
                    self._prefix + name,
                    f"label {label!r} is fixed to {merged[label]!r} by this scope",
                )
            merged[label] = value
        return merged


def _counter_family(name: str) -> str:
    return name[: -len("_total")] if name.endswith("_total") and name != "_total" else name


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _render_labels(key: _LabelKey) -> str:
    if not key:
        return ""
    inner = ",".join(f'{label}="{_escape_label_value(value)}"' for label, value in key)
    return "{" + inner + "}"


def _render_value(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)

"""``GET /metrics``: the kernel in the Prometheus and OpenMetrics formats.

A custom collector (prometheus_client's ``Collector``, as the official
exporters write them) on a registry of its own, so nothing of the process's
default registry leaks in, and the text is written by prometheus_client
itself: the format is not re-implemented here. What it exports:

- every series of the kernel's `kernel.Metrics` (jobs by task: run time,
  failures, retries, dead letters; schedule lateness; the loop lag its
  watchdog measures; plugin restarts, schedule runs, adapter calls...) as
  ``kernel_<name>``: counters as
  counters, gauges as gauges, and the kernel's sketch histograms as
  Prometheus histograms with fixed ``le`` buckets (`BUCKETS`, read from the
  sketch within its 1 % accuracy);
- what a scrape reads from the running kernel (`KernelFacts`): each queue's
  depth, running jobs, concurrency and pause; each plugin's state (one
  series per state, 1 for the current one) and health; each schedule's
  next fire, pause and slot counts; each task breaker's state.

A kernel metric whose name would collide with one of these is left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final

import attrs
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from kernel import BreakerState, KernelControl, Metrics, PluginState, Status

__all__ = ["BUCKETS", "KernelCollector", "KernelFacts", "gather_facts", "render"]

PREFIX: Final = "kernel_"

BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""The ``le`` bounds of every exported histogram, in seconds (Prometheus'
client defaults, stretched to five minutes for jobs)."""

_SEVERITY: Final = {Status.HEALTHY: 0, Status.DEGRADED: 1, Status.UNHEALTHY: 2}
_OWN: Final = frozenset(
    {
        "up",
        "queue_depth",
        "queue_running",
        "queue_concurrency",
        "queue_paused",
        "plugin_state",
        "plugin_health",
        "schedule_next_fire_timestamp_seconds",
        "schedule_paused",
        "schedule_slots",
        "breaker_state",
    }
)


@attrs.frozen
class KernelFacts:
    """What one scrape reads from the kernel before rendering (the store
    calls are async; a collector is not)."""

    running: bool
    queues: list[dict[str, Any]] = attrs.Factory(list)
    plugins: list[dict[str, Any]] = attrs.Factory(list)
    schedules: list[dict[str, Any]] = attrs.Factory(list)
    breakers: dict[str, BreakerState] = attrs.Factory(dict)


async def gather_facts(control: KernelControl) -> KernelFacts:
    """The facts of a scrape; a kernel that is not running has none."""
    if not control.running:
        return KernelFacts(running=False)
    breakers = {
        name: spec.breaker.state
        for name, spec in control.kernel.queue.tasks.items()
        if spec.breaker is not None
    }
    return KernelFacts(
        running=True,
        queues=await control.queues(),
        plugins=control.plugins(),
        schedules=control.schedules(),
        breakers=breakers,
    )


def _gauge(name: str, help_text: str) -> Metric:
    return Metric(PREFIX + name, help_text, "gauge")


class KernelCollector:
    """Yields the kernel's metrics and a scrape's facts (module docstring)."""

    def __init__(self, metrics: Metrics, facts: KernelFacts) -> None:
        self.metrics = metrics
        self.facts = facts

    def collect(self) -> Iterator[Metric]:
        yield from self._kernel_metrics()
        yield from self._facts()

    def _kernel_metrics(self) -> Iterator[Metric]:
        for name, family in self.metrics.snapshot().items():
            if name in _OWN:
                continue
            full = PREFIX + name
            help_text = family["help"] or name.replace("_", " ")
            kind = family["kind"]
            metric = Metric(full, help_text, kind)
            for row in family["series"]:
                labels: dict[str, str] = row["labels"]
                if kind == "counter":
                    metric.add_sample(full + "_total", labels, float(row["value"]))
                elif kind == "gauge":
                    metric.add_sample(full, labels, float(row["value"]))
                else:
                    histogram = self.metrics.histogram(name, **labels)
                    counts = histogram.cumulative_counts(BUCKETS)
                    for bound, count in zip(BUCKETS, counts, strict=True):
                        metric.add_sample(full + "_bucket", {**labels, "le": str(bound)}, count)
                    metric.add_sample(
                        full + "_bucket", {**labels, "le": "+Inf"}, float(histogram.count)
                    )
                    metric.add_sample(full + "_count", labels, float(histogram.count))
                    metric.add_sample(full + "_sum", labels, histogram.total)
            yield metric

    def _facts(self) -> Iterator[Metric]:
        facts = self.facts
        up = _gauge("up", "1 while the kernel runs (its adapters open, its plugins started)")
        up.add_sample(PREFIX + "up", {}, 1.0 if facts.running else 0.0)
        yield up
        if not facts.running:
            return
        yield from self._queues()
        yield from self._plugins()
        yield from self._schedules()
        breaker = _gauge("breaker_state", "Circuit breaker state of each task (1: current)")
        for task, current in sorted(facts.breakers.items()):
            for state in BreakerState:
                labels = {"task": task, "state": state.value}
                breaker.add_sample(breaker.name, labels, 1.0 if state is current else 0.0)
        yield breaker

    def _queues(self) -> Iterator[Metric]:
        specs = {
            "queue_depth": ("Queued jobs in the store (every process's)", "depth"),
            "queue_running": ("Jobs of the queue running in this process", "running"),
            "queue_concurrency": ("Jobs of the queue this process runs at once", "concurrency"),
            "queue_paused": ("1 while this process claims nothing from the queue", "paused"),
        }
        for name, (help_text, key) in specs.items():
            metric = _gauge(name, help_text)
            for queue in self.facts.queues:
                metric.add_sample(metric.name, {"queue": queue["name"]}, float(queue[key]))
            yield metric

    def _plugins(self) -> Iterator[Metric]:
        state = _gauge("plugin_state", "Plugin state (1: current)")
        health = _gauge("plugin_health", "Plugin health: 0 healthy, 1 degraded, 2 unhealthy")
        for plugin in self.facts.plugins:
            for value in PluginState:
                labels = {"plugin": plugin["name"], "state": value.value}
                state.add_sample(state.name, labels, 1.0 if plugin["state"] == value.value else 0.0)
            report = plugin["health"]
            if report is not None:
                severity = _SEVERITY[Status(report["status"])]
                health.add_sample(health.name, {"plugin": plugin["name"]}, float(severity))
        yield state
        yield health

    def _schedules(self) -> Iterator[Metric]:
        next_fire = _gauge(
            "schedule_next_fire_timestamp_seconds", "When the schedule fires next (Unix time)"
        )
        paused = _gauge("schedule_paused", "1 while the schedule is paused here")
        slots = Metric(
            PREFIX + "schedule_slots", "What happened to the schedule's slots", "counter"
        )
        for schedule in self.facts.schedules:
            labels = {"schedule": schedule["name"]}
            when = schedule["next_fire_time"]
            if when is not None:
                stamp = datetime.fromisoformat(when).timestamp()
                next_fire.add_sample(next_fire.name, labels, stamp)
            paused.add_sample(paused.name, labels, 1.0 if schedule["paused"] else 0.0)
            for outcome, count in sorted(schedule["stats"].items()):
                slots.add_sample(
                    slots.name + "_total", {**labels, "outcome": outcome}, float(count)
                )
        yield next_fire
        yield paused
        yield slots


def render(metrics: Metrics, facts: KernelFacts, accept: str | None) -> tuple[bytes, str]:
    """The exposition body and its content type: OpenMetrics when
    ``accept`` asks for ``application/openmetrics-text``, else the
    Prometheus text format 0.0.4."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KernelCollector(metrics, facts))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type

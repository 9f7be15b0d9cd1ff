"""Setting OpenTelemetry up beside a kernel: the ``[otel]`` table, or one call.

``kernel run`` enters `serve_otel` for an ``[otel]`` table (entry point
``otel`` in ``kernel.contrib``) before the kernel starts: it builds a tracer
provider and a meter provider from the table (the resource's
``service.name``, a parent-based ratio sampler, the exporter), makes them
the process's global providers when none are set yet (so spans that task
code makes with ``trace.get_tracer(...)`` are exported too, as children of
the attempt), and registers an `OtelInstrumentation` on the kernel. On exit,
after the kernel has stopped, both providers are shut down, which flushes
what they hold (in a worker thread: an export is blocking I/O).

Applications that set OpenTelemetry up themselves call `instrument` instead::

    kernel = Kernel(...)
    kernel_otel.instrument(kernel, tracer_provider=provider, meter_provider=meters)
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import attrs
import trio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from kernel import Instrumentation, Kernel
from kernel.errors import ConfigError
from kernel.ports import redact_url
from kernel_otel.config import OtelConfig
from kernel_otel.instrumentation import OtelInstrumentation

__all__ = ["OtelContrib", "OtelProviders", "build_providers", "contrib", "instrument", "serve_otel"]

log = logging.getLogger("kernel.otel")

DEFAULT_SERVICE_NAME = "trio-kernel"
"""``service.name`` when neither the table nor ``OTEL_SERVICE_NAME`` sets one."""

OTLP_MISSING = (
    "exporter 'otlp' needs the OTLP exporter, which is not installed:"
    " pip install 'trio-kernel-otel[otlp]' (opentelemetry-exporter-otlp-proto-http)"
)


class Instrumentable(Protocol):
    """What `instrument` accepts: a `Kernel`, a `JobQueue` or a `Scheduler`."""

    def instrument(self, instrumentation: Instrumentation | None) -> None: ...


def instrument(
    target: Instrumentable,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> OtelInstrumentation:
    """Trace and measure ``target`` (a `Kernel`, or a bare `JobQueue` or
    `Scheduler`) with the given providers, else the global ones; returns the
    registered `OtelInstrumentation`. ``target.instrument(None)`` undoes it."""
    instrumentation = OtelInstrumentation(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    target.instrument(instrumentation)
    return instrumentation


@attrs.frozen
class OtelProviders:
    """The providers `build_providers` made, and how to flush them."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        """Flush and stop both (blocking: call it from a thread)."""
        try:
            self.tracer_provider.shutdown()
        finally:
            self.meter_provider.shutdown()


def _exporters(config: OtelConfig, source: str) -> tuple[SpanExporter, MetricExporter] | None:
    if config.exporter == "none":
        return None
    if config.exporter == "console":
        # one JSON object a line on stdout, so a pipe or a test reads them back
        return (
            ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + os.linesep),
            ConsoleMetricExporter(formatter=lambda data: data.to_json(indent=None) + os.linesep),
        )
    try:
        otlp_metrics = _otlp_module("metric_exporter")
        otlp_traces = _otlp_module("trace_exporter")
    except ImportError:
        raise ConfigError(source, "otel.exporter", OTLP_MISSING) from None
    headers = dict(config.headers) or None
    spans: SpanExporter = otlp_traces.OTLPSpanExporter(
        endpoint=config.signal_endpoint("traces"), headers=headers
    )
    points: MetricExporter = otlp_metrics.OTLPMetricExporter(
        endpoint=config.signal_endpoint("metrics"), headers=headers
    )
    return spans, points


def _otlp_module(name: str) -> Any:
    """``opentelemetry.exporter.otlp.proto.http.<name>`` (the optional extra)."""
    import importlib

    return importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{name}")


def build_providers(config: OtelConfig, *, source: str = "build_providers") -> OtelProviders:
    """A tracer provider and a meter provider as ``config`` says; a
    `ConfigError` naming ``source`` when its exporter is not installed."""
    exporters = _exporters(config, source)
    attributes = {} if config.service_name is None else {SERVICE_NAME: config.service_name}
    resource = Resource.create(attributes)
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    readers: list[MetricReader] = []
    if exporters is not None:
        spans, points = exporters
        tracer_provider.add_span_processor(BatchSpanProcessor(spans))
        readers.append(PeriodicExportingMetricReader(points))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return OtelProviders(tracer_provider, meter_provider)


def _describe(config: OtelConfig) -> str:
    """Where the telemetry goes, for the log: header names only, never values."""
    if config.exporter == "otlp":
        where = redact_url(config.endpoint) if config.endpoint else "OTEL_EXPORTER_OTLP_*'s default"
        if config.headers:
            where += f" with headers {', '.join(sorted(config.headers))}"
        return f"OTLP/HTTP to {where}"
    return "stdout" if config.exporter == "console" else "nowhere (exporter 'none')"


def _make_global(providers: OtelProviders) -> None:
    """Our providers become the process's, unless the application set some."""
    trace.set_tracer_provider(providers.tracer_provider)
    metrics.set_meter_provider(providers.meter_provider)
    if (
        trace.get_tracer_provider() is not providers.tracer_provider
        or metrics.get_meter_provider() is not providers.meter_provider
    ):
        log.warning(
            "global OpenTelemetry providers were already set: the kernel's spans follow [otel],"
            " spans your tasks make with the global tracer go where the application said"
        )


@asynccontextmanager
async def serve_otel(
    kernel: Kernel, config: OtelConfig | None = None, *, source: str = "serve_otel"
) -> AsyncIterator[OtelInstrumentation]:
    """Trace and measure ``kernel`` while the context is entered (see the
    module docstring); ``source`` names the config in errors."""
    config = config if config is not None else OtelConfig()
    providers = build_providers(config, source=source)
    _make_global(providers)
    instrumentation = instrument(
        kernel,
        tracer_provider=providers.tracer_provider,
        meter_provider=providers.meter_provider,
    )
    resource = providers.tracer_provider.resource.attributes.get(SERVICE_NAME)
    log.info("OpenTelemetry: service %s, exporting to %s", resource, _describe(config))
    try:
        yield instrumentation
    finally:
        if kernel.instrumentation is instrumentation:
            kernel.instrument(None)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(functools.partial(_shutdown, providers))


def _shutdown(providers: OtelProviders) -> None:
    try:
        providers.shutdown()
    except Exception:  # an exporter's failure must not hide how the kernel ended
        log.exception("OpenTelemetry: flushing the providers failed")


@attrs.frozen
class OtelContrib:
    """The ``kernel.contrib`` entry point ``otel``: the ``[otel]`` table."""

    config_type: type[Any] = OtelConfig

    def serve(
        self, kernel: Kernel, config: Any, *, source: str
    ) -> AbstractAsyncContextManager[OtelInstrumentation]:
        return serve_otel(kernel, config, source=source)


contrib = OtelContrib()
"""What ``kernel run`` loads for an ``[otel]`` table."""

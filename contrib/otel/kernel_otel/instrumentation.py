"""The kernel's instrumentation seam on the OpenTelemetry API: spans and metrics.

`OtelInstrumentation` implements `kernel.Instrumentation` with a tracer and
a meter from the given providers (else the global ones), following the
semantic conventions for messaging where they fit
(https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/,
``messaging-metrics``); names of our own are under ``trio_kernel.``:

- **enqueue**: a ``send {queue}`` span, kind PRODUCER, a child of the
  caller's current span. Its context is the message's *creation context*:
  injected into the job's headers by the global propagator (W3C
  ``traceparent`` / ``tracestate`` and ``baggage`` unless
  ``OTEL_PROPAGATORS`` says otherwise), so it travels with the job through
  any store to any process.
- **attempt**: a ``process {queue}`` span, kind CONSUMER, per attempt. A job
  is processed alone, so the conventions allow (and we take) the creation
  context as its *parent*, and add the link they ask for; every attempt of
  a job is a child of the same enqueue. A job without a context (enqueued
  with no instrumentation) starts a trace of its own, never one of whatever
  the worker's task happened to hold. The span is current around the call,
  in the task and in a ``blocking=True`` task's thread, so spans the task
  makes are its children, and the extracted baggage is current too.
- **schedule fire**: a ``fire {schedule}`` span, kind INTERNAL, the root of
  a trace of its own (a timer has no caller); a queued schedule's enqueue
  is its child, and so the job's attempts.
- **plugin step**: ``{step} plugin {name}`` (install, enable, disable,
  restart), kind INTERNAL, a child of the context current where the kernel
  takes the step, but not made current itself: trio copies the context into
  every task started from it, and the subscriptions and background tasks a
  plugin starts in ``on_enable`` would otherwise trace their whole lives
  under a step that ended long ago.

A failure (an exception, not a cancellation) sets the span's status to
ERROR, records the exception as an event and sets ``error.type``, as the
conventions' "recording errors" page asks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Final

import trio
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from kernel import AttemptOutcome, JobRecord, PluginStep

__all__ = ["SYSTEM", "OtelInstrumentation"]

SYSTEM: Final = "trio-kernel"
"""``messaging.system`` of every span and metric point."""

SCOPE: Final = "kernel_otel"
"""The instrumentation scope's name (the tracer's and the meter's)."""

SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.27.0"

# the semantic conventions' names
MESSAGING_SYSTEM: Final = "messaging.system"
OPERATION_NAME: Final = "messaging.operation.name"
OPERATION_TYPE: Final = "messaging.operation.type"
DESTINATION: Final = "messaging.destination.name"
MESSAGE_ID: Final = "messaging.message.id"
CLIENT_ID: Final = "messaging.client.id"
ERROR_TYPE: Final = "error.type"

# ours
TASK: Final = "trio_kernel.job.task"
ATTEMPT: Final = "trio_kernel.job.attempt"
OUTCOME: Final = "trio_kernel.job.outcome"
RETRY_DELAY: Final = "trio_kernel.job.retry_delay"
TIMED_OUT: Final = "trio_kernel.job.timed_out"
RUN_AT: Final = "trio_kernel.job.run_at"
SCHEDULE: Final = "trio_kernel.schedule.name"
FIRE_TIME: Final = "trio_kernel.schedule.fire_time"
PLUGIN: Final = "trio_kernel.plugin.name"
STEP: Final = "trio_kernel.plugin.step"
CANCELLED: Final = "trio_kernel.cancelled"

# the buckets the conventions advise for messaging.process.duration
_DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


def error_type(error: BaseException) -> str:
    """``error.type`` of an exception: its class, qualified by its module
    unless it is a builtin."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _record_failure(span: Span, error: BaseException) -> None:
    """An exception fails the span; a cancellation only says so."""
    if isinstance(error, Exception):
        span.set_attribute(ERROR_TYPE, error_type(error))
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    elif isinstance(error, trio.Cancelled):
        span.set_attribute(CANCELLED, True)
    else:  # KeyboardInterrupt, SystemExit: the process is going
        span.set_attribute(ERROR_TYPE, error_type(error))
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class _Attempt:
    """One attempt's CONSUMER span, current around the call (`running`)."""

    __slots__ = ("_context", "_instrumentation", "_job", "_span", "_started")

    def __init__(
        self,
        instrumentation: OtelInstrumentation,
        job: JobRecord,
        span: Span,
        context: otel_context.Context,
    ) -> None:
        self._instrumentation = instrumentation
        self._job = job
        self._span = span
        self._context = context
        self._started = trio.current_time()

    @contextmanager
    def running(self) -> Iterator[None]:
        token = otel_context.attach(self._context)
        try:
            yield
        finally:
            otel_context.detach(token)

    def finished(self, outcome: AttemptOutcome) -> None:
        span = self._span
        job = self._job
        result = outcome.result.value
        points: dict[str, AttributeValue] = {
            MESSAGING_SYSTEM: SYSTEM,
            OPERATION_NAME: "process",
            DESTINATION: job.queue,
            TASK: job.task,
            OUTCOME: result,
        }
        span.set_attribute(OUTCOME, result)
        if outcome.retry_delay is not None:
            span.set_attribute(RETRY_DELAY, outcome.retry_delay.total_seconds())
        if outcome.timed_out:
            span.set_attribute(TIMED_OUT, True)
        if outcome.error is not None:
            _record_failure(span, outcome.error)
            points[ERROR_TYPE] = error_type(outcome.error)
        span.end()
        instrumentation = self._instrumentation
        instrumentation.process_duration.record(trio.current_time() - self._started, points)
        instrumentation.attempts.add(1, points)


class OtelInstrumentation:
    """`kernel.Instrumentation` on OpenTelemetry (see the module docstring).

    ``tracer_provider`` and ``meter_provider`` default to the global ones
    (``opentelemetry.trace`` / ``opentelemetry.metrics``), so an application
    that sets up OpenTelemetry itself needs to pass nothing.

    Metrics (instruments of the meter ``kernel_otel``):

    - ``messaging.process.duration`` (histogram, s): each attempt, by
      ``messaging.destination.name`` (the queue), ``trio_kernel.job.task``,
      ``trio_kernel.job.outcome`` and ``error.type``;
    - ``trio_kernel.job.attempts`` (counter): attempts by the same;
    - ``messaging.client.sent.messages`` (counter): jobs enqueued, by queue
      and ``error.type`` when the store refused;
    - ``trio_kernel.schedule.fires`` (counter): fires by
      ``trio_kernel.schedule.name`` and ``error.type``.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        from kernel_otel import __version__

        self.tracer = trace.get_tracer(
            SCOPE, __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        meter = metrics.get_meter(
            SCOPE, __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of one attempt of a job, from its call to its outcome.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        self.attempts = meter.create_counter(
            "trio_kernel.job.attempts",
            unit="{attempt}",
            description="Attempts of jobs, by task, queue and outcome.",
        )
        self.sent = meter.create_counter(
            "messaging.client.sent.messages",
            unit="{message}",
            description="Jobs enqueued (stored, or refused by the store).",
        )
        self.fires = meter.create_counter(
            "trio_kernel.schedule.fires",
            unit="{fire}",
            description="Schedule fires: function runs, or jobs of queued schedules stored.",
        )

    # -- enqueue ------------------------------------------------------------------

    @contextmanager
    def enqueue(self, job: JobRecord) -> Iterator[Mapping[str, str]]:
        attributes: dict[str, AttributeValue] = {
            MESSAGING_SYSTEM: SYSTEM,
            OPERATION_NAME: "send",
            OPERATION_TYPE: "send",
            DESTINATION: job.queue,
            MESSAGE_ID: job.id,
            TASK: job.task,
        }
        if job.run_at > job.enqueued_at:
            attributes[RUN_AT] = job.run_at.isoformat()
        points: dict[str, AttributeValue] = {
            MESSAGING_SYSTEM: SYSTEM,
            OPERATION_NAME: "send",
            DESTINATION: job.queue,
        }
        with self.tracer.start_as_current_span(
            f"send {job.queue}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            headers: dict[str, str] = {}
            propagate.inject(headers)
            try:
                yield headers
            except BaseException as error:
                _record_failure(span, error)
                points[ERROR_TYPE] = error_type(error)
                raise
            finally:
                self.sent.add(1, points)

    # -- attempts -----------------------------------------------------------------

    def attempt(self, job: JobRecord) -> _Attempt:
        # the creation context from the headers, else a trace of its own:
        # never the worker task's ambient context
        parent = propagate.extract(job.headers) if job.headers else otel_context.Context()
        creation = trace.get_current_span(parent).get_span_context()
        attributes: dict[str, AttributeValue] = {
            MESSAGING_SYSTEM: SYSTEM,
            OPERATION_NAME: "process",
            OPERATION_TYPE: "process",
            DESTINATION: job.queue,
            MESSAGE_ID: job.id,
            TASK: job.task,
            ATTEMPT: job.attempts,
        }
        if job.worker is not None:
            attributes[CLIENT_ID] = job.worker
        if job.schedule is not None:
            attributes[SCHEDULE] = job.schedule
        span = self.tracer.start_span(
            f"process {job.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=[Link(creation)] if creation.is_valid else None,
        )
        return _Attempt(self, job, span, trace.set_span_in_context(span, parent))

    # -- schedules ----------------------------------------------------------------

    @contextmanager
    def schedule_fire(self, schedule: str, fire_time: datetime | None) -> Iterator[None]:
        attributes: dict[str, AttributeValue] = {SCHEDULE: schedule}
        if fire_time is not None:
            attributes[FIRE_TIME] = fire_time.isoformat()
        points: dict[str, AttributeValue] = {SCHEDULE: schedule}
        with self.tracer.start_as_current_span(
            f"fire {schedule}",
            context=otel_context.Context(),  # a root: a timer has no caller
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as error:
                _record_failure(span, error)
                if isinstance(error, Exception):
                    points[ERROR_TYPE] = error_type(error)
                raise
            finally:
                self.fires.add(1, points)

    # -- plugins ------------------------------------------------------------------

    @contextmanager
    def plugin_step(
        self, plugin: str, step: PluginStep, *, error: BaseException | None = None
    ) -> Iterator[None]:
        # not made current: trio copies the context into every task started
        # from it, and what a plugin starts in on_enable (subscriptions,
        # background tasks) runs for hours after the step's span has ended
        span = self.tracer.start_span(
            f"{step.value} plugin {plugin}",
            kind=SpanKind.INTERNAL,
            attributes={PLUGIN: plugin, STEP: step.value},
        )
        if error is not None:  # the crash a restart follows: an event, not the step's failure
            span.record_exception(error)
        try:
            yield
        except BaseException as failed:
            _record_failure(span, failed)
            raise
        finally:
            span.end()

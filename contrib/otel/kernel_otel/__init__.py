"""trio-kernel-otel: OpenTelemetry tracing and metrics for trio-kernel.

A span per job attempt, schedule fire and plugin lifecycle step, and the
trace of whoever enqueued a job continued wherever it runs (its context
travels in the job's headers), through the OpenTelemetry API and SDK.
``kernel run`` sets it up for an ``[otel]`` table (entry point ``otel`` in
``kernel.contrib``); applications call `instrument` (their own providers)
or enter `serve_otel` (providers from an `OtelConfig`).
"""

from __future__ import annotations

from kernel_otel.config import OtelConfig
from kernel_otel.instrumentation import SYSTEM, OtelInstrumentation
from kernel_otel.serve import (
    OtelContrib,
    OtelProviders,
    build_providers,
    contrib,
    instrument,
    serve_otel,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "SYSTEM",
    "OtelConfig",
    "OtelContrib",
    "OtelInstrumentation",
    "OtelProviders",
    "build_providers",
    "contrib",
    "instrument",
    "serve_otel",
]

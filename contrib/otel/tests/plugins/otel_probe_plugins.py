"""A plugin the cross-process tests run in a real `kernel run` process: its
tasks make spans of their own with the global tracer (children of the
attempt's span, if the kernel made it current), and the last job stops the
process (SIGTERM, a graceful stop) once the others are done."""

from __future__ import annotations

import os
import signal
import threading

import trio
from opentelemetry import baggage, trace

from kernel import Manifest, Plugin, PluginContext

_blocking_done = threading.Event()


class Probe(Plugin):
    manifest = Manifest("probe")

    async def on_enable(self, ctx: PluginContext) -> None:
        tracer = trace.get_tracer("otel_probe")

        def blocking(label: str) -> None:
            with tracer.start_as_current_span("probe blocking", attributes={"label": label}):
                pass
            _blocking_done.set()

        async def finish(label: str) -> None:
            tenant = baggage.get_baggage("tenant")
            with tracer.start_as_current_span(
                "probe finish", attributes={"label": label, "tenant": str(tenant)}
            ):
                await trio.to_thread.run_sync(_blocking_done.wait)
            os.kill(os.getpid(), signal.SIGTERM)

        ctx.register_task("blocking", blocking, blocking=True)
        ctx.register_task("finish", finish)

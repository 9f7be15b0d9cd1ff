"""The JSON API under ``/api/v1/``, the probes and ``/metrics``.

Every read is a ``GET`` and every action a ``POST`` (no body needed), each
a thin shell over `kernel.KernelControl`. Errors are
``{"error": {"code", "message"}}`` with the status a client can act on:
400 a malformed parameter, 401/403 credentials (`kernel_http._auth`), 404
an unknown plugin, schedule, queue or job, 409 a job or plugin in a state
the action does not apply to, 503 a kernel that is not running (yet, or any
more) or a store that fails. ``/api/v1/openapi.json`` describes it all.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, Final

import attrs
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from kernel import JobRecord, JobState, Kernel, KernelControl
from kernel.errors import (
    BusError,
    InvalidJob,
    JobConflict,
    KernelError,
    KernelNotRunning,
    NotFound,
    PluginStateError,
    StorageError,
)
from kernel_http._auth import Guard, problem
from kernel_http.activity import Activity, job_totals
from kernel_http.openapi import openapi_document
from kernel_http.prometheus import gather_facts, render

__all__ = ["API", "BadParameter", "HttpContext", "api_routes", "failure_response", "job_json"]

API: Final = "/api/v1"
log = logging.getLogger("kernel.http")

Handler = Callable[[Request], Awaitable[Response]]

_KEEPALIVE: Final = 15.0
_EVENT_BUFFER: Final = 256


@attrs.define(eq=False)
class HttpContext:
    """What the routes share: the kernel, its control, the access rules and
    the activity history."""

    kernel: Kernel
    control: KernelControl
    guard: Guard
    activity: Activity = attrs.Factory(Activity)

    def sample_activity(self) -> None:
        finished, failed = job_totals(self.kernel.metrics)
        self.activity.sample(time.time(), finished, failed)


class BadParameter(ValueError):
    """A query or path parameter the API cannot use (400)."""


def job_json(record: JobRecord) -> dict[str, Any]:
    """A job as the API shows it: the record's JSON form."""
    return record.to_json()


def failure_response(error: Exception) -> Response:
    """The problem response for a kernel error (or a `BadParameter`)."""
    if isinstance(error, NotFound):
        return problem(404, "not_found", str(error))
    if isinstance(error, InvalidJob) and error.field == "state":
        return problem(409, "conflict", str(error))
    if isinstance(error, JobConflict | PluginStateError):
        return problem(409, "conflict", str(error))
    if isinstance(error, KernelNotRunning):
        return problem(503, "not_running", str(error))
    if isinstance(error, StorageError | BusError):
        return problem(503, "unavailable", f"{type(error).__name__}: {error}")
    return problem(400, "bad_request", str(error))


def _handled(
    ctx: HttpContext, *, action: bool
) -> Callable[[Callable[[Request], Awaitable[Any]]], Handler]:
    """A route: access checked, the result as JSON, errors as problems."""

    def decorate(func: Callable[[Request], Awaitable[Any]]) -> Handler:
        @functools.wraps(func)
        async def handle(request: Request) -> Response:
            refusal = (ctx.guard.refuse_action if action else ctx.guard.refuse_read)(request)
            if refusal is not None:
                return refusal
            try:
                result = await func(request)
            except (KernelError, BadParameter) as error:
                return failure_response(error)
            if isinstance(result, Response):
                return result
            if action:
                log.info("%s %s", request.method, request.url.path)
            return JSONResponse(result)

        return handle

    return decorate


# -- parameters -------------------------------------------------------------------


def _limit(request: Request, default: int = 50) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise BadParameter(f"limit must be an integer from 1 to 1000, got {text!r}")
    return int(text)


def _state(request: Request) -> JobState | None:
    text = request.query_params.get("state")
    if text is None or text == "":
        return None
    try:
        return JobState(text)
    except ValueError:
        names = ", ".join(state.value for state in JobState)
        raise BadParameter(f"state must be one of {names}, got {text!r}") from None


def _optional(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value or None


def _older_than(request: Request) -> timedelta | None:
    text = request.query_params.get("older_than_seconds")
    if text is None or text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise BadParameter(f"older_than_seconds must be a number, got {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0 or seconds > 10 * 365 * 86400:
        raise BadParameter("older_than_seconds must be from 0 to ten years")
    return timedelta(seconds=seconds)


def _page(page_jobs: list[JobRecord], next_after: str | None) -> dict[str, Any]:
    return {"jobs": [job_json(job) for job in page_jobs], "next_after": next_after}


# -- the routes -------------------------------------------------------------------


def api_routes(ctx: HttpContext) -> list[BaseRoute]:
    """Every route of the API, the probes and the metrics."""
    control = ctx.control
    read = _handled(ctx, action=False)
    act = _handled(ctx, action=True)

    async def healthz(request: Request) -> Response:
        # liveness: this answer is the proof the loop runs; no I/O here
        return JSONResponse({"status": "alive", "kernel_running": control.running})

    async def readyz(request: Request) -> Response:
        report = await control.readiness()
        ready = not report.reasons and control.running
        body = {"status": "ready" if ready else "not ready", "reasons": list(report.reasons)}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        refusal = ctx.guard.refuse_read(request)
        if refusal is not None:
            return refusal
        try:
            facts = await gather_facts(control)
        except (KernelNotRunning, StorageError) as error:
            return failure_response(error)
        body, content_type = render(ctx.kernel.metrics, facts, request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    @read
    async def health(request: Request) -> Any:
        report = await control.readiness()
        snapshot = ctx.kernel.health.current().to_dict()
        return {**snapshot, "ready": not report.reasons, "ready_reasons": list(report.reasons)}

    @read
    async def metrics_snapshot(request: Request) -> Any:
        return ctx.kernel.metrics.snapshot()

    @read
    async def plugins(request: Request) -> Any:
        return control.plugins()

    @read
    async def plugin(request: Request) -> Any:
        return control.plugin(request.path_params["name"])

    def plugin_action(name: str) -> Handler:
        @act
        async def run(request: Request) -> Any:
            method = getattr(control, f"{name}_plugin")
            return await method(request.path_params["name"])

        return run

    @read
    async def schedules(request: Request) -> Any:
        return control.schedules()

    def schedule_action(name: str) -> Handler:
        @act
        async def run(request: Request) -> Any:
            return getattr(control, f"{name}_schedule")(request.path_params["name"])

        return run

    @read
    async def queues(request: Request) -> Any:
        return await control.queues()

    def queue_action(name: str) -> Handler:
        @act
        async def run(request: Request) -> Any:
            queue = request.path_params["name"]
            getattr(control, f"{name}_queue")(queue)
            return next(q for q in await control.queues() if q["name"] == queue)

        return run

    @read
    async def jobs(request: Request) -> Any:
        page = await control.jobs(
            state=_state(request),
            queue=_optional(request, "queue"),
            task=_optional(request, "task"),
            limit=_limit(request),
            after_id=_optional(request, "after"),
        )
        return _page(page.jobs, page.next_after)

    @read
    async def job(request: Request) -> Any:
        return job_json(await control.job(request.path_params["job_id"]))

    @act
    async def cancel_job(request: Request) -> Any:
        return job_json(await control.cancel_job(request.path_params["job_id"]))

    @act
    async def retry_job(request: Request) -> Any:
        return job_json(await control.retry_job(request.path_params["job_id"]))

    @read
    async def dead_letters(request: Request) -> Any:
        page = await control.jobs(
            state=JobState.dead, limit=_limit(request), after_id=_optional(request, "after")
        )
        return _page(page.jobs, page.next_after)

    @act
    async def purge_dead(request: Request) -> Any:
        return {"purged": await control.purge_dead(_older_than(request))}

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def events(request: Request) -> Response:
        refusal = ctx.guard.refuse_read(request)
        if refusal is not None:
            return refusal
        return StreamingResponse(
            _job_events(ctx),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route(f"{API}/openapi.json", openapi),
        Route(f"{API}/health", health),
        Route(f"{API}/metrics", metrics_snapshot),
        Route(f"{API}/events", events),
        Route(f"{API}/plugins", plugins),
        Route(f"{API}/plugins/{{name}}", plugin),
        Route(f"{API}/schedules", schedules),
        Route(f"{API}/queues", queues),
        Route(f"{API}/jobs", jobs),
        Route(f"{API}/jobs/{{job_id}}", job),
        Route(f"{API}/jobs/{{job_id}}/cancel", cancel_job, methods=["POST"]),
        Route(f"{API}/jobs/{{job_id}}/retry", retry_job, methods=["POST"]),
        Route(f"{API}/dead-letters", dead_letters),
        Route(f"{API}/dead-letters/purge", purge_dead, methods=["POST"]),
    ]
    for verb in ("enable", "disable", "restart"):
        routes.append(
            Route(f"{API}/plugins/{{name}}/{verb}", plugin_action(verb), methods=["POST"])
        )
    for verb in ("pause", "resume", "trigger"):
        routes.append(
            Route(f"{API}/schedules/{{name:path}}/{verb}", schedule_action(verb), methods=["POST"])
        )
    for verb in ("pause", "resume"):
        routes.append(Route(f"{API}/queues/{{name}}/{verb}", queue_action(verb), methods=["POST"]))
    return routes


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _job_events(ctx: HttpContext) -> AsyncIterator[str]:
    """Server-Sent Events: each job event on the kernel's bus (``job.*``) as
    ``event: job``, a comment every 15 s to keep proxies from closing the
    stream, and ``event: kernel`` when the kernel is not running (the
    browser's EventSource then reconnects after ``retry``)."""
    yield "retry: 3000\n\n"
    if not ctx.control.running:
        yield _sse("kernel", {"running": False})
        return
    try:
        async with ctx.kernel.bus.subscribe("job.*", buffer=_EVENT_BUFFER) as subscription:
            yield _sse("kernel", {"running": True})
            while True:
                with trio.move_on_after(_KEEPALIVE) as idle:
                    message = await subscription.receive()
                if idle.cancelled_caught:
                    yield ": keep-alive\n\n"
                    continue
                payload = message.payload if isinstance(message.payload, dict) else {}
                yield _sse("job", {"topic": message.topic, **payload})
    except (trio.EndOfChannel, BusError, KernelError):
        yield _sse("kernel", {"running": False})

"""The dashboard: server-rendered pages (Jinja2) and a little hand-written JavaScript.

Pages, after Hangfire's dashboard, Oban Web and Sidekiq's Web UI: the
overview (health, job counts, an SVG chart of the last hour, queues,
plugins), jobs with filters and search, one job (arguments, attempts, its
error with the traceback, a timeline), dead letters with retry and purge,
schedules (next fires in the viewer's time zone), plugins with enable,
disable and restart. ``static/dashboard.js`` acts through the JSON API with
the session's CSRF token and follows ``/api/v1/events`` (Server-Sent
Events) to show jobs as they happen. No third-party front-end code.

Reads follow the API's rule (open on loopback); a page that may not be
read redirects to the login page, which asks for the token once.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from kernel import JobState
from kernel.errors import KernelError, KernelNotRunning, NotFound, StorageError
from kernel_http._auth import problem
from kernel_http.activity import chart_svg
from kernel_http.api import HttpContext

__all__ = ["dashboard_routes"]

_JOB_ID: Final = re.compile(r"[0-9a-f]{32}")
_COUNTED: Final = (JobState.queued, JobState.running, JobState.dead)
_STATES: Final = frozenset(state.value for state in JobState)

_templates = Environment(
    loader=PackageLoader("kernel_http", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0]
    return line if len(line) <= 120 else line[:117] + "..."


def _short_id(job_id: str) -> str:
    """``d63a…000013``: the first hex digits tell processes apart (a
    process-wide random prefix), the last ones its jobs (a counter)."""
    return f"{job_id[:4]}…{job_id[-6:]}" if len(job_id) > 12 else job_id


_templates.filters["first_line"] = _first_line
_templates.filters["short_id"] = _short_id


def dashboard_routes(ctx: HttpContext) -> list[BaseRoute]:
    """The pages, the login, the chart and the static files."""
    control = ctx.control
    guard = ctx.guard

    def page(request: Request, template: str, status: int = 200, **values: Any) -> Response:
        body = _templates.get_template(template).render(
            request=request,
            running=control.running,
            signed_in=guard.signed_in(request),
            actions_enabled=guard.token is not None,
            csrf=guard.csrf_token(request) or "",
            path=request.url.path,
            **values,
        )
        return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    def gate(request: Request) -> Response | None:
        if guard.refuse_read(request) is None:
            return None
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)

    def unavailable(request: Request, error: KernelError) -> Response:
        """503 for a kernel that is not running or a failing store; 400 for
        a filter the store refuses (a queue name with a newline...)."""
        status = 503 if isinstance(error, KernelNotRunning | StorageError) else 400
        return page(request, "unavailable.html", status=status, message=str(error))

    async def overview_values() -> dict[str, Any]:
        ctx.sample_activity()
        counts = {}
        for state in _COUNTED:
            counts[state.value] = await control.count_jobs(state)
        return {
            "health": ctx.kernel.health.current().to_dict(),
            "counts": counts,
            "cap": control.depth_limit,
            "chart": chart_svg(ctx.activity.series(time.time())),
            "queues": await control.queues(),
            "plugins": control.plugins(),
        }

    async def overview(request: Request) -> Response:
        if (refusal := gate(request)) is not None:
            return refusal
        if not control.running:
            return page(
                request, "unavailable.html", status=503, message="the kernel is not running"
            )
        try:
            values = await overview_values()
        except (KernelNotRunning, StorageError) as error:
            return unavailable(request, error)
        return page(request, "overview.html", **values)

    async def overview_fragment(request: Request) -> Response:
        if guard.refuse_read(request) is not None:
            return problem(401, "unauthorized", "sign in again")
        try:
            values = await overview_values()
        except (KernelNotRunning, StorageError) as error:
            return problem(503, "not_running", str(error))
        return page(request, "_overview_body.html", **values)

    async def jobs(request: Request) -> Response:
        if (refusal := gate(request)) is not None:
            return refusal
        params = request.query_params
        search = params.get("q", "").strip()
        if _JOB_ID.fullmatch(search):
            return RedirectResponse(f"/ui/jobs/{search}", status_code=303)
        state_text = params.get("state", "")
        state = JobState(state_text) if state_text in _STATES else None
        queue = params.get("queue") or None
        task = params.get("task") or None
        after = params.get("after") or None
        if after is not None and not _JOB_ID.fullmatch(after):
            after = None
        try:
            found = await control.jobs(
                state=state, queue=queue, task=task, limit=50, after_id=after, payloads=False
            )
        except KernelError as error:
            return unavailable(request, error)
        rows = [job for job in found.jobs if search.lower() in job.task.lower()]
        filters = {"state": state_text, "queue": queue or "", "task": task or "", "q": search}
        next_link = None
        if found.next_after is not None:
            kept = {k: v for k, v in filters.items() if v}
            next_link = "/ui/jobs?" + urlencode({**kept, "after": found.next_after})
        return page(
            request,
            "jobs.html",
            jobs=rows,
            filters=filters,
            states=[s.value for s in JobState],
            next_link=next_link,
        )

    async def job(request: Request) -> Response:
        if (refusal := gate(request)) is not None:
            return refusal
        job_id = request.path_params["job_id"]
        if not _JOB_ID.fullmatch(job_id):
            return page(request, "unavailable.html", status=404, message="no such job")
        try:
            record = await control.job(job_id)
        except NotFound:
            return page(request, "unavailable.html", status=404, message=f"no job {job_id}")
        except (KernelNotRunning, StorageError) as error:
            return unavailable(request, error)
        timeline = [
            (label, moment)
            for label, moment in (
                ("enqueued", record.enqueued_at),
                ("slot", record.fire_time),
                ("due", record.run_at),
                ("lease until", record.lease_expires_at),
                (f"{record.state.value}", record.finished_at),
            )
            if moment is not None
        ]
        timeline.sort(key=lambda item: item[1])
        return page(request, "job.html", job=record, timeline=timeline)

    async def dead(request: Request) -> Response:
        if (refusal := gate(request)) is not None:
            return refusal
        after = request.query_params.get("after") or None
        if after is not None and not _JOB_ID.fullmatch(after):
            after = None
        try:
            found = await control.jobs(
                state=JobState.dead, limit=50, after_id=after, payloads=False
            )
        except (KernelNotRunning, StorageError) as error:
            return unavailable(request, error)
        next_link = None if found.next_after is None else f"/ui/dead?after={found.next_after}"
        return page(request, "dead.html", jobs=found.jobs, next_link=next_link)

    async def schedules(request: Request) -> Response:
        if (refusal := gate(request)) is not None:
            return refusal
        try:
            return page(request, "schedules.html", schedules=control.schedules())
        except KernelNotRunning as error:
            return unavailable(request, error)

    async def plugins(request: Request) -> Response:
        if (refusal := gate(request)) is not None:
            return refusal
        return page(request, "plugins.html", plugins=control.plugins())

    async def chart(request: Request) -> Response:
        if guard.refuse_read(request) is not None:
            return problem(401, "unauthorized", "sign in again")
        ctx.sample_activity()
        svg = chart_svg(ctx.activity.series(time.time()))
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    async def login_page(request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        return page(request, "login.html", next=target)

    async def login(request: Request) -> Response:
        if guard.token is None:
            return problem(403, "forbidden", "no [http] token is configured")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return problem(415, "unsupported", 'send the token as JSON: {"token": ...}')
        try:
            body = await request.json()
        except ValueError:
            return problem(400, "bad_request", "the body is not JSON")
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not guard.matches(token.strip()):
            return problem(403, "forbidden", "wrong token")
        guard.login(request)
        return JSONResponse({"signed_in": True})

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/", status_code=303)

    static = Path(__file__).parent / "static"
    return [
        Route("/", overview),
        Route("/ui/fragments/overview", overview_fragment),
        Route("/ui/chart.svg", chart),
        Route("/ui/jobs", jobs),
        Route("/ui/jobs/{job_id}", job),
        Route("/ui/dead", dead),
        Route("/ui/schedules", schedules),
        Route("/ui/plugins", plugins),
        Route("/ui/login", login_page, methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]

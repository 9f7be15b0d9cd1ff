"""Serving: the Starlette app on Hypercorn's trio worker, beside the kernel.

`serve_http` is an async context manager: on entry it binds the port (a
port in use, a bad address or an unreadable token file is one
`ConfigError`, before anything else starts), then serves in a nursery of
its own on the caller's trio loop, with no asyncio bridge; on exit it stops
serving at once (open event streams included). ``kernel run`` enters it
before the kernel starts and leaves it after the kernel stops, through the
`contrib` entry point; an application embeds it the same way::

    async with Kernel(...) as kernel, serve_http(kernel, HttpConfig(token=...)) as server:
        print("dashboard at", server.url)
        await trio.sleep_forever()

While the kernel is not running (before it starts, after it stops) the
server answers: ``/healthz`` says the loop is alive, ``/readyz`` and the API
answer 503.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, Final, cast

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response

from kernel import Kernel, KernelControl
from kernel.errors import ConfigError, KernelError
from kernel_http._auth import Guard
from kernel_http.api import HttpContext, api_routes, failure_response
from kernel_http.config import HttpConfig, Listen
from kernel_http.dashboard import dashboard_routes

__all__ = ["HttpContrib", "HttpServer", "contrib", "create_app", "serve_http"]

log = logging.getLogger("kernel.http")

SESSION_MAX_AGE: Final = 12 * 3600
_SAMPLE_EVERY: Final = 10.0


@attrs.frozen
class HttpServer:
    """A running server: its base ``url`` (the bound port, also when 0 was
    asked for), the ASGI ``app`` and the shared ``context``."""

    url: str
    app: Starlette
    context: HttpContext


def create_app(kernel: Kernel, *, token: str | None, open_reads: bool) -> Starlette:
    """The ASGI app for ``kernel``: probes, metrics, the API and the
    dashboard (for tests and for hosting it under another server)."""
    return _app(_context(kernel, token=token, open_reads=open_reads))


def _context(kernel: Kernel, *, token: str | None, open_reads: bool) -> HttpContext:
    return HttpContext(kernel, KernelControl(kernel), Guard(token, open_reads))


def _app(context: HttpContext) -> Starlette:
    session = Middleware(
        SessionMiddleware,
        secret_key=secrets.token_urlsafe(32),
        session_cookie="kernel_session",
        max_age=SESSION_MAX_AGE,
        same_site="strict",
    )
    routes = api_routes(context) + dashboard_routes(context)

    async def kernel_error(request: Request, error: Exception) -> Response:
        # the safety net: a kernel error no route expected is still a 4xx/503
        return failure_response(error)

    return Starlette(
        routes=routes, middleware=[session], exception_handlers={KernelError: kernel_error}
    )


def _hypercorn_config(bind: str) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    # Hypercorn's own messages go through logging like the kernel's, once
    config.errorlog = logging.getLogger("kernel.http.server")
    config.graceful_timeout = 0.5
    config.keep_alive_timeout = 5
    config.include_server_header = False
    return config


@asynccontextmanager
async def serve_http(
    kernel: Kernel, config: HttpConfig | None = None, *, source: str = "serve_http"
) -> AsyncIterator[HttpServer]:
    """Serve ``kernel`` over HTTP while the context is entered (see the
    module docstring). ``source`` names the config in errors."""
    config = config if config is not None else HttpConfig()
    address = config.address
    token = config.resolve_token(source=source)
    if not address.loopback:
        log.warning(
            "listening on %s, beyond loopback: every request needs the token", config.listen
        )
    context = _context(kernel, token=token, open_reads=address.loopback)
    app = _app(context)
    hypercorn = _hypercorn_config(address.bind)
    sock = _bind(address, hypercorn.backlog, config.listen, source)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    # Starlette and Hypercorn type the ASGI callable each their own way
    asgi = wrap_app(cast(Any, app), hypercorn.wsgi_max_body_size, "asgi")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(worker_serve, asgi, hypercorn, sockets=sockets))
            nursery.start_soon(_sample_activity, context)
            log.info("serving the dashboard at %s/ (API at %s/api/v1/)", url, url)
            try:
                yield HttpServer(url, app, context)
            finally:
                nursery.cancel_scope.cancel()  # at once: open event streams too
    finally:
        sock.close()


def _bind(address: Listen, backlog: int, listen: str, source: str) -> socket.socket:
    """The listening socket (as Hypercorn makes it), or one `ConfigError`."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise ConfigError(source, "http.listen", f"cannot listen on {listen}: {reason}") from None
    return sock


async def _sample_activity(context: HttpContext) -> None:
    while True:
        context.sample_activity()
        await trio.sleep(_SAMPLE_EVERY)


@attrs.frozen
class HttpContrib:
    """The ``kernel.contrib`` entry point ``http``: the ``[http]`` table."""

    config_type: type[Any] = HttpConfig

    def serve(
        self, kernel: Kernel, config: Any, *, source: str
    ) -> AbstractAsyncContextManager[HttpServer]:
        return serve_http(kernel, config, source=source)


contrib = HttpContrib()
"""What ``kernel run`` loads for an ``[http]`` table."""

"""trio-kernel-http: the HTTP face of trio-kernel.

Health probes (``/healthz``, ``/readyz``), Prometheus metrics (``/metrics``),
a JSON API (``/api/v1/``) and a live dashboard (``/``), served by Hypercorn's
trio worker inside the kernel's process. ``kernel run`` starts it for an
``[http]`` table (entry point ``http`` in ``kernel.contrib``); applications
use `serve_http`.
"""

from __future__ import annotations

from kernel_http.config import HttpConfig
from kernel_http.server import HttpContrib, HttpServer, contrib, create_app, serve_http

__all__ = ["HttpConfig", "HttpContrib", "HttpServer", "contrib", "create_app", "serve_http"]

"""Real endpoints on this machine for the Apprise adapter's tests: a loopback
HTTP server, a loopback SMTP server (aiosmtpd), and the MQTT broker.

The HTTP and SMTP servers are started by the tests themselves, in threads,
on free ports. The MQTT broker is ``$KERNEL_TEST_MQTT_HOST:PORT`` (default
``127.0.0.1:1883``); when it cannot be reached, or paho-mqtt is missing,
the MQTT tests are skipped, unless ``KERNEL_REQUIRE_SERVICES=1`` (CI),
where that is a failure.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from apprise_helpers import Endpoint, Mailbox, Request, free_port, require_or_skip


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """A loopback HTTP server recording every POST (see `Endpoint`)."""
    state = Endpoint(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with state.lock:
                status = state.statuses.pop(0) if state.statuses else state.default
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers["x-status"] = str(status)
                state.requests.append(
                    Request(self.path, self.headers.get("Content-Type", ""), body, headers)
                )
            self.send_response(status)
            if status != 200 and state.retry_after is not None:
                self.send_header("Retry-After", state.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()
            state.arrived.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A loopback SMTP server (aiosmtpd in its own thread)."""
    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """The broker's host and port, or a skip (a failure under
    KERNEL_REQUIRE_SERVICES=1)."""
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        require_or_skip("paho-mqtt is not installed: Apprise's mqtt:// needs paho-mqtt >= 2.1")
    host = os.environ.get("KERNEL_TEST_MQTT_HOST", "127.0.0.1")
    port = int(os.environ.get("KERNEL_TEST_MQTT_PORT", "1883"))
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as error:
        require_or_skip(f"no MQTT broker at {host}:{port}: {error}")
    return host, port

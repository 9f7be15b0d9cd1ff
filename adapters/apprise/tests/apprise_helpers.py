"""Helpers for the Apprise adapter's tests: what the loopback servers record."""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
import threading
import urllib.parse
from typing import Any

import attrs
import pytest

from kernel.ports import Level, Notification
from kernel_apprise import split_footer


def require_or_skip(reason: str) -> None:
    if os.environ.get("KERNEL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (KERNEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
    pytest.skip(reason)


# -- HTTP ------------------------------------------------------------------------------


@attrs.define
class Request:
    path: str
    content_type: str
    body: bytes
    headers: dict[str, str]

    def fields(self) -> dict[str, Any]:
        """The JSON object or the form fields posted."""
        if self.content_type.startswith("application/json"):
            data: dict[str, Any] = json.loads(self.body)
            return data
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))

    def notification(self) -> Notification:
        """What was sent, read back: the footer gives the exact level."""
        fields = self.fields()
        message, level, _, _ = split_footer(fields["message"])
        return Notification(fields["title"], message, level or Level(fields["type"]))


@attrs.define
class Endpoint:
    """A loopback HTTP server that records each POST and answers with the
    scripted statuses first (then ``default``)."""

    port: int
    requests: list[Request] = attrs.Factory(list)
    statuses: list[int] = attrs.Factory(list)
    default: int = 200
    retry_after: str | None = None
    lock: threading.Lock = attrs.Factory(threading.Lock)
    arrived: threading.Event = attrs.Factory(threading.Event)

    def url(self, scheme: str = "json", path: str = "/hook") -> str:
        return f"apprise+{scheme}://127.0.0.1:{self.port}{path}"

    def notifications(self, status: int | None = 200) -> list[Notification]:
        return [request.notification() for request in self.answered(status)]

    def answered(self, status: int | None = 200) -> list[Request]:
        with self.lock:
            return [
                r for r in self.requests if status is None or r.headers["x-status"] == str(status)
            ]


# -- SMTP ------------------------------------------------------------------------------


@attrs.define
class Mailbox:
    port: int
    messages: list[email.message.EmailMessage] = attrs.Factory(list)
    envelopes: list[tuple[str, list[str]]] = attrs.Factory(list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.messages.append(message)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- MQTT ------------------------------------------------------------------------------

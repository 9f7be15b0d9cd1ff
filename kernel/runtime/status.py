"""The status socket: how ``kernel status`` reads a running kernel.

A Unix domain socket needs no extra service, no port and no password, and
the file system's permissions say who may read it (the socket is created
mode 0600). Each connection gets one line of JSON, `Kernel.status()`, and is
closed. A stale socket file left by a killed kernel is replaced at start.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import trio

from kernel.errors import StatusUnavailable
from kernel.runtime.kernel import Kernel

__all__ = ["StatusUnavailable", "read_status", "serve_status"]


async def serve_status(
    kernel: Kernel, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer status requests on the Unix socket ``path`` until cancelled."""
    path.unlink(missing_ok=True)  # noqa: ASYNC240 - a stale socket file, once, at start
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen()

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            line = json.dumps(kernel.status(), default=str) + "\n"
            await stream.send_all(line.encode())

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, answer, [trio.SocketListener(sock)])
            task_status.started()
    finally:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - once, at exit


def read_status(path: Path, *, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the kernel listening at ``path`` for its status (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise StatusUnavailable(f"no kernel is running at {path}") from exc
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    status: dict[str, Any] = json.loads(b"".join(chunks))
    return status

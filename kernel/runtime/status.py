"""The status socket: how ``kernel status`` reads a running kernel.

A Unix domain socket needs no extra service, no port and no password, and
the file system's permissions say who may read it (the socket is created
mode 0600). Each connection gets one line of JSON, `Kernel.status()`, and is
closed.

The path is only ever taken over when that is safe, as systemd and
supervisord treat their sockets: a socket nobody answers on (left by a
killed kernel) is replaced; a socket a live kernel answers on, or anything
that is not a socket (a database named by mistake, a symlink), is refused
with `StatusSocketError` and left alone. At exit the file is removed only if
it is still the socket this process bound (same device and inode), so a
kernel never deletes what another one created meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Final

import trio

from kernel.errors import StatusSocketError, StatusUnavailable
from kernel.runtime.kernel import Kernel

__all__ = ["StatusSocketError", "StatusUnavailable", "read_status", "serve_status"]

_PROBE_TIMEOUT: Final = 2.0
"""Seconds to wait for a connection to the socket found at the path."""


async def serve_status(
    kernel: Kernel, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer status requests on the Unix socket ``path`` until cancelled.

    Raises `StatusSocketError`, before answering anything, when ``path``
    cannot be used."""
    await trio.to_thread.run_sync(_clear_stale_socket, path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    except OSError as error:
        sock.close()
        reason = "another process took it just now" if error.errno == errno.EADDRINUSE else None
        raise StatusSocketError(str(path), reason or _describe(error)) from error
    finally:
        os.umask(old_umask)
    identity = _identity(path)
    sock.listen()

    async def answer(stream: trio.SocketStream) -> None:
        # a client that hangs up early (a probe, a timed-out `kernel status`)
        # must not end the server
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                line = json.dumps(kernel.status(), default=str) + "\n"
                await stream.send_all(line.encode())

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, answer, [trio.SocketListener(sock)])
            task_status.started()
    finally:
        if identity is not None and _identity(path) == identity:
            path.unlink(missing_ok=True)  # noqa: ASYNC240 - once, at exit


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket nobody answers on; refuse a live one or a non-socket."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return
    except OSError as error:
        raise StatusSocketError(str(path), _describe(error)) from error
    if not stat.S_ISSOCK(found.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(found.st_mode) else "not a socket"
        raise StatusSocketError(
            str(path), f"the path exists and is {kind}; it was left alone (is the path a typo?)"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale: nobody listens
        except OSError as error:
            raise StatusSocketError(
                str(path), f"a socket is there and cannot be checked ({_describe(error)})"
            ) from error
        else:
            raise StatusSocketError(
                str(path),
                "a running kernel answers there; stop it, or give this kernel another "
                "[kernel] status_socket",
            )
    path.unlink(missing_ok=True)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.lstat()
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def _describe(error: OSError) -> str:
    return error.strerror or str(error)


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

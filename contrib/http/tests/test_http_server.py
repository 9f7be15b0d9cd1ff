"""serve_http on a real socket: binding, port in use, event streams, stopping."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
import trio
from http_helpers import TOKEN

from kernel import Kernel, Manifest, Plugin, PluginContext
from kernel.errors import ConfigError
from kernel_http import HttpConfig, serve_http


class Echo(Plugin):
    manifest = Manifest("echo")

    async def on_enable(self, ctx: PluginContext) -> None:
        ctx.register_task("say", self.say)

    async def say(self, text: str) -> None:
        pass


async def test_the_port_is_bound_on_entry_and_free_on_exit() -> None:
    kernel = Kernel([Echo()])
    with trio.fail_after(20):
        async with serve_http(kernel, HttpConfig(listen="127.0.0.1:0")) as server:
            assert server.url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=server.url) as client:
                assert (await client.get("/readyz")).status_code == 503  # kernel not started
                async with kernel:
                    assert (await client.get("/readyz")).status_code == 200
            port = int(server.url.rsplit(":", 1)[1])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # released


async def test_a_port_in_use_is_one_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = HttpConfig(listen=f"127.0.0.1:{port}")
        with pytest.raises(ConfigError) as raised:
            async with serve_http(Kernel(), config, source="k.toml"):
                pass  # pragma: no cover - never entered
    assert str(raised.value) == (
        f"config error in k.toml at http.listen: cannot listen on 127.0.0.1:{port}: "
        "Address already in use"
    )


async def test_an_unreadable_token_file_is_one_config_error(tmp_path: Path) -> None:
    config = HttpConfig(token_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"at http.token_file: cannot read .*missing"):
        async with serve_http(Kernel(), config, source="k.toml"):
            pass  # pragma: no cover


async def test_job_events_stream_live_until_the_kernel_stops() -> None:
    kernel = Kernel([Echo()])
    stop = trio.Event()

    async def run_kernel(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with kernel:
            task_status.started()
            await stop.wait()

    events: list[tuple[str, dict[str, object]]] = []
    with trio.fail_after(20):
        async with (
            serve_http(kernel, HttpConfig(listen="127.0.0.1:0", token=TOKEN)) as server,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(run_kernel)
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=10) as client,
                client.stream("GET", "/api/v1/events") as stream,
            ):
                assert stream.headers["content-type"].startswith("text/event-stream")
                event = ""
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        events.append((event, json.loads(line.removeprefix("data: "))))
                        if event == "kernel" and len(events) == 1:
                            await kernel.queue.enqueue("echo.say", "hello")
                        elif events[-1][1].get("topic") == "job.succeeded":
                            stop.set()  # the stream ends when the kernel does
    topics = [data.get("topic") for kind, data in events if kind == "job"]
    assert topics == ["job.enqueued", "job.started", "job.succeeded"]
    assert events[0] == ("kernel", {"running": True})
    assert events[-1] == ("kernel", {"running": False})

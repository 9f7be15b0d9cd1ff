"""The JSON API and the probes, in-process (httpx's ASGI transport) under a mock clock."""

from __future__ import annotations

import pytest
import trio
from http_helpers import BEARER, TOKEN, Shop, asgi_client, shop_kernel
from trio.testing import MockClock

from kernel import Kernel, Manifest, Plugin, PluginContext

API = "/api/v1"


async def test_probes_before_during_and_after_the_kernel(autojump_clock: MockClock) -> None:
    kernel = shop_kernel()
    async with asgi_client(kernel) as client:
        live = await client.get("/healthz")
        assert (live.status_code, live.json()) == (
            200,
            {"status": "alive", "kernel_running": False},
        )
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "not ready", "reasons": ["the kernel is not running"]}
        refused = await client.get(f"{API}/plugins/shop")
        assert refused.status_code == 404  # not running yet: no plugins at all
        queues = await client.get(f"{API}/queues")
        assert queues.status_code == 503
        assert queues.json()["error"]["code"] == "not_running"
        async with kernel:
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_readyz_names_a_failed_plugin(autojump_clock: MockClock) -> None:
    class Crashing(Plugin):
        manifest = Manifest("crashing")

        async def on_enable(self, ctx: PluginContext) -> None:
            raise RuntimeError("boom")

    async with Kernel([Crashing()]) as kernel, asgi_client(kernel) as client:
        await trio.sleep(600)
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        (reason,) = ready.json()["reasons"]
        assert reason.startswith("plugin crashing failed: crashed: RuntimeError: boom")


async def test_every_action_needs_the_token(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel) as client:
        url = f"{API}/queues/shop/pause"
        missing = await client.post(url)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await client.post(url, headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (403, "forbidden")
        basic = await client.post(url, headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert basic.status_code == 401
        assert kernel.queue.describe()[0]["paused"] is False
        done = await client.post(url, headers=BEARER)
        assert (done.status_code, done.json()["paused"]) == (200, True)
        assert (await client.get(f"{API}/queues")).status_code == 200  # reads: open on loopback


async def test_without_a_token_actions_are_off(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel, token=None) as client:
        refused = await client.post(f"{API}/queues/shop/pause", headers=BEARER)
        assert refused.status_code == 403
        assert "no [http] token" in refused.json()["error"]["message"]


async def test_beyond_loopback_reads_need_the_token_too(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel, open_reads=False) as client:
        assert (await client.get(f"{API}/jobs")).status_code == 401
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get(f"{API}/jobs", headers=BEARER)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # probes stay open
        assert (await client.get("/readyz")).status_code == 200


async def test_dead_letters_are_listed_shown_retried_and_purged(autojump_clock: MockClock) -> None:
    shop = Shop()
    async with shop_kernel(shop) as kernel, asgi_client(kernel) as client:
        job = await kernel.queue.enqueue("shop.charge", 42)
        await trio.sleep(1)
        dead = (await client.get(f"{API}/dead-letters")).json()
        assert [j["id"] for j in dead["jobs"]] == [job.id]
        shown = (await client.get(f"{API}/jobs/{job.id}")).json()
        assert shown["state"] == "dead"
        assert shown["args"] == [42]
        assert "ValueError: card declined for 42" in shown["last_error"]
        shop.broken = False
        retried = await client.post(f"{API}/jobs/{job.id}/retry", headers=BEARER)
        assert (retried.status_code, retried.json()["state"]) == (200, "queued")
        await trio.sleep(1)
        assert shop.charged == [42]
        again = await client.post(f"{API}/jobs/{job.id}/retry", headers=BEARER)
        assert again.status_code == 409
        shop.broken = True
        await kernel.queue.enqueue("shop.charge", 1)
        await trio.sleep(1)
        kept = await client.post(
            f"{API}/dead-letters/purge?older_than_seconds=3600", headers=BEARER
        )
        assert kept.json() == {"purged": 0}
        purged = await client.post(f"{API}/dead-letters/purge", headers=BEARER)
        assert purged.json() == {"purged": 1}


async def test_jobs_are_filtered_paged_and_cancelled(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel) as client:
        kernel.queue.pause("shop")
        ids = sorted([(await kernel.queue.enqueue("shop.ship", f"o{n}")).id for n in range(3)])
        first = (await client.get(f"{API}/jobs?state=queued&limit=2")).json()
        assert [j["id"] for j in first["jobs"]] == ids[:2]
        rest = (await client.get(f"{API}/jobs?limit=2&after={first['next_after']}")).json()
        assert ([j["id"] for j in rest["jobs"]], rest["next_after"]) == (ids[2:], None)
        by_task = (await client.get(f"{API}/jobs?task=shop.charge")).json()
        assert by_task["jobs"] == []
        cancelled = await client.post(f"{API}/jobs/{ids[0]}/cancel", headers=BEARER)
        assert cancelled.json()["state"] == "cancelled"
        assert (await client.post(f"{API}/jobs/{ids[0]}/cancel", headers=BEARER)).status_code == 409
        for bad in ("state=nope", "limit=0", "limit=x", "after=%0A"):
            response = await client.get(f"{API}/jobs?{bad}")
            assert response.status_code == 400, bad
            assert response.json()["error"]["code"] == "bad_request"
        unknown = await client.post(f"{API}/jobs/{'0' * 32}/cancel", headers=BEARER)
        assert unknown.status_code == 404


async def test_schedules_and_plugins_are_driven(autojump_clock: MockClock) -> None:
    shop = Shop()
    async with shop_kernel(shop) as kernel, asgi_client(kernel) as client:
        (report,) = (await client.get(f"{API}/schedules")).json()
        assert (report["name"], report["trigger"]) == ("shop/report", "every 1h")
        triggered = await client.post(f"{API}/schedules/shop/report/trigger", headers=BEARER)
        assert triggered.status_code == 200
        await trio.sleep(1)
        assert shop.reports == 1
        paused = await client.post(f"{API}/schedules/shop/report/pause", headers=BEARER)
        assert paused.json()["paused"] is True
        missing = await client.post(f"{API}/schedules/shop/nope/pause", headers=BEARER)
        assert missing.status_code == 404
        disabled = await client.post(f"{API}/plugins/shop/disable", headers=BEARER)
        assert disabled.json()["state"] == "disabled"
        assert (await client.get(f"{API}/plugins/shop")).json()["state"] == "disabled"
        restarted = await client.post(f"{API}/plugins/shop/restart", headers=BEARER)
        assert restarted.json()["state"] == "enabled"
        assert (await client.post(f"{API}/plugins/ghost/enable", headers=BEARER)).status_code == 404
        health = (await client.get(f"{API}/health")).json()
        assert (health["status"], health["ready"]) == ("healthy", True)
        snapshot = (await client.get(f"{API}/metrics")).json()
        assert "job_run_seconds" in snapshot


async def test_the_openapi_document_lists_every_api_route(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel) as client:
        document = (await client.get(f"{API}/openapi.json")).json()
        assert document["openapi"].startswith("3.1")
        paths = set(document["paths"])
        assert {
            "/api/v1/jobs/{job_id}/retry",
            "/api/v1/queues/{name}/pause",
            "/api/v1/schedules/{name}/trigger",
            "/api/v1/plugins/{name}/restart",
            "/api/v1/dead-letters/purge",
        } <= paths
        app = client._transport.app  # type: ignore[attr-defined]
        routes = {
            route.path.replace("{name:path}", "{name}")
            for route in app.routes
            if getattr(route, "path", "").startswith(API)
        }
        assert routes - {f"{API}/openapi.json", f"{API}/events"} == paths


@pytest.mark.parametrize("path", ["/api/v1/jobs/x/retry", "/api/v1/queues/shop/pause"])
async def test_reads_are_refused_on_action_routes(path: str, autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel) as client:
        assert (await client.get(path)).status_code == 405

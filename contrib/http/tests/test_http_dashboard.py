"""The dashboard's pages, sign-in and CSRF, in-process under a mock clock."""

from __future__ import annotations

import re

import httpx
import trio
from http_helpers import TOKEN, Shop, asgi_client, shop_kernel
from trio.testing import MockClock

PAGES = ("/", "/ui/jobs", "/ui/dead", "/ui/schedules", "/ui/plugins", "/ui/login")


def csrf_of(page: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]*)">', page)
    assert match is not None
    return match.group(1)


async def sign_in(client: httpx.AsyncClient) -> str:
    response = await client.post("/ui/login", json={"token": TOKEN})
    assert response.status_code == 200
    return csrf_of((await client.get("/")).text)


async def test_every_page_renders_and_no_page_shows_the_token(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel) as client:
        job = await kernel.queue.enqueue("shop.charge", 42)
        await trio.sleep(1)
        await sign_in(client)
        for path in (*PAGES, f"/ui/jobs/{job.id}", "/ui/chart.svg", "/ui/fragments/overview"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert TOKEN not in response.text, path
        page = (await client.get(f"/ui/jobs/{job.id}")).text
        assert "card declined for 42" in page
        assert "Traceback (most recent call last)" in page
        assert f'data-action="/api/v1/jobs/{job.id}/retry"' in page
        assert TOKEN not in str(client.cookies.get("kernel_session"))


async def test_jobs_search_by_id_and_filter(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel) as client:
        kernel.queue.pause("shop")
        job = await kernel.queue.enqueue("shop.ship", "o1")
        await kernel.queue.enqueue("shop.charge", 5)
        found = await client.get(f"/ui/jobs?q={job.id}")
        assert (found.status_code, found.headers["location"]) == (303, f"/ui/jobs/{job.id}")
        listed = (await client.get("/ui/jobs?state=queued&q=ship")).text
        assert job.id in listed
        assert "shop.charge" not in listed.split("<tbody>")[1]
        assert (await client.get("/ui/jobs/" + "0" * 32)).status_code == 404
        for bad in ("queue=%0A", "task=%00", "state=nope&after=zz"):
            assert (await client.get(f"/ui/jobs?{bad}")).status_code in (200, 400), bad
        refused = await client.get("/ui/jobs?queue=%0A")
        assert refused.status_code == 400
        assert "invalid job queue" in refused.text


async def test_actions_from_a_session_need_its_csrf_token(autojump_clock: MockClock) -> None:
    shop = Shop()
    async with shop_kernel(shop) as kernel, asgi_client(kernel) as client:
        pause = "/api/v1/queues/shop/pause"
        assert (await client.post(pause)).status_code == 401
        wrong = await client.post("/ui/login", json={"token": "nope"})
        assert wrong.status_code == 403
        form = await client.post("/ui/login", data={"token": TOKEN})
        assert form.status_code == 415  # a cross-site form cannot sign in
        csrf = await sign_in(client)
        assert csrf
        refused = await client.post(pause)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "csrf")
        forged = await client.post(pause, headers={"X-CSRF-Token": "forged"})
        assert forged.status_code == 403
        done = await client.post(pause, headers={"X-CSRF-Token": csrf})
        assert (done.status_code, done.json()["paused"]) == (200, True)
        await client.post("/ui/logout")
        assert (await client.post(pause, headers={"X-CSRF-Token": csrf})).status_code == 401


async def test_closed_reads_send_the_browser_to_sign_in(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel, open_reads=False) as client:
        response = await client.get("/ui/jobs?state=dead")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login?next=/ui/jobs%3Fstate%3Ddead"
        assert (await client.get("/ui/login")).status_code == 200
        await sign_in(client)
        assert (await client.get("/ui/jobs?state=dead")).status_code == 200
        assert (await client.get("/api/v1/jobs")).status_code == 200


async def test_a_page_says_when_the_kernel_is_not_running(autojump_clock: MockClock) -> None:
    async with asgi_client(shop_kernel()) as client:
        response = await client.get("/")
    assert response.status_code == 503
    assert "the kernel is not running" in response.text

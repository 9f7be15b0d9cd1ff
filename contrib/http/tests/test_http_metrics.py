"""``GET /metrics``: read back with prometheus_client's own parser."""

from __future__ import annotations

import trio
from http_helpers import Shop, asgi_client, shop_kernel
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

from kernel import CircuitBreaker
from kernel_http.activity import Activity, Minute, chart_svg


def families(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_jobs_queues_plugins_schedules_and_breakers_are_exported(
    autojump_clock: MockClock,
) -> None:
    shop = Shop()
    async with shop_kernel(shop) as kernel, asgi_client(kernel) as client:
        kernel.queue.register(
            "shop.guarded", lambda: None, queue="shop", breaker=CircuitBreaker("guard")
        )
        await kernel.queue.enqueue("shop.charge", 1)
        await trio.sleep(1)
        kernel.queue.pause("shop")
        await kernel.queue.enqueue("shop.ship", "o1")
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = families(response.text)
    assert samples["kernel_up"] == {(): 1.0}
    assert samples["kernel_job_failures_total"] == {(("task", "shop.charge"),): 1.0}
    assert samples["kernel_job_dead_total"] == {(("task", "shop.charge"),): 1.0}
    runs = samples["kernel_job_run_seconds_bucket"]
    assert runs[(("le", "+Inf"), ("task", "shop.charge"))] == 1.0
    assert samples["kernel_job_run_seconds_count"] == {(("task", "shop.charge"),): 1.0}
    assert samples["kernel_queue_depth"][(("queue", "shop"),)] == 1.0
    assert samples["kernel_queue_paused"][(("queue", "shop"),)] == 1.0
    state = samples["kernel_plugin_state"]
    assert state[(("plugin", "shop"), ("state", "enabled"))] == 1.0
    assert state[(("plugin", "shop"), ("state", "failed"))] == 0.0
    breaker = samples["kernel_breaker_state"]
    assert breaker[(("state", "closed"), ("task", "shop.guarded"))] == 1.0
    assert (("schedule", "shop/report"),) in samples["kernel_schedule_next_fire_timestamp_seconds"]
    assert "kernel_loop_lag_seconds" in samples  # the kernel's watchdog measures it


async def test_openmetrics_when_asked(autojump_clock: MockClock) -> None:
    async with shop_kernel() as kernel, asgi_client(kernel) as client:
        response = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_a_stopped_kernel_is_down_not_an_error(autojump_clock: MockClock) -> None:
    async with asgi_client(shop_kernel()) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert families(response.text)["kernel_up"] == {(): 0.0}


def test_activity_counts_per_minute_and_draws_bars() -> None:
    activity = Activity(minutes=3)
    activity.sample(600.0, 0, 0)
    activity.sample(610.0, 5, 1)
    activity.sample(670.0, 9, 1)
    activity.sample(790.0, 9, 3)
    series = activity.series(790.0)
    assert [(m.start, m.finished, m.failed) for m in series] == [
        (660, 4, 0),
        (720, 0, 0),
        (780, 0, 2),
    ]
    svg = chart_svg([Minute(0, 4, 1), Minute(60)])
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert svg.count('class="finished"') == 1
    assert svg.count('class="failed"') == 1

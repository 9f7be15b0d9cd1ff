"""The dashboard in a real browser: headless Chromium (the system's, driven
by Selenium through chromedriver) against a kernel running the example
services (data sync, activity counter) and a shop with a dead letter.

Waits are on what the page shows, bounded by a timeout that only limits a
failure. With ``KERNEL_HTTP_SCREENSHOTS=DIR`` the overview and a job page
are saved there as PNG (how docs/dashboard*.png are made).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_helpers import TOKEN, BackgroundKernel, Shop
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from examples.activity_events import ActivityEvents
from examples.data_sync import DataSync
from kernel import JobRecord, PluginSpec

WAIT = 20


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop()


@pytest.fixture(scope="module")
def running(shop: Shop) -> Iterator[BackgroundKernel]:
    plugins = [
        PluginSpec(ActivityEvents(), name="activity", config={"summary_interval": "5s"}),
        PluginSpec(DataSync(), name="sync", config={"interval": "1s", "batch_size": 10}),
        PluginSpec(shop, name="shop"),
    ]
    with BackgroundKernel(plugins) as background:
        yield background


def enqueue(background: BackgroundKernel, task: str, *args: Any) -> JobRecord:
    kernel = background.kernel
    assert kernel is not None
    return background.call(lambda: kernel.queue.enqueue(task, *args))


def state_of(background: BackgroundKernel, job_id: str) -> str:
    kernel = background.kernel
    assert kernel is not None
    record = background.call(lambda: kernel.queue.get_job(job_id))
    assert record is not None
    return record.state.value


def wait(browser: Any) -> WebDriverWait[Any]:
    return WebDriverWait(browser, WAIT)


def screenshot(browser: Any, name: str) -> None:
    folder = os.environ.get("KERNEL_HTTP_SCREENSHOTS")
    if folder:
        browser.save_screenshot(str(Path(folder) / name))


def test_the_overview_shows_the_services_and_jobs_as_they_happen(
    browser: Any, running: BackgroundKernel
) -> None:
    browser.get(running.url + "/")
    assert browser.title == "Overview · trio-kernel"
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "live-status"), "live"))
    wait(browser).until(
        lambda b: "on" in b.find_element(By.ID, "live-status").get_attribute("class")
    )
    plugins = browser.find_element(By.CSS_SELECTOR, ".columns section:nth-child(2)").text
    assert "activity" in plugins
    assert "sync" in plugins
    assert "shop" in plugins
    # the data sync runs every second: its jobs show up in the live feed by themselves
    wait(browser).until(
        ec.text_to_be_present_in_element((By.ID, "live-feed"), "sync.sync succeeded")
    )
    # ...and the overview refreshes itself: the chart gets its first bar
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".chart rect.finished")))
    screenshot(browser, "dashboard-overview.png")


def test_a_new_job_appears_live_in_the_jobs_list(browser: Any, running: BackgroundKernel) -> None:
    browser.get(running.url + "/ui/jobs?task=shop.ship")
    wait(browser).until(
        lambda b: "on" in b.find_element(By.ID, "live-status").get_attribute("class")
    )
    job = enqueue(running, "shop.ship", "order-7")
    row = wait(browser).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-job-id="{job.id}"]'))
    )
    assert "shop.ship" in row.text
    wait(browser).until(lambda b: "running" in row.text)  # its state follows the events


def test_retrying_a_dead_letter_needs_the_token_and_a_click(
    browser: Any, running: BackgroundKernel, shop: Shop
) -> None:
    job = enqueue(running, "shop.charge", 99)
    wait(browser).until(lambda b: state_of(running, job.id) == "dead")
    browser.get(f"{running.url}/ui/jobs/{job.id}")
    assert "ValueError: card declined for 99" in browser.find_element(By.ID, "last-error").text
    screenshot(browser, "dashboard-job.png")

    browser.get(running.url + "/ui/dead")
    retry = f'tr[data-job-id="{job.id}"] button.retry'
    browser.find_element(By.CSS_SELECTOR, retry).click()
    # not signed in: the action is refused and the page asks for the token
    wait(browser).until(ec.url_contains("/ui/login"))
    assert state_of(running, job.id) == "dead"
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait(browser).until(ec.visibility_of_element_located((By.ID, "login-error")))
    assert browser.find_element(By.ID, "login-error").text == "wrong token"
    token_field = browser.find_element(By.ID, "token")
    token_field.clear()
    token_field.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait(browser).until(ec.url_to_be(running.url + "/ui/dead"))
    assert TOKEN not in browser.page_source
    assert all(TOKEN not in cookie["value"] for cookie in browser.get_cookies())

    shop.broken = False
    browser.find_element(By.CSS_SELECTOR, retry).click()
    wait(browser).until(lambda b: state_of(running, job.id) == "succeeded")
    wait(browser).until(
        ec.invisibility_of_element_located((By.CSS_SELECTOR, f'tr[data-job-id="{job.id}"]'))
    )
    assert shop.charged == [99]

"""Every operation of /api/v1/openapi.json, fuzzed by schemathesis against a
live server (with the token, so the actions run too): no input makes it
answer 500. The example count is kept small so the suite stays quick."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from http_helpers import BEARER, BackgroundKernel, Shop
from hypothesis import HealthCheck, settings

from kernel import PluginSpec
from kernel_http.openapi import openapi_document

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A kernel with the shop plugin (a dead letter, queued jobs, a
    schedule) and its HTTP server, on a thread of its own."""
    with BackgroundKernel([PluginSpec(Shop(), name="shop")]) as background:
        kernel = background.kernel
        assert kernel is not None
        background.call(lambda: kernel.queue.enqueue("shop.charge", 1))
        background.call(lambda: kernel.queue.enqueue("shop.ship", "o1"))
        yield background.url


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_no_input_makes_the_api_answer_500(case: Any, server_url: str) -> None:
    response = case.call(base_url=server_url, headers=BEARER, timeout=10)
    assert response.status_code < 500, (case.method, case.formatted_path, response.text)

"""The trace continued across processes, for real: this test process enqueues
inside a span into SQLite (and PostgreSQL, and Redis), a `kernel run` process with an
``[otel]`` table runs the jobs, and what it exports (console: one JSON object
a line on stdout; OTLP/HTTP: to a receiver of the test's own) must carry the
enqueuer's trace id, with the enqueue span as the attempt's parent."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry import baggage, context
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otel_helpers import ROOT, console_objects, hex_id, kernel_run, one, span_id, trace_id

import kernel_otel
from kernel import JobQueue, open_storage
from kernel.ports import JobStore, redact_url
from kernel.time.scheduler import open_scheduler

PROBE = '[plugins.probe]\nuse = "otel_probe_plugins:Probe"\n'
SECRET = "s3cret-token-do-not-log"


async def enqueue_in_a_span(url: str, tracer_provider: TracerProvider) -> None:
    """``checkout`` (with baggage) enqueues the probe's two jobs; the
    process that runs them knows the tasks, this one only their names."""
    storage = await open_storage(url)
    try:
        assert isinstance(storage, JobStore)
        async with open_scheduler() as scheduler:
            queue = JobQueue(storage, scheduler, worker="enqueuer")
            for task in ("probe.blocking", "probe.finish"):
                queue.register(task, lambda label: None, queue="probe")
            kernel_otel.instrument(queue, tracer_provider=tracer_provider)
            token = context.attach(baggage.set_baggage("tenant", "acme"))
            try:
                with tracer_provider.get_tracer("shop").start_as_current_span("checkout"):
                    await queue.enqueue("probe.blocking", "a")
                    await queue.enqueue("probe.finish", "b")
            finally:
                context.detach(token)
    finally:
        await storage.aclose()


def check_continued(enqueued: list[ReadableSpan], exported: list[dict[str, Any]]) -> None:
    """The worker's spans (as the console exporter prints them) continue the
    enqueuer's trace: each attempt's parent is its job's ``send`` span, and
    the spans the tasks made are the attempts' children."""
    checkout = one(enqueued, "checkout")
    sends = [span for span in enqueued if span.name == "send probe"]
    assert len(sends) == 2
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in exported:
        by_name.setdefault(span["name"], []).append(span)
    processes = by_name["process probe"]
    assert len(processes) == 2
    for process in processes:
        assert hex_id(process["context"]["trace_id"]) == trace_id(checkout)
        assert process["kind"] == "SpanKind.CONSUMER"
        assert process["attributes"]["trio_kernel.job.outcome"] == "succeeded"
        assert process["resource"]["attributes"]["service.name"] == "probe-worker"
    assert sorted(hex_id(p["parent_id"]) or 0 for p in processes) == sorted(map(span_id, sends))
    for process in processes:
        (link,) = process["links"]
        assert hex_id(link["context"]["span_id"]) == hex_id(process["parent_id"])
    process_ids = {hex_id(p["context"]["span_id"]) for p in processes}
    (blocking,) = by_name["probe blocking"]  # made in the job's worker thread
    (finish,) = by_name["probe finish"]
    assert hex_id(blocking["parent_id"]) in process_ids
    assert hex_id(finish["parent_id"]) in process_ids
    assert finish["attributes"]["tenant"] == "acme"  # the baggage came along


def console_config(tmp_path: Path, storage: str) -> Path:
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[kernel]\nstorage = "{storage}"\n\n{PROBE}\n'
        '[otel]\nexporter = "console"\nservice_name = "probe-worker"\n'
    )
    return config


def run_worker(config: Path) -> list[dict[str, Any]]:
    code, out, err = kernel_run(config)
    assert code == 0, err
    objects = console_objects(out)
    spans = [o for o in objects if "context" in o]
    metrics = [o for o in objects if "resource_metrics" in o]
    assert metrics, out  # flushed at exit
    names = {
        m["name"]
        for o in metrics
        for r in o["resource_metrics"]
        for s in r["scope_metrics"]
        for m in s["metrics"]
    }
    assert {"messaging.process.duration", "trio_kernel.job.attempts"} <= names
    return spans


def test_sqlite_trace_continued_in_a_kernel_run_process(
    tmp_path: Path, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    url = f"sqlite:///{tmp_path / 'kernel.db'}"
    trio.run(enqueue_in_a_span, url, tracer_provider)
    spans = run_worker(console_config(tmp_path, url))
    check_continued(list(exporter.get_finished_spans()), spans)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the test server (migrated by the first open), or a
    skip (a failure under KERNEL_REQUIRE_SERVICES=1)."""
    psycopg = pytest.importorskip("psycopg")
    server = os.environ.get("KERNEL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        psycopg.connect(server, connect_timeout=5).close()
    except psycopg.Error as error:
        reason = f"PostgreSQL is not reachable at {redact_url(server)}: {error}".strip()
        if os.environ.get("KERNEL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (KERNEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
        pytest.skip(reason)
    schema = f"kt_otel_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in server else "?"
    yield f"{server}{separator}schema={schema}&migrate=true"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_postgres_trace_continued_in_a_kernel_run_process(
    tmp_path: Path,
    postgres_url: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    trio.run(enqueue_in_a_span, postgres_url, tracer_provider)
    spans = run_worker(console_config(tmp_path, postgres_url))
    check_continued(list(exporter.get_finished_spans()), spans)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A key prefix of its own on the test server, its keys deleted
    afterwards; or a skip (a failure under KERNEL_REQUIRE_SERVICES=1)."""
    coredis = pytest.importorskip("coredis")
    server = os.environ.get("KERNEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urllib.parse.urlsplit(server)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 5).close()
    except OSError as error:
        reason = f"Redis is not reachable at {redact_url(server)}: {error}".strip()
        if os.environ.get("KERNEL_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (KERNEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
        pytest.skip(reason)
    prefix = f"kt-otel-{uuid.uuid4().hex[:12]}:"
    separator = "&" if "?" in server else "?"
    yield f"{server}{separator}prefix={prefix}"

    async def delete_prefix() -> None:  # never the whole database: the server is shared
        client = coredis.Redis.from_url(server, decode_responses=True)
        async with client:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(keys)

    trio.run(delete_prefix)


def test_redis_trace_continued_in_a_kernel_run_process(
    tmp_path: Path,
    redis_url: str,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    trio.run(enqueue_in_a_span, redis_url, tracer_provider)
    spans = run_worker(console_config(tmp_path, redis_url))
    check_continued(list(exporter.get_finished_spans()), spans)


class _Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP collector of the test's own: keeps what is posted."""

    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    received: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_otlp_export_with_headers_that_are_never_logged(
    tmp_path: Path,
    collector: tuple[str, list[tuple[str, dict[str, str], bytes]]],
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    endpoint, received = collector
    url = f"sqlite:///{tmp_path / 'kernel.db'}"
    trio.run(enqueue_in_a_span, url, tracer_provider)
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[kernel]\nstorage = "{url}"\n\n{PROBE}\n'
        f'[otel]\nexporter = "otlp"\nendpoint = "{endpoint}"\nservice_name = "probe-worker"\n'
        f'headers = {{ authorization = "Bearer {SECRET}" }}\n'
    )
    code, out, err = kernel_run(config, "--log-level", "debug")
    assert code == 0, err
    assert SECRET not in out + err
    assert f"exporting to OTLP/HTTP to {endpoint} with headers authorization" in err
    paths = {path for path, _, _ in received}
    assert paths == {"/v1/traces", "/v1/metrics"}
    assert all(headers["authorization"] == f"Bearer {SECRET}" for _, headers, _ in received)
    checkout = one(list(exporter.get_finished_spans()), "checkout")
    spans = []
    for path, _, body in received:
        if path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}
                assert service["service.name"] == "probe-worker"
                spans += [s for scope in resource.scope_spans for s in scope.spans]
        else:
            metrics = ExportMetricsServiceRequest()
            metrics.ParseFromString(body)
            assert metrics.resource_metrics
    processes = [s for s in spans if s.name == "process probe"]
    assert len(processes) == 2
    assert {int.from_bytes(s.trace_id, "big") for s in processes} == {trace_id(checkout)}


def test_the_traced_example_runs_as_its_readme_says(tmp_path: Path) -> None:
    """``kernel run examples/traced.toml`` (the contrib's README): the
    payments example's charges, each attempt a child of its enqueue."""
    code, out, err = kernel_run(
        ROOT / "examples" / "traced.toml", "--stop-after", "3s", cwd=tmp_path
    )
    assert code == 0, err
    spans = [o for o in console_objects(out) if "context" in o]
    by_id = {hex_id(s["context"]["span_id"]): s for s in spans}
    charges = [s for s in spans if s["name"] == "process payments"]
    assert charges, out
    for charge in charges:
        assert charge["attributes"]["trio_kernel.job.task"] == "payments.charge"
        assert charge["resource"]["attributes"]["service.name"] == "payments"
        send = by_id[hex_id(charge["parent_id"])]
        assert send["name"] == "send payments"
        assert send["context"]["trace_id"] == charge["context"]["trace_id"]
    assert (tmp_path / "traced.db").exists()  # the example's state stays in the folder it ran in

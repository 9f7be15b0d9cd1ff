"""Helpers for the OpenTelemetry contrib's tests (a module name of its own,
so that importing it never picks up another directory's conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan

PLUGINS = Path(__file__).resolve().parent / "plugins"
ROOT = Path(__file__).resolve().parents[3]
"""The repository: ``examples`` is importable from there."""
RUN_TIMEOUT = 60.0
"""Seconds a `kernel run` may take before the test fails (a hang, not a speed)."""


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def points(reader: InMemoryMetricReader, metric: str) -> list[tuple[dict[str, Any], Any]]:
    """The data points of ``metric``: (attributes, point) pairs."""
    data = reader.get_metrics_data()
    found = []
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for item in scope.metrics:
                if item.name == metric:
                    found += [(dict(p.attributes or {}), p) for p in item.data.data_points]
    return found


def kernel_run(
    config: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """`kernel run CONFIG ARGS` in ``cwd`` (default: the config's folder),
    the probe plugins and the examples importable: its exit code, stdout and
    stderr."""
    path = os.pathsep.join([str(PLUGINS), str(ROOT), os.environ.get("PYTHONPATH", "")])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "kernel.cli", "run", str(config), *args],
            cwd=cwd or config.parent,
            env={**os.environ, "PYTHONPATH": path, **(env or {})},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"kernel run did not stop within {RUN_TIMEOUT} s: {expired}") from None
    return done.returncode, done.stdout, done.stderr


def console_objects(stdout: str) -> list[dict[str, Any]]:
    """What the console exporter printed: one JSON object a line."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def hex_id(text: str | None) -> int | None:
    """A span or trace id as the console exporter prints it (``0x...``)."""
    return None if text is None else int(text, 16)

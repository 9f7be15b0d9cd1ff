"""The examples run under MockClock, so what the README shows keeps working."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from trio.testing import MockClock

from kernel import Clock

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_heartbeat_prints_each_fire(
    autojump_clock: MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    heartbeat = load_example("heartbeat")
    await heartbeat.main(13, Clock.starting_at(datetime(2026, 1, 1, tzinfo=UTC)))
    lines = capsys.readouterr().out.splitlines()
    assert sum("every 2 s" in line for line in lines) == 6
    assert sum("cron */5" in line for line in lines) == 2
    assert lines[0].startswith("scheduled ")

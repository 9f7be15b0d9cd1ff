"""The project's own checks, so that `pytest` is the one command that runs
everything: lint, format, strict typing, and the README staying true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> None:
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def test_ruff_lint() -> None:
    run(sys.executable, "-m", "ruff", "check", ".")


def test_ruff_format() -> None:
    run(sys.executable, "-m", "ruff", "format", "--check", ".")


def test_mypy_strict_on_kernel() -> None:
    run(sys.executable, "-m", "mypy")


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\s*(python3 -m venv .*)$", quick_start, flags=re.MULTILINE)


def test_ci_runs_the_readme_test_command() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_the_kernel_imports_no_extension() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+(kernel_\w+|adapters|contrib)\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "kernel").rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []

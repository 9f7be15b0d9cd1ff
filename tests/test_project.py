"""The project's own checks, so that `pytest` is the one command that runs
everything: lint, format, strict typing, and the README staying true."""

from __future__ import annotations

import ast
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


def _kernel_modules() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / "kernel").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``from M import names`` in a file, wherever it is (also under
    ``if TYPE_CHECKING:`` and inside functions: a dependency all the same)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def test_kernel_modules_import_no_cycle() -> None:
    """The root package re-exports everything, so it is left out; any other
    cycle between modules means two concepts that should be one, or a seam
    to cut (as the schedule feeder is handed its dependencies)."""
    modules = _kernel_modules()
    graph = {
        name: {target for target, _ in _imports(path) if target in modules and target != name}
        for name, path in modules.items()
        if name != "kernel"
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done or node == "kernel":
            return
        assert node not in visiting, "import cycle: " + " -> ".join(
            [*visiting[visiting.index(node) :], node]
        )
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_no_private_name_crosses_a_module_and_no_private_module_its_package() -> None:
    """``_name`` is used only where it is defined; a private module
    (``kernel/jobs/_checks.py``) is imported only inside its own package,
    plus by the one public module that re-exports it (`kernel.storage.base`)."""
    reexports = {"kernel.storage.base": {"kernel.jobs._checks"}}
    offenders = []
    for name, path in _kernel_modules().items():
        for target, names in _imports(path):
            if not target.startswith("kernel"):
                continue
            offenders += [f"{name} imports {target}.{n}" for n in names if n.startswith("_")]
            private = next((p for p in target.split(".") if p.startswith("_")), None)
            if private is None or target == "kernel._exports":
                continue
            package = target[: target.index("." + private)]
            if not (name == package or name.startswith(package + ".")) and target not in (
                reexports.get(name, set())
            ):
                offenders.append(f"{name} imports the private module {target}")
    assert offenders == []

"""Every code block of the docs runs as written (docs/*.md and README.md).

A fenced block's info string says what it is:

- ``python``: run as a program (``__name__ == "__main__"``) in an empty
  working directory. `trio.run` on the main thread gets trio's
  ``MockClock`` unless the block passes a clock, so sleeps cost next to
  nothing; a program that runs until SIGINT/SIGTERM is sent SIGTERM by a
  stand-in for the operator after a virtual minute, and one that sleeps
  forever is stopped after a second of real time. What it
  prints must equal its ``# prints:`` lines, and the next block when that
  one is ``text output``.
- ``toml``: a kernel config file: loaded as ``kernel run`` loads it (its
  plugins imported, their configs structured), every plugin started and
  enabled, then stopped.
- ``json``: parsed.
- ``console``: each ``$ kernel ...`` line is run (under the mock clock, in
  a folder where ``examples/`` is the repository's); the lines after it,
  if any, are what it must print.
- ``LANG fragment: WHY``: an excerpt that cannot run alone (a protocol's
  signatures, a method out of its class). It is still parsed (Python with
  top-level ``await`` allowed, TOML, JSON); the test says why it is not run.
- ``LANG pytest``: a test module; pytest runs it.

Other blocks (``text``, ``sql``, diagrams) are not code.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import tomllib
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from click.testing import CliRunner

import kernel.cli.commands
import kernel.ports
from kernel.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
RUNNABLE = {"python", "toml", "json", "console"}
NOT_CODE = {"", "text", "sql", "yaml"}
_FENCE = re.compile(r"^(?P<indent> *)```(?P<info>.*)$")
FOREVER = 1.0
"""Real seconds a program meant to run forever runs (minutes of virtual time)."""
AUTOJUMP = 0.01
"""Real seconds of idleness before the mock clock jumps: long enough that a
worker thread's SQLite call is never taken for idleness, short enough that
a program that sleeps a minute at a time covers hours in a second."""
_PRINTS = re.compile(r"^# prints: ?(.*)$", re.MULTILINE)


@attrs.frozen
class Block:
    page: Path
    line: int  # of the first line of code
    language: str
    flags: str  # the rest of the info string
    code: str
    output: str | None  # the next block, when it is ``text output``

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def fragment_reason(self) -> str | None:
        if not self.flags.startswith("fragment"):
            return None
        return self.flags.removeprefix("fragment").lstrip(":").strip()


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found: list[tuple[int, str, str, str]] = []
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        indent = len(match["indent"])
        info = match["info"].strip()
        end = index + 1
        while not re.match(rf"^ {{{indent}}}```\s*$", lines[end]):
            end += 1
        code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        language, _, flags = info.partition(" ")
        found.append((index + 2, language, flags.strip(), code))
        index = end + 1
    result = []
    for position, (line, language, flags, code) in enumerate(found):
        after = found[position + 1] if position + 1 < len(found) else None
        output = after[3] if after and after[1] == "text" and after[2] == "output" else None
        result.append(Block(page, line, language, flags, code, output))
    return result


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]
CODE_BLOCKS = [block for block in ALL_BLOCKS if block.language in RUNNABLE]


def test_every_block_says_what_it_is() -> None:
    unknown = [
        f"{block.name}: {block.language!r}"
        for block in ALL_BLOCKS
        if block.language not in RUNNABLE | NOT_CODE
    ]
    assert unknown == []
    unexplained = [block.name for block in ALL_BLOCKS if block.fragment_reason == ""]
    assert unexplained == [], "a fragment says why it cannot run: ```python fragment: WHY"
    flags = {block.flags for block in ALL_BLOCKS if not block.fragment_reason}
    assert flags <= {"", "output", "pytest"}, flags


# -- running under the mock clock ---------------------------------------------------


class _Operator:
    """Stands in for the signal receiver of a program that runs until
    SIGINT or SIGTERM: after a virtual minute, it delivers one SIGTERM."""

    def __init__(self, *signals: int) -> None:
        pass

    def __enter__(self) -> _Operator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def __aiter__(self) -> AsyncIterator[int]:
        return self._deliver()

    async def _deliver(self) -> AsyncIterator[int]:
        await trio.sleep(60)
        yield signal.SIGTERM
        await trio.sleep_forever()


@contextlib.contextmanager
def virtual_time(monkeypatch: pytest.MonkeyPatch, *, forever: bool) -> Iterator[None]:
    """Main-thread `trio.run` on the mock clock; a program meant to run
    ``forever`` is stopped after `FOREVER` real seconds, as an operator's
    Ctrl-C would; signals come from `_Operator`."""
    real_run = trio.run

    def run(afn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread() or "clock" in kwargs:
            return real_run(afn, *args, **kwargs)  # a thread's own run; a block's own clock
        kwargs["clock"] = trio.testing.MockClock(autojump_threshold=AUTOJUMP)
        if not forever:
            return real_run(afn, *args, **kwargs)

        async def stopped_by_the_operator() -> Any:
            # a real-time watchdog: a deadline in the run would be a target
            # for the mock clock's jumps while a worker thread is busy
            with trio.CancelScope() as scope:
                token = trio.lowlevel.current_trio_token()

                def interrupt() -> None:
                    with contextlib.suppress(trio.RunFinishedError):
                        trio.from_thread.run_sync(scope.cancel, trio_token=token)

                watchdog = threading.Timer(FOREVER, interrupt)
                watchdog.start()
                try:
                    return await afn(*args)
                finally:
                    watchdog.cancel()
            return None

        return real_run(stopped_by_the_operator, **kwargs)

    monkeypatch.setattr(trio, "run", run)
    monkeypatch.setattr(trio, "open_signal_receiver", _Operator)
    yield


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory where ``examples/`` is the repository's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.syspath_prepend(str(ROOT))
    return tmp_path


def _check_syntax(block: Block) -> None:
    if block.language == "python":
        compile(block.code, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        _check_protocol_excerpts(block)
    elif block.language == "toml":
        tomllib.loads(block.code)
    elif block.language == "json":
        json.loads(block.code)


def _check_protocol_excerpts(block: Block) -> None:
    """A class named like a protocol of `kernel.ports` shows only methods
    that protocol has (an excerpt may leave some out)."""
    for node in ast.parse(block.code).body:
        if not isinstance(node, ast.ClassDef) or not hasattr(kernel.ports, node.name):
            continue
        shown = {
            item.name
            for item in node.body
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        real = set(dir(getattr(kernel.ports, node.name)))
        assert shown <= real, f"{node.name} has no {sorted(shown - real)}"


def _run_python(block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    # a module of its own as __main__, as `python file.py` makes it: cattrs
    # and typing find a class's annotations through sys.modules[__module__]
    program = types.ModuleType("__main__")
    program.__file__ = block.name
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "__main__", program)
        status: object = 0
        try:
            exec(compile(block.code, block.name, "exec"), program.__dict__)
        except SystemExit as exit_:
            status = exit_.code
    assert status in (0, None), f"exit status {status}"
    printed = capsys.readouterr().out
    expected = _PRINTS.findall(block.code)
    if expected:
        assert printed.splitlines() == expected
    if block.output is not None:
        assert printed == block.output


def _run_pytest(block: Block, workdir: Path) -> None:
    module = workdir / "test_docs_block.py"
    module.write_text(block.code)
    (workdir / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")  # as the page says
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])},
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _start_and_stop(block: Block, workdir: Path) -> None:
    """Load a config as ``kernel run`` does (its plugins imported, their
    configs structured), start every plugin on the real clock (SQLite works
    in threads), check each is enabled, stop."""
    path = workdir / "kernel.toml"
    path.write_text(block.code)
    config, specs = kernel.cli.commands._load(str(path))
    running = kernel.cli.commands._kernel(config, specs)

    async def start_and_stop() -> None:
        async with running:
            states = {name: p["state"] for name, p in running.status()["plugins"].items()}
            assert set(states.values()) <= {"enabled", "disabled"}, states
            running.cancel()  # no grace needed: nothing of value runs yet

    trio.run(start_and_stop)


def _run_console(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    assert commands, "a console block shows at least one $ command"
    # the runner would set up logging once per process; here it is the test's
    monkeypatch.setattr(kernel.cli.commands.logging, "basicConfig", lambda **_: None)
    for command, expected in commands:
        words = shlex.split(command)
        assert words[0] == "kernel", f"{block.name}: only kernel commands run here"
        result = CliRunner().invoke(main, words[1:])
        assert result.exit_code == (2 if any(e.startswith("error:") for e in expected) else 0), (
            command,
            result.output,
        )
        if expected:
            assert result.output.splitlines() == expected, command


@pytest.mark.parametrize("block", CODE_BLOCKS, ids=lambda block: block.name)
def test_block_runs_as_written(
    block: Block,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _check_syntax(block)
    if block.fragment_reason:
        pytest.skip(f"fragment: {block.fragment_reason}")
    if block.flags == "pytest":
        _run_pytest(block, workdir)
        return
    if block.language == "toml":
        _start_and_stop(block, workdir)
        return
    with virtual_time(monkeypatch, forever="sleep_forever()" in block.code):
        if block.language == "python":
            _run_python(block, capsys)
        elif block.language == "console":
            _run_console(block, monkeypatch)


# -- what the pages cite --------------------------------------------------------------

_CITED_PATH = re.compile(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|md|toml|txt|cfg|ini|sql))`")
_LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)#\s]+)")
_WRITTEN_BY_THE_READER = {"observability_demo.py", "test_dict_storage.py"}


@pytest.mark.parametrize("page", [*PAGES, ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_every_file_a_page_cites_is_in_the_repository(page: Path) -> None:
    """A path in backquotes (``kernel/urls.py``) is relative to the
    repository's root; a link is relative to the page. Paths a page asks the
    reader to create are the exception."""
    text = page.read_text()
    missing = [
        path
        for path in _CITED_PATH.findall(text)
        if not (ROOT / path).exists()
        and not (page.parent / path).exists()
        and Path(path).name not in _WRITTEN_BY_THE_READER
    ]
    missing += [link for link in _LINK.findall(text) if not (page.parent / link).exists()]
    assert missing == []

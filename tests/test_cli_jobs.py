"""`kernel jobs`: listings with paging, show, retry, cancel, purge-dead; one-line errors."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result

from kernel.cli import main
from kernel.cli.jobs import error_summary
from kernel.jobs.record import JobRecord, JobState
from kernel.storage.sqlite import SQLiteStorage

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "tasks.py", line 3, in send\n'
    "    raise ValueError('smtp said no')\n"
    "ValueError: smtp said no\n"
)


async def _fill(path: Path, *, queued: int = 0, dead: int = 0, running: int = 0) -> None:
    """Jobs job-q00.., job-r00.. (running) and job-d00.. (dead, died at T0 + i hours)."""
    async with await SQLiteStorage.open(path) as store:
        for i in range(queued):
            await store.enqueue(
                JobRecord(id=f"job-q{i:02}", task="report", priority=i, run_at=T0, enqueued_at=T0)
            )
        for i in range(running):
            await store.enqueue(
                JobRecord(id=f"job-r{i:02}", task="sync", queue="io", run_at=T0, enqueued_at=T0)
            )
            await store.claim("io", worker="w1", now=T0, lease=timedelta(days=9999))
        for i in range(dead):
            await store.enqueue(
                JobRecord(id=f"job-d{i:02}", task="mail", queue="mail", run_at=T0, enqueued_at=T0)
            )
            [job] = await store.claim("mail", worker="w1", now=T0, lease=timedelta(minutes=1))
            await store.bury(job.id, worker="w1", error=TRACEBACK, now=T0 + timedelta(hours=i))


def fill(path: Path, **counts: int) -> None:
    trio.run(lambda: _fill(path, **counts))


def stored(path: Path) -> dict[str, JobRecord]:
    async def read() -> dict[str, JobRecord]:
        async with await SQLiteStorage.open(path) as store:
            return {job.id: job for job in await store.list_jobs(limit=10_000)}

    return trio.run(read)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def run(*args: str, store: Path | None = None, input: str | None = None) -> Result:
    words = list(args) + ([] if store is None else ["--store", f"sqlite:///{store}"])
    return CliRunner().invoke(main, words, input=input)


def ids(result: Result) -> list[str]:
    return [line.split()[0] for line in result.stdout.splitlines()[1:] if line.startswith("job-")]


def assert_one_error_line(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


# -- listings ---------------------------------------------------------------------


def test_ls_prints_a_table_of_every_job(db: Path) -> None:
    fill(db, queued=2, running=1, dead=1)
    result = run("jobs", "ls", store=db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "TASK", "QUEUE", "STATE", "PRIORITY", "ATTEMPTS", "RUN", "AT", "LAST", "ERROR"
    ]  # fmt: skip
    assert ids(result) == ["job-d00", "job-q00", "job-q01", "job-r00"]
    assert lines[1].split() == [
        "job-d00", "mail", "mail", "dead", "0", "1", "2024-01-01T00:00:00+00:00",
        "ValueError:", "smtp", "said", "no",
    ]  # fmt: skip
    assert lines[3].split()[:6] == ["job-q01", "report", "default", "queued", "1", "0"]
    assert lines[3].rstrip().endswith("-")
    assert "more jobs follow" not in result.stdout


def test_ls_filters_by_state_and_queue(db: Path) -> None:
    fill(db, queued=2, running=1, dead=2)
    assert ids(run("jobs", "ls", "--state", "running", store=db)) == ["job-r00"]
    assert ids(run("jobs", "ls", "--state", "DEAD", store=db)) == ["job-d00", "job-d01"]
    assert ids(run("jobs", "ls", "--queue", "default", store=db)) == ["job-q00", "job-q01"]
    result = run("jobs", "ls", "--state", "succeeded", store=db)
    assert result.exit_code == 0
    assert result.stdout == "no jobs\n"


def test_paging_hint_is_the_exact_command_for_the_rest(db: Path) -> None:
    fill(db, queued=5)
    first = run("jobs", "ls", "--state", "queued", "--limit", "2", store=db)
    assert first.exit_code == 0, first.output
    assert ids(first) == ["job-q00", "job-q01"]
    hint = first.stdout.splitlines()[-1]
    prefix = "more jobs follow; next page: "
    assert hint.startswith(prefix)
    words = shlex.split(hint.removeprefix(prefix))
    assert words[:2] == ["kernel", "jobs"]
    assert words[-2:] == ["--after", "job-q01"]
    assert "--limit" in words
    assert "--state" in words

    second = CliRunner().invoke(main, words[1:])
    assert ids(second) == ["job-q02", "job-q03"]
    words = shlex.split(second.stdout.splitlines()[-1].removeprefix(prefix))
    third = CliRunner().invoke(main, words[1:])
    assert ids(third) == ["job-q04"]
    assert "more jobs follow" not in third.stdout  # exactly a page left: no empty page offered


def test_a_full_last_page_gives_no_hint_and_after_the_end_says_so(db: Path) -> None:
    fill(db, queued=2)
    result = run("jobs", "ls", "--limit", "2", store=db)
    assert ids(result) == ["job-q00", "job-q01"]
    assert "more jobs follow" not in result.stdout
    assert run("jobs", "ls", "--after", "job-q01", store=db).stdout == "no more jobs\n"


def test_dead_lists_the_dead_letters_and_pages(db: Path) -> None:
    fill(db, queued=1, dead=3)
    result = run("jobs", "dead", "--limit", "2", store=db)
    assert result.exit_code == 0, result.output
    assert ids(result) == ["job-d00", "job-d01"]
    words = shlex.split(result.stdout.splitlines()[-1].split(": ", 1)[1])
    assert words[:3] == ["kernel", "jobs", "dead"]
    assert ids(CliRunner().invoke(main, words[1:])) == ["job-d02"]


def test_the_store_can_come_from_a_config_file(db: Path, tmp_path: Path) -> None:
    fill(db, dead=1)
    config = tmp_path / "kernel.toml"
    config.write_text(f'[kernel]\nstorage = "sqlite:///{db}"\n')
    result = run("jobs", "dead", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert ids(result) == ["job-d00"]


# -- one job ----------------------------------------------------------------------


def test_show_prints_every_field_and_the_whole_traceback(db: Path) -> None:
    fill(db, dead=1)
    result = run("jobs", "show", "job-d00", store=db)
    assert result.exit_code == 0, result.output
    fields = dict(
        line.split(":", 1) for line in result.stdout.splitlines() if not line.startswith("  ")
    )
    assert set(fields) == set(JobRecord(task="t", run_at=T0, enqueued_at=T0).to_json())
    assert fields["state"].strip() == "dead"
    assert fields["args"].strip() == "[]"
    assert fields["finished_at"].strip() == "2024-01-01T00:00:00+00:00"
    assert "  ValueError: smtp said no" in result.stdout
    assert "  Traceback (most recent call last):" in result.stdout


def test_show_json(db: Path) -> None:
    fill(db, queued=1)
    result = run("jobs", "show", "job-q00", "--json", store=db)
    assert result.exit_code == 0
    assert JobRecord.from_json(json.loads(result.stdout)).id == "job-q00"


def test_retry_puts_a_dead_job_back(db: Path) -> None:
    fill(db, dead=2)
    result = run("jobs", "retry", "job-d01", store=db)
    assert result.exit_code == 0, result.output
    assert "job-d01 (mail) requeued" in result.stdout
    jobs = stored(db)
    assert jobs["job-d01"].state is JobState.queued
    assert jobs["job-d01"].attempts == 0
    assert jobs["job-d00"].state is JobState.dead


def test_retry_of_a_job_that_is_not_dead_names_its_state(db: Path) -> None:
    fill(db, queued=1, running=1)
    assert_one_error_line(run("jobs", "retry", "job-r00", store=db), 1, "running", "not dead")
    assert_one_error_line(run("jobs", "retry", "job-q00", store=db), 1, "queued")
    assert stored(db)["job-r00"].state is JobState.running


def test_cancel_a_queued_and_a_running_job(db: Path) -> None:
    fill(db, queued=1, running=1, dead=1)
    result = run("jobs", "cancel", "job-q00", store=db)
    assert result.exit_code == 0, result.output
    assert "cancelled (was queued)" in result.stdout
    assert "cancelled (was running)" in run("jobs", "cancel", "job-r00", store=db).stdout
    jobs = stored(db)
    assert jobs["job-q00"].state is jobs["job-r00"].state is JobState.cancelled
    assert_one_error_line(run("jobs", "cancel", "job-d00", store=db), 1, "already dead")
    assert_one_error_line(run("jobs", "cancel", "job-q00", store=db), 1, "already cancelled")


# -- purge-dead -------------------------------------------------------------------


def test_purge_dead_with_yes(db: Path) -> None:
    fill(db, queued=1, dead=3)
    result = run("jobs", "purge-dead", "--yes", store=db)
    assert result.exit_code == 0, result.output
    assert result.stdout == "purged 3 dead job(s)\n"
    assert set(stored(db)) == {"job-q00"}


def test_purge_dead_older_than_keeps_recent_ones(db: Path) -> None:
    fill(db, dead=1)
    result = run("jobs", "purge-dead", "--older-than", "36500d", "--yes", store=db)
    assert result.stdout == "purged 0 dead job(s)\n"
    assert run("jobs", "purge-dead", "--older-than", "1d", "--yes", store=db).exit_code == 0
    assert stored(db) == {}


def test_purge_dead_asks_first_and_a_no_deletes_nothing(db: Path) -> None:
    fill(db, dead=2)
    result = run("jobs", "purge-dead", store=db, input="n\n")
    assert "delete 2 dead job(s)" in result.stdout
    assert_one_error_line(result, 1, "nothing purged")
    assert set(stored(db)) == {"job-d00", "job-d01"}
    result = run("jobs", "purge-dead", store=db, input="y\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("purged 2 dead job(s)\n")
    assert stored(db) == {}


def test_purge_dead_with_nothing_to_purge_does_not_ask(db: Path) -> None:
    fill(db, queued=1)
    result = run("jobs", "purge-dead", store=db)
    assert result.exit_code == 0
    assert result.stdout == "no dead jobs to purge\n"


# -- errors -----------------------------------------------------------------------


def test_unknown_job_is_not_found(db: Path) -> None:
    fill(db, queued=1)
    for command in ("show", "retry", "cancel"):
        assert_one_error_line(run("jobs", command, "nope", store=db), 1, "no job 'nope'")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["jobs", "show", "bad\x01id"], ["ID", "U+0001"]),
        (["jobs", "retry", "x" * 300], ["ID", "bytes"]),
        (["jobs", "ls", "--after", "a\nb"], ["--after"]),
        (["jobs", "ls", "--state", "zombie"], ["--state", "zombie"]),
        (["jobs", "ls", "--limit", "0"], ["--limit"]),
        (["jobs", "purge-dead", "--older-than", "soon", "--yes"], ["--older-than"]),
    ],
)
def test_bad_arguments_are_usage_errors(db: Path, args: list[str], fragments: list[str]) -> None:
    fill(db)
    assert_one_error_line(run(*args, store=db), 2, *fragments)


@pytest.mark.parametrize(
    ("store", "fragments"),
    [
        ("memory://", ["memory://", "across processes"]),
        ("sqlite://:memory:", ["in-memory"]),
        ("sqlite://host/x.db", ["invalid adapter URL"]),
        ("sqlite:///does/not/exist.db", ["no SQLite database at"]),
        ("nosuch://x", ["no storage adapter for scheme 'nosuch'"]),
        ("not a url", ["not a url"]),
    ],
)
def test_bad_stores_are_usage_errors(store: str, fragments: list[str]) -> None:
    assert_one_error_line(run("jobs", "ls", "--store", store), 2, *fragments)


def test_a_store_is_required_and_only_one(db: Path, tmp_path: Path) -> None:
    assert_one_error_line(run("jobs", "dead"), 2, "--store")
    fill(db)
    assert_one_error_line(run("jobs", "dead", "--config", "x.toml", store=db), 2, "not both")
    assert_one_error_line(run("jobs", "dead", "--config", str(tmp_path / "no.toml")), 2)
    config = tmp_path / "kernel.toml"
    config.write_text('[kernel]\nstorage = "memory://"\n')
    assert_one_error_line(run("jobs", "dead", "--config", str(config)), 2, "memory://")


def test_a_file_that_is_not_sqlite_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    assert_one_error_line(run("jobs", "ls", store=path), 1, "SQLite")


def test_error_summary() -> None:
    assert error_summary(None) == "-"
    assert error_summary(TRACEBACK) == "ValueError: smtp said no"
    assert error_summary("max attempts (3) reached: " + TRACEBACK) == (
        "max attempts (3) reached: ValueError: smtp said no"
    )
    assert error_summary("first\nsecond") == "first"
    assert error_summary("x" * 100, width=10) == "xxxxxxx..."


# -- JSON, escaping, the environment -----------------------------------------------


def test_ls_and_dead_json_page_without_payloads(db: Path) -> None:
    fill(db, queued=3, dead=1)
    result = run("jobs", "ls", "--json", "--limit", "2", store=db)
    assert result.exit_code == 0, result.output
    page = json.loads(result.stdout)
    assert [job["id"] for job in page["jobs"]] == ["job-d00", "job-q00"]
    assert page["next_after"] == "job-q00"
    assert "args" not in page["jobs"][0]
    assert page["jobs"][0]["last_error"] == TRACEBACK  # exact, not summarised
    rest = json.loads(run("jobs", "ls", "--json", "--after", "job-q00", store=db).stdout)
    assert [job["id"] for job in rest["jobs"]] == ["job-q01", "job-q02"]
    assert rest["next_after"] is None
    dead = json.loads(run("jobs", "dead", "--json", store=db).stdout)
    assert [job["id"] for job in dead["jobs"]] == ["job-d00"]
    empty = run("jobs", "ls", "--json", "--state", "succeeded", store=db)
    assert json.loads(empty.stdout) == {"jobs": [], "next_after": None}


async def _bury_with(path: Path, error: str) -> None:
    async with await SQLiteStorage.open(path) as store:
        await store.enqueue(JobRecord(id="job-x", task="evil", run_at=T0, enqueued_at=T0))
        [job] = await store.claim("default", worker="w1", now=T0, lease=timedelta(minutes=1))
        await store.bury(job.id, worker="w1", error=error, now=T0)


def test_control_characters_are_escaped_in_human_output_only(db: Path) -> None:
    error = "boom \x1b[31mred\x1b[0m\rover\x07 \u202eevil\nsecond line\n"
    trio.run(_bury_with, db, error)
    shown = run("jobs", "show", "job-x", store=db)
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.stdout
    assert "\r" not in shown.stdout
    assert "\u202e" not in shown.stdout
    assert "  boom \\x1b[31mred\\x1b[0m\\x0dover\\x07 \\u202eevil" in shown.stdout
    assert "  second line" in shown.stdout  # a traceback keeps its lines
    listed = run("jobs", "dead", store=db)
    assert "\x1b" not in listed.stdout
    assert "boom \\x1b[31mred" in listed.stdout
    exact = json.loads(run("jobs", "show", "job-x", "--json", store=db).stdout)
    assert exact["last_error"] == error


def test_the_store_can_come_from_kernel_store(db: Path, tmp_path: Path) -> None:
    fill(db, dead=3)
    env = {"KERNEL_STORE": f"sqlite:///{db}"}
    result = CliRunner().invoke(main, ["jobs", "dead", "--limit", "2"], env=env)
    assert ids(result) == ["job-d00", "job-d01"]
    assert result.stdout.splitlines()[-1].endswith(": kernel jobs dead --limit 2 --after job-d01")
    config = tmp_path / "kernel.toml"
    config.write_text('[kernel]\nstorage = "memory://"\n')
    explicit = CliRunner().invoke(main, ["jobs", "dead", "--config", str(config)], env=env)
    assert_one_error_line(explicit, 2, "memory://")  # --config wins over the environment


def test_without_a_store_the_runners_kernel_db_here_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KERNEL_STORE", raising=False)
    missing = CliRunner().invoke(main, ["jobs", "ls"])
    assert_one_error_line(missing, 2, "no job store", "there is no ./kernel.db")
    assert not (tmp_path / "kernel.db").exists()  # nothing made by asking
    fill(tmp_path / "kernel.db", dead=3)
    found = CliRunner().invoke(main, ["jobs", "dead", "--limit", "2"])
    assert found.exit_code == 0, found.output
    assert ids(found) == ["job-d00", "job-d01"]
    next_page = found.stdout.splitlines()[-1]
    assert next_page.endswith(": kernel jobs dead --limit 2 --after job-d01")

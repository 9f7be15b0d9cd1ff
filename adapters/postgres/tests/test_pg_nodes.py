"""Real processes on one database: three kernel nodes
(``kernel.testing.node``, driven by ``kernel.testing.cluster``) work
thousands of jobs and two fast schedules from one PostgreSQL schema, while
one node is killed with SIGKILL, or while the server restarts.

Afterwards every job has succeeded and run at least once, the runs repeated
are bounded by what was in flight at the failure, the killed node's jobs
were reclaimed when their lease ran out and finished elsewhere, every slot
of a schedule became exactly one job, and the fast schedule's slots form
an unbroken grid (none lost). A third test measures how fast an idle
cluster starts a job another process enqueued: nothing in the queue polls,
so that it starts at all is the LISTEN/NOTIFY wake-up at work.

Real processes and real time: the waits are the scenario, and nothing is
asserted about timing except hang guards (and the wake-up's generous bound).

The server restart is done on a private PostgreSQL instance (``initdb`` in
a temporary directory), not on the tests' shared server: restarting that
one would break every connection the other tests hold, the session's
``admin`` connection included, and any test running next to this one.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import attrs
import psycopg
import pytest
import trio
from pg_helpers import Admin, with_options

from kernel.errors import StorageError
from kernel.testing.cluster import (
    DONE_TIMEOUT,
    NODES,
    POLL,
    READY_TIMEOUT,
    WAKE_BOUND,
    Row,
    check_after_kill,
    check_idle_wakeups,
    check_outcome,
    count_done,
    enqueue_work,
    kill_one_mid_run,
    label,
    live_work,
    most_unsettled,
    open_cluster,
    read_log,
    started_by,
    stop_survivors,
    wait_for,
    wait_until,
    wait_until_done,
)
from kernel.testing.node import (
    CONCURRENCY,
    SCHEDULES,
    TICK_CONCURRENCY,
    TICKS,
    wall_us,
)
from kernel_postgres import open_storage, upgrade
from kernel_postgres._url import quote_identifier

ADAPTER_LOGS = ["kernel_postgres"]  # the nodes log its reconnections


def read_rows(connection: Admin, schema: str) -> list[Row]:
    rows = connection.execute(
        "SELECT id, queue, state, worker, attempts, schedule, fire_time, last_error "
        f"FROM {quote_identifier(schema)}.kernel_jobs"
    ).fetchall()
    return [Row(*row) for row in cast("list[tuple[Any, ...]]", rows)]


def read_slots(connection: Admin, schema: str) -> list[tuple[str, int]]:
    rows = connection.execute(
        f"SELECT schedule, fire_time FROM {quote_identifier(schema)}.kernel_schedule_slots"
    ).fetchall()
    return cast("list[tuple[str, int]]", rows)


async def wait_ticks_done(connection: Admin, schema: str, cut_us: int) -> None:
    """Until every schedule job of a slot up to ``cut_us`` has finished.

    First until every schedule has claimed a slot past the cut: a slot fired
    just before the cut may not be stored yet, but a slot's job is stored
    with its claim (one transaction) and each node feeds a schedule's slots
    in order, so once a slot past the cut is claimed every job up to the
    cut is there."""
    await wait_until(
        lambda: all(
            any(s == name and f > cut_us for s, f in read_slots(connection, schema))
            for name in SCHEDULES
        ),
        within=DONE_TIMEOUT,
    )
    sql = (
        f"SELECT count(*) FROM {quote_identifier(schema)}.kernel_jobs WHERE queue = %s "
        "AND state IN ('queued', 'running') AND fire_time <= %s"
    )
    await wait_until(
        lambda: connection.execute(sql, (TICKS, cut_us)).fetchone() == (0,), within=DONE_TIMEOUT
    )


# -- a private server, to restart ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_bin() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and (Path(found.stdout.strip()) / "initdb").exists():
            return Path(found.stdout.strip())
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", Path(path).parent.parent.name)],
        reverse=True,
    )
    if versions:
        return Path(versions[0]).parent
    initdb = shutil.which("initdb")
    return None if initdb is None else Path(initdb).parent


@attrs.frozen
class PrivateServer:
    """A PostgreSQL instance of this test's own (its binaries refuse to run
    as root: as root, they run as the ``postgres`` user)."""

    bin: Path
    home: Path
    port: int
    run_as: str | None

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def command(self, program: str, *args: str) -> list[str]:
        argv = [str(self.bin / program), *args]
        return argv if self.run_as is None else ["runuser", "-u", self.run_as, "--", *argv]

    def pg_ctl(self, *args: str) -> list[str]:
        return self.command("pg_ctl", "-D", str(self.data), *args)

    def start_command(self) -> list[str]:
        options = (
            f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=60"
        )
        return self.pg_ctl("-l", str(self.home / "server.log"), "-o", options, "-w", "start")


def _unavailable(reason: str) -> None:
    if os.environ.get("KERNEL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (KERNEL_REQUIRE_SERVICES=1 requires it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    """A fresh PostgreSQL (initdb, start), stopped and deleted afterwards."""
    bin_dir = _server_bin()
    if bin_dir is None:
        _unavailable("no PostgreSQL server binaries (initdb, pg_ctl) to run a private server")
    assert bin_dir is not None
    run_as = None
    home = Path(tempfile.mkdtemp(prefix="kernel-pg-nodes-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            user = None
        if user is None or shutil.which("runuser") is None:
            shutil.rmtree(home)
            _unavailable("running as root without a 'postgres' user (and runuser) to run a server")
        assert user is not None
        run_as = user.pw_name
        os.chown(home, user.pw_uid, user.pw_gid)
    server = PrivateServer(bin_dir, home, _free_port(), run_as)
    try:
        made = subprocess.run(
            server.command(
                "initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            ),
            capture_output=True,
            text=True,
        )  # fmt: skip
        if made.returncode != 0:
            _unavailable(f"initdb failed: {made.stderr.strip()}")
        started = subprocess.run(server.start_command(), capture_output=True, text=True)
        assert started.returncode == 0, started.stdout + started.stderr
        yield server
    finally:
        subprocess.run(server.pg_ctl("-m", "immediate", "stop"), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


async def restart(server: PrivateServer, down: float) -> float:
    """Stop the server (fast: sessions are ended), keep it down ``down``
    seconds, start it, and wait until it accepts connections."""
    began = time.monotonic()
    for command, pause in (
        (server.pg_ctl("-m", "fast", "-w", "stop"), down),
        (server.start_command(), 0),
    ):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        await trio.sleep(pause)
    return time.monotonic() - began


# -- the tests -----------------------------------------------------------------


@pytest.mark.slow
async def test_a_node_killed_mid_run_loses_nothing(
    pg_server: str, schema: str, app_name: str, admin: Admin, pg_url: str, tmp_path: Path
) -> None:
    before, during = 1500, 1000
    labels = [label(n) for n in range(before + during)]
    node_url = with_options(pg_server, schema=schema, pool_size=6, application_name=app_name)
    began = time.monotonic()
    async with (
        await open_storage(pg_url) as storage,
        open_cluster(node_url, tmp_path, log_info=ADAPTER_LOGS) as cluster,
    ):
        victim, killed_at = await kill_one_mid_run(storage, cluster, labels, before=before)
        await wait_until_done(storage, cluster)
        cut_us = wall_us()
        await wait_ticks_done(admin, schema, cut_us)
        stderr = await stop_survivors(cluster, victim)
    print(f"run took {time.monotonic() - began:.1f} s")
    starts, dones = read_log(cluster.log)
    check_after_kill(
        rows=read_rows(admin, schema),
        slots=read_slots(admin, schema),
        starts=starts,
        dones=dones,
        labels=set(labels),
        cut_us=cut_us,
        victim=victim.name,
        killed_at=killed_at,
    )
    assert " ERROR " not in stderr, stderr


@pytest.mark.slow
async def test_the_cluster_lives_through_a_server_restart(
    private_server: PrivateServer, tmp_path: Path
) -> None:
    before, after = 2000, 500
    labels = [label(n) for n in range(before + after)]
    schema = "kernel_nodes"
    url = with_options(private_server.url, schema=schema, pool_size=6)
    await upgrade(url)
    began = time.monotonic()
    async with (
        await open_storage(url) as storage,
        open_cluster(url, tmp_path, log_info=ADAPTER_LOGS) as cluster,
    ):
        await enqueue_work(storage, labels[:before])
        await cluster.start(NODES)
        await wait_until(
            lambda: count_done(cluster.log).total() >= before // 4, within=DONE_TIMEOUT, every=0.01
        )
        took = await restart(private_server, down=2.0)
        print(f"server restarted in {took:.1f} s")
        assert all(node.alive for node in cluster.nodes), cluster.all_stderr()
        with trio.fail_after(DONE_TIMEOUT):
            while True:  # the parent's pool reconnects as the nodes' do
                try:
                    await live_work(storage)
                    break
                except StorageError:
                    await trio.sleep(POLL)
        await enqueue_work(storage, labels[before:])
        await wait_until_done(storage, cluster)
        cut_us = wall_us()
        # each node listens again (its wake-ups came back), after its backoff
        await wait_until(
            lambda: all(
                re.search(r"listening on \S+ again", cluster.stderr(node)) for node in cluster.nodes
            ),
            within=READY_TIMEOUT,
        )
        # and an idle queue wakes for a new job again
        labels.append("after-restart")
        await enqueue_work(storage, labels[-1:])
        await wait_for(functools.partial(started_by, cluster.log, labels[-1]), within=WAKE_BOUND)
        await wait_until_done(storage, cluster)
        with psycopg.connect(private_server.url, autocommit=True) as connection:
            await wait_ticks_done(connection, schema, cut_us)
            # the nodes lived through it: still alive, and stop cleanly
            assert all(node.alive for node in cluster.nodes), cluster.all_stderr()
            codes = await cluster.stop()
            assert set(codes.values()) == {0}, (codes, cluster.all_stderr())
            rows = read_rows(connection, schema)
            slots = read_slots(connection, schema)
        stderr = cluster.all_stderr()
    print(f"run took {time.monotonic() - began:.1f} s")
    lost = [line for line in stderr.splitlines() if "lost" in line or "failed" in line]
    print(f"{len(lost)} node log lines about the outage")
    reaped = [row.id for row in rows if row.last_error is not None]
    print(f"{len(reaped)} job(s) reaped after their lease ran out: {reaped}")
    starts, dones = read_log(cluster.log)
    # every node may have had its running jobs' leases run out while the
    # server was down: those may run again, on any node
    check_outcome(
        rows=rows,
        slots=slots,
        starts=starts,
        dones=dones,
        labels=set(labels),
        cut_us=cut_us,
        suspects=None,
        max_repeats=NODES * most_unsettled(CONCURRENCY),
        max_tick_repeats=NODES * most_unsettled(TICK_CONCURRENCY),
    )
    # a node logs what it survived; its only errors are outcomes it could not
    # store (the connection died under the call): those jobs were reaped and
    # ran again, within the bound above
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    print(f"{len(errors)} outcome(s) not stored: {errors}")
    assert all("could not record its outcome" in line for line in errors), errors


async def test_an_idle_cluster_starts_a_new_job_at_once(
    pg_server: str, schema: str, app_name: str, pg_url: str, tmp_path: Path
) -> None:
    rounds = 10
    node_url = with_options(pg_server, schema=schema, pool_size=2, application_name=app_name)
    async with (
        await open_storage(pg_url) as storage,
        open_cluster(node_url, tmp_path, log_info=ADAPTER_LOGS) as cluster,
    ):
        await cluster.start(NODES, "--no-schedules")
        # idle, and every node listening: `JobQueue.run` reports started before
        # its LISTEN is active, and a job enqueued in between waits for the
        # next wake-up (on an idle cluster, for ever)
        await trio.sleep(1.0)
        print(await check_idle_wakeups(storage, cluster, rounds=rounds, pause=0.2))

"""The leases of the jobs this process holds, and the reaping of others'.

A claimed job is ours until its lease ends; we renew it every ``heartbeat``
while the job waits in a buffer, runs, or waits for its outcome to be
stored. A lease is only as good as the renewals, and a renewal that runs on
the event loop stops when the loop is blocked (synchronous code in an async
task, a CPU-bound job): another worker would reap the job and run it a
second time while the first run goes on. So when the store can renew from
any thread (`LeaseRenewer`), a keeper thread watches the loop's renewals
and, when they are overdue, renews from the thread itself: a lease is then
lost only when the process is (SIGKILL, a crash, a frozen VM), which is
what users assume a lease means. The loop's own renewals stay the normal
path (they follow the kernel's clock, so tests under `trio.testing.MockClock`
keep their leases). Stores without it renew from the loop only, and a loop
blocked longer than ``lease - heartbeat`` loses its leases (the watchdog in
`kernel.observe.watchdog` says so).

A job the store says we no longer hold (reaped, or cancelled elsewhere) is
reported to the workers, which stop it and record nothing for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import trio

from kernel.errors import StorageError
from kernel.observe.storage_watch import StorageWatch
from kernel.ports import JobStore
from kernel.time.clock import Clock
from kernel.time.scheduler import Scheduler

__all__ = ["SLOT_RETENTION", "LeaseKeeper", "LeaseRenewer", "reap_expired"]

log = logging.getLogger("kernel.queue")


@runtime_checkable
class LeaseRenewer(Protocol):
    """A store that can renew leases from any thread, blocking it (its own
    connection): what lets leases outlive a blocked event loop."""

    def renew_leases_blocking(
        self, job_ids: Sequence[str], *, worker: str, lease_until: datetime
    ) -> set[str]:
        """`JobStore.heartbeat`, callable from a thread that is not trio's."""
        ...


class LeaseKeeper:
    """Renews the leases of the jobs this worker holds; see the module
    docstring. ``lost(ids)`` is called on the trio thread for the jobs the
    store says we no longer hold."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        *,
        worker: str,
        lease: timedelta,
        heartbeat: timedelta,
        lost: Callable[[set[str]], None],
        watch: StorageWatch | None = None,
    ) -> None:
        self.store = store
        self.watch = watch
        self.scheduler = scheduler
        self.worker = worker
        self.lease = lease
        self.heartbeat = heartbeat
        self.thread_renewals = 0  # how often the loop was too late and the thread renewed
        self._lost = lost
        self._held: dict[str, float] = {}  # job id -> trio time its lease ends
        self._stop = threading.Event()
        # the loop's last beat: the kernel's wall time, trio time and the
        # thread's monotonic time then (the thread cannot ask trio)
        self._loop_beat = time.monotonic()
        self._then: tuple[datetime, float, float] = (datetime.now(UTC), 0.0, self._loop_beat)

    @property
    def clock(self) -> Clock:
        return self.scheduler.clock

    @property
    def threaded(self) -> bool:
        return isinstance(self.store, LeaseRenewer)

    def hold(self, job_ids: Sequence[str]) -> None:
        """We claimed these: their leases run from now."""
        until = trio.current_time() + self.lease.total_seconds()
        held = self._held
        for job_id in job_ids:
            held[job_id] = until

    def drop(self, job_id: str) -> None:
        """The outcome of ``job_id`` is stored (or given up): stop renewing."""
        self._held.pop(job_id, None)

    def lease_left(self, job_id: str) -> float:
        """Seconds until our lease of ``job_id`` ends if no renewal succeeds
        (0 for a job we do not hold)."""
        until = self._held.get(job_id)
        return 0.0 if until is None else max(0.0, until - trio.current_time())

    @property
    def held(self) -> int:
        return len(self._held)

    async def run(self) -> None:
        """Renew until cancelled (see the module docstring)."""
        self._beat()
        if not self.threaded:
            await self._renew_in_loop()
            return
        token = trio.lowlevel.current_trio_token()
        self._stop.clear()
        thread = threading.Thread(
            target=self._watch_from_thread, args=(token,), name="kernel lease keeper", daemon=True
        )
        thread.start()
        try:
            await self._renew_in_loop()
        finally:
            self._stop.set()

    async def _renew_in_loop(self) -> None:
        every = self.heartbeat.total_seconds()
        while True:
            await self.scheduler.sleep(every)
            wall, beat, _ = self._beat()
            ids = list(self._held)
            if not ids:
                continue
            try:
                held = await self.store.heartbeat(
                    ids, worker=self.worker, lease_until=wall + self.lease
                )
            except StorageError as exc:
                # the next beat may still be in time; if not, the jobs are reaped
                log.warning("renewing %d lease(s) failed: %s", len(ids), exc)
                if self.watch is not None:
                    self.watch.failed(exc)
                continue
            if self.watch is not None:
                self.watch.succeeded()
            self._renewed(ids, held, beat)
            lost = {job_id for job_id in ids if job_id not in held and job_id in self._held}
            if lost:
                self._lost(lost)

    def _watch_from_thread(self, token: trio.lowlevel.TrioToken) -> None:
        """Renew from this thread whenever the loop's renewals are overdue."""
        renewer = self.store
        assert isinstance(renewer, LeaseRenewer)
        every = self.heartbeat.total_seconds()
        while not self._stop.wait(every / 2):
            now = time.monotonic()
            if now - self._loop_beat < every * 1.5:
                continue  # the loop is keeping up
            ids = list(self._held.copy())  # a copy is atomic: the loop may be adding
            if not ids:
                continue
            wall, beat, then = self._then
            until = wall + timedelta(seconds=now - then) + self.lease
            try:
                held = renewer.renew_leases_blocking(ids, worker=self.worker, lease_until=until)
            except Exception as exc:  # the thread must outlive a failing store
                log.warning("renewing %d lease(s) from the keeper thread failed: %s", len(ids), exc)
                continue
            self.thread_renewals += 1
            self._renewed(ids, held, beat + (now - then))
            lost = {job_id for job_id in ids if job_id not in held}
            if lost:
                try:
                    token.run_sync_soon(self._report_lost, lost)
                except trio.RunFinishedError:
                    return

    def _beat(self) -> tuple[datetime, float, float]:
        """Note the loop's beat (on the trio thread)."""
        self._loop_beat = time.monotonic()
        self._then = (self.clock.now(), trio.current_time(), self._loop_beat)
        return self._then

    def _renewed(self, ids: list[str], held: set[str], started: float) -> None:
        """Leases renewed at trio time ``started`` now end a lease later."""
        until = started + self.lease.total_seconds()
        leases = self._held
        for job_id in ids:
            if job_id in held and job_id in leases:
                leases[job_id] = until

    def _report_lost(self, lost: set[str]) -> None:
        lost = {job_id for job_id in lost if job_id in self._held}
        if lost:
            self._lost(lost)


#: How long claimed schedule slots are remembered (`JobStore.prune_slots`):
#: a restarted schedule re-plans from its stored last fire, so older slots
#: are never asked for again.
SLOT_RETENTION = timedelta(days=1)
_PRUNE_EVERY = 3600.0


async def reap_expired(
    store: JobStore,
    scheduler: Scheduler,
    *,
    every: timedelta,
    woke: Callable[[], None],
    watch: StorageWatch | None = None,
) -> None:
    """Until cancelled, put back the jobs of workers that stopped renewing
    their leases (ours included, if we did), and prune old schedule slots
    hourly; ``woke()`` after reaping, so the queues claim them. The next
    claim buries those with no attempt left."""
    clock = scheduler.clock
    pruned_at = trio.current_time()
    while True:
        await scheduler.sleep(every.total_seconds())
        try:
            reaped = await store.reap_expired(clock.now())
            if trio.current_time() - pruned_at >= _PRUNE_EVERY:
                pruned_at = trio.current_time()
                await store.prune_slots(older_than=clock.now() - SLOT_RETENTION)
        except StorageError as exc:
            log.warning("reaping expired leases failed: %s", exc)
            if watch is not None:
                watch.failed(exc)
            continue
        if watch is not None:
            watch.succeeded()
        if reaped:
            log.warning("reaped %d job(s) with expired leases", len(reaped))
            woke()

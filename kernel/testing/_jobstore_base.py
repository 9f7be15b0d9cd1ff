"""What the job-store contract's tests share: the fixed times, the job
factory and the fixture a store's test class provides (private to
`kernel.testing`; `kernel.testing.jobstore_contract` is the public door)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from kernel.jobs.record import JobRecord
from kernel.ports import JSON, JobStore

__all__ = ["LEASE", "T0", "ContractBase", "StoreCall", "make_job", "seconds"]

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
"""The contract's "now": every time in the suite is an offset from it."""

LEASE = timedelta(seconds=30)
"""The lease the suite's claims take unless a test says otherwise."""


def make_job(*, at: timedelta = timedelta(0), **fields: Any) -> JobRecord:
    """A queued job of task ``"contract.task"`` due at ``T0 + at`` (and
    enqueued then), with ``fields`` overriding any field."""
    fields.setdefault("task", "contract.task")
    fields.setdefault("run_at", T0 + at)
    fields.setdefault("enqueued_at", fields["run_at"])
    return JobRecord(**fields)


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


StoreCall = Callable[[JobStore], Awaitable[object]]


class ContractBase:
    """The fixture and helpers every part of the contract uses."""

    timeout: ClassVar[float] = 30.0
    """Seconds before a concurrent test is failed as hung."""

    @pytest.fixture
    def job_store(self) -> JobStore:
        pytest.fail(
            f"{type(self).__name__} must define a `job_store` fixture yielding an empty "
            "store under test (see kernel.testing.jobstore_contract)"
        )

    async def snapshot(self, store: JobStore) -> list[dict[str, JSON]]:
        """Every job, as JSON, in id order: what "nothing changed" compares."""
        jobs: list[dict[str, JSON]] = []
        after: str | None = None
        while True:
            page = await store.list_jobs(limit=1000, after_id=after)
            if not page:
                return jobs
            jobs += [job.to_json() for job in page]
            after = page[-1].id

    async def claim_one(
        self, store: JobStore, *, worker: str = "w1", now: datetime = T0, queue: str = "default"
    ) -> JobRecord:
        claimed = await store.claim(queue, worker=worker, now=now, lease=LEASE)
        assert len(claimed) == 1, f"expected one job to claim, got {claimed}"
        return claimed[0]

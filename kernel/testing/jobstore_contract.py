"""The job-store contract: the tests every `kernel.jobs.record.JobStore` passes.

Subclass `JobStoreContract` in a test module and provide a ``job_store``
fixture yielding an open store (and closing it afterwards)::

    class TestSQLiteJobStore(JobStoreContract):
        @pytest.fixture
        async def job_store(self, tmp_path):
            async with await SQLiteStorage.open(tmp_path / "jobs.db") as store:
                yield store

Unlike the storage contract, these tests expect an **empty** store: they
count jobs, page through all of them and ask for the earliest due time.
Every time is passed in explicitly (a fixed `T0` plus offsets), so the suite
neither sleeps nor reads a clock; ``timeout`` only bounds the concurrent
tests, in real seconds, in case a store hangs.
"""

from __future__ import annotations

from kernel.testing._jobstore_base import LEASE, T0, make_job
from kernel.testing._jobstore_lifecycle import LifecycleContract
from kernel.testing._jobstore_queue import QueueContract

__all__ = ["LEASE", "T0", "JobStoreContract", "make_job"]


class JobStoreContract(QueueContract, LifecycleContract):
    """The job-store contract; subclass it and define a ``job_store`` fixture."""

"""Storing a new job with an instrumentation watching (`kernel.observe.instrument`).

Shared by `JobQueue.enqueue` and the schedule feeder, which store jobs each
their own way; only taken when an instrumentation is registered, so the
plain path stays one ``is None`` test.
"""

from __future__ import annotations

from kernel.jobs.record import JobRecord, check_fields, derive_record
from kernel.observe.instrument import Instrumentation
from kernel.ports import JobStore

__all__ = ["enqueue_observed"]


async def enqueue_observed(
    store: JobStore, job: JobRecord, instrumentation: Instrumentation
) -> tuple[JobRecord, bool]:
    """``store.enqueue(job)`` inside ``instrumentation.enqueue(job)``, with
    the headers it yields stored on the job (checked as any header is)."""
    with instrumentation.enqueue(job) as headers:
        if headers:
            job = derive_record(job, check_fields(headers={**job.headers, **headers}))
        return await store.enqueue(job)

"""One worker of a queue's pool: a long-lived task that takes claimed jobs
from the queue's local buffer and runs their attempts
(`kernel.jobs.attempt`), under one cancel scope per worker rather than a
task and a scope per job. `kernel.jobs.workers` spawns and feeds them."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta

import attrs
import trio

from kernel.jobs.attempt import JobRunner, Plan, Run, Verdict
from kernel.jobs.queue_state import QueueState
from kernel.jobs.record import JobRecord

__all__ = ["run_worker"]


@attrs.define(eq=False)
class _Current:
    """The job a worker has in hand, and how far it got."""

    run: Run
    plan: Plan | None = None
    error: Exception | None = None


async def run_worker(
    state: QueueState,
    index: int,
    runner: JobRunner,
    done: Callable[[QueueState, Run, Verdict], None],
) -> None:
    """One worker: run jobs from the buffer until fewer workers than
    ``index + 1`` are wanted. The job's call runs under the worker's
    cancel scope (its timeout is the scope's deadline; `Run.cancel`
    cancels it); a cancelled scope is left, the job judged outside it,
    and a new scope entered: a scope per worker, not per job."""
    current: _Current | None = None
    try:
        while True:
            with trio.CancelScope() as scope:
                streak = 0
                while True:
                    job = await _take(state, index)
                    if job is None:
                        return
                    run = Run(job)
                    state.running[job.id] = run
                    if state.gauge is not None:
                        state.gauge.set(len(state.running))
                    current = _Current(run)
                    prepared = await runner.prepare(run)
                    if isinstance(prepared, Verdict):
                        done(state, run, prepared)
                        current = None
                        continue
                    current.plan = prepared
                    run.scope = scope
                    if prepared.timeout is not None:
                        scope.deadline = trio.current_time() + prepared.timeout
                    try:
                        await runner.call(prepared)
                    except Exception as error:
                        current.error = error
                    run.scope = None
                    if scope.cancel_called:
                        break  # judge it outside this scope, then take a new one
                    if prepared.timeout is not None:
                        scope.deadline = math.inf
                    verdict = await runner.finish(run, prepared, current.error, cut_short=False)
                    done(state, run, verdict)
                    current = None
                    streak += 1
                    if streak % 32 == 0:
                        await trio.lowlevel.checkpoint()  # let others run
            if current is not None and current.plan is not None:
                run = current.run
                verdict = await runner.finish(run, current.plan, current.error, cut_short=True)
                done(state, run, verdict)
                current = None
    except BaseException:
        if current is not None:
            state.running.pop(current.run.job.id, None)
            if not current.run.lost:
                # shutdown: the attempt was interrupted, not failed
                await runner.release(current.run.job, timedelta(0))
        raise
    finally:
        state.workers -= 1


async def _take(state: QueueState, index: int) -> JobRecord | None:
    """The next job of the buffer, waiting for one; None once this worker
    is no longer wanted."""
    while not state.buffer:
        if index >= state.config.concurrency:
            return None
        await state.ready.park()
    if index >= state.config.concurrency:
        state.ready.unpark()  # hand the job on to a worker that stays
        return None
    return state.buffer.popleft()

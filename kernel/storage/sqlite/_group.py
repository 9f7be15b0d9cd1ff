"""Group commit: calls that arrive while a batch is in the thread go
together in the next one (private to `kernel.storage.sqlite`).

A store call costs a thread hand-off and a commit whatever it writes, so
many small writes arriving together (completions from many workers, enqueues
from many tasks) share one of each. The first caller drives the batches,
shielded, since they hold other callers' writes; every caller gets its own
answer, or its own error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import attrs
import trio

__all__ = ["GroupCommit"]

Item = TypeVar("Item")
R = TypeVar("R")


@attrs.define(eq=False)
class _Pending(Generic[Item, R]):
    item: Item
    done: trio.Event = attrs.field(factory=trio.Event)
    result: R | BaseException | None = None
    taken: bool = False  # in a batch: it will be written whatever happens


class GroupCommit(Generic[Item, R]):
    """Submit items one by one; ``run(items)`` writes a batch and answers each
    item (a result or the exception that item raised), in order; an
    exception it raises itself is every item's answer."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[R | BaseException]]]) -> None:
        self._run = run
        self._waiting: list[_Pending[Item, R]] = []
        self._driving = False

    async def submit(self, item: Item) -> R:
        """Write ``item`` with the next batch; its answer. A call cancelled
        before its batch starts writes nothing (it is taken out); once its
        batch is in the thread it is written, and answered, whole."""
        await trio.lowlevel.checkpoint_if_cancelled()
        pending: _Pending[Item, R] = _Pending(item)
        self._waiting.append(pending)
        if not self._driving:
            await self._drive()
        try:
            await pending.done.wait()
        except trio.Cancelled:
            if not pending.taken:
                self._waiting.remove(pending)
                raise
            with trio.CancelScope(shield=True):
                await pending.done.wait()
        result = pending.result
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]

    async def _drive(self) -> None:
        self._driving = True
        try:
            with trio.CancelScope(shield=True):
                while self._waiting:
                    batch, self._waiting = self._waiting, []
                    for pending in batch:
                        pending.taken = True
                    try:
                        results: list[R | BaseException] | BaseException = await self._run(
                            [pending.item for pending in batch]
                        )
                    except Exception as error:
                        results = error
                    for index, pending in enumerate(batch):
                        pending.result = (
                            results if isinstance(results, BaseException) else results[index]
                        )
                        pending.done.set()
        finally:
            self._driving = False

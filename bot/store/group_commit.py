"""Group commit: the inputs of concurrent callers applied in one transaction.

A write costs a handful of database round trips whatever it carries, and under load
most of a request's time is spent waiting on them. So callers queue their input; the
first caller that finds no group in progress becomes the leader, applies everything
queued so far in one go, and hands each caller its own result. Callers arriving
meanwhile form the next group. Alone, a caller applies its input at once: no thread,
no delay, no waiting for company.

Every caller returns only after the transaction holding its input has committed, so
an acknowledged input is durable. When a group fails, its inputs are applied one by
one, so one bad input fails only its own caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

MAX_GROUP = 64


class _Slot(Generic[In, Out]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: In) -> None:
        self.item = item
        self.done = False
        self.result: Out | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[In, Out]):
    def __init__(
        self, apply: Callable[[Sequence[In]], Sequence[Out]], *, max_group: int = MAX_GROUP
    ) -> None:
        """APPLY takes inputs in arrival order and returns their results in that order,
        all written in one transaction."""
        self._apply = apply
        self._max_group = max_group
        self._cond = threading.Condition()
        self._queue: list[_Slot[In, Out]] = []
        self._leading = False
        self.groups = 0  # groups applied, for benchmarks and tests
        self.items = 0

    def submit(self, item: In) -> Out:
        slot: _Slot[In, Out] = _Slot(item)
        with self._cond:
            self._queue.append(slot)
            while not slot.done:
                if self._leading:
                    self._cond.wait()
                    continue
                group = self._queue[: self._max_group]
                del self._queue[: self._max_group]
                self._leading = True
                self._cond.release()
                try:
                    self._run(group)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _run(self, group: list[_Slot[In, Out]]) -> None:
        try:
            results = self._apply([slot.item for slot in group])
            if len(results) != len(group):  # pragma: no cover - a bug in APPLY
                raise RuntimeError(f"{len(results)} results for {len(group)} inputs")
        except Exception as error:
            if len(group) > 1:
                for slot in group:
                    self._run([slot])
                return
            group[0].error = error
        except BaseException as error:  # interrupted: nobody may be left waiting
            for slot in group:
                slot.error, slot.done = error, True
            raise
        else:
            for slot, result in zip(group, results, strict=True):
                slot.result = result
            self.groups += 1
            self.items += len(group)
        for slot in group:
            slot.done = True

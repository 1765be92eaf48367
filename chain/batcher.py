"""Group commit: many concurrent submitters, one sealer, so costs are paid per batch.

A batch closes `max_delay` seconds after its first item or when it holds `max_items` items or
`max_bytes` bytes, whichever comes first. Every submitter gets its own result or the batch's
error; when the batcher stops, everything still waiting is failed, never left hanging.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from .errors import LedgerClosed, LedgerError

R = TypeVar("R")
ITEM_OVERHEAD = 8  # framing per item, counted against max_bytes


class _Pending(Generic[R]):
    __slots__ = ("data", "done", "result", "error")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = trio.Event()
        self.result: R | None = None
        self.error: LedgerError | None = None

    async def wait(self) -> R:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def _settle(batch: list[_Pending[R]], error: LedgerError) -> None:
    for pending in batch:
        if not pending.done.is_set():
            pending.error = error
            pending.done.set()


class Batcher(Generic[R]):
    def __init__(self, *, max_items: int, max_delay: float, max_bytes: int, queue_size: int) -> None:
        self.max_items = max_items
        self.max_delay = max_delay
        self.max_bytes = max_bytes
        self._send, self._recv = trio.open_memory_channel[_Pending[R]](queue_size)

    @property
    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    async def submit(self, items: list[bytes]) -> list[R]:
        """Queue `items` (waiting while the queue is full) and return their results in order."""
        pendings = [_Pending[R](data) for data in items]
        for pending in pendings:
            try:
                await self._send.send(pending)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                _settle(pendings, LedgerClosed("ledger stopped"))
                break
        return [await p.wait() for p in pendings]

    async def run(self, seal: Callable[[list[bytes]], Awaitable[list[R]]]) -> None:
        """Collect batches and hand each to `seal`, which returns one result per item or raises."""
        batch: list[_Pending[R]] = []
        try:
            while True:
                if not batch:
                    batch.append(await self._recv.receive())
                carry = await self._fill(batch)
                try:
                    results = await seal([p.data for p in batch])
                except LedgerError as exc:
                    _settle(batch, exc)
                else:
                    for pending, result in zip(batch, results):
                        pending.result = result
                        pending.done.set()
                batch = [] if carry is None else [carry]
        finally:
            self._send.close()
            _settle(batch, LedgerClosed("ledger stopped before the record was sealed"))
            while True:
                try:
                    _settle([self._recv.receive_nowait()], LedgerClosed("ledger stopped"))
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break

    async def _fill(self, batch: list[_Pending[R]]) -> _Pending[R] | None:
        """Add items until full or the delay passes; returns an item that did not fit."""
        size = sum(len(p.data) + ITEM_OVERHEAD for p in batch)
        with trio.move_on_after(self.max_delay):
            while len(batch) < self.max_items:
                item = await self._recv.receive()
                if size + len(item.data) + ITEM_OVERHEAD > self.max_bytes:
                    return item
                batch.append(item)
                size += len(item.data) + ITEM_OVERHEAD
        return None

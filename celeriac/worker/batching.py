"""Coalescing writes: many coroutines hand items in, one call writes them all.

Two ways in:

- ``add(item)`` queues an item to be written at the next turn of the event loop, with
  everything else added before that turn (results: nobody waits for them, so they gather).
- ``await submit(item)`` writes at once when no write is in progress, else waits and goes
  with the next write (early acks: the task may not start before its ack is written, and
  whatever piles up while one write is in flight goes out together in the next).

Under load one broker or backend round trip carries many acks or results; when idle an item
is written at once (no timer, no delay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("celeriac.worker")


class Batcher(Generic[T]):
    def __init__(
        self, write: Callable[[list[T]], Awaitable[None]], name: str, retry_for: float = 30.0
    ) -> None:
        self._write = write
        self._name = name
        #: how long items added with ``add()`` are retried while writes fail (a backend or
        #: broker restarting, a failover) before they are dropped with an error
        self.retry_for = retry_for
        self._failing_since: float | None = None
        self._pending: list[T] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._writing = False
        self._scheduled: asyncio.Task[None] | None = None

    def add(self, item: T) -> None:
        """Queue ``item`` for the next turn of the loop; errors are logged."""
        self._pending.append(item)
        if self._scheduled is None and not self._writing:
            self._scheduled = asyncio.get_running_loop().create_task(self._drain())

    async def submit(self, item: T) -> None:
        """Write ``item`` (with whatever else is pending) and return once it is written."""
        self._pending.append(item)
        if self._writing:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
            return
        await self._drain()

    async def _drain(self) -> None:
        """Write until nothing is pending; the caller is the one writer meanwhile."""
        self._writing = True
        loop = asyncio.get_running_loop()
        delay = 0.05
        try:
            while self._pending:
                items, self._pending = self._pending, []
                waiters, self._waiters = self._waiters, []
                try:
                    await self._write(items)
                except Exception as exc:
                    for fut in waiters:
                        if not fut.done():
                            fut.set_exception(exc)
                    if asyncio.current_task() is not self._scheduled:
                        log.error("writing %d %s failed: %s", len(items), self._name, exc)
                        raise
                    if self._failing_since is None:
                        self._failing_since = loop.time()
                    if loop.time() - self._failing_since < self.retry_for:
                        log.warning("writing %d %s failed (%s); trying again in %.2fs",
                                    len(items), self._name, exc, delay)
                        self._pending[:0] = items  # first in line, in their order
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
                    else:
                        log.error("writing %d %s failed for %.0fs, dropped: %s",
                                  len(items), self._name, self.retry_for, exc)
                        self._failing_since = None
                    continue
                self._failing_since = None
                delay = 0.05
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._writing = False
            if asyncio.current_task() is self._scheduled:
                self._scheduled = None

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Write everything added so far."""
        while self._scheduled is not None:
            await asyncio.shield(self._scheduled)
        if self._pending and not self._writing:
            await self._drain()

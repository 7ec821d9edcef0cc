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
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = asyncio.get_running_loop().create_task(self._drain())

    async def submit(self, item: T) -> None:
        """Write ``item`` (with whatever else is pending) and return once it is written."""
        if self._writing:
            self._pending.append(item)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
            return
        if self._pending:
            self._pending.append(item)
            await self._drain()
            return
        # Nothing else to write (an early ack between tasks, the usual case): write it alone.
        self._writing = True
        written = False
        try:
            await self._write([item])
            written = True
        except Exception as exc:
            log.error("writing 1 %s failed: %s", self._name, exc)
            raise
        finally:
            self._writing = False
            if not written and self._pending and self._scheduled is None:
                self._schedule()  # what others handed in meanwhile goes from the background
        self._failing_since = None
        if self._pending:  # handed in while this was written: written now, together
            await self._drain()

    async def _drain(self) -> None:
        """Write until nothing is pending; the caller is the one writer meanwhile."""
        self._writing = True
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
                    if self._scheduled is None or asyncio.current_task() is not self._scheduled:
                        log.error("writing %d %s failed: %s", len(items), self._name, exc)
                        raise
                    loop = asyncio.get_running_loop()
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
            if self._scheduled is not None and asyncio.current_task() is self._scheduled:
                self._scheduled = None
            elif self._pending and self._scheduled is None:
                # a write of a caller failed: what others handed in meanwhile still goes,
                # from the background (retried there; their callers see that write's outcome)
                self._schedule()

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Write everything added so far."""
        while self._scheduled is not None:
            await asyncio.shield(self._scheduled)
        if self._pending and not self._writing:
            await self._drain()

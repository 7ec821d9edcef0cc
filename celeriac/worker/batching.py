"""Coalescing writes: many coroutines hand items in, one write carries them all.

Two ways in:

- ``add(item)`` queues an item for a background writer (a task started at the next turn of
  the event loop), which writes everything added until then together (results and late acks:
  nobody waits for them, so they gather). A failed write of added items is retried, first in
  line, for ``retry_for`` seconds; then they are dropped with an error and handed to
  ``on_drop``, so that their owner can let go of what they stood for.
- ``await submit(item)`` writes at once, alone, when nothing else is pending or being
  written (an early ack between tasks, the usual case: no task, future or loop turn is added),
  else goes with the background writer's next write (with whatever piled up meanwhile).
  It returns once its item is written, or raises the error of the write it went with; a
  submitted item is not retried here: its caller decides what a failure means.

One write at a time: a lone submit writes only while there is no background writer, and the
background writer waits for a lone write in flight before its first. Under load one broker
or backend round trip carries many acks or results; when idle an item is written at once (no
timer, no delay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("celeriac.worker")


class WriteInterrupted(Exception):
    """The write an item went with was cancelled (the loop closing): it may or may not
    have landed."""


class Batcher(Generic[T]):
    def __init__(
        self, write: Callable[[list[T]], Awaitable[None]], name: str, retry_for: float = 30.0,
        on_drop: Callable[[list[T]], None] | None = None,
    ) -> None:
        self._write = write
        self._name = name
        #: how long items added with ``add()`` are retried while writes fail (a backend or
        #: broker restarting, a failover) before they are dropped with an error
        self.retry_for = retry_for
        self._on_drop = on_drop
        self._failing_since: float | None = None
        self._pending: list[T] = []  # added: the background writer's, retried
        self._queued: list[T] = []  # submitted while another write was due or in flight
        self._waiters: list[asyncio.Future[None]] = []  # one per queued item, same order
        self._writing = False  # a write is in flight (never more than one)
        self._scheduled: asyncio.Task[None] | None = None  # the background writer
        self._lone_done: asyncio.Future[None] | None = None  # it waits for a lone write

    def add(self, item: T) -> None:
        """Queue ``item`` for the background writer; errors are logged, and retried."""
        self._pending.append(item)
        if self._scheduled is None:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = asyncio.get_running_loop().create_task(self._drain())

    async def submit(self, item: T) -> None:
        """Write ``item`` and return once it is written; raises if that write failed."""
        if self._writing or self._scheduled is not None:
            await self._enqueue(item)
            return
        # Nothing else pending or in flight (an early ack between tasks): write it alone.
        self._writing = True
        try:
            await self._write([item])
        except Exception as exc:
            log.error("writing 1 %s failed: %s", self._name, exc)
            raise
        finally:
            self._writing = False
            if self._lone_done is not None:  # the background writer waits for this write
                _resolve([self._lone_done], None)

    async def _enqueue(self, item: T) -> None:
        """Go with the background writer's next write."""
        self._queued.append(item)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._scheduled is None:
            self._schedule()
        try:
            await fut
        except asyncio.CancelledError:
            if fut in self._waiters:  # not taken by a write yet: its item is not written
                i = self._waiters.index(fut)
                del self._waiters[i], self._queued[i]
            raise

    async def _drain(self) -> None:
        """The background writer: write until nothing is left, retrying added items."""
        delay = 0.05
        try:
            while self._pending or self._queued:
                if self._writing:
                    await self._after_lone_write()
                elif await self._write_next():
                    delay = 0.05
                elif self._pending:  # to be tried again
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._scheduled = None
            self._failing_since = None  # a later writer counts afresh

    async def _after_lone_write(self) -> None:
        self._lone_done = asyncio.get_running_loop().create_future()
        try:
            await self._lone_done
        finally:
            self._lone_done = None

    async def _write_next(self) -> bool:
        """Write all that is pending and queued in one go; False if that failed."""
        items, self._pending = self._pending, []
        queued, self._queued = self._queued, []
        waiters, self._waiters = self._waiters, []
        self._writing = True
        try:
            await self._write(items + queued if queued else items)
        except Exception as exc:
            _resolve(waiters, exc)
            self._failed(items, len(queued), exc)
            return False
        except BaseException:
            # cancelled mid-write: added items stay first in line for a later writer (a
            # flush); submitters are told, not left waiting
            self._pending[:0] = items
            _resolve(waiters, WriteInterrupted(f"writing {self._name} was cancelled"))
            raise
        finally:
            self._writing = False
        self._failing_since = None
        _resolve(waiters, None)
        return True

    def _failed(self, items: list[T], submitted: int, exc: Exception) -> None:
        """After a failed write: its added items go back first in line until ``retry_for``
        has passed since their writes began failing, then are dropped (see ``on_drop``)."""
        if not items:
            log.error("writing %d %s failed: %s", submitted, self._name, exc)
            return
        now = asyncio.get_running_loop().time()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since < self.retry_for:
            log.warning("writing %d %s failed (%s); the %d added will be tried again",
                        len(items) + submitted, self._name, exc, len(items))
            self._pending[:0] = items
            return
        log.error("writing %d %s failed for %gs, dropped: %s", len(items), self._name,
                  self.retry_for, exc)
        self._failing_since = None
        self._dropped(items)

    def _dropped(self, items: list[T]) -> None:
        if self._on_drop is None:
            return
        try:
            self._on_drop(items)
        except Exception:
            log.exception("handling %d dropped %s failed", len(items), self._name)

    def __len__(self) -> int:
        return len(self._pending) + len(self._queued)

    async def flush(self) -> None:
        """Wait until everything added or submitted so far is written (or dropped).

        A timeout around it leaves the background writer running: it does not cut a write.
        """
        if (self._pending or self._queued) and self._scheduled is None:
            self._schedule()  # after a cancelled writer
        while self._scheduled is not None:
            await asyncio.shield(self._scheduled)


def _resolve(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for fut in waiters:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

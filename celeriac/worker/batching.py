"""Coalescing writes: many coroutines hand items in, one call writes them all.

``Batcher(write)`` collects what ``add()`` is given while a write is in progress and hands
the whole lot to the next ``write(items)``. Under load, one broker or backend round trip
carries many acks or results; when idle, an item is written at once (no timer, no delay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("celeriac.worker")


class Batcher(Generic[T]):
    def __init__(self, write: Callable[[list[T]], Awaitable[None]], name: str) -> None:
        self._write = write
        self._name = name
        self._pending: list[T] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, item: T) -> asyncio.Future[None]:
        """Queue ``item``; the returned future resolves once it is written."""
        self._pending.append(item)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return fut

    async def _run(self) -> None:
        try:
            while self._pending:
                items, self._pending = self._pending, []
                waiters, self._waiters = self._waiters, []
                try:
                    await self._write(items)
                except Exception as exc:  # reported to every waiter; the worker decides
                    log.error("writing %d %s failed: %s", len(items), self._name, exc)
                    for fut in waiters:
                        if not fut.done():
                            fut.set_exception(exc)
                            fut.exception()  # mark retrieved: waiters may not await it
                    continue
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self._task = None

    def __len__(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Wait until everything added so far is written."""
        while self._task is not None:
            await asyncio.shield(self._task)

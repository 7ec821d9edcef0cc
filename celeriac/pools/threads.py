"""Pools on threads: ``threads`` (N threads) and, built on it, ``solo`` and ``asyncio``.

Plain functions run on the pool's threads, so the event loop stays free to fetch, renew
leases and store results while they run. ``async def`` tasks run on the loop itself, cut off
at their hard time limit. A thread cannot be killed: a plain task past its hard limit is
reported by the worker and keeps its thread until it returns.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celeriac.worker.execute import Outcome, run_async_task, run_sync_task

if TYPE_CHECKING:
    from celeriac.context import Context
    from celeriac.task import Task


class ThreadPool:
    """``-P threads -c N``: N tasks at once, plain functions on N threads."""

    name = "threads"
    blocks_loop = False

    def __init__(self, concurrency: int, threads: int | None = None) -> None:
        self.concurrency = max(1, int(concurrency))
        self.threads = threads or self.concurrency
        self._executor: ThreadPoolExecutor | None = None
        self.running = 0

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"celeriac-{self.name}")

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def execute(self, task: Task[Any, Any], ctx: Context) -> Outcome:
        self.running += 1
        try:
            if task.is_async:
                return await run_async_task(task, ctx, ctx.timelimit[0])
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, run_sync_task, task, ctx)
        finally:
            self.running -= 1

    def stats(self) -> dict[str, Any]:
        return {"pool": self.name, "max-concurrency": self.concurrency, "running": self.running,
                "threads": self.threads}


class SoloPool(ThreadPool):
    """``-P solo``: one task at a time, run right on the worker's event loop.

    No thread hop: the fastest pool for short tasks. While a plain function runs, the loop
    waits for it (leases are still renewed, from the lease keeper's own thread).
    """

    name = "solo"
    blocks_loop = True

    def __init__(self, concurrency: int = 1) -> None:
        super().__init__(1)

    async def start(self) -> None:
        pass

    async def execute(self, task: Task[Any, Any], ctx: Context) -> Outcome:
        self.running += 1
        try:
            if task.is_async:
                return await run_async_task(task, ctx, ctx.timelimit[0])
            return run_sync_task(task, ctx)
        finally:
            self.running -= 1


class AsyncioPool(ThreadPool):
    """``-P asyncio -c N``: up to N tasks at once; ``async def`` tasks run natively on the
    loop, plain functions on a few threads so they never block it."""

    name = "asyncio"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency, threads=min(max(1, int(concurrency)), 32))


POOLS: dict[str, type[ThreadPool]] = {"threads": ThreadPool, "solo": SoloPool, "asyncio": AsyncioPool}


def pool_from_name(name: str, concurrency: int) -> ThreadPool:
    """The pool named ``name`` (the CLI's ``-P``)."""
    from celeriac.errors import ConfigurationError

    try:
        cls = POOLS[name]
    except KeyError:
        if name in ("prefork", "processes", "gevent", "eventlet"):
            raise ConfigurationError(
                f"the {name} pool is not available yet; use -P solo, threads or asyncio"
            ) from None
        raise ConfigurationError(
            f"unknown pool {name!r}; choose one of: {', '.join(sorted(POOLS))}"
        ) from None
    return cls(concurrency)

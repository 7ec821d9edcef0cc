"""``-P threads -c N``: N tasks at once, plain functions on N threads.

Plain functions run on the pool's threads, so the event loop stays free to fetch and store
results while they run. ``async def`` tasks run on the loop itself, cut off at their hard
time limit. A thread cannot be killed: a plain function past its hard time limit runs on.
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

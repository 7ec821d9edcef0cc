"""``-P threads -c N``: N tasks at once, plain functions on N threads.

Plain functions run on the pool's threads, so the event loop stays free to fetch and store
results while they run. ``async def`` tasks run on the loop itself, cut off at their hard
time limit.

Time limits of plain functions, and what a thread allows of them:

- **soft**: ``SoftTimeLimitExceeded`` is raised inside the task's thread (an asynchronous
  exception, ``PyThreadState_SetAsyncExc``). It lands at the next Python bytecode the thread
  runs: a task blocked inside one long C call (``time.sleep(60)``, a socket read without a
  timeout) sees it only when that call returns.
- **hard**: a thread cannot be killed. At the hard limit the task is reported FAILURE with
  ``TimeLimitExceeded`` (its message is settled), and an error naming the task id says the
  thread is stuck; the thread runs on in the background and the pool keeps serving with the
  remaining threads. ``stats()["stuck"]`` counts the threads still held by such tasks. Use
  the prefork pool where a task must really be stopped at its hard limit.
"""

from __future__ import annotations

import asyncio
import builtins
import ctypes
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.errors import SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.result import format_traceback
from celeriac.worker.execute import Outcome, run_async_task, run_sync_task, time_limits

if TYPE_CHECKING:
    from celeriac.context import Context
    from celeriac.task import Task

log = logging.getLogger("celeriac.worker")


class _Run:
    """One plain-function run on a pool thread, for the soft-limit timer to aim at."""

    __slots__ = ("done", "ident", "lock")

    def __init__(self) -> None:
        self.ident = 0
        self.done = False
        self.lock = threading.Lock()

    def call(self, task: Task[Any, Any], ctx: Context) -> Outcome:
        self.ident = threading.get_ident()
        try:
            try:
                return run_sync_task(task, ctx)
            finally:
                with self.lock:
                    self.done = True
        except SoftTimeLimitExceeded as exc:  # struck just as the task ended
            return Outcome(states.FAILURE, exc, format_traceback(exc))

    def soft_limit(self) -> None:
        with self.lock:
            if not self.done and self.ident:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.ident), ctypes.py_object(SoftTimeLimitExceeded))


class ThreadPool:
    name = "threads"
    blocks_loop = False

    def __init__(self, concurrency: int, threads: int | None = None) -> None:
        self.concurrency = max(1, int(concurrency))
        self.threads = threads or self.concurrency
        self._executor: ThreadPoolExecutor | None = None
        self.running = 0
        self.stuck = 0

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"celeriac-{self.name}")

    async def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def execute(self, task: Task[Any, Any], ctx: Context) -> Outcome:
        self.running += 1
        try:
            hard, soft = time_limits(task, ctx)
            if task.is_async:
                return await run_async_task(task, ctx, hard)
            loop = asyncio.get_running_loop()
            if hard is None and soft is None:
                return await loop.run_in_executor(self._executor, run_sync_task, task, ctx)
            return await self._limited(loop, task, ctx, hard, soft)
        finally:
            self.running -= 1

    async def _limited(self, loop: asyncio.AbstractEventLoop, task: Task[Any, Any], ctx: Context,
                       hard: float | None, soft: float | None) -> Outcome:
        run = _Run()
        fut = loop.run_in_executor(self._executor, run.call, task, ctx)
        timer = loop.call_later(soft, run.soft_limit) if soft else None
        try:
            return await asyncio.wait_for(asyncio.shield(fut), hard)
        except builtins.TimeoutError:
            self.stuck += 1
            log.error("Task %s[%s] passed its hard time limit of %ss; a thread cannot be killed: "
                      "it runs on, and the pool serves with the other threads (%d stuck)",
                      task.name, ctx.id, hard, self.stuck)
            fut.add_done_callback(lambda _f: self._unstuck(task, ctx))
            exc = TimeLimitExceeded(f"task exceeded its hard time limit of {hard}s")
            return Outcome(states.FAILURE, exc, format_traceback(exc))
        finally:
            if timer is not None:
                timer.cancel()

    def _unstuck(self, task: Task[Any, Any], ctx: Context) -> None:
        self.stuck -= 1
        log.warning("Task %s[%s], reported past its hard time limit, has ended; its outcome "
                    "is dropped", task.name, ctx.id)

    def stats(self) -> dict[str, Any]:
        return {"pool": self.name, "max-concurrency": self.concurrency, "running": self.running,
                "threads": self.threads, "stuck": self.stuck}

"""``-P gevent -c 1000``: many I/O-bound plain-function tasks at once, on greenlets.

gevent makes blocking calls (sockets, ``time.sleep``, DNS, ``select``) cooperative by
monkey-patching the standard library; a task's greenlet yields wherever it would block. The
CLI patches first thing when it sees ``-P gevent``, before the app is imported, as Celery
does. Threads are left as real threads (``thread=False``): the worker's lease keeper and the
sync facade each run their own asyncio loop on a thread of their own, and greenlet "threads"
would share one OS thread's running-loop slot with the worker's loop.

The worker's asyncio loop runs in the main greenlet on gevent's selector (patched
``selectors``), so while it waits for I/O the gevent hub runs the task greenlets; a finished
greenlet hands its outcome back through ``call_soon_threadsafe``, which wakes the loop.

Limits: ``async def`` tasks run on the loop, cut off at their hard limit. A plain function is
killed at its hard limit (``Greenlet.kill`` raises ``GreenletExit`` at its next yield) and
gets ``SoftTimeLimitExceeded`` raised at its soft limit, both delivered only when it yields:
a greenlet that computes without blocking holds every other task, as with any gevent code.
CPU-bound tasks belong on the prefork pool.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.errors import MissingExtra, SoftTimeLimitExceeded, TimeLimitExceeded
from celeriac.result import format_traceback
from celeriac.worker.execute import Outcome, run_async_task, run_sync_task, time_limits

if TYPE_CHECKING:
    from celeriac.context import Context
    from celeriac.task import Task

log = logging.getLogger("celeriac.worker")


def patch() -> None:
    """Monkey-patch the standard library for gevent (threads stay real threads)."""
    try:
        from gevent import monkey
    except ImportError as exc:
        raise MissingExtra("the gevent pool needs gevent: pip install 'celeriac[gevent]'") from exc
    if not monkey.is_module_patched("socket"):
        monkey.patch_all(thread=False)


class GeventPool:
    name = "gevent"
    blocks_loop = False

    def __init__(self, concurrency: int) -> None:
        try:
            import gevent
            import gevent.pool
        except ImportError as exc:
            raise MissingExtra("the gevent pool needs gevent: pip install 'celeriac[gevent]'") from exc
        self._gevent = gevent
        self.concurrency = max(1, int(concurrency))
        self.running = 0
        self.patched = False
        self._group: Any = None

    async def start(self) -> None:
        from gevent import monkey

        self.patched = monkey.is_module_patched("socket")
        if not self.patched:
            log.warning("gevent pool without monkey-patching (start the worker with -P gevent "
                        "from the CLI): blocking calls in tasks will block the other tasks")
        self._group = self._gevent.pool.Group()

    async def stop(self) -> None:
        if self._group is not None:
            self._group.kill(block=False)
            self._group = None

    async def execute(self, task: Task[Any, Any], ctx: Context) -> Outcome:
        self.running += 1
        try:
            hard, soft = time_limits(task, ctx)
            if task.is_async:
                return await run_async_task(task, ctx, hard)
            return await self._run_greenlet(task, ctx, hard, soft)
        finally:
            self.running -= 1

    async def _run_greenlet(self, task: Task[Any, Any], ctx: Context, hard: float | None,
                            soft: float | None) -> Outcome:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()

        def deliver(outcome: Outcome) -> None:
            if not fut.done():
                fut.set_result(outcome)

        def run() -> None:
            try:
                outcome = run_sync_task(task, ctx)
            except BaseException as exc:  # GreenletExit at the hard limit
                outcome = _hard_limit_outcome(hard) if isinstance(exc, self._gevent.GreenletExit) \
                    else Outcome(states.FAILURE, exc, format_traceback(exc))
            loop.call_soon_threadsafe(deliver, outcome)

        glet = self._gevent.spawn(run)
        self._group.add(glet)
        timers: list[asyncio.TimerHandle] = []
        if soft:
            timers.append(loop.call_later(
                soft, lambda: glet.dead or glet.kill(SoftTimeLimitExceeded, block=False)))
        if hard:
            def strike() -> None:
                if not glet.dead:
                    log.error("Hard time limit (%ss) exceeded for %s[%s]: killing its greenlet",
                              hard, task.name, ctx.id)
                    glet.kill(block=False)
                    loop.call_later(1.0, deliver, _hard_limit_outcome(hard))
            timers.append(loop.call_later(hard, strike))
        try:
            return await fut
        finally:
            for timer in timers:
                timer.cancel()

    def stats(self) -> dict[str, Any]:
        return {"pool": self.name, "max-concurrency": self.concurrency, "running": self.running,
                "monkey-patched": self.patched}


def _hard_limit_outcome(hard: float | None) -> Outcome:
    exc = TimeLimitExceeded(f"task exceeded its hard time limit of {hard}s")
    return Outcome(states.FAILURE, exc, format_traceback(exc))

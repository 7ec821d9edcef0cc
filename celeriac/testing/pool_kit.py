"""The pool conformance kit: what every pool must do, run against any pool.

Use it from a test module, one line per pool::

    @pytest.mark.parametrize("make_pool", [lambda: SoloPool(), lambda: ThreadPool(4)])
    @pytest.mark.parametrize("check", POOL_CHECKS)
    async def test_pool(make_pool, check):
        await run_pool_check(make_pool, check)
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from celeriac import states
from celeriac.app import Celeriac
from celeriac.context import Context
from celeriac.errors import Reject
from celeriac.pools.base import Pool
from celeriac.task import Task

PoolCheck = Callable[[Pool, Celeriac], Awaitable[None]]


def _app() -> Celeriac:
    app = Celeriac("poolkit", broker="memory://poolkit", backend="memory://poolkit",
                   set_as_current=False)

    @app.task(name="kit.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="kit.aadd")
    async def aadd(x: int, y: int) -> int:
        await asyncio.sleep(0)
        return x + y

    @app.task(name="kit.fail")
    def fail() -> None:
        raise ValueError("kit failure")

    @app.task(name="kit.afail")
    async def afail() -> None:
        raise KeyError("kit async failure")

    @app.task(name="kit.request", bind=True)
    def request(self: Task[Any, Any]) -> Any:
        return [self.request.id, self.request.retries]

    @app.task(name="kit.thread")
    def thread_name() -> str:
        return _where()

    @app.task(name="kit.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="kit.reject")
    def reject() -> None:
        raise Reject("kit", requeue=True)

    return app


def _where() -> str:
    """This process and thread (a prefork child's main thread has the same name as ours)."""
    return f"{os.getpid()}/{threading.current_thread().name}"


def _ctx(name: str, *args: Any, **kwargs: Any) -> Context:
    return Context(id=f"id-{name}-{time.perf_counter_ns()}", task=name, args=args, kwargs=kwargs)


async def check_runs_plain_and_async_tasks(pool: Pool, app: Celeriac) -> None:
    out = await pool.execute(app.tasks["kit.add"], _ctx("kit.add", 2, 3))
    assert (out.status, out.value) == (states.SUCCESS, 5), out
    out = await pool.execute(app.tasks["kit.aadd"], _ctx("kit.aadd", 4, 5))
    assert (out.status, out.value) == (states.SUCCESS, 9), out


async def check_failures_are_outcomes(pool: Pool, app: Celeriac) -> None:
    out = await pool.execute(app.tasks["kit.fail"], _ctx("kit.fail"))
    assert out.status == states.FAILURE and isinstance(out.value, ValueError)
    assert out.traceback and "kit failure" in out.traceback
    out = await pool.execute(app.tasks["kit.afail"], _ctx("kit.afail"))
    assert out.status == states.FAILURE and isinstance(out.value, KeyError)
    out = await pool.execute(app.tasks["kit.reject"], _ctx("kit.reject"))
    assert out.status == states.REJECTED and out.reject is not None and out.reject.requeue


async def check_request_is_visible(pool: Pool, app: Celeriac) -> None:
    ctx = _ctx("kit.request")
    ctx.retries = 2
    out = await pool.execute(app.tasks["kit.request"], ctx)
    assert out.value == [ctx.id, 2], out


async def check_plain_tasks_leave_the_loop_free(pool: Pool, app: Celeriac) -> None:
    """A sleeping plain function must not stop the event loop, unless the pool says so."""
    if pool.blocks_loop:
        return
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    try:
        out = await pool.execute(app.tasks["kit.sleep"], _ctx("kit.sleep", 0.3))
    finally:
        tick_task.cancel()
    assert out.value == 0.3
    assert ticks >= 5, f"the loop ticked only {ticks} times while a task slept 0.3 s"
    out = await pool.execute(app.tasks["kit.thread"], _ctx("kit.thread"))
    assert out.value != _where(), "the plain function ran on the event loop's own thread"


async def check_runs_concurrency_tasks_at_once(pool: Pool, app: Celeriac) -> None:
    n = pool.concurrency
    started = time.perf_counter()
    outs = await asyncio.gather(
        *(pool.execute(app.tasks["kit.sleep"], _ctx("kit.sleep", 0.2)) for _ in range(n))
    )
    elapsed = time.perf_counter() - started
    assert all(o.status == states.SUCCESS for o in outs)
    if n > 1:  # n sleeps overlapped instead of running one after another
        assert elapsed < 0.2 * n * 0.75, f"{n} tasks of 0.2 s took {elapsed:.2f} s"


async def check_stats(pool: Pool, app: Celeriac) -> None:
    stats = pool.stats()
    assert stats["pool"] == pool.name and stats["max-concurrency"] == pool.concurrency


POOL_CHECKS: list[PoolCheck] = [
    check_runs_plain_and_async_tasks,
    check_failures_are_outcomes,
    check_request_is_visible,
    check_plain_tasks_leave_the_loop_free,
    check_runs_concurrency_tasks_at_once,
    check_stats,
]


async def run_pool_check(make_pool: Callable[[], Pool], check: PoolCheck) -> None:
    """Run one check against a freshly started pool."""
    pool = make_pool()
    app = _app()
    await pool.start()
    try:
        await check(pool, app)
    finally:
        await pool.stop()
        await app.aclose()


async def check_pool(make_pool: Callable[[], Pool]) -> None:
    """Run every check against ``make_pool``."""
    for check in POOL_CHECKS:
        await run_pool_check(make_pool, check)

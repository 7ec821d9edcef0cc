"""A worker whose result writes fail for a while (its Redis result backend crashed, then back).

The worker runs in this process (solo pool, so a task can crash the backend at a chosen
point), on a real Redis broker, with its results on a private Redis that the test kills with
SIGKILL and starts again. Nothing may be lost: a task runs, its outcome lands once the backend
is back, and its message is acked, or handed out again (at least once).

Before the backend goes down, each test holds a message until the worker's lease keeper (a
thread with connections of its own: see celeriac.worker.leases) has connected, so that the
keeper renews leases while the backend is down, as in a worker that has run for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.pools.solo import SoloPool
from celeriac.worker.loop import Worker

pytestmark = pytest.mark.slow


def make_app(redis_url: str, backend_url: str, **conf: Any) -> Celeriac:
    app = Celeriac("writefail", broker=redis_url, backend=backend_url, set_as_current=False)
    app.conf.broker_transport_options = {"lease_seconds": 1.0}
    for key, value in conf.items():
        setattr(app.conf, key, value)

    @app.task(name="writefail.warm_up", ignore_result=True, acks_late=True)
    def warm_up() -> None:
        wait_for_lease_keeper(app)

    return app


def wait_for_lease_keeper(app: Celeriac) -> None:
    """Called in a task (its message held): until the worker's loop and the lease keeper's
    both have connections."""
    deadline = time.monotonic() + 10
    while sum(res.connected for res in app._resources.values()) < 2:
        if time.monotonic() > deadline:
            raise AssertionError("the lease keeper did not connect")
        time.sleep(0.02)


@contextlib.asynccontextmanager
async def running(worker: Worker, warm_up: bool = True) -> AsyncIterator[Worker]:
    run = asyncio.create_task(worker.run(install_signals=False))
    try:
        await asyncio.wait_for(worker._started.wait(), 10)
        if warm_up:
            await worker.app.tasks["writefail.warm_up"].adelay()
            await wait_until(lambda: worker.processed >= 1)
            assert worker.outcomes == {"SUCCESS": 1}
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 30)


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_early_acked_task_runs_though_its_started_state_cannot_be_written(
    redis_url: str, private_redis: Any,
) -> None:
    app = make_app(redis_url, private_redis.url, task_track_started=True)
    ran: list[int] = []

    @app.task
    def job(i: int) -> int:
        ran.append(i)
        return i

    async with running(Worker(app, SoloPool(), shutdown_timeout=5)):
        private_redis.crash()
        res = await job.adelay(1)
        await wait_until(lambda: ran == [1])  # acked early: not running it would lose it
        private_redis.start()
        assert await res.aget(timeout=20) == 1  # its outcome was kept and retried
    assert ran == [1]


async def test_outcome_and_late_ack_survive_a_failed_write_with_the_next_started(
    redis_url: str, private_redis: Any,
) -> None:
    """Task 1's outcome and late ack wait to be written when task 2's STARTED state is: they
    go in one write, which fails. The outcome is retried, the ack lands, nothing runs twice."""
    app = make_app(redis_url, private_redis.url, task_track_started=True, task_acks_late=True)
    ran: list[int] = []

    @app.task
    def job(i: int) -> int:
        ran.append(i)
        if i == 1:
            wait_for_lease_keeper(app)
            private_redis.crash()  # the next write (task 1's outcome with task 2's STARTED)
        return i

    # sent before the worker starts: fetched together, task 2 is next when task 1 ends
    first, second = await job.adelay(1), await job.adelay(2)
    worker = Worker(app, SoloPool(), shutdown_timeout=5)
    async with running(worker, warm_up=False):
        await wait_until(lambda: ran == [1, 2])
        private_redis.start()
        assert await first.aget(timeout=20) == 1
        assert await second.aget(timeout=20) == 2
        await wait_until(lambda: not worker._held)  # both acked, not held (renewed) forever
        await asyncio.sleep(2.5)  # over two leases: nothing comes back
    assert ran == [1, 2]


async def test_late_acked_message_returns_when_its_outcome_is_dropped(
    redis_url: str, private_redis: Any,
) -> None:
    """An outcome that cannot be written within ``retry_for`` is dropped; its message is let
    go rather than kept alive, so the broker hands it out again after its lease."""
    app = make_app(redis_url, private_redis.url, task_acks_late=True)
    ran: list[int] = []

    @app.task
    def job(i: int) -> int:
        ran.append(i)
        if len(ran) == 1:
            private_redis.crash()
        return i

    worker = Worker(app, SoloPool(), shutdown_timeout=5)
    async with running(worker):
        worker.results.retry_for = 0.5
        res = await job.adelay(7)
        await wait_until(lambda: len(ran) >= 2, timeout=30)  # ran again: at least once
        private_redis.start()
        assert await res.aget(timeout=30) == 7
        await wait_until(lambda: not worker._held, timeout=30)


async def test_leases_are_renewed_while_the_backend_is_down(
    redis_url: str, private_redis: Any,
) -> None:
    """The lease keeper connects (on its own loop) when a message is first held, here while
    the result backend is down: it needs the broker only, so it keeps renewing, and the
    message whose outcome waits for the backend is not handed out again meanwhile."""
    app = make_app(redis_url, private_redis.url, task_acks_late=True)
    ran: list[int] = []

    @app.task
    def job(i: int) -> int:
        ran.append(i)
        return i

    worker = Worker(app, SoloPool(), shutdown_timeout=5)
    async with running(worker, warm_up=False):
        private_redis.crash()
        res = await job.adelay(3)
        await wait_until(lambda: ran == [3])
        await asyncio.sleep(3.5)  # over three leases, the outcome and ack still unwritten
        assert ran == [3]
        private_redis.start()
        assert await res.aget(timeout=30) == 3
        await wait_until(lambda: not worker._held)
    assert ran == [3]

"""The prefork pool with real processes: children that die, hang, leak, and a parent that dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from celeriac import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError, states
from celeriac.context import Context
from celeriac.pools.prefork import PreforkPool
from celeriac.pools.threads import ThreadPool
from tests.integration.test_worker_process import dead_letters, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

APP = "tests.apps.prefork_app"


@pytest.fixture
def tasks(basic_app: Any) -> Any:
    from tests.apps import prefork_app

    return prefork_app


def children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def marked_pids(marker: Path) -> list[int]:
    return [int(p) for p in marker.read_text().split()] if marker.exists() else []


def wait_pool_size(worker_pid: int, n: int, timeout: float = 5.0) -> list[int]:
    wait_until(lambda: len(children(worker_pid)) == n, timeout)
    return sorted(c.pid for c in children(worker_pid))


def test_tasks_run_in_children_that_ran_the_init_hook(tasks: Any, start_worker: Any) -> None:
    worker = start_worker("-P", "prefork", "-c", "2", app=APP)
    pids = wait_pool_size(worker.pid, 2)
    assert tasks.app.tasks["tests.apps.basic.add"].delay(2, 2).get(timeout=10) == 4
    init_pid, pid = tasks.init_pid.delay().get(timeout=10)
    assert init_pid == pid and pid in pids and pid != worker.pid
    assert tasks.app.tasks["tests.apps.basic.async_add"].delay(1, 2).get(timeout=10) == 3
    with pytest.raises(ValueError, match="boom"):
        tasks.app.tasks["tests.apps.basic.fail"].delay("boom").get(timeout=10)


def test_sigkill_of_a_child_mid_task_is_worker_lost(
    tasks: Any, start_worker: Any, tmp_path: Path
) -> None:
    worker = start_worker("-P", "prefork", "-c", "2", app=APP)
    before = wait_pool_size(worker.pid, 2)
    marker = tmp_path / "started"
    res = tasks.sleep_marked.delay(20, str(marker))
    wait_until(lambda: marked_pids(marker))
    victim = marked_pids(marker)[0]
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerLostError, match="signal 9"):
        res.get(timeout=10)
    after = wait_pool_size(worker.pid, 2)
    assert victim in before and victim not in after
    assert tasks.pid.delay().get(timeout=10) in after


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_a_task_that_kills_its_process_fails_and_the_pool_refills(
    tasks: Any, start_worker: Any, how: str
) -> None:
    worker = start_worker("-P", "prefork", "-c", "1", app=APP)
    wait_pool_size(worker.pid, 1)
    res = tasks.exit_now.delay(7) if how == "exit" else tasks.segfault.delay()
    expected = "exitcode 7" if how == "exit" else "SIGSEGV"
    with pytest.raises(WorkerLostError, match=expected):
        res.get(timeout=10)
    assert tasks.pid.delay().get(timeout=10) in wait_pool_size(worker.pid, 1)


def test_soft_limit_is_raised_inside_the_task(tasks: Any, start_worker: Any) -> None:
    start_worker("-P", "prefork", "-c", "1", app=APP)
    started = time.monotonic()
    assert tasks.catch_soft.delay().get(timeout=10) == "cleaned up"
    assert time.monotonic() - started < 3


def test_hard_limit_kills_a_task_that_ignores_its_soft_limit(
    tasks: Any, start_worker: Any, tmp_path: Path
) -> None:
    worker = start_worker("-P", "prefork", "-c", "1", app=APP)
    before = wait_pool_size(worker.pid, 1)
    marker = tmp_path / "soft"
    started = time.monotonic()
    res = tasks.ignore_soft.delay(str(marker))
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=10)
    assert marked_pids(marker), "the soft limit was not raised inside the task"
    # the slot is back in service within the hard limit (1 s) plus two seconds
    assert tasks.pid.delay().get(timeout=10) not in before
    assert time.monotonic() - started < 1.0 + 2.0 + 1.0  # + the round trips of two tasks
    assert "Hard time limit" in worker.log()


def test_time_limit_from_the_message_and_from_the_setting(
    tasks: Any, basic_app: Any, start_worker: Any
) -> None:
    start_worker("-P", "prefork", "-c", "1", "--soft-time-limit", "0.2", app=APP)
    res = basic_app.sleep.apply_async((5,), time_limit=0.5, soft_time_limit=10)
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=10)
    with pytest.raises(SoftTimeLimitExceeded):  # the worker's --soft-time-limit
        basic_app.sleep.delay(5).get(timeout=10)


def test_max_tasks_per_child_replaces_children(tasks: Any, start_worker: Any) -> None:
    start_worker("-P", "prefork", "-c", "1", "--max-tasks-per-child", "2", app=APP)
    pids = [tasks.pid.delay().get(timeout=10) for _ in range(6)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5], pids
    assert len(set(pids)) == 3, pids


def test_max_memory_per_child_replaces_a_leaking_child(tasks: Any, start_worker: Any) -> None:
    worker = start_worker("-P", "prefork", "-c", "1", app=APP)
    (child,) = wait_pool_size(worker.pid, 1)
    base_kib = psutil.Process(child).memory_info().rss // 1024
    worker.kill()
    worker = start_worker("-P", "prefork", "-c", "1", "--max-memory-per-child",
                          str(base_kib + 30_000), app=APP)
    first = tasks.leak.delay(10_000).get(timeout=10)
    assert tasks.leak.delay(10_000).get(timeout=10) == first  # +20 MB: still under the limit
    assert tasks.leak.delay(20_000).get(timeout=10) == first  # +40 MB: over, replaced after it
    after = tasks.pid.delay().get(timeout=10)
    assert after != first
    assert "max-memory-per-child" in worker.log() or "replacing it" in worker.log()


def test_a_task_that_keeps_killing_its_child_is_dead_lettered(
    tasks: Any, basic_app: Any, start_worker: Any, tmp_path: Path
) -> None:
    worker = start_worker("-P", "prefork", "-c", "1", app=APP)
    marker = tmp_path / "runs"
    res = tasks.kill_child.delay(str(marker))
    with pytest.raises(WorkerLostError, match="exitcode 3"):
        res.get(timeout=20)
    assert len(marked_pids(marker)) == 3  # worker_max_deliveries
    reasons = [r for _, r in dead_letters(basic_app.app)]
    assert any("WorkerLostError" in r and "3 times" in r for r in reasons), reasons
    assert tasks.pid.delay().get(timeout=10) in wait_pool_size(worker.pid, 1)


def test_children_leave_when_the_parent_is_killed(
    tasks: Any, start_worker: Any, tmp_path: Path
) -> None:
    worker = start_worker("-P", "prefork", "-c", "3", app=APP)
    pids = wait_pool_size(worker.pid, 3)
    marker = tmp_path / "started"
    out = tmp_path / "written"
    res = tasks.write_after.delay(1.5, str(out))
    sleeper = tasks.sleep_marked.delay(30, str(marker))
    wait_until(lambda: marked_pids(marker))
    os.kill(worker.pid, signal.SIGKILL)
    worker.proc.wait(5)
    deadline = time.monotonic() + 2.0
    alive = [p for p in pids if psutil.pid_exists(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in pids if _alive(p)]
    try:
        assert not alive, f"orphans left: {alive}"
        time.sleep(2.0)
        assert not out.exists(), "a child outlived its parent and finished its task"
        assert res.state == states.PENDING and sleeper.state == states.PENDING
    finally:
        for p in alive:
            with _suppress():
                os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _suppress() -> Any:
    import contextlib

    return contextlib.suppress(ProcessLookupError)


# ---- the pool object itself, in this process -------------------------------------------------

def _ctx(name: str, *args: Any) -> Context:
    return Context(id=f"{name}-{time.perf_counter_ns()}", task=name, args=args)


async def test_per_task_stats_and_refill(tasks: Any) -> None:
    pool = PreforkPool(2)
    await pool.start()
    try:
        out = await pool.execute(tasks.exit_now, _ctx("prefork.exit", 1))
        assert out.status == states.FAILURE and isinstance(out.value, WorkerLostError)
        out = await pool.execute(tasks.leak, _ctx("prefork.leak", 1000))
        assert out.status == states.SUCCESS
        stats = pool.stats()
        assert stats["tasks"]["prefork.exit"]["killed-child"] == 1
        assert stats["tasks"]["prefork.leak"]["peak-rss-kib"] > 1000
        assert stats["replaced"] == {"lost": 1}
        deadline = time.monotonic() + 5
        while len(pool.stats()["processes"]) != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert len(pool.stats()["processes"]) == 2
    finally:
        await pool.stop()
    assert pool.stats()["processes"] == []


async def test_grow_shrink_restart(tasks: Any) -> None:
    pool = PreforkPool(3)
    await pool.start()
    try:
        first = set(pool.stats()["processes"])
        assert len(first) == 3
        assert pool.shrink(2) == 1
        assert len(pool.stats()["processes"]) == 1
        assert pool.grow(5) == 3  # no more than concurrency
        deadline = time.monotonic() + 5
        while len(pool.stats()["processes"]) != 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        before = set(pool.stats()["processes"])
        pool.restart()
        outs = await asyncio.gather(*(pool.execute(tasks.pid, _ctx("prefork.pid"))
                                      for _ in range(3)))
        assert not {o.value for o in outs} & before
        assert len(pool.stats()["processes"]) == 3
    finally:
        await pool.stop()


async def test_autoscale_grows_with_load_and_shrinks_when_idle(tasks: Any) -> None:
    pool = PreforkPool(1, autoscale=(3, 1), autoscale_keepalive=0.5)
    await pool.start()
    try:
        assert len(pool.stats()["processes"]) == 1
        started = time.perf_counter()
        outs = await asyncio.gather(*(pool.execute(tasks.app.tasks["tests.apps.basic.sleep"],
                                                   _ctx("tests.apps.basic.sleep", 0.5))
                                      for _ in range(3)))
        assert all(o.status == states.SUCCESS for o in outs)
        assert time.perf_counter() - started < 1.4  # ran side by side, not one after another
        assert len(pool.stats()["processes"]) == 3
        deadline = time.monotonic() + 10
        while len(pool.stats()["processes"]) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(pool.stats()["processes"]) == 1
    finally:
        await pool.stop()


async def test_threads_pool_soft_limit_and_stuck_thread(tasks: Any, tmp_path: Path) -> None:
    """A thread cannot be killed: at the hard limit the task is reported and the pool serves on."""
    pool = ThreadPool(2)
    await pool.start()
    marker = tmp_path / "soft"
    try:
        started = time.perf_counter()
        out = await pool.execute(tasks.ignore_soft, _ctx("prefork.ignore_soft", str(marker), 2.5))
        assert out.status == states.FAILURE and isinstance(out.value, TimeLimitExceeded)
        assert 0.9 < time.perf_counter() - started < 2.0
        assert marked_pids(marker), "the soft limit was not raised in the task's thread"
        assert pool.stats()["stuck"] == 1
        out = await pool.execute(tasks.pid, _ctx("prefork.pid"))
        assert out.status == states.SUCCESS
    finally:
        await pool.stop()


def test_gevent_pool_overlaps_blocking_tasks_and_cuts_them_off(
    basic_app: Any, start_worker: Any
) -> None:
    pytest.importorskip("gevent")
    start_worker("-P", "gevent", "-c", "100")
    assert basic_app.add.delay(1, 2).get(timeout=10) == 3
    started = time.monotonic()
    results = [basic_app.sleep.delay(1.0) for _ in range(40)]
    assert [r.get(timeout=20) for r in results] == [1.0] * 40
    assert time.monotonic() - started < 5.0  # 40 s of sleeping, side by side
    with pytest.raises(TimeLimitExceeded):
        basic_app.sleep.apply_async((5,), time_limit=0.5).get(timeout=10)
    assert basic_app.async_add.delay(1, 2).get(timeout=10) == 3


def test_eventlet_pool_is_refused_with_a_pointer(start_worker: Any) -> None:
    worker = start_worker("-P", "eventlet", ready=False)
    assert worker.proc.wait(30) != 0
    assert "-P gevent" in worker.log()


def test_warm_and_cold_shutdown(basic_app: Any, start_worker: Any, tmp_path: Path) -> None:
    worker = start_worker("-P", "prefork", "-c", "2")
    pids = wait_pool_size(worker.pid, 2)
    first = basic_app.sleep.delay(1.0)
    wait_until(lambda: "sleep" in worker.log() or first.state != states.PENDING, 5)
    time.sleep(0.2)
    assert worker.terminate() == 0
    assert first.get(timeout=1) == 1.0  # finished in its child during the warm shutdown
    assert not [p for p in pids if _alive(p)]

    marker = tmp_path / "runs"
    worker = start_worker("-P", "prefork", "-c", "2", "--shutdown-timeout", "60")
    pids = wait_pool_size(worker.pid, 2)
    res = basic_app.sleep_late.delay(30.0, str(marker))
    wait_until(marker.exists)
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(10) == 1
    wait_until(lambda: not [p for p in pids if _alive(p)], 3)
    start_worker("-P", "threads", "-c", "2")  # the interrupted acks_late message went back
    wait_until(lambda: len(marker.read_text().split()) == 2, 10)
    assert res.state in (states.PENDING, states.STARTED)

"""A real ``celeriac worker`` process on the embedded SQLite broker, end to end."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from celeriac import NotRegistered, RemoteError, TimeLimitExceeded, states
from celeriac.errors import ContentDisallowed, DecodeError, EncodeError
from celeriac.message import Envelope, Outgoing
from celeriac.utils.sync import run_sync

pytestmark = pytest.mark.slow


def dead_letters(app: Any) -> list[tuple[Any, str]]:
    async def read() -> list[tuple[Any, str]]:
        broker = await app.broker()
        return await broker.dead_letters()

    return run_sync(read())


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_round_trip_and_failure_types(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")
    assert basic_app.add.delay(2, 2).get(timeout=10) == 4

    res = basic_app.fail.delay("boom")
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=10)
    assert res.state == states.FAILURE
    assert res.failed() and res.ready() and not res.successful()
    assert "ValueError: boom" in (res.traceback or "")
    assert res.date_done is not None

    with pytest.raises(basic_app.Boom, match="mine"):
        basic_app.fail_own.delay("mine").get(timeout=10)


def test_exception_of_an_unknown_module_is_a_remote_error(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")
    res = basic_app.fail_own.delay("x")
    res.get(timeout=10, propagate=False)
    # The same stored meta, read by an app that does not know the task's module:
    from celeriac import Celeriac

    other = Celeriac(
        "other",
        broker=basic_app.app.conf.broker_url,
        backend=basic_app.app.conf.result_backend,
        set_as_current=False,
    )
    try:
        exc = other.AsyncResult(res.id).result
        assert isinstance(exc, RemoteError)
        assert exc.exc_type == "Boom" and "x" in str(exc)
    finally:
        other.close()


def test_retries_go_through_the_broker(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")
    assert basic_app.flaky.delay(2).get(timeout=10) == 2
    res = basic_app.always_keyerror.delay()
    with pytest.raises(KeyError):
        res.get(timeout=10)


def test_countdown_is_held_by_the_broker(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")
    sent = time.time()
    res = basic_app.add.apply_async((1, 2), countdown=0.6)
    assert res.get(timeout=10) == 3
    assert res.date_done is not None
    assert res.date_done.timestamp() - sent >= 0.6


def test_asyncio_pool_runs_async_tasks_and_cuts_them_off(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "asyncio", "-c", "20")
    results = [basic_app.async_add.delay(i, i) for i in range(40)]
    assert [r.get(timeout=10) for r in results] == [2 * i for i in range(40)]
    assert basic_app.add.delay(1, 1).get(timeout=10) == 2  # a sync task on the asyncio pool
    with pytest.raises(TimeLimitExceeded):
        basic_app.async_too_slow.delay().get(timeout=10)


def test_threads_pool_runs_tasks_side_by_side(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "threads", "-c", "4")
    started = time.monotonic()
    results = [basic_app.sleep.delay(0.5) for _ in range(4)]
    assert [r.get(timeout=10) for r in results] == [0.5] * 4
    assert time.monotonic() - started < 1.9  # four half-second sleeps did not run in a row


def test_queues_and_routes(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo", "-Q", "other")
    assert basic_app.on_other_queue.delay().get(timeout=10) == "other"
    res = basic_app.whoami.apply_async(queue="other")
    assert res.get(timeout=10)["queue"] == "other"


def test_unknown_task_is_dead_lettered_and_recorded(basic_app: Any, start_worker: Any) -> None:
    worker = start_worker("-P", "solo")
    res = basic_app.app.send_task("no.such.task", (1,))
    with pytest.raises(NotRegistered):
        res.get(timeout=10)
    assert basic_app.add.delay(1, 2).get(timeout=10) == 3  # the worker lives on
    letters = dead_letters(basic_app.app)
    assert any("NotRegistered" in reason for _, reason in letters)
    assert "no.such.task" in worker.log()


def test_malformed_and_disallowed_messages(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")

    async def publish_raw(envelope: Envelope) -> None:
        broker = await basic_app.app.broker()
        await broker.publish([Outgoing("celery", envelope)])

    garbage = Envelope(
        b"\xff not json",
        "application/json",
        "utf-8",
        {"lang": "py", "task": "basic.add", "id": "bad-body-1"},
        {"correlation_id": "bad-body-1"},
    )
    run_sync(publish_raw(garbage))
    with pytest.raises(DecodeError):
        basic_app.app.AsyncResult("bad-body-1").get(timeout=10)

    res = basic_app.add.apply_async((1, 2), serializer="msgpack")
    with pytest.raises(ContentDisallowed):
        res.get(timeout=10)
    assert basic_app.add.delay(2, 3).get(timeout=10) == 5
    reasons = [reason for _, reason in dead_letters(basic_app.app)]
    assert any("DecodeError" in r for r in reasons)
    assert any("ContentDisallowed" in r for r in reasons)


def test_results_that_cannot_be_stored_fail_cleanly(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")
    with pytest.raises(EncodeError):
        basic_app.unserializable.delay().get(timeout=10)


def test_expired_tasks_are_revoked_not_run(basic_app: Any, start_worker: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    res = basic_app.write_file.apply_async((str(marker), "x"), expires=0.01)
    time.sleep(0.05)
    start_worker("-P", "solo")
    res.get(timeout=10, propagate=False)
    assert res.state == states.REVOKED
    assert not marker.exists()


def test_ignore_result_stores_nothing(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")
    res = basic_app.ignored.delay()
    assert basic_app.add.delay(1, 1).get(timeout=10) == 2  # ran after `ignored` on one solo worker
    assert res.state == states.PENDING


def test_track_started(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")
    res = basic_app.tracked.delay(1.0)
    wait_until(lambda: res.state == states.STARTED)
    assert res.get(timeout=10) == "done"
    assert res.state == states.SUCCESS


def test_reject_dead_letters_or_requeues(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo")
    basic_app.reject_me.delay(False)
    wait_until(lambda: any("rejected by the task" in r for _, r in dead_letters(basic_app.app)))
    # A task that rejects with requeue=True again and again is not requeued forever.
    basic_app.reject_me.delay(True)
    wait_until(lambda: any("rejected and requeued 3 times" in r
                           for _, r in dead_letters(basic_app.app)))


def test_ignore_records_nothing(basic_app: Any, start_worker: Any, tmp_path: Path) -> None:
    start_worker("-P", "solo")
    marker = tmp_path / "ignored"
    res = basic_app.ignore_me.delay(str(marker))
    wait_until(marker.exists)
    assert basic_app.add.delay(1, 1).get(timeout=10) == 2
    assert res.state == states.PENDING


def test_bound_request(basic_app: Any, start_worker: Any) -> None:
    start_worker("-P", "solo", "-n", "alpha@%h")
    info = basic_app.whoami.delay().get(timeout=10)
    assert info["hostname"].startswith("alpha@")
    assert info["retries"] == 0 and info["queue"] == "celery"


def test_warm_shutdown_finishes_running_and_gives_back_prefetched(basic_app: Any, start_worker: Any) -> None:
    worker = start_worker("-P", "solo", "--prefetch-multiplier", "4")
    first = basic_app.sleep.delay(1.0)
    rest = [basic_app.add.delay(i, 0) for i in range(3)]
    wait_until(lambda: "sleep" in worker.log() or first.state != states.PENDING, 5)
    time.sleep(0.3)
    assert worker.terminate() == 0
    assert first.get(timeout=1) == 1.0  # finished within the grace period
    start_worker("-P", "solo")
    assert [r.get(timeout=10) for r in rest] == [0, 1, 2]


def test_killed_worker_task_runs_again_after_its_lease(
    basic_app: Any, start_worker: Any, tmp_path: Path
) -> None:
    env = {"CELERIAC_TEST_LEASE": "1"}
    marker = tmp_path / "runs"
    first = start_worker("-P", "solo", env=env)
    res = basic_app.sleep_late.delay(3.0, str(marker))
    wait_until(lambda: marker.exists())
    first.proc.send_signal(signal.SIGKILL)  # mid-task: the task sleeps 3 s
    first.proc.wait(5)
    assert res.state == states.PENDING
    start_worker("-P", "solo", env=env)
    assert res.get(timeout=20) == 3.0
    assert len(marker.read_text().split()) == 2


def test_long_task_keeps_its_lease(basic_app: Any, start_worker: Any, tmp_path: Path) -> None:
    env = {"CELERIAC_TEST_LEASE": "0.6"}
    marker = tmp_path / "runs"
    start_worker("-P", "solo", env=env)
    start_worker("-P", "solo", env=env)
    res = basic_app.sleep_late.delay(2.0, str(marker))
    assert res.get(timeout=15) == 2.0
    assert len(marker.read_text().split()) == 1


def test_link_chain_and_group(basic_app: Any, start_worker: Any, tmp_path: Path) -> None:
    from celeriac import chain, group

    start_worker("-P", "threads", "-c", "2")
    out = tmp_path / "linked"
    res = basic_app.add.apply_async((1, 2), link=basic_app.write_file.si(str(out), "linked"))
    assert res.get(timeout=10) == 3
    wait_until(out.exists)

    final = chain(basic_app.add.s(1, 2), basic_app.add.s(10), basic_app.add.s(100)).apply_async()
    assert final.get(timeout=10) == 113

    piped = (basic_app.add.s(2, 2) | basic_app.add.s(4)).delay()
    assert piped.get(timeout=10) == 8

    results = group(basic_app.add.s(i, i) for i in range(10)).apply_async()
    assert results.get(timeout=10) == [2 * i for i in range(10)]

    err_marker = tmp_path / "errback"
    failing = basic_app.fail.apply_async(
        ("x",), link_error=basic_app.record_errback.s(str(err_marker))
    )
    with pytest.raises(ValueError):
        failing.get(timeout=10)
    wait_until(lambda: err_marker.exists() and err_marker.read_text() == failing.id)


def test_idle_worker_costs_almost_no_cpu_and_wakes_at_once(
    basic_app: Any, start_worker: Any
) -> None:
    import psutil

    worker = start_worker("-P", "solo")
    assert basic_app.add.delay(0, 0).get(timeout=10) == 0  # warm
    proc = psutil.Process(worker.pid)
    before = proc.cpu_times()
    time.sleep(3.0)
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.02 * 3.0, f"an idle worker used {used:.3f} s of CPU in 3 s"
    # No fixed polling interval stands between a publish and the idle worker.
    delays = []
    for i in range(20):
        started = time.perf_counter()
        basic_app.add.delay(i, 1).get(timeout=10)
        delays.append(time.perf_counter() - started)
        time.sleep(0.05)
    delays.sort()
    assert delays[len(delays) // 2] < 0.1, delays


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_second_signal_is_a_cold_shutdown(
    basic_app: Any, start_worker: Any, tmp_path: Path, pool: str
) -> None:
    marker = tmp_path / "runs"
    worker = start_worker("-P", pool, "--shutdown-timeout", "60")
    res = basic_app.sleep_late.delay(30.0, str(marker))
    wait_until(marker.exists)
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(10) == 1
    assert time.monotonic() - started < 10  # did not wait for the 30 s task
    assert "cold shutdown" in worker.log()
    # The interrupted acks_late message went back at once, not after its 30 s lease.
    basic_app.sleep_late.delay(0.0)  # something quick queued behind it
    start_worker("-P", "threads", "-c", "2")
    wait_until(lambda: len(marker.read_text().split()) == 2, 10)
    assert res.state in (states.PENDING, states.STARTED)


def test_a_busy_worker_leaves_new_messages_to_others(
    basic_app: Any, start_worker: Any, redis_url: str
) -> None:
    """Every runner busy and the queue empty at its last fetch: a message sent meanwhile
    stays in the queue (free for another worker) until a runner is free, then runs."""
    import redis

    basic_app.app.conf.broker_url = basic_app.app.conf.result_backend = redis_url
    raw = redis.Redis.from_url(redis_url)
    try:
        start_worker("-P", "threads", "-c", "2", "--prefetch-multiplier", "4", url=redis_url)
        busy = [basic_app.sleep.delay(1.5) for _ in range(2)]
        wait_until(lambda: raw.llen("celery") == 0, 5)
        time.sleep(0.3)  # both running: the worker asked for up to 8 and got 2
        late = basic_app.add.delay(1, 1)
        time.sleep(0.5)
        assert raw.llen("celery") == 1  # not taken: another worker could run it
        assert [r.get(timeout=10) for r in busy] == [1.5, 1.5]
        assert late.get(timeout=10) == 2
    finally:
        raw.close()

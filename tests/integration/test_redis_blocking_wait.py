"""Waiting for a result from sync code on the Redis backend's blocking connection
(``RedisBackend.wait_blocking``, what ``AsyncResult.get()`` uses with no event loop running),
against a real Redis: stored before or after the wait begins, states that are not ready,
timeouts, a killed connection, a silent server, threads, and a server without RESP3."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celeriac import Celeriac, states
from celeriac.backends.redis import LISTENER_NAME, RedisBackend
from celeriac.errors import BackendError
from celeriac.testing.backend_kit import celery_meta
from celeriac.utils import spin
from celeriac.utils.sync import run_sync
from tests.services import RedisServer, free_port


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(params=[0.0, 0.001, 0.5], ids=["no-spin", "spin-1ms", "spin-500ms"])
def backend(redis_url: str, request: pytest.FixtureRequest) -> Iterator[RedisBackend]:
    """Without a spin; with the default one (the results below come after it); with one
    long enough to take them while spinning (set past the option's limit, so that the
    pushes of these tests, 0.2 s in, come inside it)."""
    b = RedisBackend(redis_url, expires=3600)
    b.wait_spin = request.param
    try:
        yield b
    finally:
        asyncio.run(b.close())


def store(raw: redis.Redis, task_id: str, status: str, result: Any = None) -> dict[str, Any]:
    """What a worker does: SETEX the meta, then PUBLISH it on the key's channel."""
    meta = celery_meta(task_id, status, result)
    key = f"celery-task-meta-{task_id}"
    raw.set(key, json.dumps(meta), ex=60)
    raw.publish(key, json.dumps(meta))
    return meta


def later(seconds: float, action: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def numsub(raw: redis.Redis, task_id: str) -> int:
    return int(raw.pubsub_numsub(f"celery-task-meta-{task_id}")[0][1])


def waiter_clients(raw: redis.Redis) -> list[dict[str, Any]]:
    return [c for c in raw.client_list() if c.get("name") == LISTENER_NAME]


def test_a_result_stored_before_the_wait_is_read(backend: RedisBackend, raw: redis.Redis) -> None:
    task_id = new_id()
    meta = store(raw, task_id, states.SUCCESS, 42)
    assert backend.wait_blocking(task_id, 5) == meta
    assert backend.pubsub_connections == 0  # no event loop, no listener


def test_a_result_published_during_the_wait_is_received(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    """States that are not ready (STARTED, a custom one) are passed over; the wait ends
    with the ready one. The next wait on the same connection unsubscribes the last channel."""
    first, second = new_id(), new_id()

    def progress() -> None:
        store(raw, first, states.STARTED)
        store(raw, first, "PROGRESS", {"done": 1})
        store(raw, first, states.SUCCESS, "done")

    writer = later(0.2, progress)
    started = time.monotonic()
    meta = backend.wait_blocking(first, 10)
    writer.join()
    assert meta is not None and meta["result"] == "done"
    assert time.monotonic() - started < 5
    writer = later(0.2, lambda: store(raw, second, states.FAILURE, {"exc_type": "ValueError"}))
    meta = backend.wait_blocking(second, 10)
    writer.join()
    assert meta is not None and meta["status"] == states.FAILURE
    assert numsub(raw, first) == 0 and numsub(raw, second) == 1
    assert len(waiter_clients(raw)) == 1


def test_a_timeout_returns_none_and_the_next_wait_works(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    slow, fast = new_id(), new_id()
    started = time.monotonic()
    assert backend.wait_blocking(slow, 0.3) is None
    assert 0.25 <= time.monotonic() - started < 3
    store(raw, fast, states.SUCCESS, "fast")
    assert (backend.wait_blocking(fast, 5) or {}).get("result") == "fast"


def test_an_unreadable_publication_is_passed_over(backend: RedisBackend, raw: redis.Redis) -> None:
    task_id = new_id()
    key = f"celery-task-meta-{task_id}"

    def garbage_then_result() -> None:
        raw.publish(key, b"\xff not json")
        store(raw, task_id, states.SUCCESS, "after garbage")

    writer = later(0.2, garbage_then_result)
    assert (backend.wait_blocking(task_id, 10) or {}).get("result") == "after garbage"
    writer.join()


def test_a_killed_connection_is_opened_again_and_the_key_read_again(
    backend: RedisBackend, raw: redis.Redis
) -> None:
    """The result is written, not published, while the connection is gone: the new
    connection's GET finds it."""
    task_id = new_id()
    meta = celery_meta(task_id, states.SUCCESS, "unpublished")

    def kill_then_write() -> None:
        deadline = time.monotonic() + 5
        while numsub(raw, task_id) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert raw.client_kill_filter(_type="pubsub") == 1
        raw.set(f"celery-task-meta-{task_id}", json.dumps(meta), ex=60)

    writer = later(0, kill_then_write)
    assert backend.wait_blocking(task_id, 10) == meta
    writer.join()


def test_a_silent_server_is_pinged_then_left() -> None:
    """Answered PINGs keep the connection; a server that stops answering (DEBUG SLEEP) is
    left after two ping intervals, and the wait goes on on a new connection."""
    server = RedisServer(extra=["--enable-debug-command", "yes"]).start()
    redis_url = server.url
    raw = redis.Redis.from_url(redis_url)
    b = RedisBackend(redis_url, ping_interval=0.1)

    def pings() -> int:
        return int(raw.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))

    try:
        before = pings()
        assert b.wait_blocking(new_id(), 0.6) is None
        assert pings() - before >= 2
        task_id = new_id()
        other = redis.Redis.from_url(redis_url)
        pause = later(0.2, lambda: other.execute_command("DEBUG", "SLEEP", "0.6"))
        writer = later(1.0, lambda: store(raw, task_id, states.SUCCESS, "after the pause"))
        assert (b.wait_blocking(task_id, 10) or {}).get("result") == "after the pause"
        pause.join()
        writer.join()
        other.close()
        assert len(waiter_clients(raw)) == 1  # the silent one was closed
    finally:
        try:
            raw.close()
            asyncio.run(b.close())
        finally:
            server.cleanup()


def test_threads_wait_on_connections_of_their_own(backend: RedisBackend, raw: redis.Redis) -> None:
    """Threads that start their first wait at once share one waiter (none is made and then
    lost, its connection with it), each on a connection of its own."""
    ids = [new_id() for _ in range(8)]
    results: dict[str, Any] = {}
    start = threading.Barrier(len(ids))

    def wait(task_id: str) -> None:
        start.wait()
        results[task_id] = backend.wait_blocking(task_id, 10)

    threads = [threading.Thread(target=wait, args=(t,)) for t in ids]
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: a check-then-make race would show
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while sum(numsub(raw, t) for t in ids) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        sys.setswitchinterval(switching)
    for n, task_id in enumerate(ids):
        store(raw, task_id, states.SUCCESS, n)
    for t in threads:
        t.join(10)
    assert [results[t]["result"] for t in ids] == list(range(len(ids)))
    assert len(waiter_clients(raw)) == len(ids)


def test_an_unreachable_server_raises_a_backend_error() -> None:
    b = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    with pytest.raises(BackendError, match="cannot reach the server"):
        b.wait_blocking(new_id(), 1)


def test_a_server_without_resp3_is_waited_on_the_async_way() -> None:
    """Before Redis 6 there is no HELLO (the backend's own connections are then told to
    speak RESP2): the blocking wait falls back to the pub/sub listener."""
    server = RedisServer(extra=["--rename-command", "HELLO", ""]).start()
    b = RedisBackend(server.url, protocol=2)
    raw = redis.Redis.from_url(server.url, protocol=2)
    try:
        task_id = new_id()
        writer = later(0.3, lambda: store(raw, task_id, states.SUCCESS, "via the listener"))
        assert (b.wait_blocking(task_id, 10) or {}).get("result") == "via the listener"
        writer.join()
        assert b.waits_blocking is False
        assert b.pubsub_connections == 1
    finally:
        try:
            raw.close()
            run_sync(b.close())  # its listener runs on this thread's loop
        finally:
            server.cleanup()


def test_async_result_get_from_sync_code_uses_the_blocking_wait(redis_url: str) -> None:
    """``AsyncResult.get()`` with no loop running, and ``aget`` inside one, read the same."""
    app = Celeriac("blocking-wait", broker="memory://", backend=redis_url)
    raw = redis.Redis.from_url(redis_url)
    try:
        task_id = new_id()
        writer = later(0.2, lambda: store(raw, task_id, states.SUCCESS, [1, 2]))
        assert app.AsyncResult(task_id).get(timeout=10) == [1, 2]
        writer.join()
        failed = new_id()
        store(raw, failed, states.FAILURE,
              {"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"})
        with pytest.raises(ValueError, match="bad"):
            app.AsyncResult(failed).get(timeout=10)
        assert isinstance(app.AsyncResult(failed).get(timeout=10, propagate=False), ValueError)
        assert len(waiter_clients(raw)) == 1
        with pytest.raises(Exception, match="did not finish"):
            app.AsyncResult(new_id()).get(timeout=0.2)

        async def in_a_loop() -> Any:
            return await app.AsyncResult(task_id).aget(timeout=10)

        assert asyncio.run(in_a_loop()) == [1, 2]
    finally:
        raw.close()
        app.close()


def test_time_idle_between_waits_is_not_silence(redis_url: str, raw: redis.Redis) -> None:
    """A connection left idle for longer than one, then two, ping intervals serves the next
    wait as a fresh one would: no PING mistaken for the GET's reply, no false time-out."""
    b = RedisBackend(redis_url, ping_interval=0.2)
    try:
        for idle in (0.0, 0.3, 0.5):
            time.sleep(idle)
            task_id = new_id()
            store(raw, task_id, states.SUCCESS, idle)
            assert (b.wait_blocking(task_id, 5) or {}).get("result") == idle
        assert len(waiter_clients(raw)) == 1
    finally:
        asyncio.run(b.close())


def test_the_first_wait_after_a_redis_restart_opens_a_new_connection(
    private_redis: RedisServer,
) -> None:
    b = RedisBackend(private_redis.url)
    raw = redis.Redis.from_url(private_redis.url)
    try:
        before = new_id()
        store(raw, before, states.SUCCESS, "before")
        assert (b.wait_blocking(before, 5) or {}).get("result") == "before"
        private_redis.crash()
        private_redis.start()
        after = new_id()
        store(raw, after, states.SUCCESS, "after")
        assert (b.wait_blocking(after, 5) or {}).get("result") == "after"
    finally:
        raw.close()
        asyncio.run(b.close())


def test_a_refused_subscription_raises_and_leaves_no_reply_behind(
    redis_url: str, raw: redis.Redis
) -> None:
    """An ACL user without channel rights (Redis 7's default for new users): the SUBSCRIBE
    is refused. The wait raises, and the GET's reply left on that connection is never read
    as another wait's."""
    user = f"no-channels-{uuid.uuid4().hex[:8]}"
    raw.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "resetchannels")
    where = raw.connection_pool.connection_kwargs
    b = RedisBackend(f"redis://{user}:pw@{where['host']}:{where['port']}/0")
    try:
        first, second = new_id(), new_id()
        store(raw, first, states.SUCCESS, "first")
        with pytest.raises(BackendError, match="permissions"):
            b.wait_blocking(first, 2)
        with pytest.raises(BackendError, match="permissions"):
            b.wait_blocking(second, 2)
    finally:
        asyncio.run(b.close())
        raw.execute_command("ACL", "DELUSER", user)


def test_an_unreadable_stored_result_raises_at_once(backend: RedisBackend, raw: redis.Redis) -> None:
    task_id = new_id()
    raw.set(f"celery-task-meta-{task_id}", b"\xff not json", ex=60)
    started = time.monotonic()
    with pytest.raises(BackendError):
        backend.wait_blocking(task_id, 5)
    assert time.monotonic() - started < 2


def test_large_results_that_miss_the_spin_pause_it(redis_url: str, raw: redis.Redis) -> None:
    """A result larger than one read comes in pieces: the first misses the spin, the rest
    arrives at once. Only the first counts, so waits for slow tasks with large results
    stop spinning, as those with small ones do."""
    b = RedisBackend(redis_url, expires=3600, wait_spin=0.001)
    try:
        for _ in range(spin.MISSES_BEFORE_PAUSE):
            task_id = new_id()
            writer = later(0.02, lambda t=task_id: store(raw, t, states.SUCCESS, "x" * 200_000))
            meta = b.wait_blocking(task_id, 10)
            writer.join()
            assert meta is not None and len(meta["result"]) == 200_000
        assert b._waiter is not None
        results = b._waiter._local.conn.results
        if not results.budget:
            pytest.skip("one usable CPU: no spin to pause")
        assert results._paused > 0
    finally:
        asyncio.run(b.close())

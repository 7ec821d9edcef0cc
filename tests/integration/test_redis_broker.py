"""The Redis broker with real Redis servers and real worker processes: kombu's wire layout,
per-message leases under SIGKILL and long tasks, a Redis crash with AOF, reconnection, and ETA
messages waiting in Redis (what a Celery worker sees of them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac import Celeriac
from celeriac.brokers._redis_blocking import BlockingClient
from celeriac.brokers.redis import RedisBroker
from celeriac.errors import BrokerConnectionError, BrokerError
from celeriac.message import Envelope, Outgoing
from celeriac.protocol import kombu_envelope
from celeriac.utils.sync import thread_loop

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "celery-wire"
APP = "tests.apps.redis_app"


def capture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


@pytest.fixture
def producer(db_url: str) -> Iterator[Callable[..., Celeriac]]:
    """Producer apps (sync callers) for a Redis broker and this test's SQLite backend."""
    apps: list[Celeriac] = []

    def make(broker_url: str, **options: Any) -> Celeriac:
        app = Celeriac("producer", broker=broker_url, backend=db_url)
        app.conf.broker_transport_options = options
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def worker_env(broker_url: str, db_url: str, lease: float = 30.0) -> dict[str, str]:
    return {"CELERIAC_TEST_BROKER": broker_url, "CELERIAC_TEST_BACKEND": db_url,
            "CELERIAC_TEST_LEASE": str(lease)}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- the wire ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_wire_layout_matches_kombu(redis_url: str, producer: Callable[..., Celeriac]) -> None:
    app = producer(redis_url)
    r = redis.Redis.from_url(redis_url)
    app.send_task("capapp.add", (1, 1))
    app.send_task("capapp.add", (1, 1), priority=5)
    ours = r.lrange("celery", 0, -1)
    assert len(ours) == 1
    # kombu's step list for 5 is step 3, named as kombu names it
    assert r.llen("celery\x06\x163") == 1
    theirs = capture("redis-send-plain_apply_async")["captured"]["keys_after_send"]
    their_entry = json.loads(theirs["celery"]["value"][0])
    our_entry = json.loads(ours[0])
    assert list(our_entry) == list(their_entry)
    assert list(our_entry["properties"]) == list(their_entry["properties"])
    assert list(our_entry["headers"]) == list(their_entry["headers"])
    assert our_entry["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert b'", "' not in ours[0]  # compact (orjson) by default; kombu reads it the same
    env, info, tag = kombu_envelope.loads(ours[0])
    assert env.headers["task"] == "capapp.add" and len(tag) == 36
    assert info == {"exchange": "", "routing_key": "celery"}
    member = theirs["_kombu.binding.celery"]["value"][0].encode()
    assert r.smembers("_kombu.binding.celery") == {member}
    assert r.smembers("_kombu.binding_permanent.celery") == {member}
    exact = producer(redis_url, compact_envelope=False)
    exact.send_task("capapp.add", (1, 1))
    kombus = r.lindex("celery", 0)
    assert kombus is not None and b'", "' in kombus  # kombu's (Python's) separators
    assert json.loads(kombus).keys() == our_entry.keys()
    r.close()


@pytest.mark.timeout(30)
async def test_celery_entries_are_taken_and_kept_byte_for_byte(redis_url: str) -> None:
    """A Celery producer's entries (from the captures) are fetched, leased, and when given
    back are the very same bytes; priorities land as kombu put them."""
    sent = capture("redis-send-priority")["captured"]["keys_after_send"]
    r = redis.Redis.from_url(redis_url)
    for key, value in sent.items():
        r.lpush(key, *reversed(value["value"]))
    broker = RedisBroker(redis_url)
    await broker.connect()
    try:
        got = await broker.fetch(["celery"], 10, 1.0)
        # celeriac serves higher priorities first: step 9, then 3 (3 and 5, FIFO), then 0
        assert [d.priority for d in got] == [9, 3, 5, 0]
        assert all(d.envelope.headers["task"] == "capapp.add" for d in got)
        await broker.requeue(got)
        assert r.lrange("celery", -1, -1) == [sent["celery"]["value"][0].encode()]
        again = await broker.fetch(["celery"], 10, 1.0)
        assert [d.deliveries for d in again] == [2, 2, 2, 2]
        await broker.ack(again)
        assert await broker.queue_size("celery") == 0
        kombu_order = RedisBroker(redis_url, priority_order="kombu")
        await kombu_order.connect()
        for key, value in sent.items():
            r.lpush(key, *reversed(value["value"]))
        assert [d.priority for d in await kombu_order.fetch(["celery"], 10, 1.0)] == [0, 3, 5, 9]
        await kombu_order.close()
    finally:
        await broker.close()
        r.close()


# -- leases -----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_killed_worker_task_runs_again_exactly_once(
    redis_url: str, db_url: str, tmp_path: Path, start_worker: Any,
    producer: Callable[..., Celeriac],
) -> None:
    env = worker_env(redis_url, db_url, lease=1.0)
    marker = tmp_path / "runs"
    first = start_worker("-P", "solo", app=APP, env=env)
    app = producer(redis_url)
    result = app.send_task("tests.apps.redis_app.run_late", (1.5, str(marker)))
    wait_for(lambda: len(lines(marker)) == 1, 20, "the first run")
    first.kill()
    start_worker("-P", "solo", app=APP, env=env)
    assert result.get(timeout=30) == 1.5
    time.sleep(2.5)  # more than two leases: nothing else may run it
    assert len(lines(marker)) == 2, lines(marker)


@pytest.mark.timeout(90)
def test_task_three_times_longer_than_its_lease_runs_once(
    redis_url: str, db_url: str, tmp_path: Path, start_worker: Any,
    producer: Callable[..., Celeriac],
) -> None:
    env = worker_env(redis_url, db_url, lease=1.0)
    marker = tmp_path / "runs"
    start_worker("-P", "solo", app=APP, env=env)
    start_worker("-P", "solo", app=APP, env=env)
    app = producer(redis_url)
    result = app.send_task("tests.apps.redis_app.run_late", (3.0, str(marker)))
    assert result.get(timeout=30) == 3.0
    time.sleep(1.5)
    assert len(lines(marker)) == 1, lines(marker)


def test_sync_calls_publish_in_order_on_a_blocking_connection(
    redis_url: str, producer: Callable[..., Celeriac],
) -> None:
    """``send_task``/``delay`` from sync code publish on the broker's blocking connection (no
    event loop turn per call), in call order; ``send_many`` too; a coroutine's ``asend_task`` on
    the same app goes through the async path to the same list."""
    app = producer(redis_url)
    sent = [app.send_task("capapp.add", (i, 1)).id for i in range(20)]
    sent += [r.id for r in app.send_many([app.signature("capapp.add", (i, 2)) for i in range(5)])]

    async def send_from_a_coroutine() -> str:
        try:
            return (await app.asend_task("capapp.add", (0, 3))).id
        finally:
            await app.aclose()  # this loop's connections

    sent.append(asyncio.run(send_from_a_coroutine()))
    broker = app._resources[thread_loop()].broker
    assert isinstance(broker, RedisBroker) and broker._blocking is not None
    r = redis.Redis.from_url(redis_url)
    try:
        entries = [json.loads(raw) for raw in reversed(r.lrange("celery", 0, -1))]
    finally:
        r.close()
    assert [e["headers"]["id"] for e in entries] == sent  # the consuming end first


def test_the_blocking_connection_closed_by_redis_is_replaced_and_the_send_retried(
    redis_url: str, producer: Callable[..., Celeriac],
) -> None:
    """Redis closing the publish connection (a restart, ``CLIENT KILL``, an idle ``timeout``)
    fails the send on it; the retry policy sends again on a new connection: nothing is lost
    or queued twice. An error reply raises and leaves the connection in step."""
    app = producer(redis_url)
    first = app.send_task("capapp.add", (1, 1)).id
    broker = app._resources[thread_loop()].broker
    assert isinstance(broker, RedisBroker) and broker._blocking is not None
    blocking = broker._blocking
    r = redis.Redis.from_url(redis_url)
    try:
        old_sock = blocking._sock
        assert old_sock is not None
        port = old_sock.getsockname()[1]  # the connection, as Redis lists it
        r.client_kill(next(c["addr"] for c in r.client_list() if c["addr"].endswith(f":{port}")))
        second = app.send_task("capapp.add", (2, 2)).id
        assert blocking._sock is not None and blocking._sock is not old_sock
        r.set("not-a-list", "x")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            blocking.run([("LPUSH", "not-a-list", "y"), ("PING",)])
        third = app.send_task("capapp.add", (3, 3)).id
        entries = [json.loads(raw) for raw in reversed(r.lrange("celery", 0, -1))]
    finally:
        r.close()
    assert [e["headers"]["id"] for e in entries] == [first, second, third]


@pytest.mark.parametrize("reply_spin", [0.0, 0.0002])
def test_the_blocking_connection_keeps_its_socket_timeout(redis_url: str, reply_spin: float
                                                          ) -> None:
    """A reply that does not come within ``socket_timeout`` fails the call with
    ``TimeoutError`` (the kernel times the wait: the socket is blocking in Python's eyes), and
    the next call runs on a new connection; with or without a spin before the wait."""
    client = BlockingClient(redis_url, {"socket_timeout": 0.3, "socket_connect_timeout": 5},
                            reply_spin)
    try:
        assert client.run([("PING",)]) == [b"PONG"]
        sock = client._sock
        assert sock is not None and sock.gettimeout() is None
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            client.run([("BLPOP", "never-filled", 5)])  # Redis answers after 5 s
        assert 0.2 < time.monotonic() - start < 3
        assert client.run([("PING",)]) == [b"PONG"] and client._sock is not sock
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_a_forked_child_publishes_on_connections_of_its_own(
    redis_url: str, producer: Callable[..., Celeriac],
) -> None:
    """A process that published, then forked (a web server preloading the app): parent and
    child publish at the same time, each on its own connection; every message lands once."""
    import os

    app = producer(redis_url)
    app.send_task("capapp.add", (0, 0))  # the parent's connections are open
    r = redis.Redis.from_url(redis_url)
    connections = int(r.info("stats")["total_connections_received"])
    n = 500
    pid = os.fork()
    if pid == 0:  # the child: its exit code says how it went
        code = 1
        try:
            for i in range(n):
                app.send_task("capapp.add", (i, 1))
            code = 0
        finally:
            os._exit(code)
    for i in range(n):
        app.send_task("capapp.add", (i, 2))
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert r.llen("celery") == 2 * n + 1
        # the child connected anew (not on the parent's socket, whose replies it would steal)
        assert int(r.info("stats")["total_connections_received"]) > connections
    finally:
        r.close()


@pytest.mark.timeout(120)
@pytest.mark.timeout(60)
async def test_coroutines_sending_together_first_share_one_connect(redis_url: str) -> None:
    """An async web app's first requests arrive together: they wait for one connect of the
    loop's broker rather than each opening (and leaking) connections of its own."""
    app = Celeriac("together", broker=redis_url, backend=redis_url)
    r = redis.Redis.from_url(redis_url)
    connections = int(r.info("stats")["total_connections_received"])
    try:
        await asyncio.gather(*(app.asend_task("capapp.add", (i, i)) for i in range(20)))
        assert r.llen("celery") == 20
        opened = int(r.info("stats")["total_connections_received"]) - connections
        assert opened <= 2, opened
    finally:
        await app.aclose()
        r.close()


@pytest.mark.timeout(60)
def test_a_fork_leaves_the_parents_thread_connections_working(redis_url: str) -> None:
    """A prefork worker forks a new child while its lease keeper's thread has a connection
    open: the child drops the parent's threads, and must not close their sockets (closing
    them would take them out of the epoll set the child shares with the parent, and the
    parent's next command on that thread would wait forever)."""
    import os
    import threading

    from celeriac.utils.sync import run_sync

    app = Celeriac("forkthreads", broker=redis_url, backend=redis_url)
    forked, replies = threading.Event(), []

    def keeper() -> None:
        async def size() -> int:
            broker = await app.broker()
            return await asyncio.wait_for(broker.queue_size("celery"), 5)

        replies.append(run_sync(size()))
        forked.wait(30)
        replies.append(run_sync(size()))

    thread = threading.Thread(target=keeper)
    thread.start()
    try:
        wait_for(lambda: bool(replies), 10, "the thread's first command")
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        forked.set()
        thread.join(30)
        assert replies == [0, 0]
    finally:
        forked.set()
        thread.join(30)
        app.close()


def test_threads_that_end_leave_no_connections_behind(redis_url: str) -> None:
    """A thread-per-request server: each thread publishes and reads a state on connections of
    its own loop; once the thread has ended they are closed, not left open per request."""
    import threading

    app = Celeriac("threads", broker=redis_url, backend=redis_url)
    r = redis.Redis.from_url(redis_url)
    before = len(r.client_list())
    failures: list[BaseException] = []

    def request() -> None:
        try:
            result = app.send_task("capapp.add", (1, 1))
            assert result.state == "PENDING"
        except BaseException as exc:
            failures.append(exc)

    try:
        for _ in range(20):
            thread = threading.Thread(target=request)
            thread.start()
            thread.join()
        assert not failures
        assert r.llen("celery") == 20
        wait_for(lambda: len(r.client_list()) <= before, 10, "the ended threads' connections "
                 "to close")
    finally:
        app.close()
        r.close()


def test_sending_needs_no_result_backend_up(redis_url: str) -> None:
    """A producer sends while its result backend is unreachable (as with Celery, the backend
    is connected when a result is first asked for); asking then fails clearly."""
    from celeriac.errors import BackendError
    from tests.services import free_port

    app = Celeriac("nobackend", broker=redis_url, backend=f"redis://127.0.0.1:{free_port()}/0")
    try:
        result = app.send_task("capapp.add", (1, 1))
        assert redis.Redis.from_url(redis_url).llen("celery") == 1
        with pytest.raises(BackendError, match="cannot reach"):
            result.get(timeout=1)
    finally:
        app.close()


# -- Redis going away -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_aof_redis_crash_loses_no_published_task(
    private_redis: Any, db_url: str, start_worker: Any, producer: Callable[..., Celeriac],
) -> None:
    url = private_redis.url
    start_worker("-P", "threads", "-c", "4", app=APP, env=worker_env(url, db_url, lease=2.0))
    app = producer(url)
    app.conf.task_publish_retry = False
    returned = []
    failed = 0
    for i in range(600):
        if i == 200:
            private_redis.crash()
        if i == 300:
            private_redis.start()
        try:
            returned.append((i, app.send_task("capapp.add", (i, 1))))
        except Exception:
            failed += 1
        if 200 <= i < 300:
            time.sleep(0.005)
    assert failed >= 50, failed  # the outage was real
    for i, res in returned:
        assert res.get(timeout=60) == i + 1, i


def fill_to_load_slowly(url: str) -> None:
    """Enough data (and an AOF of it) that a restarted Redis answers -LOADING for a while."""
    r = redis.Redis.from_url(url)
    try:
        for start in range(0, 1_500_000, 100_000):
            r.eval("for i = ARGV[1], ARGV[1] + 99999 do redis.call('SET', 'filler:' .. i, 'x') end",
                   0, start)
        r.bgrewriteaof()
        wait_for(lambda: r.info("persistence")["aof_rewrite_in_progress"] == 0, 60, "the AOF")
    finally:
        r.close()


def still_loading(r: redis.Redis) -> bool:
    try:
        return bool(r.info("persistence")["loading"])
    except redis.BusyLoadingError:
        return True


@pytest.mark.timeout(120)
def test_a_publish_to_a_redis_still_loading_its_data_raises_and_is_not_lost(
    private_redis: Any, producer: Callable[..., Celeriac],
) -> None:
    """A restarted Redis answers ``-LOADING`` until its data is read back; redis-py calls
    that a ConnectionError, not a ResponseError. A publish answered so must fail (and be
    retried), on the blocking connection of sync callers and on the pipelined one of
    coroutines alike: a publish that returned is in the queue."""
    url = private_redis.url
    fill_to_load_slowly(url)
    app = producer(url)
    app.conf.task_publish_retry = False
    app.send_task("capapp.add", (0, 0))  # connected before the restart
    private_redis.crash()
    private_redis.start()
    returned, refused = [], 0

    async def send_from_a_coroutine() -> None:
        nonlocal refused
        try:
            returned.append((await app.asend_task("capapp.add", (1, 1))).id)
        except BrokerConnectionError:
            refused += 1

    loop = asyncio.new_event_loop()
    try:
        r = redis.Redis.from_url(url)
        while still_loading(r):
            try:
                returned.append(app.send_task("capapp.add", (1, 1)).id)
            except BrokerConnectionError:
                refused += 1
            loop.run_until_complete(send_from_a_coroutine())
        assert refused > 0  # the publishes did meet a loading Redis
        queued = {json.loads(raw)["headers"]["id"] for raw in r.lrange("celery", 0, -1)}
        assert set(returned) <= queued
    finally:
        loop.run_until_complete(app.aclose())
        loop.close()
        r.close()


@pytest.mark.timeout(120)
async def test_an_ack_refused_by_a_redis_still_loading_is_sent_again(private_redis: Any) -> None:
    """An ack (sent without waiting for its reply) that a restarted Redis refuses with
    -LOADING was not applied: it is sent again until Redis serves, so its message does not
    come back to run a second time once its lease lapses."""
    url = private_redis.url
    fill_to_load_slowly(url)
    broker = RedisBroker(url)
    await broker.connect()
    r = redis.Redis.from_url(url)
    try:
        await broker.publish([Outgoing("celery", Envelope(b"[]", properties={"priority": 0}))])
        got = await broker.fetch(["celery"], 1, 0)
        assert len(got) == 1
        private_redis.crash()
        private_redis.start()
        assert still_loading(r)
        await broker.ack(got)  # on the dead connection: kept, to be sent again
        with contextlib.suppress(BrokerError):  # a new connection: the ack goes first
            await broker.fetch(["celery"], 1, 0)
        assert still_loading(r)  # (the dataset is big enough to keep it loading meanwhile)
        await asyncio.to_thread(wait_for, lambda: not still_loading(r), 60, "the load")
        await asyncio.to_thread(wait_for, lambda: r.hlen("celeriac.inflight") == 0, 10,
                                "the ack to land")
        assert r.zcard("celeriac.leases") == 0 and r.llen("celery") == 0
    finally:
        await broker.close()
        r.close()


@pytest.mark.timeout(120)
def test_worker_resumes_consuming_after_redis_restart(
    private_redis: Any, db_url: str, start_worker: Any, producer: Callable[..., Celeriac],
) -> None:
    url = private_redis.url
    worker = start_worker("-P", "solo", app=APP, env=worker_env(url, db_url))
    app = producer(url)
    assert app.send_task("capapp.add", (1, 2)).get(timeout=20) == 3
    private_redis.crash()
    time.sleep(1.0)  # the worker's fetch fails for a while
    private_redis.start()
    results = [app.send_task("capapp.add", (i, i)) for i in range(20)]
    assert [r.get(timeout=40) for r in results] == [2 * i for i in range(20)]
    assert worker.proc.poll() is None
    assert "unreachable" in worker.log()  # it did see the outage


@pytest.mark.timeout(60)
async def test_a_redis_that_stops_answering_fails_the_wait_after_socket_timeout(
    private_redis: Any,
) -> None:
    """Replies are read without a timeout per reply; a watchdog drops the pipelined connection
    when an awaited reply has not come for ``socket_timeout``: a frozen Redis (SIGSTOP) fails
    the call (one retry on a new connection, which cannot connect either) instead of hanging,
    and the broker works again once Redis does."""
    import os
    import signal

    broker = RedisBroker(private_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    await broker.connect()
    pid = private_redis.proc.pid
    try:
        assert await broker.queue_size("celery") == 0
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(BrokerConnectionError):  # not wait_for's TimeoutError
            await asyncio.wait_for(broker.queue_size("celery"), 30)
        os.kill(pid, signal.SIGCONT)
        assert await broker.queue_size("celery") == 0
    finally:
        os.kill(pid, signal.SIGCONT)
        await broker.close()


@pytest.mark.timeout(60)
async def test_replies_that_came_while_the_loop_was_held_are_read_not_timed_out(
    redis_url: str,
) -> None:
    """A solo task holds the event loop longer than ``socket_timeout`` while a publish and a
    take are on the wire: their replies came meanwhile, so nothing is dropped or sent again
    (a re-sent LPUSH would queue the message twice, a re-sent take strand what the first
    took until its lease)."""
    broker = RedisBroker(redis_url, socket_timeout=0.3, lease_seconds=60)
    await broker.connect()
    r = redis.Redis.from_url(redis_url)
    env = Envelope(b"[]", properties={"priority": 0})
    try:
        sending = asyncio.ensure_future(broker.publish([Outgoing("held", env)]))
        await asyncio.sleep(0)  # the LPUSH is written
        time.sleep(0.8)  # the loop is held
        await sending
        assert r.llen("held") == 1
        await broker.publish([Outgoing("held", env)] * 2)
        fetching = asyncio.ensure_future(broker.fetch(["held"], 4, 1.0))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the take is written
        time.sleep(0.8)
        got = await fetching
        assert len(got) == 3
        assert r.hlen(broker.keys.inflight) == 3 and r.llen("held") == 0
        await broker.ack(got)
    finally:
        await broker.close()
        r.close()


@pytest.mark.timeout(60)
async def test_a_fetch_cancelled_while_its_take_is_on_the_wire_gives_the_messages_back(
    redis_url: str,
) -> None:
    """A worker stopping cancels its consumer, perhaps while a take is on the wire: Redis
    applies it, and the reply that nobody awaits any more puts the messages back at the head
    of their list, in order, at once (not after their lease)."""
    broker = RedisBroker(redis_url, lease_seconds=600)
    await broker.connect()
    r = redis.Redis.from_url(redis_url)
    try:
        await broker.fetch(["back"], 1, 0)  # queue declarations out of the way
        await broker.publish([Outgoing("back", Envelope(f"[{i}]".encode(),
                                                        properties={"priority": 0}))
                              for i in range(3)])
        fetching = asyncio.ensure_future(broker.fetch(["back"], 2, 1.0))
        await asyncio.sleep(0)  # the take is written
        fetching.cancel()
        await asyncio.gather(fetching, return_exceptions=True)
        assert fetching.cancelled()
        await broker.queue_size("back")  # a round trip: the give-back went before it
        assert r.hlen(broker.keys.inflight) == 0
        got = await broker.fetch(["back"], 3, 1.0)
        assert [d.envelope.body for d in got] == [b"[0]", b"[1]", b"[2]"]
        await broker.ack(got)
    finally:
        await broker.close()
        r.close()


# -- ETA / countdown --------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_deferring_a_held_message_moves_it_to_the_delayed_set_and_acks_it_at_once(
    redis_url: str,
) -> None:
    """A message not due yet goes back to wait in Redis and leaves the in-flight records in
    one transaction; it comes out once, when due."""
    broker = RedisBroker(redis_url, lease_seconds=60)
    await broker.connect()
    r = redis.Redis.from_url(redis_url)
    try:
        await broker.publish([Outgoing("later", Envelope(b"[1]", properties={"priority": 0}))])
        [held] = await broker.fetch(["later"], 1, 1.0)
        await broker.defer(held, time.time() + 0.5)
        assert r.hlen(broker.keys.inflight) == 0 and r.zcard(broker.keys.leases) == 0
        assert r.zcard(broker.keys.delayed("later")) == 1 and r.llen("later") == 0
        assert await broker.fetch(["later"], 1, 0) == []
        [due] = await broker.fetch(["later"], 1, 5.0)
        assert due.envelope.body == b"[1]"
        await broker.ack([due])
        assert await broker.fetch(["later"], 1, 0.6) == []
    finally:
        await broker.close()
        r.close()


@pytest.mark.timeout(120)
def test_delayed_messages_wait_in_redis_and_run_once(
    redis_url: str, db_url: str, tmp_path: Path, start_worker: Any,
    producer: Callable[..., Celeriac],
) -> None:
    """Countdown messages wait in ``celeriac.delayed.<queue>``: the list a Celery worker reads
    stays empty until they are due and a celeriac worker has moved them; two workers and a
    worker restart neither lose nor duplicate them."""
    env = worker_env(redis_url, db_url)
    marker = tmp_path / "runs"
    r = redis.Redis.from_url(redis_url)
    a = start_worker("-P", "solo", app=APP, env=env)
    start_worker("-P", "solo", app=APP, env=env)
    app = producer(redis_url)
    sent_at = time.time()
    results = [app.send_task("tests.apps.redis_app.record", (str(marker), f"t{i}"), countdown=3)
               for i in range(30)]
    assert r.zcard("celeriac.delayed.celery") == 30
    assert r.llen("celery") == 0  # what a Celery worker could see now: nothing
    a.kill()
    start_worker("-P", "solo", app=APP, env=env)
    assert sorted(res.get(timeout=30) for res in results) == sorted(f"t{i}" for i in range(30))
    time.sleep(0.5)
    runs = [line.split() for line in lines(marker)]
    assert sorted(name for name, _ in runs) == sorted(f"t{i}" for i in range(30))  # once each
    assert min(float(at) for _, at in runs) >= sent_at + 2.9
    assert r.zcard("celeriac.delayed.celery") == 0
    r.close()


@pytest.mark.timeout(60)
def test_celery_producer_eta_message_is_held_in_redis_not_in_the_worker(
    redis_url: str, db_url: str, start_worker: Any, producer: Callable[..., Celeriac],
) -> None:
    """A Celery producer LPUSHes an ETA message straight into the list; the celeriac worker
    moves it to the delayed set (and acks it) and runs it when due."""
    entry = json.loads(capture("redis-send-eta")["captured"]["keys_after_send"]["celery"]
                       ["value"][0])
    task_id = str(uuid.uuid4())
    eta = datetime.now(UTC) + timedelta(seconds=2)
    entry["headers"].update(id=task_id, root_id=task_id, eta=eta.isoformat(), expires=None)
    entry["properties"]["correlation_id"] = task_id
    r = redis.Redis.from_url(redis_url)
    start_worker("-P", "solo", app=APP, env=worker_env(redis_url, db_url))
    r.lpush("celery", json.dumps(entry))
    wait_for(lambda: r.zcard("celeriac.delayed.celery") == 1, 10, "the move to the delayed set")
    assert r.llen("celery") == 0 and r.hlen("celeriac.inflight") == 0  # acked, not held
    app = producer(redis_url)
    result = app.AsyncResult(task_id)
    assert result.get(timeout=20) is not None
    assert datetime.now(UTC) >= eta
    r.close()


# -- the broker alone, between processes -------------------------------------------------------


@pytest.mark.timeout(30)
async def test_idle_fetch_wakes_on_a_plain_lpush(redis_url: str) -> None:
    """A Celery producer only LPUSHes: that alone wakes a waiting fetch, in milliseconds."""
    broker = RedisBroker(redis_url)
    await broker.connect()
    r = redis.Redis.from_url(redis_url)
    try:
        raw = kombu_envelope.dumps(Envelope(b"[]", properties={"priority": 0}), "", "celery")
        for _ in range(5):
            waiting = asyncio.create_task(broker.fetch(["celery", "other"], 10, 10.0))
            await asyncio.sleep(0.3)
            sent = time.monotonic()
            await asyncio.to_thread(r.lpush, "celery", raw)
            got = await asyncio.wait_for(waiting, 5)
            assert len(got) == 1 and time.monotonic() - sent < 0.1
            await broker.ack(got)
        await broker.publish([Outgoing("celery", Envelope(b"x"))])
        assert await broker.purge(["celery"]) == 1
    finally:
        await broker.close()
        r.close()



@pytest.mark.timeout(120)
async def test_a_push_landing_as_an_idle_fetch_starts_waiting_is_seen_at_once(
    redis_url: str,
) -> None:
    """A push that lands after an idle fetch's take came back empty but before its watches are
    armed (a solo worker: its task ran meanwhile, and the caller's next push is already there)
    wakes the wait at once, whichever list it lands on, cycle after cycle: the watch on that
    list is either still blocked (and returns) or armed anew (and returns at once). A missed
    push would cost ``poll_interval`` (30 s here). The watches stay armed across waits: one
    connection per list serves every wait, and at most one watch per list is blocked."""
    broker = RedisBroker(redis_url, poll_interval=30.0)
    await broker.connect()
    r = redis.Redis.from_url(redis_url)
    try:
        raw = kombu_envelope.dumps(Envelope(b"[]", properties={"priority": 0}), "", "celery")
        lists = ["celery\x06\x169", "celery\x06\x166", "celery\x06\x163", "celery"]
        take = broker._take
        push: list[str] = []

        async def take_then_push(*args: Any, **kwargs: Any) -> Any:
            got = await take(*args, **kwargs)
            if push and not got[0]:  # empty: the wait is about to start
                await asyncio.to_thread(r.lpush, push.pop(), raw)
            return got

        broker._take = take_then_push  # type: ignore[method-assign]
        connections = int(r.info("stats")["total_connections_received"])
        for cycle in range(200):
            push.append(lists[cycle % len(lists)])
            got = await asyncio.wait_for(broker.fetch(["celery"], 10, 60.0), 10)
            assert len(got) == 1 and not push, f"cycle {cycle}"
            await broker.ack(got)
        assert int(r.info("clients")["blocked_clients"]) <= len(lists)
        # one watch connection per list served every wait (plus the pipelined one)
        assert int(r.info("stats")["total_connections_received"]) - connections <= len(lists) + 1
    finally:
        await broker.close()
        r.close()
    assert int(redis.Redis.from_url(redis_url).info("clients")["blocked_clients"]) == 0



# -- the take behind the watch ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def _connected(url: str, **options: Any) -> AsyncIterator[tuple[RedisBroker, redis.Redis]]:
    """A connected broker, and a plain client to look at Redis with; both closed after."""
    broker = RedisBroker(url, **options)
    await broker.connect()
    r = redis.Redis.from_url(url)
    try:
        yield broker, r
    finally:
        await broker.close()
        r.close()


def _entry() -> bytes:
    return kombu_envelope.dumps(Envelope(b"[]", properties={"priority": 0}), "", "celery")


def _hold_the_loop(seconds: float) -> None:
    """Keep the event loop from running for ``seconds``, as a task's own code would: replies
    that come meanwhile wait in the socket."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _last_command(r: redis.Redis, client_id: int) -> str | None:
    for client in r.client_list():
        if int(client["id"]) == client_id:
            return str(client["cmd"])
    return None


@pytest.mark.timeout(30)
async def test_an_idle_fetch_gets_its_message_with_the_wake(redis_url: str) -> None:
    """The take runs behind the BLMOVE on the watch's own connection: the message arrives
    with the reply to the wake, taken (in flight), with no take sent after it."""
    async with _connected(redis_url) as (broker, r):
        waiting = asyncio.create_task(broker.fetch(["celery"], 10, 10.0))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(r.lpush, "celery", _entry())
        got = await asyncio.wait_for(waiting, 5)
        assert len(got) == 1 and r.llen("celery") == 0
        watches = broker._watches
        assert watches is not None
        [watch] = watches._taking._idle  # back for the next wait
        assert _last_command(r, watch.client_id) == "evalsha"
        await broker.ack(got)
        assert await broker.queue_size("celery") == 0


@pytest.mark.timeout(30)
async def test_a_fetch_that_stopped_waiting_takes_nothing_more(redis_url: str) -> None:
    """Once a wait ends (its time ran out, or it was cancelled) nothing is taken behind it:
    a message sent then stays free for any worker."""
    broker = RedisBroker(redis_url, poll_interval=0.2)
    other = RedisBroker(redis_url)
    await broker.connect()
    await other.connect()
    r = redis.Redis.from_url(redis_url)
    try:
        assert await broker.fetch(["celery"], 10, 0.3) == []
        await asyncio.to_thread(r.lpush, "celery", _entry())
        await asyncio.sleep(0.5)
        assert r.llen("celery") == 1
        assert len(await other.fetch(["celery"], 10, 1.0)) == 1

        waiting = asyncio.create_task(broker.fetch(["celery"], 10, 10.0))
        await asyncio.sleep(0.3)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await asyncio.to_thread(r.lpush, "celery", _entry())
        await asyncio.sleep(0.5)
        assert r.llen("celery") == 1
        # only the plain watches of the other priority lists stay armed (no take behind them)
        assert int(r.info("clients")["blocked_clients"]) == len(broker._serve_steps) - 1
    finally:
        await broker.close()
        await other.close()
        r.close()


@pytest.mark.timeout(30)
async def test_a_wake_on_another_list_takes_at_once(redis_url: str) -> None:
    """A message on another queue or priority list ends the take-behind watch at once
    (CLIENT UNBLOCK): its take brings the message, long before the wait would end."""
    async with _connected(redis_url) as (broker, r):
        for target in ("other", "celery\x06\x163"):
            waiting = asyncio.create_task(broker.fetch(["celery", "other"], 10, 10.0))
            await asyncio.sleep(0.3)
            sent = time.monotonic()
            await asyncio.to_thread(r.lpush, target, _entry())
            got = await asyncio.wait_for(waiting, 5)
            assert len(got) == 1 and time.monotonic() - sent < 1.0, target
            await broker.ack(got)


@pytest.mark.timeout(30)
async def test_a_take_behind_refused_for_a_lost_script_falls_back(redis_url: str) -> None:
    """After SCRIPT FLUSH (a restarted Redis) the take behind the watch is refused
    (NOSCRIPT): the fetch takes the usual way, which loads the script again."""
    async with _connected(redis_url) as (broker, r):
        waiting = asyncio.create_task(broker.fetch(["celery"], 10, 10.0))
        await asyncio.sleep(0.3)
        r.script_flush()
        await asyncio.to_thread(r.lpush, "celery", _entry())
        got = await asyncio.wait_for(waiting, 5)
        assert len(got) == 1
        await broker.ack(got)


@pytest.mark.timeout(60)
async def test_a_redis_stall_longer_than_the_reply_bound_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Redis that stops answering for longer than a watch's reply may take: the watch's
    connection is given up (never read out of step), and every message sent afterwards is
    fetched once, none left in flight."""
    from celeriac.brokers import _redis_take_behind, _redis_watch
    from tests.services import RedisServer

    monkeypatch.setattr(_redis_take_behind, "REPLY_SECONDS", 0.3)
    monkeypatch.setattr(_redis_watch, "REPLY_SECONDS", 0.3)
    server = RedisServer(extra=["--enable-debug-command", "yes"]).start()
    broker = RedisBroker(server.url, poll_interval=0.5)
    await broker.connect()
    r = redis.Redis.from_url(server.url)
    got: list[Any] = []
    errors: list[BaseException] = []

    async def consume() -> None:
        while True:
            try:
                batch = await broker.fetch(["celery"], 10, 1.0)
            except BrokerError as exc:
                errors.append(exc)
                await asyncio.sleep(0.05)
                continue
            got.extend(batch)
            if batch:
                await broker.ack(batch)

    consumer = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(r.execute_command, "DEBUG", "SLEEP", "1.2")
        for _ in range(20):
            await asyncio.to_thread(r.lpush, "celery", _entry())
        deadline = time.monotonic() + 20
        while len(got) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(got) == 20
        assert r.llen("celery") == 0 and await broker.queue_size("celery") == 0
        assert all(isinstance(e, BrokerConnectionError) for e in errors)
    finally:
        try:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            await broker.close()
            r.close()
        finally:
            server.cleanup()


@pytest.mark.timeout(30)
async def test_without_client_unblock_rights_waits_still_end_on_time(redis_url: str) -> None:
    """An ACL user without ``@dangerous`` may not CLIENT UNBLOCK: a wake on another list
    drops the watch instead, and a wait that runs out ends by the BLMOVE's own timeout."""
    r = redis.Redis.from_url(redis_url)
    user = f"no-unblock-{uuid.uuid4().hex[:8]}"
    r.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-@dangerous")
    where = r.connection_pool.connection_kwargs
    broker = RedisBroker(f"redis://{user}:pw@{where['host']}:{where['port']}/0")
    await broker.connect()
    try:
        for target in ("other", "other", "celery"):
            waiting = asyncio.create_task(broker.fetch(["celery", "other"], 10, 10.0))
            await asyncio.sleep(0.3)
            sent = time.monotonic()
            await asyncio.to_thread(r.lpush, target, _entry())
            got = await asyncio.wait_for(waiting, 5)
            assert len(got) == 1 and time.monotonic() - sent < 1.0, target
            await broker.ack(got)
        started = time.monotonic()
        assert await broker.fetch(["celery", "other"], 10, 0.4) == []
        assert time.monotonic() - started < 3
        assert await broker.queue_size("celery") == await broker.queue_size("other") == 0
    finally:
        await broker.close()
        r.execute_command("ACL", "DELUSER", user)
        r.close()


@pytest.mark.timeout(30)
async def test_a_fetch_cancelled_as_its_take_runs_gives_the_messages_back(
    redis_url: str,
) -> None:
    """Cancelled at any point after a push, a waiting fetch leaves the message either in the
    queue or given back at once: never in flight until its lease lapses."""
    async with _connected(redis_url) as (broker, r):
        for delay in (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01):
            waiting = asyncio.create_task(broker.fetch(["celery"], 10, 10.0))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(r.lpush, "celery", _entry())
            _hold_the_loop(delay)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                got = await waiting
                await broker.ack(got)  # it was done before the cancel came
                continue
            deadline = time.monotonic() + 3
            while r.llen("celery") != 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert r.llen("celery") == 1, delay
            assert int(r.hlen("celeriac.inflight")) == 0, delay
            r.delete("celery")


@pytest.mark.timeout(30)
async def test_fetches_side_by_side_each_have_their_own_watch(redis_url: str) -> None:
    async with _connected(redis_url, poll_interval=5.0) as (broker, r):
        clients = []
        for _ in range(3):
            waiting = [asyncio.create_task(broker.fetch(["celery", "other"], 1, 10.0))
                       for _ in range(2)]
            await asyncio.sleep(0.3)
            sent = time.monotonic()
            for _ in range(2):
                await asyncio.to_thread(r.lpush, "other", _entry())
            got = await asyncio.wait_for(asyncio.gather(*waiting), 5)
            assert [len(g) for g in got] == [1, 1] and time.monotonic() - sent < 1.0
            for g in got:
                await broker.ack(g)
            clients.append(int(r.info("clients")["connected_clients"]))
        assert clients[0] == clients[-1]  # the watches' connections are kept, not piled up


@pytest.mark.timeout(30)
async def test_a_kept_watch_connection_closed_by_redis_is_replaced(redis_url: str) -> None:
    """Redis's ``timeout`` closes idle clients: a take-behind connection kept between waits
    may be gone by the next one, which opens a new one instead of failing."""
    r = redis.Redis.from_url(redis_url)
    old = r.config_get("timeout")["timeout"]
    broker = RedisBroker(redis_url)
    await broker.connect()
    try:
        r.config_set("timeout", 1)
        assert await broker.fetch(["celery"], 10, 0.2) == []
        await asyncio.sleep(2.5)
        waiting = asyncio.create_task(broker.fetch(["celery"], 10, 5.0))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(r.lpush, "celery", _entry())
        got = await asyncio.wait_for(waiting, 5)
        assert len(got) == 1
        await broker.ack(got)
    finally:
        r.config_set("timeout", old)
        await broker.close()
        r.close()


@pytest.mark.timeout(60)
def test_unix_socket_urls_publish_wait_and_take(tmp_path: Path) -> None:
    """``redis+socket://`` and ``unix://``: a sync send on the blocking connection, an idle
    fetch woken with its take behind the watch, and a sync ``get()`` on the result backend's
    blocking wait, all over the socket."""
    from tests.services import RedisServer

    sock = tmp_path / "redis.sock"
    server = RedisServer(extra=["--unixsocket", str(sock), "--unixsocketperm", "700"]).start()
    try:
        for url, db in ((f"redis+socket://{sock}", 0), (f"unix://{sock}?db=1", 1)):
            app = Celeriac("unix", broker=url, backend=url)
            try:
                sent = app.send_task("tests.unix.add", (1, 2))

                async def take(app: Celeriac = app) -> list[Any]:
                    broker = await app.broker()
                    got = await broker.fetch(["celery"], 10, 5.0)
                    await broker.ack(got)
                    waiting = asyncio.create_task(broker.fetch(["celery"], 10, 5.0))
                    await asyncio.sleep(0.2)
                    await app.asend_task("tests.unix.add", (3, 4))
                    more = await asyncio.wait_for(waiting, 5)
                    await broker.ack(more)
                    return got + more

                got = thread_loop().run_until_complete(take())
                assert len(got) == 2 and got[0].envelope.headers["id"] == sent.id
                meta = json.dumps({"status": "SUCCESS", "result": 3, "task_id": sent.id,
                                   "traceback": None, "children": [], "date_done": None})
                r = redis.Redis(unix_socket_path=str(sock), db=db)
                r.set(f"celery-task-meta-{sent.id}", meta, ex=60)
                r.close()
                assert sent.get(timeout=5) == 3
            finally:
                app.close()
    finally:
        server.cleanup()


@pytest.mark.timeout(30)
async def test_idle_watches_outlast_a_short_socket_timeout(redis_url: str) -> None:
    """A watch blocks longer than the connection's socket_timeout on purpose: that timeout
    must not end it (and drop its connection) while it waits."""
    async with _connected(redis_url, socket_timeout=0.5) as (broker, r):
        assert await broker.fetch(["celery", "other"], 10, 1.2) == []
        clients = int(r.info("clients")["connected_clients"])
        assert await broker.fetch(["celery", "other"], 10, 1.2) == []
        assert int(r.info("clients")["connected_clients"]) == clients


@pytest.mark.timeout(30)
async def test_a_fetch_cancelled_then_closed_at_once_gives_the_messages_back(
    redis_url: str,
) -> None:
    async with _connected(redis_url) as (broker, r):
        waiting = asyncio.create_task(broker.fetch(["celery"], 10, 10.0))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(r.lpush, "celery", _entry())
        _hold_the_loop(0.002)
        waiting.cancel()
        got: list[Any] = []
        with contextlib.suppress(asyncio.CancelledError):
            got = await waiting  # done before the cancel came
        await broker.close()
        if not got:
            assert r.llen("celery") == 1 and r.hlen("celeriac.inflight") == 0


@pytest.mark.timeout(60)
async def test_a_take_that_runs_after_its_wait_gave_up_is_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis stalls across a wait's end: the take behind the watch runs once Redis is back,
    after the fetch has failed; its message is given back, not left in flight."""
    from celeriac.brokers import _redis_take_behind
    from tests.services import RedisServer

    monkeypatch.setattr(_redis_take_behind, "REPLY_SECONDS", 0.3)
    server = RedisServer(extra=["--enable-debug-command", "yes"]).start()
    broker = RedisBroker(server.url)
    await broker.connect()
    r = redis.Redis.from_url(server.url)
    try:
        await broker.publish([Outgoing("celery", Envelope(b"[]"), not_before=time.time() + 0.8)])
        waiting = asyncio.create_task(broker.fetch(["celery"], 10, 30.0))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(r.execute_command, "DEBUG", "SLEEP", "2.5")
        with pytest.raises(BrokerConnectionError):
            await asyncio.wait_for(waiting, 10)
        got = await broker.fetch(["celery"], 10, 5.0)
        assert len(got) == 1
        await broker.ack(got)
        assert await broker.queue_size("celery") == 0
    finally:
        try:
            await broker.close()
            r.close()
        finally:
            server.cleanup()


@pytest.mark.timeout(30)
async def test_a_user_without_client_commands_fetches_all_the_same(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    user = f"no-client-{uuid.uuid4().hex[:8]}"
    r.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-client")
    where = r.connection_pool.connection_kwargs
    broker = RedisBroker(f"redis://{user}:pw@{where['host']}:{where['port']}/0")
    await broker.connect()
    try:
        for target in ("celery", "other"):
            waiting = asyncio.create_task(broker.fetch(["celery", "other"], 10, 10.0))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(r.lpush, target, _entry())
            got = await asyncio.wait_for(waiting, 5)
            assert len(got) == 1, target
            await broker.ack(got)
        assert await broker.fetch(["celery"], 10, 0.3) == []
    finally:
        await broker.close()
        r.execute_command("ACL", "DELUSER", user)
        r.close()

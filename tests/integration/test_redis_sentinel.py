"""Redis Sentinel: the broker and the result backend through ``sentinel://`` URLs, and a
failover (SIGKILL of the primary, the replica promoted) that a running worker rides through.

What a failover may lose (replication is asynchronous) and what these tests therefore assert:
whatever the primary had passed to the replica survives. The tests make that point explicit
with ``WAIT 1`` (every write so far is on the replica) before the kill, and assert only that:
every message published before it runs at least once after the failover (a take or an ack
that had not reached the replica runs it again; that is allowed), and everything published
after the failover runs and its result arrives. Writes made between the ``WAIT`` and the kill
(takes, acks, results of tasks running then) may be lost and are not asserted on.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac import Celeriac
from celeriac.backends.redis import RedisBackend
from celeriac.brokers.redis import RedisBroker
from celeriac.message import Envelope, Outgoing
from tests.sentinel import MASTER_NAME, RedisSentinelCluster

pytestmark = pytest.mark.slow

APP = "tests.apps.sentinel_app"


@pytest.fixture
def sentinel_cluster() -> Iterator[RedisSentinelCluster]:
    """A primary, a replica and three sentinels of this test's own (it kills the primary)."""
    cluster = RedisSentinelCluster()
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def meta(task_id: str, status: str = "SUCCESS", result: Any = 1) -> dict[str, Any]:
    return {"status": status, "result": result, "traceback": None, "children": [],
            "date_done": "2024-01-01T00:00:00", "task_id": task_id}


async def roundtrip(broker: RedisBroker, queue: str, body: bytes) -> None:
    """publish, fetch, ack one message on ``queue``; its body comes back unchanged."""
    await broker.publish([Outgoing(queue, Envelope(body, "application/json", "utf-8"))])
    got = await broker.fetch([queue], 10, 5.0)
    assert [d.envelope.body for d in got] == [body]
    await broker.ack(got)
    assert await broker.queue_size(queue) == 0


async def retrying(what: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``what()`` until it stops raising: right after a failover a client may first meet a
    connection to the dead primary (the producers' retry_policy does this for apps)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await what()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
async def test_broker_and_backend_follow_a_failover(sentinel_cluster: RedisSentinelCluster) -> None:
    cluster = sentinel_cluster
    url = cluster.url(db=3)
    broker = RedisBroker(url, master_name=MASTER_NAME, lease_seconds=5)
    backend = RedisBackend(url, master_name=MASTER_NAME)
    other = RedisBackend(url, master_name=MASTER_NAME)  # a second client, for the writes
    try:
        await broker.connect()
        await backend.connect()
        await other.connect()
        assert "via sentinels" in broker._where

        # Through the sentinels, on the primary.
        await roundtrip(broker, "q", b'{"n": 1}')
        stored = uuid.uuid4().hex
        await backend.store([meta(stored, result=41)])
        assert (await backend.get(stored) or {})["result"] == 41
        early = uuid.uuid4().hex
        waiter = asyncio.ensure_future(backend.wait(early, 60))
        await asyncio.sleep(0)
        await other.store([meta(early, result="before")])
        assert (await waiter or {})["result"] == "before"
        # Left on the primary: a message and a result that the replica has (WAIT), to be found
        # on the new master.
        await broker.publish([Outgoing("kept", Envelope(b'{"kept": 1}', "application/json",
                                                        "utf-8"))])
        assert await asyncio.to_thread(cluster.wait_replicated) == 1

        # A waiter subscribed on the primary when it dies: the listener must follow.
        late = uuid.uuid4().hex
        waiter = asyncio.ensure_future(backend.wait(late, 60))
        wait_subscribed = time.monotonic() + 10
        while backend.pubsub_connections < 1 and time.monotonic() < wait_subscribed:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert backend.pubsub_connections == 1

        await asyncio.to_thread(cluster.kill_primary)
        await asyncio.to_thread(cluster.wait_failover)

        # The same broker and backend objects, on the promoted replica by themselves.
        await retrying(lambda: other.store([meta(late, result="after")]))
        assert (await asyncio.wait_for(waiter, 40) or {})["result"] == "after"
        assert backend.pubsub_connections >= 2  # it reconnected (to the new master)
        got = await retrying(lambda: broker.fetch(["kept"], 10, 2.0))
        assert [d.envelope.body for d in got] == [b'{"kept": 1}']
        await broker.ack(got)
        await retrying(lambda: roundtrip(broker, "q", b'{"n": 2}'))
        assert (await backend.get(stored) or {})["result"] == 41  # replicated before the kill
    finally:
        await broker.close()
        await backend.close()
        await other.close()


@pytest.mark.timeout(90)
def test_worker_keeps_going_through_a_failover(
    sentinel_cluster: RedisSentinelCluster, start_worker: Any, tmp_path: Path,
) -> None:
    cluster = sentinel_cluster
    url = cluster.url(db=0)
    marker = tmp_path / "runs.txt"
    worker = start_worker("-P", "threads", "-c", "4", app=APP, env={
        "CELERIAC_TEST_BROKER": url, "CELERIAC_TEST_BACKEND": url,
        "CELERIAC_TEST_MASTER": MASTER_NAME, "CELERIAC_TEST_LEASE": "3"})
    producer = Celeriac("producer", broker=url, backend=url)
    producer.conf.broker_transport_options = {"master_name": MASTER_NAME}
    producer.conf.result_backend_transport_options = {"master_name": MASTER_NAME}
    try:
        res = producer.send_task("sentinel_app.add", (2, 3))
        assert res.get(timeout=30) == 5

        # Before the failover: tasks running, waiting in the list, and waiting for their ETA.
        names = [f"pre-{i}" for i in range(40)]
        for name in names[:20]:
            producer.send_task("sentinel_app.record", (str(marker), name, 0.2))
        for name in names[20:]:
            producer.send_task("sentinel_app.record", (str(marker), name), countdown=3)
        # Its result is stored after the failover (due 8 s from now): a waiter kept through it.
        due_late = producer.send_task("sentinel_app.add", (20, 22), countdown=8)
        results: list[Any] = []
        waiter = threading.Thread(target=lambda: results.append(due_late.get(timeout=60)))
        waiter.start()
        key = f"celery-task-meta-{due_late.id}"
        with redis.Redis(port=cluster.primary.port) as primary:
            wait_for(lambda: dict(primary.pubsub_numsub(key)).get(key.encode()) == 1, 30,
                     "the waiter's subscription on the primary")
        assert cluster.wait_replicated() == 1  # all of the above is on the replica
        cluster.kill_primary()
        cluster.wait_failover()

        # After the failover: new tasks run and their results arrive.
        after = [producer.send_task("sentinel_app.add", (i, i)) for i in range(10)]
        assert [r.get(timeout=40) for r in after] == [2 * i for i in range(10)]
        # Nothing published before the failover is lost (duplicates are allowed).
        wait_for(lambda: set(names) <= set(lines(marker)), 40, "every task published before")
        waiter.join(60)
        assert results == [42]
        assert worker.proc.poll() is None, worker.log()  # the same process all along
    finally:
        producer.close()

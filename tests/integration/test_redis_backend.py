"""The Redis result backend against a real Redis: Celery's exact layout, pub/sub waits
across processes, one shared pub/sub connection, and surviving a Redis restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.redis import LISTENER_NAME, RedisBackend
from celeriac.errors import BackendError, ConfigurationError
from celeriac.testing.backend_kit import celery_meta
from tests.services import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
WIRE = ROOT / "tests" / "fixtures" / "celery-wire"


def capture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WIRE / f"{name}.json").read_text())["captured"]
    return data


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def new_id() -> str:
    return str(uuid.uuid4())


async def until(predicate: Any, bound: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound} s")
        await asyncio.sleep(0.01)


def numsub(client: redis.Redis, task_id: str) -> int:
    return int(client.pubsub_numsub(f"celery-task-meta-{task_id}")[0][1])


def loaded(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.BusyLoadingError, redis.ConnectionError):
        return False


def listener_clients(client: redis.Redis) -> list[dict[str, Any]]:
    return [c for c in client.client_list() if c.get("name") == LISTENER_NAME]


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    b = RedisBackend(redis_url, expires=3600)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


# -- Celery's layout ---------------------------------------------------------------------------


async def test_key_ttl_and_published_bytes(backend: RedisBackend, redis_url: str) -> None:
    """One key ``celery-task-meta-<id>`` with TTL = expires, and the same bytes PUBLISHed
    on a channel of the same name (what a Celery client waits for)."""
    raw = raw_client(redis_url)
    pubsub = raw.pubsub()
    task_id = new_id()
    key = f"celery-task-meta-{task_id}"
    try:
        pubsub.subscribe(key)
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
        meta = celery_meta(task_id, states.SUCCESS, 5)
        await backend.store([meta])
        assert raw.keys("*") == [key.encode()]
        assert 3590 < raw.ttl(key) <= 3600
        stored = raw.get(key)
        message = pubsub.get_message(timeout=2)
        assert message is not None and message["channel"] == key.encode()
        assert message["data"] == stored
        assert json.loads(stored) == meta  # type: ignore[arg-type]
    finally:
        pubsub.close()
        raw.close()


async def test_every_key_has_a_ttl(redis_url: str) -> None:
    """None and 0 (Celery's "never") mean the default day: no key without expiry."""
    raw = raw_client(redis_url)
    try:
        for expires in (None, 0):
            b = RedisBackend(redis_url, expires=expires)
            try:
                await b.store([celery_meta(new_id(), s) for s in sorted(states.ALL_STATES)])
                await b.save_group(new_id(), [new_id(), new_id()])
            finally:
                await b.close()
        keys = raw.keys("*")
        assert len(keys) == 2 * (len(states.ALL_STATES) + 1)
        for key in keys:
            assert 86000 < raw.ttl(key) <= 86400, key
    finally:
        raw.close()


@pytest.mark.parametrize(
    "name", ["redis-worker-result-success", "redis-worker-result-failure", "redis-worker-result-expired"]
)
async def test_json_shape_is_celerys(backend: RedisBackend, redis_url: str, name: str) -> None:
    """A meta stored in Celery's field order comes out of Redis with the same fields in the
    same order and the same values as Celery's own bytes, readable by the stdlib's json."""
    celery_raw: str = capture(name)["result_raw"]
    meta = json.loads(celery_raw)
    await backend.store([meta])
    raw = raw_client(redis_url)
    try:
        ours = raw.get(f"celery-task-meta-{meta['task_id']}")
    finally:
        raw.close()
    assert ours is not None
    ours_decoded = json.loads(ours)
    assert list(ours_decoded) == list(json.loads(celery_raw)) == list(meta)
    assert ours_decoded == json.loads(celery_raw)


async def test_reads_celerys_bytes(backend: RedisBackend, redis_url: str) -> None:
    """Metas written by raw redis-py in the captures' exact bytes are read back by get,
    get_many and wait; a Celery-style SETEX + PUBLISH wakes a waiter."""
    raw = raw_client(redis_url)
    try:
        written: dict[str, str] = {}
        for name in ("success", "failure", "expired"):
            c = capture(f"redis-worker-result-{name}")
            written[c["task_id"]] = c["result_raw"]
        retry = capture("redis-worker-result-retry")
        group = capture("redis-worker-group-result")
        written.update(group["children_meta_raw"])
        for task_id, blob in written.items():
            raw.set(f"celery-task-meta-{task_id}", ex=86400, value=blob)
        for task_id, blob in written.items():
            assert await backend.get(task_id) == json.loads(blob)
            assert await backend.wait(task_id, 1) == json.loads(blob)
        assert await backend.get_many(list(written)) == {t: json.loads(b) for t, b in written.items()}

        # Celery's worker writes RETRY, then the final meta: our waiter sleeps through the first.
        task_id = retry["task_id"]
        key = f"celery-task-meta-{task_id}"
        waiter = asyncio.create_task(backend.wait(task_id, 10))
        await until(lambda: numsub(raw, task_id) == 1, what="subscribed")
        for blob in (retry["result_raw_while_retrying"], retry["result_raw_final"]):
            raw.set(key, ex=86400, value=blob)
            raw.publish(key, blob)
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(waiter, 5) == json.loads(retry["result_raw_final"])
        # and our may_replace rule holds against Celery's bytes: a late STARTED is refused
        await backend.store([celery_meta(task_id, states.STARTED)])
        assert raw.get(key) == retry["result_raw_final"].encode()
    finally:
        raw.close()


async def test_group_save_and_restore(backend: RedisBackend, redis_url: str) -> None:
    group = capture("redis-worker-group-result")
    raw = raw_client(redis_url)
    try:
        key = group["taskset_key"]
        raw.set(key, ex=86400, value=group["taskset_raw"])  # Celery's bytes
        assert await backend.restore_group(group["group_id"]) == group["children"]
        raw.delete(key)
        await backend.save_group(group["group_id"], group["children"])
        assert json.loads(raw.get(key)) == json.loads(group["taskset_raw"])  # type: ignore[arg-type]
        assert 3590 < raw.ttl(key) <= 3600
        await backend.forget_group(group["group_id"])
        assert await backend.restore_group(group["group_id"]) is None
    finally:
        raw.close()


# -- the state rule, on the server --------------------------------------------------------------


async def test_rule_matches_may_replace_with_custom_states(backend: RedisBackend) -> None:
    """The script's table agrees with states.may_replace for every pair, custom states too."""
    names = [*sorted(states.ALL_STATES), "PROGRESS", "x \"odd\" {state}"]
    pairs = {(old, new): new_id() for old in names for new in names}
    await backend.store([celery_meta(tid, old) for (old, _), tid in pairs.items()])
    await backend.store([celery_meta(tid, new) for (_, new), tid in pairs.items()])
    got = await backend.get_many(list(pairs.values()))
    for (old, new), tid in pairs.items():
        want = new if states.may_replace(new, old) else old
        assert got[tid]["status"] == want, (old, new)


async def test_status_not_first_and_msgpack_are_read_by_the_rule(redis_url: str) -> None:
    """The script finds the stored status when it is not the first field, and in msgpack."""
    raw = raw_client(redis_url)
    json_backend = RedisBackend(redis_url)
    packed = RedisBackend(redis_url, serializer="msgpack")
    try:
        a, b = new_id(), new_id()
        raw.set(f"celery-task-meta-{a}", ex=60, value=json.dumps(
            {"result": {"status": "STARTED"}, "task_id": a, "status": "SUCCESS"}))
        await packed.store([celery_meta(b, states.SUCCESS, [1, "two"])])
        assert raw.get(f"celery-task-meta-{b}")[:1] == b"\x86"  # type: ignore[index]
        await json_backend.store([celery_meta(a, states.STARTED), celery_meta(b, states.STARTED)])
        assert (await json_backend.get(a) or {})["status"] == states.SUCCESS
        assert await json_backend.get(b) == celery_meta(b, states.SUCCESS, [1, "two"])
        assert await packed.get(a) == {"result": {"status": "STARTED"}, "task_id": a, "status": "SUCCESS"}
    finally:
        raw.close()
        await json_backend.close()
        await packed.close()


async def test_racing_writers_never_move_backwards(redis_url: str) -> None:
    """Two backends (two connections) racing STARTED against SUCCESS: SUCCESS always wins."""
    one, two = RedisBackend(redis_url), RedisBackend(redis_url)
    try:
        ids = [new_id() for _ in range(300)]
        late = [one.store([celery_meta(t, states.STARTED)]) for t in ids]
        done = [two.store([celery_meta(t, states.SUCCESS, 1)]) for t in ids]
        await asyncio.gather(*(x for pair in zip(done, late, strict=True) for x in pair))
        got = await one.get_many(ids)
        assert {m["status"] for m in got.values()} == {states.SUCCESS}
    finally:
        await one.close()
        await two.close()


# -- waiting ------------------------------------------------------------------------------------

WAITER = r"""
import asyncio, sys, time
from celeriac.backends.redis import RedisBackend

async def main():
    backend = RedisBackend(sys.argv[1])
    await backend.connect()
    meta = await backend.wait(sys.argv[2], 30)
    print(repr(time.time()), meta["result"], flush=True)
    await backend.close()

asyncio.run(main())
"""


async def test_waiter_in_another_process(backend: RedisBackend, redis_url: str) -> None:
    task_id = new_id()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WAITER, redis_url, task_id], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    raw = raw_client(redis_url)
    try:
        await until(lambda: numsub(raw, task_id) == 1, bound=20, what="the other process subscribed")
        stored_at = time.time()
        await backend.store([celery_meta(task_id, states.SUCCESS, "hello")])
        out, err = await asyncio.to_thread(proc.communicate, timeout=20)
        assert proc.returncode == 0, err.decode()
        woke_at, result = out.decode().split()
        assert result == "hello"
        assert float(woke_at) - stored_at < 2.0  # generous: typically about a millisecond
    finally:
        raw.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_many_waiters_share_one_connection(backend: RedisBackend, redis_url: str) -> None:
    raw = raw_client(redis_url)
    try:
        ids = [new_id() for _ in range(200)]
        waiters = [asyncio.create_task(backend.wait(t, 20)) for t in ids]
        await until(lambda: len(raw.pubsub_channels("celery-task-meta-*")) == 200, what="all subscribed")
        assert len(listener_clients(raw)) == 1
        assert backend.pubsub_connections == 1
        metas = [celery_meta(t, states.SUCCESS, n) for n, t in enumerate(ids)]
        await backend.store(metas)
        assert await asyncio.wait_for(asyncio.gather(*waiters), 10) == metas
        await until(lambda: raw.pubsub_channels("celery-task-meta-*") == [], what="unsubscribed")
        assert backend.pubsub_connections == 1
    finally:
        raw.close()


async def test_cancelled_waiters_unsubscribe(backend: RedisBackend, redis_url: str) -> None:
    raw = raw_client(redis_url)
    try:
        ids = [new_id() for _ in range(50)]
        waiters = [asyncio.create_task(backend.wait(t, 20)) for t in ids]
        await asyncio.sleep(0)  # some cancelled before they subscribe, some after
        for w in waiters[::2]:
            w.cancel()
        await until(lambda: len(raw.pubsub_channels("celery-task-meta-*")) == 25, what="25 left")
        for w in waiters[1::4]:
            w.cancel()
        kept = ids[3::4]
        await until(lambda: len(raw.pubsub_channels("celery-task-meta-*")) == len(kept), what="kept")
        await backend.store([celery_meta(t, states.FAILURE) for t in kept])
        results = await asyncio.gather(*waiters, return_exceptions=True)
        for n, res in enumerate(results):
            if n % 4 == 3:
                assert res == celery_meta(ids[n], states.FAILURE)
            else:
                assert isinstance(res, asyncio.CancelledError)
    finally:
        raw.close()


async def test_waiter_survives_redis_restart(private_redis: RedisServer) -> None:
    """The listener reconnects and resubscribes, and reads every waited key again: a result
    stored while it was away is not missed. The pool's next call works too."""
    backend = RedisBackend(private_redis.url)
    await backend.connect()
    raw = raw_client(private_redis.url)
    try:
        before, during, after = new_id(), new_id(), new_id()
        waiters = {t: asyncio.create_task(backend.wait(t, 30)) for t in (before, during, after)}
        await until(lambda: numsub(raw, after) == 1, what="subscribed")
        await backend.store([celery_meta(before, states.SUCCESS, "before")])
        assert (await asyncio.wait_for(waiters.pop(before), 5))["result"] == "before"

        private_redis.crash()
        private_redis.start()
        await until(lambda: loaded(raw), what="redis loaded its AOF")
        # stored at once: most likely before the listener is back (it is not published to it)
        meta = celery_meta(during, states.SUCCESS, "during")
        raw.set(f"celery-task-meta-{during}", ex=60, value=json.dumps(meta))
        assert (await asyncio.wait_for(waiters.pop(during), 10))["result"] == "during"
        await until(lambda: numsub(raw, after) == 1, what="resubscribed")
        await backend.store([celery_meta(after, states.SUCCESS, "after")])
        assert (await asyncio.wait_for(waiters.pop(after), 5))["result"] == "after"
        assert backend.pubsub_connections == 2
        assert (await backend.get(before) or {}).get("result") == "before"  # AOF kept it
    finally:
        raw.close()
        await backend.close()


async def test_listener_connection_killed(backend: RedisBackend, redis_url: str) -> None:
    """A killed pub/sub connection is replaced; a result written (and never published) while
    it was gone is found by reading every waited key again."""
    raw = raw_client(redis_url)
    try:
        task_id = new_id()
        waiter = asyncio.create_task(backend.wait(task_id, 10))
        await until(lambda: numsub(raw, task_id) == 1, what="subscribed")
        assert raw.client_kill_filter(_type="pubsub") == 1
        meta = celery_meta(task_id, states.SUCCESS, "unpublished")
        raw.set(f"celery-task-meta-{task_id}", json.dumps(meta), ex=60)
        assert await asyncio.wait_for(waiter, 5) == meta
        assert backend.pubsub_connections == 2
    finally:
        raw.close()


async def test_quiet_listener_pings_and_keeps_its_connection(redis_url: str) -> None:
    """A silent pub/sub connection is PINGed; answered PINGs keep it (no reconnects)."""
    b = RedisBackend(redis_url, ping_interval=0.1)
    raw = raw_client(redis_url)
    def pings() -> int:
        return int(raw.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))

    try:
        before = pings()
        assert await b.wait(new_id(), 0.6) is None
        assert len(listener_clients(raw)) == 1
        assert b.pubsub_connections == 1
        assert pings() - before >= 2
    finally:
        raw.close()
        await b.close()


async def test_store_after_script_flush(backend: RedisBackend, redis_url: str) -> None:
    """The store script is loaded again when the server lost it (restart, SCRIPT FLUSH),
    for one chunk and for a batch of several chunks (a pipeline of script calls)."""
    raw = raw_client(redis_url)
    try:
        for size in (1, 600):
            raw.script_flush()
            metas = [celery_meta(new_id(), states.SUCCESS, n) for n in range(size)]
            await backend.store(metas)
            await backend.store([celery_meta(m["task_id"], states.STARTED) for m in metas])
            got = await backend.get_many([m["task_id"] for m in metas])
            assert got == {m["task_id"]: m for m in metas}
    finally:
        raw.close()


async def test_get_many_beyond_one_mget(backend: RedisBackend) -> None:
    """Ids beyond one MGET's chunk are read in several MGETs sent together, in order."""
    metas = [celery_meta(new_id(), states.SUCCESS, n) for n in range(2500)]
    await backend.store(metas[::2])  # every other one stored
    got = await backend.get_many([m["task_id"] for m in metas])
    assert got == {m["task_id"]: m for m in metas[::2]}


async def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisServer(extra=["--unixsocket", str(sock), "--unixsocketperm", "700"])
    try:
        server.start()
        # (backend_from_url knows redis+socket://; unix:// is redis-py's spelling)
        for b in (backend_from_url(f"redis+socket://{sock}"), RedisBackend(f"unix://{sock}?db=1")):
            assert isinstance(b, RedisBackend)
            try:
                await b.connect()
                task_id = new_id()
                waiter = asyncio.create_task(b.wait(task_id, 10))
                await asyncio.sleep(0.05)
                await b.store([celery_meta(task_id, states.SUCCESS, b.url)])
                assert (await asyncio.wait_for(waiter, 5))["result"] == b.url
            finally:
                await b.close()
    finally:
        server.cleanup()


# -- errors and credentials ---------------------------------------------------------------------


async def test_errors_name_the_server_not_the_password() -> None:
    port = free_port()
    b = RedisBackend(f"redis://user:s3cret@127.0.0.1:{port}/2", socket_connect_timeout=1)
    assert "s3cret" not in repr(b) and "s3cret" not in b.url
    try:
        for call in (b.connect(), b.get("x"), b.store([celery_meta("x", states.SUCCESS)]), b.wait("x", 1)):
            with pytest.raises(BackendError) as info:
                await call
            assert f"127.0.0.1:{port}/2" in str(info.value)
            assert "s3cret" not in str(info.value)
    finally:
        await b.close()


def test_bad_options() -> None:
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://localhost/0", no_such_option=1)
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://localhost/0", serializer="pickle")
    with pytest.raises(ConfigurationError):
        RedisBackend("http://localhost/0")
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://localhost/0", expires=-1)

"""Real Celery 5 and celeriac sharing one Redis, in both directions (issue 4, item 2).

Each test runs in both directions: a Celery producer with a celeriac worker, and a celeriac
producer with a Celery worker. The producer reads the result with its own backend (Celery's
redis backend, or celeriac's), so results written by either side are read by the other. The
apps are ``tests/interop/apps/celery_side.py`` and ``celeriac_side.py``: the same task names
(``interop.*``) on both sides. Celery's worker runs as
``python -m celery -A tests.interop.apps.celery_side worker -P solo``, celeriac's as
``python -m celeriac.cli.main -A tests.interop.apps.celeriac_side worker``; both are stopped
by pid at the end of each test (``interop_procs``).

ETA from a celeriac producer is tested on its own (``test_eta_celeriac_producer_*``): celeriac
keeps a not-yet-due message in ``celeriac.delayed.<queue>`` (a sorted set) until a celeriac
worker moves it into the list, so a Celery worker alone never sees it (see the module
docstring of ``celeriac.brokers.redis``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from tests.interop.conftest import StartWorker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SEP = "\x06\x16"
WAIT = 20  # seconds a result may take; a test that hangs fails at pytest-timeout


@dataclass
class Direction:
    """One direction: ``client`` publishes and reads results; ``start_worker`` starts a worker
    of the other kind; ``start_peer`` one of the client's own kind (for hops back)."""

    name: str
    client: ModuleType
    client_side: str
    worker_side: str
    start_worker: StartWorker
    start_peer: StartWorker

    @property
    def from_celery(self) -> bool:
        return self.client_side == "celery"


@pytest.fixture(params=["celery->celeriac", "celeriac->celery"])
def way(request: pytest.FixtureRequest) -> Direction:
    if request.param == "celery->celeriac":
        return Direction(request.param, request.getfixturevalue("celery_client"), "celery",
                         "celeriac", request.getfixturevalue("start_celeriac_worker"),
                         request.getfixturevalue("start_celery_worker"))
    return Direction(request.param, request.getfixturevalue("celeriac_client"), "celeriac",
                     "celery", request.getfixturevalue("start_celery_worker"),
                     request.getfixturevalue("start_celeriac_worker"))


@pytest.fixture
def rds(interop_redis: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(interop_redis)
    try:
        yield client
    finally:
        client.close()


def entries(rds: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The kombu envelopes in list ``key``, consuming end first."""
    return [json.loads(raw) for raw in reversed(rds.lrange(key, 0, -1))]


def records(path: Path, count: int, timeout: float = WAIT) -> list[dict[str, Any]]:
    """Wait for ``count`` lines from ``interop.record`` in ``path``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.02)


def state(way: Direction, task_id: str) -> str:
    return str(way.client.app.AsyncResult(task_id).state)


# -- plain calls, serializers, queues ------------------------------------------------------------


def test_args_and_kwargs(way: Direction) -> None:
    way.start_worker("celery")
    c = way.client
    assert c.add.delay(2, 3).get(timeout=WAIT) == 5
    res = c.echo.apply_async((1, "two", [3, 4.5], None), {"x": {"a": [1, {"b": True}]}, "y": ""})
    assert res.get(timeout=WAIT) == {
        "args": [1, "two", [3, 4.5], None], "kwargs": {"x": {"a": [1, {"b": True}]}, "y": ""},
        "side": way.worker_side,
    }
    assert res.state == "SUCCESS"
    many = [c.add.delay(i, i) for i in range(30)]
    assert [r.get(timeout=WAIT) for r in many] == [2 * i for i in range(30)]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_serializer(way: Direction, rds: redis.Redis, serializer: str) -> None:
    c = way.client
    res = c.echo.apply_async((1, "ü", [2.5, None]), {"k": {"n": -7}}, serializer=serializer)
    [env] = entries(rds, "celery")
    assert env["content-type"] == f"application/{'x-' if serializer == 'msgpack' else ''}" \
        f"{serializer}"
    assert env["content-encoding"] == ("binary" if serializer == "msgpack" else "utf-8")
    assert env["properties"]["body_encoding"] == "base64"
    way.start_worker("celery")
    assert res.get(timeout=WAIT) == {"args": [1, "ü", [2.5, None]], "kwargs": {"k": {"n": -7}},
                                     "side": way.worker_side}


def test_custom_queue(way: Direction, rds: redis.Redis, tmp_path: Path) -> None:
    c = way.client
    path = tmp_path / "rec.jsonl"
    res = c.record.apply_async((str(path), "custom"), queue="interop.custom")
    assert rds.llen("celery") == 0
    assert [e["headers"]["id"] for e in entries(rds, "interop.custom")] == [res.id]
    # kombu's binding, so either kind of worker (and `celery inspect`) sees the queue
    members = rds.smembers("_kombu.binding.interop.custom")
    assert f"interop.custom{SEP}{SEP}interop.custom".encode() in members
    way.start_worker("interop.custom")
    assert res.get(timeout=WAIT) == "custom"
    [rec] = records(path, 1)
    assert rec["side"] == way.worker_side
    assert rec["delivery_info"]["routing_key"] == "interop.custom"


# -- failures ------------------------------------------------------------------------------------


def test_failure_reraises_on_the_other_side(way: Direction) -> None:
    assert "tests.interop.apps.worker_only_errors" not in sys.modules  # the fallback is tested
    way.start_worker("celery")
    c = way.client
    res = c.fail.delay("boom from the other side")
    with pytest.raises(ValueError, match="boom from the other side"):
        res.get(timeout=WAIT)
    assert res.state == "FAILURE"
    assert "ValueError" in (res.traceback or "")
    assert isinstance(res.result, ValueError)

    app_res = c.fail_app.delay("own type")
    with pytest.raises(Exception) as info:
        app_res.get(timeout=WAIT)
    exc = info.value
    if way.from_celery:
        # Celery's fallback: a class of the same name made up in celery.exceptions
        assert type(exc).__name__ == "AppError"
        assert type(exc).__module__ == "celery.exceptions"
        assert "own type" in str(exc)
    else:
        from celeriac.errors import RemoteError

        assert isinstance(exc, RemoteError)
        assert exc.exc_type == "AppError"  # type: ignore[attr-defined]
        assert exc.exc_module == "tests.interop.apps.worker_only_errors"  # type: ignore[attr-defined]
        assert "own type" in str(exc)


# -- link / link_error -----------------------------------------------------------------------------


def test_link_and_link_error(way: Direction, tmp_path: Path) -> None:
    """Callbacks and errbacks sent by the worker run, on its own kind and (hop) on the client's
    kind; their results are read by the client."""
    way.start_worker("celery")
    way.start_peer("interop.peer")
    c = way.client
    errs = tmp_path / "errbacks.jsonl"

    cb_id, hop_id = str(uuid.uuid4()), str(uuid.uuid4())
    res = c.add.apply_async((2, 3), link=[
        c.add.s(10).set(task_id=cb_id),
        c.add.s(100).set(task_id=hop_id, queue="interop.peer"),
    ], link_error=c.on_err.s(str(errs)))
    assert res.get(timeout=WAIT) == 5
    assert c.app.AsyncResult(cb_id).get(timeout=WAIT) == 15
    assert c.app.AsyncResult(hop_id).get(timeout=WAIT) == 105

    eb_id, eb_hop_id = str(uuid.uuid4()), str(uuid.uuid4())
    failed = c.fail.apply_async(("no",), link=c.add.s(1), link_error=[
        c.on_err.s(str(errs)).set(task_id=eb_id),
        c.on_err.s(str(errs)).set(task_id=eb_hop_id, queue="interop.peer"),
    ])
    with pytest.raises(ValueError):
        failed.get(timeout=WAIT)
    assert c.app.AsyncResult(eb_id).get(timeout=WAIT) == failed.id
    assert c.app.AsyncResult(eb_hop_id).get(timeout=WAIT) == failed.id
    ran = records(errs, 2)
    assert sorted(r["side"] for r in ran) == sorted([way.worker_side, way.client_side])
    assert {r["failed_id"] for r in ran} == {failed.id}  # only the failed task's errbacks ran


# -- retries -------------------------------------------------------------------------------------


def test_retry(way: Direction) -> None:
    """``self.retry`` re-publishes a message that a worker of either kind runs."""
    way.start_worker("celery")
    way.start_peer("interop.peer")
    c = way.client
    here = c.flaky.delay()
    assert here.get(timeout=WAIT) == {"retries": 1, "side": way.worker_side}
    # the retry goes to the other kind's queue: published by one kind, run by the other
    hop = c.flaky.apply_async(kwargs={"hop_queue": "interop.peer"})
    assert hop.get(timeout=WAIT) == {"retries": 1, "side": way.client_side}
    assert hop.state == "SUCCESS"


# -- expires -------------------------------------------------------------------------------------


def test_expires(way: Direction, rds: redis.Redis, tmp_path: Path) -> None:
    c = way.client
    path = tmp_path / "rec.jsonl"
    expired = c.record.apply_async((str(path), "expired"), expires=0.5)
    alive = c.record.apply_async(
        (str(path), "alive"), expires=datetime.now(UTC) + timedelta(minutes=5))
    time.sleep(1.0)
    way.start_worker("celery")
    assert alive.get(timeout=WAIT) == "alive"
    deadline = time.monotonic() + WAIT
    while state(way, expired.id) != "REVOKED" and time.monotonic() < deadline:
        time.sleep(0.05)
    res = c.app.AsyncResult(expired.id)
    assert res.state == "REVOKED"
    meta = json.loads(rds.get(f"celery-task-meta-{expired.id}"))
    assert meta["status"] == "REVOKED"
    assert meta["result"] == {"exc_type": "TaskRevokedError", "exc_message": ["expired"],
                              "exc_module": "celery.exceptions"}
    if way.from_celery:
        from celery.exceptions import TaskRevokedError
    else:
        from celeriac.errors import TaskRevokedError  # type: ignore[assignment]
    with pytest.raises(TaskRevokedError):
        res.get(timeout=WAIT)
    assert [r["label"] for r in records(path, 1)] == ["alive"]  # the expired one never ran


# -- countdown / eta -------------------------------------------------------------------------------


def test_countdown_and_eta_celery_producer_celeriac_worker(
    celery_client: ModuleType, start_celeriac_worker: StartWorker, rds: redis.Redis,
    tmp_path: Path,
) -> None:
    """A Celery producer's ETA message arrives in the list with ``eta`` in its headers; the
    celeriac worker moves it to ``celeriac.delayed.<queue>`` (acked, not held in memory), and
    runs it when due."""
    path = tmp_path / "rec.jsonl"
    start_celeriac_worker("celery")
    sent = time.time()
    by_countdown = celery_client.record.apply_async((str(path), "countdown"), countdown=2)
    eta = datetime.now(UTC) + timedelta(seconds=2.5)
    by_eta = celery_client.record.apply_async((str(path), "eta"), eta=eta)
    time.sleep(0.8)
    # not held by the worker: waiting in Redis, in celeriac's delayed set
    assert rds.zcard("celeriac.delayed.celery") == 2
    assert rds.llen("celery") == 0
    assert by_countdown.get(timeout=WAIT) == "countdown"
    assert by_eta.get(timeout=WAIT) == "eta"
    got = {r["label"]: r for r in records(path, 2)}
    assert sent + 2 - 0.05 <= got["countdown"]["time"] <= sent + 2 + 1.5
    assert eta.timestamp() - 0.05 <= got["eta"]["time"] <= eta.timestamp() + 1.5
    assert datetime.fromisoformat(got["eta"]["eta"]) == eta
    assert got["eta"]["side"] == "celeriac"


def test_countdown_and_eta_celeriac_producer_celery_worker(
    celeriac_client: ModuleType, start_celery_worker: StartWorker,
    start_celeriac_worker: StartWorker, rds: redis.Redis, tmp_path: Path,
) -> None:
    """What a Celery worker sees of a celeriac producer's ETA message: nothing, until a
    celeriac worker (or any celeriac consumer of the queue) moves it into the list when due;
    from then on it is an ordinary kombu message whose ``eta`` header is in the past, and the
    Celery worker runs it at once."""
    path = tmp_path / "rec.jsonl"
    start_celery_worker("celery")
    eta = datetime.now(UTC) + timedelta(seconds=1)
    res = celeriac_client.record.apply_async((str(path), "eta"), eta=eta)
    assert rds.llen("celery") == 0
    [(member, score)] = rds.zrange("celeriac.delayed.celery", 0, -1, withscores=True)
    assert int(score) == int(eta.timestamp() * 1000)
    assert member.startswith(b"6:celery{")  # <len>:<list key><kombu envelope>
    waiting = json.loads(member[len(b"6:celery"):])
    assert datetime.fromisoformat(waiting["headers"]["eta"]) == eta
    time.sleep(2.5)  # well past due: a Celery worker alone does not run it
    assert res.state == "PENDING"
    assert not path.exists()
    assert rds.zcard("celeriac.delayed.celery") == 1

    # A celeriac consumer of the queue moves it into the list (here: the broker API takes it,
    # as a worker's fetch does, and gives it back), and the Celery worker runs it at once.
    async def move() -> None:
        broker = await celeriac_client.app.broker()
        got = await broker.fetch(["celery"], 1, 1.0)
        assert len(got) == 1
        await broker.requeue(got)
        await celeriac_client.app.aclose()

    asyncio.run(move())
    moved_at = time.time()
    assert res.get(timeout=WAIT) == "eta"
    [rec] = records(path, 1)
    assert rec["side"] == "celery"
    assert datetime.fromisoformat(rec["eta"]) == eta
    assert rec["time"] - moved_at < 2.0

    # With a celeriac worker on the queue too (a mixed deployment), ETA runs on time.
    start_celeriac_worker("celery")
    eta2 = datetime.now(UTC) + timedelta(seconds=1.5)
    res2 = celeriac_client.record.apply_async((str(path), "mixed"), countdown=1.5)
    assert res2.get(timeout=WAIT) == "mixed"
    rec2 = records(path, 2)[1]
    assert eta2.timestamp() - 0.1 <= rec2["time"] <= eta2.timestamp() + 1.5


# -- priority ------------------------------------------------------------------------------------

PRIORITIES = [0, 9, 3, 5, 9, 0, 6]


def _send_priorities(client: ModuleType, rds: redis.Redis, path: Path) -> None:
    for i, p in enumerate(PRIORITIES):
        client.record.apply_async((str(path), f"{p}/{i}"), queue="interop.prio", priority=p)
    lists = {0: "interop.prio", 3: f"interop.prio{SEP}3", 6: f"interop.prio{SEP}6",
             9: f"interop.prio{SEP}9"}
    placed = {step: [e["properties"]["priority"] for e in entries(rds, key)]
              for step, key in lists.items()}
    assert placed == {0: [0, 0], 3: [3, 5], 6: [6], 9: [9, 9]}


def _served(path: Path) -> list[str]:
    recs = records(path, len(PRIORITIES))
    assert len(recs) == len(PRIORITIES)
    served = [r["label"] for r in recs]
    # the worker saw the priority the producer gave
    assert [r["priority"] for r in recs] == [int(label.split("/")[0]) for label in served]
    return served


KOMBU_ORDER = ["0/0", "0/5", "3/2", "5/3", "6/6", "9/1", "9/4"]  # step 0 first, FIFO in a step
HIGHER_FIRST = ["9/1", "9/4", "6/6", "3/2", "5/3", "0/0", "0/5"]


def test_priority(way: Direction, rds: redis.Redis, tmp_path: Path) -> None:
    """Both producers put a priority in the same kombu step list (``q``, ``q\\x06\\x163``,
    ...); each kind of worker then serves the steps in its documented order: a Celery worker
    step 0 first (kombu on Redis: a lower number is served first), a celeriac worker the
    highest step first (its default ``priority_order``)."""
    path = tmp_path / "rec.jsonl"
    _send_priorities(way.client, rds, path)
    way.start_worker("interop.prio")
    assert _served(path) == (KOMBU_ORDER if way.worker_side == "celery" else HIGHER_FIRST)


def test_priority_kombu_order_on_celeriac_worker(
    celery_client: ModuleType, start_celeriac_worker: StartWorker, rds: redis.Redis,
    tmp_path: Path,
) -> None:
    """With ``priority_order="kombu"`` a celeriac worker serves a Celery producer's priorities
    as a Celery worker does (for a migration where both consume one queue)."""
    path = tmp_path / "rec.jsonl"
    _send_priorities(celery_client, rds, path)
    start_celeriac_worker("interop.prio", env={"CELERIAC_INTEROP_PRIORITY_ORDER": "kombu"})
    assert _served(path) == KOMBU_ORDER

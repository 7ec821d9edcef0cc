"""The broker conformance kit: every clause of ``celeriac.brokers.base`` as a check.

A check is an ``async def check_xxx(h: BrokerHarness) -> None``; ``CHECKS`` lists them all. A
broker is described once by a ``BrokerSpec`` (how to make an instance, and what it promises),
and a pytest module runs every check against every spec::

    SPECS = [
        BrokerSpec("memory", lambda ctx: MemoryBroker(f"memory://{ctx.name}",
                                                      lease_seconds=ctx.lease_seconds)),
        ...
    ]

    @pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    async def test_broker(spec, check, tmp_path):
        await run_check(spec, check, tmp_path)

``check_broker(spec, workdir)`` runs them all in one go, for those not using pytest.

Every instance a harness makes for one check shares one store (the same memory name, the same
file, the same server namespace): ``make`` receives a ``BrokerContext`` that says which.
Timing assertions are generous: these check behaviour, not speed.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celeriac.brokers.base import Broker, Defers
from celeriac.message import Delivery, Envelope, Outgoing

#: Lease used by the checks that wait for leases to lapse (short, to keep the kit fast).
SHORT_LEASE = 0.5
#: Lease used elsewhere (long enough never to lapse during a check).
LONG_LEASE = 60.0


@dataclass(frozen=True)
class BrokerContext:
    """What ``BrokerSpec.make`` needs to build one instance.

    ``name`` is unique per check (use it for a memory store name, a Redis key prefix, a vhost);
    ``workdir`` is an empty directory of the check (for files); ``lease_seconds`` the lease the
    check needs.
    """

    name: str
    workdir: Path
    lease_seconds: float


@dataclass(frozen=True)
class BrokerSpec:
    """One broker under test.

    ``survives_reconnect``: messages outlive every instance being closed (a file or a server;
    the memory broker too, its store being process-global). ``fenced_leases``: a stale delivery
    (its lease lapsed and the message was handed out again) can no longer requeue the message.
    """

    name: str
    make: Callable[[BrokerContext], Broker]
    survives_reconnect: bool = True
    fenced_leases: bool = True


@dataclass
class BrokerHarness:
    """Makes connected instances for one check and closes them all afterwards."""

    spec: BrokerSpec
    workdir: Path
    name: str = field(default_factory=lambda: f"kit{uuid.uuid4().hex[:12]}")
    _open: list[Broker] = field(default_factory=list)

    async def new(self, lease_seconds: float = LONG_LEASE) -> Broker:
        broker = self.spec.make(BrokerContext(self.name, self.workdir, lease_seconds))
        await broker.connect()
        self._open.append(broker)
        return broker

    async def close(self, broker: Broker) -> None:
        if broker in self._open:
            self._open.remove(broker)
        await broker.close()

    async def close_all(self) -> None:
        while self._open:
            await self._open.pop().close()


Check = Callable[[BrokerHarness], Awaitable[None]]


def out(queue: str, body: bytes | str, **kwargs: Any) -> Outgoing:
    """An ``Outgoing`` with a JSON-ish body, for checks."""
    raw = body.encode() if isinstance(body, str) else body
    return Outgoing(queue, Envelope(raw), **kwargs)


def bodies(deliveries: Sequence[Delivery]) -> list[bytes]:
    return [d.envelope.body for d in deliveries]


async def drain(broker: Broker, queues: Sequence[str], max_count: int = 100) -> list[Delivery]:
    """Everything ``broker`` hands out now, fetched ``max_count`` at a time."""
    got: list[Delivery] = []
    while batch := await broker.fetch(queues, max_count, 0):
        got += batch
    return got


async def drain_until(
    b: Broker, queues: Sequence[str], count: int, timeout: float
) -> list[Delivery]:
    """Fetch until ``count`` messages came or ``timeout`` passed."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and (left := deadline - time.monotonic()) > 0:
        got += await b.fetch(queues, count - len(got), left)
    return got


# -- the checks ---------------------------------------------------------------------------


async def check_roundtrip_is_exact(h: BrokerHarness) -> None:
    b = await h.new()
    env = Envelope(
        body=b"\x00\xff binary \xe2\x82\xac" + bytes(range(256)),
        content_type="application/x-msgpack",
        content_encoding="binary",
        headers={
            "lang": "py",
            "task": "proj.add",
            "id": "a3f1",
            "eta": None,
            "retries": 3,
            "timelimit": [None, 10.5],
            "stamps": {"k": ["v", 1, True]},
            "unicode": "h\u00e9llo \u2603 \U0001f600",
        },
        properties={
            "correlation_id": "a3f1",
            "reply_to": "r-1",
            "delivery_mode": 2,
            "priority": 0,
            "body_encoding": "base64",
        },
    )
    await b.publish([Outgoing("q", env)])
    [d] = await b.fetch(["q"], 10, 1.0)
    assert d.envelope == env, (d.envelope, env)
    assert d.queue == "q"
    assert d.deliveries == 1 and not d.redelivered
    assert d.priority == 0
    await b.publish([Outgoing("q", Envelope(b""))])
    [empty] = await b.fetch(["q"], 10, 1.0)
    assert empty.envelope == Envelope(b"")


async def check_fifo(h: BrokerHarness) -> None:
    b = await h.new()
    await b.publish([out("q", f"m{i}") for i in range(50)])
    for i in range(50, 60):
        await b.publish([out("q", f"m{i}")])
    got = await drain(b, ["q"], 7)
    assert bodies(got) == [f"m{i}".encode() for i in range(60)]


async def check_priority(h: BrokerHarness) -> None:
    b = await h.new()
    prios = [0, 5, 9, 5, 0, 9, 3, 1]
    await b.publish([out("q", f"{p}-{i}", priority=p) for i, p in enumerate(prios)])
    got = await drain(b, ["q"], 3)
    expected = sorted(((p, i) for i, p in enumerate(prios)), key=lambda t: (-t[0], t[1]))
    assert bodies(got) == [f"{p}-{i}".encode() for p, i in expected]
    assert [d.priority for d in got] == [p for p, _ in expected]


async def check_priority_is_clamped(h: BrokerHarness) -> None:
    b = await h.new()
    await b.publish([out("q", "low", priority=-5), out("q", "high", priority=250)])
    got = await drain(b, ["q"])
    assert bodies(got) == [b"high", b"low"]
    assert [d.priority for d in got] == [9, 0]


async def check_queues_are_separate_and_ordered(h: BrokerHarness) -> None:
    b = await h.new()
    await b.publish([out("b", "b0"), out("a", "a0"), out("b", "b1"), out("a", "a1")])
    await b.publish([out("c", "c0")])
    assert bodies(await drain(b, ["c"])) == [b"c0"]
    got = await drain(b, ["a", "b"], 3)
    assert bodies(got) == [b"a0", b"a1", b"b0", b"b1"], bodies(got)
    assert [d.queue for d in got] == ["a", "a", "b", "b"]
    await b.publish([out("b", "b2"), out("a", "a2", priority=0), out("b", "b3", priority=9)])
    # queue order outranks priority
    assert bodies(await b.fetch(["a", "b"], 10, 1.0)) == [b"a2", b"b3", b"b2"]


async def check_max_count(h: BrokerHarness) -> None:
    b = await h.new()
    await b.publish([out("q", str(i)) for i in range(10)])
    first = await b.fetch(["q"], 3, 1.0)
    assert len(first) == 3
    rest = await b.fetch(["q"], 100, 1.0)
    assert len(rest) == 7
    assert sorted(bodies(first + rest)) == sorted(str(i).encode() for i in range(10))
    assert await b.fetch(["q"], 1, 0) == []


async def check_fetch_timeout(h: BrokerHarness) -> None:
    b = await h.new()
    start = time.monotonic()
    assert await b.fetch(["q"], 10, 0) == []
    assert time.monotonic() - start < 0.5
    start = time.monotonic()
    assert await b.fetch(["q"], 10, 0.4) == []
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 2.0, elapsed


async def check_publish_wakes_waiting_fetch(h: BrokerHarness) -> None:
    consumer = await h.new()
    producer = await h.new()
    for publisher in (producer, consumer):
        waiting = asyncio.create_task(consumer.fetch(["q"], 10, 10.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        sent = time.monotonic()
        await publisher.publish([out("q", "wake")])
        got = await asyncio.wait_for(waiting, 5.0)
        latency = time.monotonic() - sent
        assert bodies(got) == [b"wake"]
        assert latency < 0.5, latency
        await consumer.ack(got)


async def check_other_queue_does_not_satisfy_fetch(h: BrokerHarness) -> None:
    b = await h.new()
    waiting = asyncio.create_task(b.fetch(["q"], 10, 0.6))
    await asyncio.sleep(0.1)
    await b.publish([out("other", "x")])
    assert await asyncio.wait_for(waiting, 5.0) == []
    assert await b.queue_size("other") == 1


async def check_lease_expiry_redelivers(h: BrokerHarness) -> None:
    b = await h.new(lease_seconds=SHORT_LEASE)
    other = await h.new(lease_seconds=SHORT_LEASE)
    await b.publish([out("q", "m")])
    start = time.monotonic()
    [first] = await b.fetch(["q"], 10, 1.0)
    assert first.deliveries == 1
    assert await other.fetch(["q"], 10, 0) == []
    [again] = await other.fetch(["q"], 10, 5.0)
    elapsed = time.monotonic() - start
    assert again.envelope == first.envelope
    assert again.deliveries == 2 and again.redelivered
    assert SHORT_LEASE * 0.8 <= elapsed < SHORT_LEASE + 2.0, elapsed
    await other.ack([again])
    assert await b.queue_size("q") == 0


async def check_renew_prevents_redelivery(h: BrokerHarness) -> None:
    b = await h.new(lease_seconds=SHORT_LEASE)
    other = await h.new(lease_seconds=SHORT_LEASE)
    await b.publish([out("q", "m")])
    [d] = await b.fetch(["q"], 10, 1.0)

    async def keep_renewing() -> None:
        while True:
            await asyncio.sleep(SHORT_LEASE / 4)
            await b.renew([d])

    renewer = asyncio.create_task(keep_renewing())
    try:
        assert await other.fetch(["q"], 10, SHORT_LEASE * 3) == []
    finally:
        renewer.cancel()
    await b.ack([d])
    assert await other.fetch(["q"], 10, SHORT_LEASE * 2) == []


async def check_ack_removes(h: BrokerHarness) -> None:
    b = await h.new(lease_seconds=SHORT_LEASE)
    await b.publish([out("q", str(i)) for i in range(20)])
    got = await b.fetch(["q"], 20, 1.0)
    assert len(got) == 20
    assert await b.queue_size("q") == 20  # in flight still counts
    await b.ack(got)
    await b.ack([])
    assert await b.queue_size("q") == 0
    assert await b.fetch(["q"], 10, SHORT_LEASE * 2) == []  # not back after the lease
    await b.ack(got[:1])  # acking twice is harmless


async def check_requeue_is_immediate_and_keeps_place(h: BrokerHarness) -> None:
    b = await h.new()
    await b.publish([out("q", f"m{i}") for i in range(5)])
    taken = await b.fetch(["q"], 2, 1.0)
    assert bodies(taken) == [b"m0", b"m1"]
    await b.requeue(taken)
    got = await b.fetch(["q"], 10, 0)
    assert bodies(got) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [d.deliveries for d in got] == [2, 2, 1, 1, 1]
    await b.requeue([got[4]])
    await b.requeue([])
    [back] = await b.fetch(["q"], 10, 0)
    assert back.envelope.body == b"m4" and back.deliveries == 2


async def check_requeue_wakes_waiting_fetch(h: BrokerHarness) -> None:
    holder = await h.new()
    waiter = await h.new()
    await holder.publish([out("q", "m")])
    taken = await holder.fetch(["q"], 1, 1.0)
    waiting = asyncio.create_task(waiter.fetch(["q"], 10, 10.0))
    await asyncio.sleep(0.2)
    sent = time.monotonic()
    await holder.requeue(taken)
    got = await asyncio.wait_for(waiting, 5.0)
    assert bodies(got) == [b"m"] and time.monotonic() - sent < 0.5


async def check_requeue_priority_kept(h: BrokerHarness) -> None:
    b = await h.new()
    await b.publish([out("q", "hi", priority=7), out("q", "lo", priority=1)])
    [hi] = await b.fetch(["q"], 1, 1.0)
    await b.requeue([hi])
    got = await b.fetch(["q"], 10, 0)
    assert bodies(got) == [b"hi", b"lo"] and got[0].priority == 7


async def check_stale_delivery_cannot_requeue(h: BrokerHarness) -> None:
    if not h.spec.fenced_leases:
        return
    b = await h.new(lease_seconds=SHORT_LEASE)
    await b.publish([out("q", "m")])
    [stale] = await b.fetch(["q"], 1, 1.0)
    [current] = await b.fetch(["q"], 1, 5.0)  # after the lease lapsed
    assert current.deliveries == 2
    await b.requeue([stale])  # must not hand the message to a third consumer
    assert await b.fetch(["q"], 1, 0) == []
    await b.requeue([current])
    [third] = await b.fetch(["q"], 1, 0)
    assert third.deliveries == 3


async def check_dead_letter(h: BrokerHarness) -> None:
    b = await h.new(lease_seconds=SHORT_LEASE)
    env = Envelope(b"poison", headers={"id": "t1", "task": "x"}, properties={"priority": 3})
    await b.publish([Outgoing("q", env, priority=3), out("q", "fine")])
    first, second = await b.fetch(["q"], 10, 1.0)
    assert first.envelope == env
    await b.dead_letter(first, "undecodable body \u2603")
    await b.dead_letter(second, "second reason")
    assert await b.queue_size("q") == 0
    assert await b.fetch(["q"], 10, SHORT_LEASE * 2) == []
    dead = await b.dead_letters()
    assert [reason for _, reason in dead] == ["second reason", "undecodable body \u2603"]
    dead_delivery = dead[1][0]
    assert dead_delivery.envelope == env and dead_delivery.queue == "q"
    assert [r for _, r in await b.dead_letters(limit=1)] == ["second reason"]
    other = await h.new()
    assert len(await other.dead_letters()) == 2


async def check_not_before(h: BrokerHarness) -> None:
    b = await h.new()
    delay = 0.6
    start = time.monotonic()
    await b.publish(
        [
            out("q", "later", not_before=time.time() + delay, priority=9),
            out("q", "past", not_before=time.time() - 10),
            out("q", "now"),
        ]
    )
    assert bodies(await b.fetch(["q"], 10, 0)) == [b"past", b"now"]
    assert await b.fetch(["q"], 10, 0) == []
    assert await b.queue_size("q") == 3  # delayed counts
    got = await b.fetch(["q"], 10, 5.0)
    elapsed = time.monotonic() - start
    assert bodies(got) == [b"later"]
    assert delay * 0.9 <= elapsed < delay + 1.0, elapsed


async def check_defer_holds_until_due_and_releases_at_once(h: BrokerHarness) -> None:
    """``Defers`` (optional): a held message sent back to wait is gone from the fetchable
    and held ones at once, and comes out once when due, as a first delivery."""
    b = await h.new()
    if not isinstance(b, Defers):
        return
    delay = 0.6
    await b.publish([out("q", "later"), out("q", "next")])
    held = await b.fetch(["q"], 1, 0)
    start = time.monotonic()
    await b.defer(held[0], time.time() + delay)
    assert bodies(await b.fetch(["q"], 10, 0)) == [b"next"]
    assert await b.queue_size("q") == 2
    got = await b.fetch(["q"], 10, 5.0)
    elapsed = time.monotonic() - start
    assert bodies(got) == [b"later"] and got[0].deliveries == 1
    assert delay * 0.9 <= elapsed < delay + 1.0, elapsed
    await b.ack(got)
    assert await b.fetch(["q"], 10, 0.3) == []


async def check_not_before_wakes_across_instances(h: BrokerHarness) -> None:
    consumer = await h.new()
    producer = await h.new()
    waiting = asyncio.create_task(consumer.fetch(["q"], 10, 10.0))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await producer.publish([out("q", "soon", not_before=time.time() + 0.3)])
    got = await asyncio.wait_for(waiting, 5.0)
    elapsed = time.monotonic() - start
    assert bodies(got) == [b"soon"]
    assert 0.25 <= elapsed < 1.3, elapsed


async def check_purge(h: BrokerHarness) -> None:
    b = await h.new()
    await b.publish([out("a", str(i)) for i in range(5)])
    await b.publish([out("a", "delayed", not_before=time.time() + 60)])
    await b.publish([out("b", "keep")])
    assert await b.purge(["a"]) == 6
    assert await b.queue_size("a") == 0
    assert await b.queue_size("b") == 1
    assert await b.purge(["a", "nothing-here"]) == 0
    assert bodies(await b.fetch(["a", "b"], 10, 0)) == [b"keep"]


async def check_queue_size(h: BrokerHarness) -> None:
    b = await h.new()
    assert await b.queue_size("q") == 0
    await b.publish([out("q", str(i)) for i in range(4)])
    await b.publish([out("q", "later", not_before=time.time() + 60)])
    assert await b.queue_size("q") == 5
    got = await b.fetch(["q"], 2, 1.0)
    assert await b.queue_size("q") == 5
    await b.ack(got)
    assert await b.queue_size("q") == 3
    other = await h.new()
    assert await other.queue_size("q") == 3


async def check_publish_nothing(h: BrokerHarness) -> None:
    b = await h.new()
    await b.publish([])
    assert await b.queue_size("q") == 0


async def check_concurrent_consumers_never_share(h: BrokerHarness) -> None:
    total = 300
    consumers = [await h.new() for _ in range(3)]
    seen: list[bytes] = []

    async def consume(b: Broker) -> None:
        idle = 0
        while idle < 3:
            batch = await b.fetch(["q"], 7, 0.2)
            if not batch:
                idle += 1
                continue
            idle = 0
            seen.extend(bodies(batch))
            await asyncio.sleep(0)
            await b.ack(batch)

    producer = await h.new()
    tasks = [asyncio.create_task(consume(b)) for b in consumers]
    for i in range(0, total, 30):
        await producer.publish([out("q", str(n)) for n in range(i, i + 30)])
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert len(seen) == total, len(seen)
    assert sorted(seen) == sorted(str(n).encode() for n in range(total))


async def check_instances_on_other_threads(h: BrokerHarness) -> None:
    """Instances living on other event loops (other threads) share the store, take each
    message once, and are woken by publishes made here."""
    total = 200
    seen: list[bytes] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    started = threading.Barrier(3)

    async def consume() -> None:
        b = h.spec.make(BrokerContext(h.name, h.workdir, LONG_LEASE))
        await b.connect()
        try:
            started.wait(5)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                batch = await b.fetch(["q"], 5, 0.5)
                if batch:
                    with lock:
                        seen.extend(bodies(batch))
                    await b.ack(batch)
                with lock:
                    if len(seen) >= total:
                        return
        finally:
            await b.close()

    def run() -> None:
        try:
            asyncio.run(consume())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    producer = await h.new()
    await asyncio.to_thread(started.wait, 5)
    await asyncio.sleep(0.2)  # let both threads sit in fetch
    for i in range(0, total, 20):
        await producer.publish([out("q", str(n)) for n in range(i, i + 20)])
        await asyncio.sleep(0.01)
    for t in threads:
        await asyncio.to_thread(t.join, 25)
    assert not errors, errors
    assert sorted(seen) == sorted(str(n).encode() for n in range(total)), len(seen)


async def check_close_and_reconnect_keeps_messages(h: BrokerHarness) -> None:
    if not h.spec.survives_reconnect:
        return
    b = await h.new(lease_seconds=SHORT_LEASE)
    env = Envelope(b"keep", headers={"a": [1, 2]}, properties={"reply_to": "x"})
    await b.publish([Outgoing("q", env, priority=4), out("q", "inflight")])
    await b.publish([out("q", "delayed", not_before=time.time() + 0.3)])
    [first] = await b.fetch(["q"], 1, 1.0)
    assert first.envelope == env
    await b.requeue([first])
    [held] = await b.fetch(["q"], 1, 1.0)  # "keep" again; this lease will lapse
    await h.close(b)
    b2 = await h.new(lease_seconds=SHORT_LEASE)
    assert await b2.queue_size("q") == 3
    got = await b2.fetch(["q"], 10, 1.0)
    assert bodies(got) == [b"inflight"]
    more = await drain_until(b2, ["q"], 2, 5.0)
    assert sorted(bodies(more)) == [b"delayed", b"keep"]
    kept = next(d for d in more if d.envelope.body == b"keep")
    assert kept.envelope == env and kept.priority == 4 and kept.deliveries == held.deliveries + 1


CHECKS: list[Check] = [
    check_roundtrip_is_exact,
    check_fifo,
    check_priority,
    check_priority_is_clamped,
    check_queues_are_separate_and_ordered,
    check_max_count,
    check_fetch_timeout,
    check_publish_wakes_waiting_fetch,
    check_other_queue_does_not_satisfy_fetch,
    check_lease_expiry_redelivers,
    check_renew_prevents_redelivery,
    check_ack_removes,
    check_requeue_is_immediate_and_keeps_place,
    check_requeue_wakes_waiting_fetch,
    check_requeue_priority_kept,
    check_stale_delivery_cannot_requeue,
    check_dead_letter,
    check_not_before,
    check_not_before_wakes_across_instances,
    check_defer_holds_until_due_and_releases_at_once,
    check_purge,
    check_queue_size,
    check_publish_nothing,
    check_concurrent_consumers_never_share,
    check_instances_on_other_threads,
    check_close_and_reconnect_keeps_messages,
]


async def run_check(spec: BrokerSpec, check: Check, workdir: Path) -> None:
    """Run one check against ``spec`` with a fresh store, closing what it opened."""
    harness = BrokerHarness(spec, workdir)
    try:
        await check(harness)
    finally:
        await harness.close_all()


async def check_broker(spec: BrokerSpec, workdir: Path | None = None) -> None:
    """Run every check against ``spec``; the first failure raises ``AssertionError``."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="celeriac-kit-") as tmp:
            await check_broker(spec, Path(tmp))
        return
    for i, check in enumerate(CHECKS):
        sub = workdir / f"{i:02d}-{check.__name__}"
        sub.mkdir(parents=True, exist_ok=True)
        await run_check(spec, check, sub)

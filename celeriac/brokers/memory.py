"""An in-process broker, for tests and eager use.

Every ``MemoryBroker`` of one URL name in a process (``memory://`` or ``memory://name``) shares
one store, whatever thread or event loop it lives on: the app keeps one broker per event loop,
and a message published on one loop must reach a consumer on another. The store is guarded by
a ``threading.Lock``; a waiting ``fetch`` on another loop is woken with
``loop.call_soon_threadsafe``.

Per queue the store keeps three heaps, cleaned lazily (an entry whose message changed state
since it was pushed is skipped when it reaches the top):

- ``ready``: ``(-priority, id)`` of messages that may be handed out now;
- ``delayed``: ``(not_before, id)`` of messages not yet due;
- ``leases``: ``(lease_until, id, deliveries)`` of messages handed out.

Message ids grow with every publish and a message keeps its id for life, so FIFO order within
a priority, and a requeued message's place, come for free.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac.brokers._common import (
    check_fetch_args,
    clamp_priority,
    idle_wait,
    positive_seconds,
    resolve_options,
)
from celeriac.brokers.base import DEFAULT_LEASE_SECONDS
from celeriac.errors import BrokerConnectionError, ConfigurationError
from celeriac.message import Delivery, Envelope, Outgoing
from celeriac.utils.stores import NamedStores

READY, DELAYED, LEASED = 0, 1, 2

#: At most this many dead letters are kept per store (oldest dropped first).
DEAD_LETTER_LIMIT = 100_000


@dataclass(slots=True)
class _Message:
    id: int
    queue: str
    priority: int
    envelope: Envelope
    state: int
    due: float = 0.0  # not_before when DELAYED, lease end when LEASED
    deliveries: int = 0


def _holds_lease(msg: _Message | None, until: float, count: int) -> bool:
    """Whether a lease heap entry ``(until, id, count)`` still describes ``msg``'s lease."""
    return msg is not None and msg.state == LEASED and msg.deliveries == count and msg.due == until


@dataclass(slots=True)
class _Queue:
    ready: list[tuple[int, int]] = field(default_factory=list)
    delayed: list[tuple[float, int]] = field(default_factory=list)
    leases: list[tuple[float, int, int]] = field(default_factory=list)
    size: int = 0


@dataclass(eq=False, slots=True)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event
    queues: frozenset[str]

    def wake(self, current: asyncio.AbstractEventLoop | None) -> None:
        if self.loop is current:
            self.event.set()
            return
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:
            pass  # that loop is closed: nobody is waiting there any more


class _Store:
    """One named in-process store; every method expects ``lock`` to be held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: dict[int, _Message] = {}
        self.queues: dict[str, _Queue] = {}
        self.dead: deque[tuple[Delivery, str]] = deque(maxlen=DEAD_LETTER_LIMIT)
        self.waiters: set[_Waiter] = set()
        self.ids = itertools.count(1)

    def queue(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue()
        return q

    def promote(self, q: _Queue, now: float) -> None:
        """Make due delayed messages and lapsed leases ready."""
        messages = self.messages
        delayed, leases, ready = q.delayed, q.leases, q.ready
        while delayed and delayed[0][0] <= now:
            _, mid = heapq.heappop(delayed)
            msg = messages.get(mid)
            if msg is not None and msg.state == DELAYED:
                msg.state = READY
                heapq.heappush(ready, (-msg.priority, mid))
        while leases and leases[0][0] <= now:
            until, mid, count = heapq.heappop(leases)
            msg = messages.get(mid)
            if _holds_lease(msg, until, count):
                assert msg is not None
                msg.state = READY
                heapq.heappush(ready, (-msg.priority, mid))

    def next_due(self, q: _Queue) -> float | None:
        """The soonest not_before or lease end in ``q``, dropping stale heap tops."""
        messages = self.messages
        while q.delayed:
            msg = messages.get(q.delayed[0][1])
            if msg is not None and msg.state == DELAYED:
                break
            heapq.heappop(q.delayed)
        while q.leases:
            until, mid, count = q.leases[0]
            msg = messages.get(mid)
            if _holds_lease(msg, until, count):
                break
            heapq.heappop(q.leases)
        tops = [h[0][0] for h in (q.delayed, q.leases) if h]
        return min(tops) if tops else None

    def take(
        self, queues: Sequence[str], max_count: int, now: float, lease: float
    ) -> list[Delivery]:
        out: list[Delivery] = []
        messages = self.messages
        for name in queues:
            q = self.queues.get(name)
            if q is None:
                continue
            self.promote(q, now)
            ready = q.ready
            while ready and len(out) < max_count:
                _, mid = heapq.heappop(ready)
                msg = messages.get(mid)
                if msg is None or msg.state != READY:
                    continue
                msg.state = LEASED
                msg.deliveries += 1
                msg.due = now + lease
                heapq.heappush(q.leases, (msg.due, mid, msg.deliveries))
                out.append(Delivery(msg.envelope, name, mid, msg.deliveries, msg.priority))
            if len(out) >= max_count:
                break
        return out

    def wake(self, queues: set[str], current: asyncio.AbstractEventLoop | None) -> None:
        for waiter in self.waiters:
            if not waiter.queues.isdisjoint(queues):
                waiter.wake(current)


_stores: NamedStores[_Store] = NamedStores(_Store)


def forget_stores() -> None:
    """Drop every in-process store (for test suites that want a clean slate)."""
    _stores.clear()


def _name_from_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if scheme != "memory" or not sep:
        raise ConfigurationError(f"not a memory broker URL: {url!r} (expected memory://[name])")
    return rest.strip("/")


def _current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class MemoryBroker:
    """A broker held in this process's memory; see the module docstring."""

    def __init__(
        self,
        url: str = "memory://",
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        **options: Any,
    ) -> None:
        opts = resolve_options(
            {"lease_seconds": lease_seconds, **options},
            {"lease_seconds": DEFAULT_LEASE_SECONDS},
            "MemoryBroker",
        )
        self.url = url
        self.name = _name_from_url(url)
        self.lease_seconds = positive_seconds(
            opts["lease_seconds"], "lease_seconds", "MemoryBroker"
        )
        self._store = _stores.get(self.name)
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.url!r}>"

    def _check_open(self) -> _Store:
        if self._closed:
            raise BrokerConnectionError(f"{self!r} is closed")
        return self._store

    async def connect(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        store = self._check_open()
        if not messages:
            return
        now = time.time()
        woken: set[str] = set()
        with store.lock:
            for out in messages:
                mid = next(store.ids)
                priority = clamp_priority(out.priority)
                q = store.queue(out.queue)
                q.size += 1
                if out.not_before is not None and out.not_before > now:
                    msg = _Message(mid, out.queue, priority, out.envelope, DELAYED, out.not_before)
                    heapq.heappush(q.delayed, (out.not_before, mid))
                else:
                    msg = _Message(mid, out.queue, priority, out.envelope, READY)
                    heapq.heappush(q.ready, (-priority, mid))
                store.messages[mid] = msg
                # A delayed message wakes waiters too: they must shorten their sleep.
                woken.add(out.queue)
            store.wake(woken, _current_loop())

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        store = self._check_open()
        check_fetch_args(queues, max_count)
        deadline = time.monotonic() + max(timeout, 0.0)
        waiter: _Waiter | None = None
        try:
            while True:
                now = time.time()
                with store.lock:
                    got = store.take(queues, max_count, now, self.lease_seconds)
                    if got:
                        return got
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    dues = [
                        d
                        for name in queues
                        if (q := store.queues.get(name)) is not None
                        and (d := store.next_due(q)) is not None
                    ]
                    if waiter is None:
                        loop = asyncio.get_running_loop()
                        waiter = _Waiter(loop, asyncio.Event(), frozenset(queues))
                        store.waiters.add(waiter)
                    else:
                        waiter.event.clear()
                # Registered (or cleared) under the lock that guards the query: a publish
                # after the query has already set the event, so no wakeup is lost.
                next_due_in = min(dues) - now if dues else None
                wait = idle_wait(remaining, next_due_in, poll_interval=3600.0)
                try:
                    async with asyncio.timeout(wait):
                        await waiter.event.wait()
                except TimeoutError:
                    pass
                self._check_open()
        finally:
            if waiter is not None:
                with store.lock:
                    store.waiters.discard(waiter)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        store = self._check_open()
        with store.lock:
            for d in deliveries:
                msg = store.messages.pop(d.tag, None)
                if msg is not None:
                    store.queues[msg.queue].size -= 1

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        store = self._check_open()
        woken: set[str] = set()
        with store.lock:
            for d in deliveries:
                msg = store.messages.get(d.tag)
                # Only the current holder may give a message back (a stale delivery whose
                # lease lapsed and that was handed out again must not disturb the new holder).
                if msg is None or msg.state != LEASED or msg.deliveries != d.deliveries:
                    continue
                msg.state = READY
                heapq.heappush(store.queues[msg.queue].ready, (-msg.priority, msg.id))
                woken.add(msg.queue)
            if woken:
                store.wake(woken, _current_loop())

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        store = self._check_open()
        until = time.time() + self.lease_seconds
        with store.lock:
            for d in deliveries:
                msg = store.messages.get(d.tag)
                if msg is None or msg.deliveries != d.deliveries or msg.state == DELAYED:
                    continue
                # READY here means the lease lapsed but nobody took it since: take it back.
                msg.state = LEASED
                msg.due = until
                heapq.heappush(store.queues[msg.queue].leases, (until, msg.id, msg.deliveries))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        store = self._check_open()
        with store.lock:
            msg = store.messages.pop(delivery.tag, None)
            if msg is not None:
                store.queues[msg.queue].size -= 1
            store.dead.append((delivery, reason))

    async def purge(self, queues: Sequence[str]) -> int:
        store = self._check_open()
        now = time.time()
        removed = 0
        with store.lock:
            for name in queues:
                q = store.queues.get(name)
                if q is None:
                    continue
                store.promote(q, now)
                for _, mid in itertools.chain(q.ready, q.delayed):
                    msg = store.messages.get(mid)
                    if msg is not None and msg.state in (READY, DELAYED):
                        del store.messages[mid]
                        removed += 1
                        q.size -= 1
                q.ready.clear()
                q.delayed.clear()
        return removed

    async def queue_size(self, queue: str) -> int:
        store = self._check_open()
        with store.lock:
            q = store.queues.get(queue)
            return q.size if q is not None else 0

    async def dead_letters(self, limit: int = 100) -> list[tuple[Delivery, str]]:
        store = self._check_open()
        with store.lock:
            newest = list(itertools.islice(reversed(store.dead), max(limit, 0)))
        return newest

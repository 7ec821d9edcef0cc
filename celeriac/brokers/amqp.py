"""The RabbitMQ (AMQP 0-9-1) broker, on aiormq: Celery's topology, RabbitMQ's guarantees.

**Connections.** One connection per instance (the app keeps one instance per event loop), two
channels: ``pub`` (publisher confirms on, every publish ``mandatory``) and ``con`` (consumers,
``basic.get``, acks). A supervisor task reconnects with exponential backoff when the
connection drops, re-declares everything declared so far, and resumes the consumers. Every
connection has a *generation*; a delivery remembers its generation and an ack, requeue or
dead-letter of a delivery from an older generation is skipped (RabbitMQ has already put the
message back when its channel died): a delivery from a dead channel is never acked on the new
one.

**Publishing** writes a batch and awaits all the confirms together; a ``basic.return``
(unroutable), a ``basic.nack`` or a confirm that does not come within ``publish_timeout``
(RabbitMQ's memory alarm blocks publishers with ``connection.blocked``) raises ``BrokerError``.
Sync code (``delay()`` from a script) publishes on a blocking channel of its own
(``publish_blocking``, ``_amqp_blocking``) once a route is declared, with the same frames and
the same errors, and no event loop turn per call. With ``confirm_window`` = N (default 0) a
sync publish returns once written, while up to N messages await their confirm, kept in memory
and sent again until confirmed; ``close`` and the interpreter's exit wait for them (see
``_amqp_blocking``).

**Fetching.** With ``fetch_mode="consume"`` (the default: workers), a waiting ``fetch``
starts consumers on its queues (QoS prefetch = the first ``max_count`` asked, per consumer, so
quorum queues work) and takes what they pushed (per-queue buffers, in queue order); RabbitMQ
streams, no round trip per message. A ``fetch`` with no wait also takes what ``basic.get``
finds ready. ``fetch_mode="get"`` (tools, the conformance kit) takes what ``basic.get`` finds
before any consumer starts, so a message given back keeps its exact place (with consumers,
messages already pushed to a buffer come first) and an idle instance holds nothing: a consumer
starts only when a ``fetch`` has to wait.

**Leases.** RabbitMQ gives an unacked message back when its channel closes, so a worker that
dies loses nothing. For a worker that is alive but stuck, leases are kept here: a message
neither acked nor renewed for ``lease_seconds`` is given back (``basic.nack requeue``) by a
sweeper task. ``renew`` may be called on any instance of the process (the lease keeper's
thread has its own): the deadline lives in the delivery's tag. RabbitMQ's own
``consumer_timeout`` (30 min by default) still bounds a task that runs longer than that.

**Delivery counts**: ``x-delivery-count`` on quorum queues; on classic queues the larger of the
``redelivered`` flag, this process's own count, and the header ``x-celeriac-deliveries``, which
is raised by re-publishing a message that came back from a consumer that died (so a message
that keeps killing workers is counted, and dead-lettered after ``max_deliveries``).

The layout of exchanges, queues, delay levels and headers is in ``_amqp_topology``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiormq
import aiormq.abc
import aiormq.exceptions as amqp_errors
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from celeriac.brokers import _amqp_blocking, _amqp_codec, _amqp_speedups
from celeriac.brokers import _amqp_topology as topo
from celeriac.brokers._common import check_fetch_args, clamp_priority, positive_seconds, resolve_options
from celeriac.brokers.base import DEFAULT_LEASE_SECONDS
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError
from celeriac.message import Delivery, Envelope, Outgoing

log = logging.getLogger("celeriac.brokers.amqp")


_amqp_speedups.apply()

T = TypeVar("T")

#: AMQP basic properties an Envelope's ``properties`` may hold as they are.
AMQP_PROPERTIES = frozenset({"correlation_id", "reply_to", "delivery_mode", "priority",
                             "expiration", "message_id", "type", "user_id", "app_id",
                             "timestamp", "cluster_id"})
#: The ones celeriac maps (message_id is aiormq's, used to match returns to publishes).
_MAPPED = ("correlation_id", "reply_to", "delivery_mode", "priority", "expiration")

HELD, DONE, LAPSED = 0, 1, 2

_DEFAULTS: dict[str, Any] = {
    "lease_seconds": DEFAULT_LEASE_SECONDS,
    "task_queues": None,
    "queue_arguments": None,
    "confirm_publish": True,
    "confirm_window": 0,
    "prefetch_count": None,
    "heartbeat": 60.0,
    "connect_timeout": 10.0,
    "publish_timeout": 30.0,
    "reconnect_max_delay": 5.0,
    "max_deliveries": 10,
    "delay_unit": 0.1,
    "delay_queue_type": "quorum",
    "persistent": True,
    "fetch_mode": "consume",
}


class _Tag:
    """A delivery's handle: its channel generation, delivery tag and lease deadline."""

    __slots__ = ("count_key", "deadline", "dtag", "gen", "owner", "queue", "state")

    def __init__(self, owner: AMQPBroker, gen: int, dtag: int, queue: str, deadline: float,
                 count_key: Any) -> None:
        self.owner = owner
        self.gen = gen
        self.dtag = dtag
        self.queue = queue
        self.deadline = deadline
        self.state = HELD
        self.count_key = count_key

    def __repr__(self) -> str:
        return f"<amqp delivery {self.dtag} gen {self.gen}>"


class _Seen:
    """How many times this process has had each unacked message delivered (bounded)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.lock = threading.Lock()
        self.counts: OrderedDict[Any, int] = OrderedDict()
        self.limit = limit

    def bump(self, key: Any, at_least: int) -> int:
        with self.lock:
            n = max(self.counts.pop(key, 0) + 1, at_least)
            self.counts[key] = n
            if len(self.counts) > self.limit:
                self.counts.popitem(last=False)
            return n

    def seen(self, key: Any) -> int:
        with self.lock:
            return self.counts.get(key, 0)

    def forget(self, key: Any) -> None:
        with self.lock:
            self.counts.pop(key, None)


_seen = _Seen()
#: Every live instance, so that ``queue_size`` counts what this process holds in flight.
_instances: weakref.WeakSet[AMQPBroker] = weakref.WeakSet()


def translate(exc: BaseException, doing: str) -> BrokerError:
    """A driver error as a celeriac error (no credentials: aiormq's messages carry none)."""
    text = f"AMQP broker failed to {doing}: {type(exc).__name__}: {exc}"
    if isinstance(exc, amqp_errors.AMQPConnectionError | ConnectionError | OSError
                  | amqp_errors.ChannelInvalidStateError):
        return BrokerConnectionError(text)
    return BrokerError(text)


@dataclass
class _Consumer:
    queue: str
    prefetch: int
    tag: str = ""


@dataclass
class _Conn:
    """One live connection and its channels; replaced whole on reconnect."""

    gen: int
    connection: aiormq.abc.AbstractConnection
    pub: aiormq.abc.AbstractChannel
    con: aiormq.abc.AbstractChannel
    consumers: dict[str, _Consumer] = field(default_factory=dict)
    #: Delivery tags on ``con`` not yet acked or given back (for ``multiple`` acks).
    outstanding: set[int] = field(default_factory=set)


class AMQPBroker:
    """A broker on RabbitMQ; see the module docstring."""

    def __init__(self, url: str = "amqp://guest:guest@localhost:5672//", **options: Any) -> None:
        opts = resolve_options(options, _DEFAULTS, "AMQPBroker")
        self.url = url
        self.endpoint = topo.parse_url(url)
        where = "AMQPBroker"
        self.lease_seconds = positive_seconds(opts["lease_seconds"], "lease_seconds", where)
        self.publish_timeout = positive_seconds(opts["publish_timeout"], "publish_timeout", where)
        self.connect_timeout = positive_seconds(opts["connect_timeout"], "connect_timeout", where)
        self.reconnect_max_delay = positive_seconds(
            opts["reconnect_max_delay"], "reconnect_max_delay", where)
        self.delay_unit = positive_seconds(opts["delay_unit"], "delay_unit", where)
        hb = opts["heartbeat"]
        self.heartbeat = float(hb) if hb else None
        self._heartbeat_given = "heartbeat" in options
        self.confirm_publish = bool(opts["confirm_publish"])
        window = opts["confirm_window"]
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ConfigurationError(
                f"{where}: confirm_window must be a whole number >= 0, not {window!r}")
        self.confirm_window = window
        self.persistent = bool(opts["persistent"])
        self.max_deliveries = int(opts["max_deliveries"] or 0)
        self.prefetch_count = int(opts["prefetch_count"]) if opts["prefetch_count"] else None
        if opts["delay_queue_type"] not in ("quorum", "classic"):
            raise ConfigurationError("AMQPBroker: delay_queue_type must be 'quorum' or 'classic'")
        self.delay_queue_type = str(opts["delay_queue_type"])
        if opts["fetch_mode"] not in ("consume", "get"):
            raise ConfigurationError("AMQPBroker: fetch_mode must be 'consume' or 'get'")
        self.fetch_mode = str(opts["fetch_mode"])
        self.queue_arguments: dict[str, Any] = dict(opts["queue_arguments"] or {})
        self.queues = topo.queue_specs(opts["task_queues"])
        self._conn: _Conn | None = None
        self._gens = itertools.count(1)
        self._closed = True
        self._up = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._declared: set[tuple[Any, ...]] = set()
        self._routes: set[tuple[str, str, str]] = set()
        self._declare_log: list[tuple[Any, ...]] = []  # replayed on reconnect, in order
        self._delay_levels: dict[str, int] = {}  # queue -> highest level declared
        self._want_consume: dict[str, int] = {}  # queue -> prefetch
        self._buffers: dict[str, deque[DeliveredMessage]] = {}
        self._arrived: asyncio.Event | None = None
        self._held: dict[int, _Tag] = {}  # id(tag) -> tag, handed out and not settled
        self._inflight: dict[str, int] = {}  # queue -> buffered + handed out
        self._background: set[asyncio.Task[Any]] = set()
        self._listeners: dict[str, Callable[[Envelope], None]] = {}
        self._blocking: _amqp_blocking.BlockingChannel | None = None  # publish_blocking's
        self._loop: asyncio.AbstractEventLoop | None = None  # the one connect ran on
        self._loop_turned = 0.0  # when publish_blocking last let that loop run
        _instances.add(self)

    def __repr__(self) -> str:
        return f"<AMQPBroker {self.endpoint.redacted()}>"

    def adopt_settings(self, conf: Any) -> None:
        """Take the topology settings of an app's config (``task_queues``) unless given, and
        Celery's ``broker_heartbeat`` when it was set (and no ``heartbeat`` option was)."""
        if not self.queues:
            self.queues = topo.queue_specs(getattr(conf, "task_queues", None))
        if not self._heartbeat_given and "broker_heartbeat" in getattr(conf, "changes", {}):
            hb = conf.broker_heartbeat
            self.heartbeat = float(hb) if hb else None

    # -- connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._conn is not None and not self._closed:
            return
        self._closed = False
        self._lock = asyncio.Lock()
        self._arrived = asyncio.Event()
        self._up = asyncio.Event()
        self._loop = loop = asyncio.get_running_loop()
        self._loop_turned = time.monotonic()
        await self._open()
        self._supervisor = loop.create_task(self._supervise())
        self._sweeper = loop.create_task(self._sweep())

    async def _open(self) -> None:
        url = self.endpoint.aiormq_url(self.heartbeat)
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = await aiormq.connect(url)
                pub = await connection.channel(publisher_confirms=self.confirm_publish)
                con = await connection.channel(publisher_confirms=False)
        except (TimeoutError, amqp_errors.AMQPError, OSError, ConnectionError) as exc:
            raise translate(exc, f"connect to {self.endpoint.redacted()}") from None
        except StopAsyncIteration:  # the stream ended in the handshake (aiormq's frame reader)
            raise translate(ConnectionError("connection closed during the handshake"),
                            f"connect to {self.endpoint.redacted()}") from None
        conn = _Conn(next(self._gens), connection, pub, con)
        # Deliveries buffered from an older channel died with it (RabbitMQ requeued them).
        for queue, buf in self._buffers.items():
            self._inflight[queue] = self._inflight.get(queue, 0) - len(buf)
            buf.clear()
        self._conn = conn
        try:
            for item in list(self._declare_log):
                await self._declare_now(conn, item)
            for queue, prefetch in self._want_consume.items():
                await self._start_consumer(conn, queue, prefetch)
            for queue, callback in self._listeners.items():
                await self._start_listener(conn, queue, callback)
        except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
            raise translate(exc, "restore the topology") from None
        self._up.set()

    async def _supervise(self) -> None:
        """Reconnect with backoff whenever the connection closes, until ``close``."""
        delay = 0.1
        while not self._closed:
            conn = self._conn
            if conn is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(conn.connection.closing)
                if self._closed:
                    return
                self._lost(conn)
            try:
                await self._open()
                log.warning("reconnected to %s", self.endpoint.redacted())
                delay = 0.1
            except BrokerError as exc:
                log.warning("reconnecting to %s failed (retrying in %.1fs): %s",
                            self.endpoint.redacted(), delay, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.reconnect_max_delay)

    def _lost(self, conn: _Conn) -> None:
        if self._conn is conn:
            self._conn = None
            self._up.clear()
            log.warning("connection to %s lost; reconnecting", self.endpoint.redacted())
        # Held deliveries of that generation are gone; their tags are fenced by generation.
        for key, tag in list(self._held.items()):
            if tag.gen == conn.gen:
                tag.state = LAPSED
                del self._held[key]
                self._inflight[tag.queue] = self._inflight.get(tag.queue, 0) - 1
        for queue, buf in self._buffers.items():
            self._inflight[queue] = self._inflight.get(queue, 0) - len(buf)
            buf.clear()

    async def _live(self) -> _Conn:
        """The current connection, waiting for a reconnect up to ``connect_timeout``."""
        if self._closed:
            raise BrokerConnectionError(f"{self!r} is closed (call connect() first)")
        conn = self._conn
        if conn is not None and not conn.connection.is_closed:
            return conn
        try:
            async with asyncio.timeout(self.connect_timeout):
                while True:
                    await self._up.wait()
                    conn = self._conn
                    if conn is not None and not conn.connection.is_closed:
                        return conn
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise BrokerConnectionError(
                f"no connection to {self.endpoint.redacted()} within {self.connect_timeout}s"
            ) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._supervisor, self._sweeper, *self._background):
            if task is not None:
                task.cancel()
        for task in (self._supervisor, self._sweeper, *self._background):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        blocking, self._blocking = self._blocking, None
        if blocking is not None:
            blocking.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            self._lost(conn)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await conn.connection.close()
        self._declared.clear()
        self._routes.clear()
        self._declare_log.clear()
        self._delay_levels.clear()
        self._want_consume.clear()
        self._listeners.clear()

    # -- declarations ---------------------------------------------------------------------

    async def _declare(self, item: tuple[Any, ...]) -> None:
        if item in self._declared:
            return
        conn = await self._live()
        try:
            await self._declare_now(conn, item)
        except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
            await self._repair(conn, exc)
            raise translate(exc, f"declare {item[0]} {item[1]!r}") from None
        self._declared.add(item)
        self._declare_log.append(item)

    async def _repair(self, conn: _Conn, exc: BaseException) -> None:
        """A channel error (PRECONDITION_FAILED, NOT_FOUND) closes the channel: reopen it."""
        if isinstance(exc, amqp_errors.AMQPChannelError | amqp_errors.ChannelInvalidStateError) \
                and not conn.connection.is_closed:
            with contextlib.suppress(Exception):
                if conn.pub.is_closed:
                    conn.pub = await conn.connection.channel(
                        publisher_confirms=self.confirm_publish)

    async def _declare_now(self, conn: _Conn, item: tuple[Any, ...]) -> None:
        channel: Any = conn.pub  # ``rpc`` is aiormq's Channel's, not on its abstract class
        await channel.rpc(topo.declare_frame(item))

    def _spec(self, queue: str) -> topo.QueueSpec:
        spec = self.queues.get(queue)
        if spec is None:
            spec = topo.QueueSpec(queue, "", "direct", queue, self.queue_arguments)
        return spec

    async def _ensure_queue(self, queue: str, exchange: str = "", routing_key: str = "") -> None:
        route = (queue, exchange, routing_key)
        if route in self._routes:
            return
        spec = self._spec(queue)
        args = tuple(sorted(spec.arguments.items()))
        await self._declare(("queue", queue, args, spec.durable, spec.auto_delete))
        targets = {(spec.exchange, spec.exchange_type, spec.routing_key)}
        if exchange and exchange != spec.exchange:
            targets.add((exchange, "direct", routing_key or queue))
        for ex, ex_type, key in targets:
            if ex:
                await self._declare(("exchange", ex, ex_type, True))
                await self._declare(("bind", queue, ex, key))
        self._routes.add(route)

    async def _ensure_delay(self, queue: str, units: int) -> None:
        top = units.bit_length() - 1
        if self._delay_levels.get(queue, -1) >= top:
            return
        await self._ensure_queue(queue)
        for level in range(topo.DELAY_LEVELS - 1, -2, -1):
            await self._declare(("exchange", topo.delay_exchange(level), "topic", True))
        for level in range(topo.DELAY_LEVELS - 1, -1, -1):
            await self._declare(("e2e", topo.delay_exchange(level - 1), topo.delay_exchange(level),
                                 topo.level_binding(level, "0", None)))
        await self._declare(("bind", queue, topo.DELAY_OUT, topo.out_binding(queue)))
        for level in range(top + 1):
            args: dict[str, Any] = {
                "x-message-ttl": round(self.delay_unit * 1000 * (1 << level)),
                "x-dead-letter-exchange": topo.delay_exchange(level - 1),
            }
            if self.delay_queue_type == "quorum":
                args.update({"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
                             "x-overflow": "reject-publish"})
            name = topo.delay_queue(queue, level)
            await self._declare(("queue", name, tuple(sorted(args.items())), True, False))
            await self._declare(("bind", name, topo.delay_exchange(level),
                                 topo.level_binding(level, "1", queue)))
        self._delay_levels[queue] = max(top, self._delay_levels.get(queue, -1))

    async def _ensure_dead(self) -> None:
        await self._declare(("exchange", topo.DEAD_EXCHANGE, "fanout", True))
        await self._declare(("queue", topo.DEAD_QUEUE, (), True, False))
        await self._declare(("bind", topo.DEAD_QUEUE, topo.DEAD_EXCHANGE, ""))

    # -- publishing -----------------------------------------------------------------------

    def _properties(self, out: Outgoing, headers: dict[str, Any], delayed: bool) -> spec.Basic.Properties:
        env = out.envelope
        props = env.properties
        priority = clamp_priority(out.priority)
        canonical = (props.keys() <= AMQP_PROPERTIES and "delivery_mode" in props
                     and props.get("priority") == priority and "message_id" not in props)
        if not canonical:
            headers[topo.H_PROPS] = dict(props)
        mode = props.get("delivery_mode")
        if mode is None:
            mode = 2 if self.persistent else 1
        expiration = props.get("expiration")
        return spec.Basic.Properties(
            content_type=env.content_type,
            content_encoding=env.content_encoding,
            headers=headers,
            delivery_mode=int(mode),
            priority=priority,
            correlation_id=_str_or_none(props.get("correlation_id")),
            reply_to=_str_or_none(props.get("reply_to")),
            message_id=os.urandom(16).hex(),  # matches a basic.return to its publish
            # A TTL would cut a delay short: delayed messages keep it in the props header.
            expiration=None if delayed or expiration is None else str(expiration),
        )

    def _delays(self, messages: Sequence[Outgoing]) -> list[tuple[Outgoing, int | None]]:
        """Each message with the delay units it waits in the delay topology (None: not
        delayed)."""
        now = time.time()
        return [(out, None if out.not_before is None or out.not_before - now <= 0.005
                 else topo.delay_units(out.not_before - now, self.delay_unit))
                for out in messages]

    def _route_declared(self, out: Outgoing, units: int | None) -> bool:
        """Whether everything ``out`` is routed through is declared already."""
        if units is not None:
            return self._delay_levels.get(out.queue, -1) >= units.bit_length() - 1
        return (out.queue, out.exchange or "", out.routing_key or out.queue) in self._routes

    async def _declare_route(self, out: Outgoing, units: int | None) -> None:
        if units is not None:
            await self._ensure_delay(out.queue, units)
        else:
            await self._ensure_queue(out.queue, out.exchange or "", out.routing_key or out.queue)

    def _route(self, out: Outgoing, units: int | None) -> tuple[str, str, spec.Basic.Properties]:
        """Exchange, routing key and properties of ``out`` (its route declared)."""
        headers = dict(out.envelope.headers)
        if units is not None:
            headers[topo.H_NOT_BEFORE] = float(out.not_before)  # type: ignore[arg-type]
            props = self._properties(out, headers, delayed=True)
            if props.expiration is None and "expiration" in out.envelope.properties:
                headers[topo.H_PROPS] = dict(out.envelope.properties)
            return (topo.delay_exchange(topo.DELAY_LEVELS - 1),
                    topo.delay_routing_key(units, out.queue), props)
        exchange = out.exchange or ""
        key = out.routing_key or out.queue if exchange else out.queue
        return exchange, key, self._properties(out, headers, delayed=False)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        delays = self._delays(messages)
        for out, units in delays:
            if not self._route_declared(out, units):
                await self._declare_route(out, units)
        await self._publish_raw([(out.envelope.body, self._route(out, units))
                                 for out, units in delays])

    def publish_blocking(self, messages: Sequence[Outgoing]) -> bool:
        """``publish`` from sync code on a blocking channel of its own (``_amqp_blocking``: no
        event loop turn per call). False when a message's route is not declared yet (the
        caller then runs ``publish``, which declares it), without publisher confirms (nothing
        would read what the node sends back) or when the broker is closed."""
        if self._closed or not self.confirm_publish:
            return False
        delays = self._delays(messages)
        if not all(self._route_declared(out, units) for out, units in delays):
            return False
        items = [(*self._route(out, units), out.envelope.body) for out, units in delays]
        channel = self._blocking
        if channel is None:
            channel = self._blocking = _amqp_blocking.BlockingChannel(
                self.endpoint, timeout=self.publish_timeout, connect_timeout=self.connect_timeout,
                idle_seconds=self.heartbeat, declarations=lambda: list(self._declare_log),
                window=self.confirm_window)
        channel.publish(items)
        self._keep_loop_alive()
        return True

    def flush_blocking(self, timeout: float | None = None) -> None:
        """Wait for every confirm the blocking channel's window still owes (``confirm_window``;
        ``timeout``: ``publish_timeout``)."""
        channel = self._blocking
        if channel is not None:
            channel.flush(timeout)

    def _keep_loop_alive(self) -> None:
        """Give this instance's loop a turn every half heartbeat while sync code publishes
        on the blocking channel: a sync-only process would otherwise never run it, and
        RabbitMQ would drop the async connection (its heartbeats unanswered)."""
        loop = self._loop
        if self.heartbeat is None or loop is None or loop.is_running() or loop.is_closed():
            return
        now = time.monotonic()
        if now - self._loop_turned > self.heartbeat / 2:
            self._loop_turned = now
            loop.run_until_complete(asyncio.sleep(0))

    async def _publish_raw(self, items: list[tuple[bytes, tuple[str, str, spec.Basic.Properties]]],
                           mandatory: bool = True) -> None:
        conn = await self._live()
        ch = conn.pub
        try:
            async with asyncio.timeout(self.publish_timeout):
                if self.confirm_publish and _FAST_PATH:
                    results = await _publish_batch(ch, items, mandatory)
                else:
                    results = await asyncio.gather(
                        *(ch.basic_publish(body, exchange=ex, routing_key=key, properties=props,
                                           mandatory=mandatory)
                          for body, (ex, key, props) in items),
                        return_exceptions=True,
                    )
        except TimeoutError:
            raise BrokerError(
                f"RabbitMQ did not confirm {len(items)} message(s) within {self.publish_timeout}s "
                "(is a memory or disk alarm blocking publishers?)") from None
        failures = [r for r in results if isinstance(r, BaseException)]
        for r in results:
            if isinstance(r, spec.Basic.Nack):
                failures.append(BrokerError("RabbitMQ refused (nacked) a message"))
        if failures:
            first = failures[0]
            if isinstance(first, amqp_errors.PublishError):
                frame = first.frame
                where = f"exchange {getattr(frame, 'exchange', '')!r} key " \
                        f"{getattr(frame, 'routing_key', '')!r}"
                raise BrokerError(f"{len(failures)} message(s) unroutable ({where}): "
                                  f"{getattr(frame, 'reply_text', '')}")
            if isinstance(first, BrokerError):
                raise first
            await self._repair(conn, first)
            raise translate(first, "publish")

    # -- consuming ------------------------------------------------------------------------

    async def _start_consumer(self, conn: _Conn, queue: str, prefetch: int) -> None:
        consumer = _Consumer(queue, prefetch)
        # Per consumer (global=False), as quorum queues require.
        await conn.con.basic_qos(prefetch_count=prefetch)
        buf = self._buffers.setdefault(queue, deque())
        arrived = self._arrived
        assert arrived is not None
        gen = conn.gen

        @_amqp_speedups.direct
        def on_message(message: DeliveredMessage) -> None:
            if self._conn is None or self._conn.gen != gen:
                return  # from a channel that died: RabbitMQ has requeued it
            buf.append(message)
            conn.outstanding.add(_delivery_tag(message))
            self._inflight[queue] = self._inflight.get(queue, 0) + 1
            arrived.set()

        ok = await conn.con.basic_consume(queue, on_message, no_ack=False)
        consumer.tag = str(ok.consumer_tag)
        conn.consumers[queue] = consumer

    async def listen(self, queue: str, callback: Callable[[Envelope], None], *,
                     arguments: dict[str, Any] | None = None, durable: bool = False,
                     auto_delete: bool = True) -> None:
        """Declare ``queue`` and pass every message to ``callback`` (no acks: for transient
        replies such as rpc:// results); resumed after a reconnect."""
        await self._declare(("queue", queue, tuple(sorted((arguments or {}).items())), durable,
                             auto_delete))
        conn = await self._live()
        self._listeners[queue] = callback
        try:
            await self._start_listener(conn, queue, callback)
        except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
            self._listeners.pop(queue, None)
            raise translate(exc, f"consume from {queue!r}") from None

    async def _start_listener(self, conn: _Conn, queue: str,
                              callback: Callable[[Envelope], None]) -> None:
        @_amqp_speedups.direct
        def on_message(message: DeliveredMessage) -> None:
            props = message.header.properties
            properties = {name: getattr(props, name) for name in _MAPPED
                          if getattr(props, name) is not None}
            callback(Envelope(message.body, props.content_type or "application/json",
                              props.content_encoding or "utf-8", dict(props.headers or {}),
                              properties))

        await conn.con.basic_consume(queue, on_message, no_ack=True)

    async def publish_reply(self, items: Sequence[tuple[str, Envelope]]) -> None:
        """Send ``(routing_key, envelope)`` replies through the default exchange: not
        mandatory (a client that went away has no queue; Celery drops those too), confirmed."""
        batch = []
        for key, env in items:
            props = spec.Basic.Properties(
                content_type=env.content_type, content_encoding=env.content_encoding,
                headers=dict(env.headers), delivery_mode=int(env.properties.get("delivery_mode", 1)),
                priority=0, correlation_id=_str_or_none(env.properties.get("correlation_id")))
            batch.append((env.body, ("", key, props)))
        await self._publish_raw(batch, mandatory=False)

    async def _consume(self, queues: Sequence[str], max_count: int) -> None:
        conn = await self._live()
        for queue in queues:
            if queue in conn.consumers:
                continue
            prefetch = self.prefetch_count or max(1, max_count)
            self._want_consume[queue] = prefetch
            try:
                await self._start_consumer(conn, queue, prefetch)
            except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
                self._want_consume.pop(queue, None)
                raise translate(exc, f"consume from {queue!r}") from None

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        check_fetch_args(queues, max_count)
        deadline = time.monotonic() + max(timeout, 0.0)
        for queue in queues:
            await self._ensure_queue(queue)
        arrived = self._arrived
        assert arrived is not None
        pushed_only = self.fetch_mode == "consume" and timeout > 0
        if pushed_only:
            await self._consume(queues, max_count)
        while True:
            arrived.clear()
            got = self._take_buffered(queues, max_count)
            if len(got) < max_count and not pushed_only:
                got += await self._get_ready(queues, max_count - len(got))
                if not got:
                    # A push that came before get-empty may wait for its callback (aiormq
                    # without the direct path runs it in a task of its own): let it run.
                    await asyncio.sleep(0)
                    got = self._take_buffered(queues, max_count)
            if got:
                return await self._admit(got)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._consume(queues, max_count)
            if any(self._buffers.get(q) for q in queues):
                continue
            try:
                async with asyncio.timeout(remaining):
                    await arrived.wait()
            except TimeoutError:
                pass

    def _take_buffered(self, queues: Sequence[str], max_count: int) -> list[tuple[str, DeliveredMessage]]:
        got: list[tuple[str, DeliveredMessage]] = []
        for queue in queues:
            buf = self._buffers.get(queue)
            while buf and len(got) < max_count:
                got.append((queue, buf.popleft()))
            if len(got) >= max_count:
                break
        return got

    async def _get_ready(self, queues: Sequence[str], count: int) -> list[tuple[str, DeliveredMessage]]:
        """``basic.get`` what is ready beyond the consumers' prefetch (or before any)."""
        conn = await self._live()
        got: list[tuple[str, DeliveredMessage]] = []
        for queue in queues:
            while len(got) < count:
                try:
                    message = await conn.con.basic_get(queue, no_ack=False)
                except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
                    raise translate(exc, f"get from {queue!r}") from None
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                self._inflight[queue] = self._inflight.get(queue, 0) + 1
                conn.outstanding.add(_delivery_tag(message))
                got.append((queue, message))
            if len(got) >= count:
                break
        return got

    async def _admit(self, raw: list[tuple[str, DeliveredMessage]]) -> list[Delivery]:
        """Turn raw deliveries into ``Delivery``s; re-route early, crashed and poison ones."""
        conn = self._conn
        out: list[Delivery] = []
        now = time.time()
        deadline = now + self.lease_seconds
        for queue, message in raw:
            if conn is None or message.channel is not conn.con:
                self._inflight[queue] = self._inflight.get(queue, 0) - 1
                continue  # its channel died while it waited in the buffer
            d = self._delivery(conn, queue, message, deadline)
            headers = message.header.properties.headers or {}
            not_before = headers.get(topo.H_NOT_BEFORE)
            tag = d.tag
            if isinstance(not_before, int | float) and not_before - now > 0.05:
                self._later(self._resend(d, not_before=float(not_before), bump=False))
                continue
            if self.max_deliveries and d.deliveries > self.max_deliveries:
                self._later(self.dead_letter(d, f"delivered {d.deliveries} times without being "
                                                f"acked (max_deliveries={self.max_deliveries})"))
                continue
            if _redelivered(message) and _seen.seen(tag.count_key) <= 1 \
                    and "x-delivery-count" not in headers and not self._spec(queue).quorum:
                # Back from a consumer that died (not one of ours): count it in a header.
                self._later(self._resend(d, not_before=None, bump=True))
                continue
            self._held[id(tag)] = tag
            out.append(d)
        return out

    def _delivery(self, conn: _Conn, queue: str, message: DeliveredMessage, deadline: float) -> Delivery:
        props = message.header.properties
        headers: dict[str, Any] = dict(props.headers or {})
        extra = headers.pop(topo.H_PROPS, None)
        before = int(headers.pop(topo.H_DELIVERIES, 0) or 0)
        headers.pop(topo.H_NOT_BEFORE, None)
        quorum_count = headers.pop("x-delivery-count", None)
        if "x-death" in headers:
            for name in topo.BROKER_HEADERS:
                headers.pop(name, None)
        if isinstance(extra, dict):
            properties = dict(extra)
        else:
            properties = {}
            for name in _MAPPED:
                value = getattr(props, name)
                if value is not None:
                    properties[name] = value
        # A retry keeps its task id (Celery's correlation_id): count per message, not per id.
        key = props.message_id or (props.correlation_id, headers.get("retries"),
                                   hashlib.sha1(message.body).digest())
        flag = 2 if _redelivered(message) else 1
        if isinstance(quorum_count, int):
            flag = max(flag, quorum_count + 1)
        count = _seen.bump(key, flag)
        tag = _Tag(self, conn.gen, _delivery_tag(message), queue, deadline, key)
        envelope = Envelope(message.body, props.content_type or "application/json",
                            props.content_encoding or "utf-8", headers, properties)
        return Delivery(envelope, queue, tag, before + count, clamp_priority(props.priority))

    def _later(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception as exc:
                log.error("re-routing a delivery failed (it returns to its queue): %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resend(self, d: Delivery, *, not_before: float | None, bump: bool) -> None:
        """Publish a copy (delayed again, or with its count raised), then ack the original."""
        tag: _Tag = d.tag
        self._held[id(tag)] = tag
        headers = dict(d.envelope.headers)
        if bump:
            headers[topo.H_DELIVERIES] = d.deliveries - 1  # deliveries before this copy
        env = Envelope(d.envelope.body, d.envelope.content_type, d.envelope.content_encoding,
                       headers, d.envelope.properties)
        await self.publish([Outgoing(d.queue, env, d.priority, not_before)])
        await self.ack([d])

    async def _settle(self, deliveries: Sequence[Delivery], doing: str, requeue: bool | None,
                      multiple: bool) -> None:
        """Ack (``requeue=None``) or nack the deliveries still held from the live channel:
        ``multiple`` lets one ``basic.ack`` cover a run of tags."""
        conn = self._conn
        todo: list[_Tag] = []
        for d in deliveries:
            tag = d.tag
            if not isinstance(tag, _Tag) or tag.state != HELD or tag.owner is not self:
                continue
            tag.state = DONE
            self._held.pop(id(tag), None)
            self._inflight[tag.queue] = self._inflight.get(tag.queue, 0) - 1
            if conn is not None and tag.gen == conn.gen:
                todo.append(tag)
        if not todo or conn is None:
            return
        dtags = sorted(tag.dtag for tag in todo)
        outstanding = conn.outstanding
        outstanding.difference_update(dtags)
        # Every unsettled delivery up to the last one is in this batch: one frame.
        upto = len(dtags) > 1 and not any(t < dtags[-1] for t in outstanding)
        try:
            if _FAST_PATH:
                number = conn.con.number
                if upto and multiple:
                    payload = _amqp_codec.ack_frame(number, dtags[-1], True, requeue)
                else:
                    payload = b"".join([_amqp_codec.ack_frame(number, dtag, False, requeue)
                                        for dtag in dtags])
                await _write_frames(conn.con, payload)
            elif requeue is None:
                if upto and multiple:
                    await conn.con.basic_ack(dtags[-1], multiple=True, wait=False)
                else:
                    for dtag in dtags:
                        await conn.con.basic_ack(dtag, wait=False)
            else:
                for dtag in dtags:
                    await conn.con.basic_nack(dtag, requeue=requeue, wait=False)
        except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
            raise translate(exc, doing) from None

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            if isinstance(d.tag, _Tag):
                _seen.forget(d.tag.count_key)
        await self._settle(deliveries, "ack", None, multiple=True)

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle(deliveries, "requeue", True, multiple=False)

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        now = time.time()
        for d in deliveries:
            tag = d.tag
            if isinstance(tag, _Tag) and tag.state == HELD:
                tag.deadline = now + tag.owner.lease_seconds

    async def _sweep(self) -> None:
        """Give back what was neither acked nor renewed within its lease."""
        interval = min(max(self.lease_seconds / 4, 0.02), 1.0)
        while not self._closed:
            await asyncio.sleep(interval)
            now = time.time()
            lapsed = [t for t in list(self._held.values()) if t.deadline <= now and t.state == HELD]
            if not lapsed:
                continue
            conn = self._conn
            for tag in lapsed:
                tag.state = LAPSED
                self._held.pop(id(tag), None)
                self._inflight[tag.queue] = self._inflight.get(tag.queue, 0) - 1
                if conn is not None and tag.gen == conn.gen:
                    conn.outstanding.discard(tag.dtag)
                    with contextlib.suppress(Exception):
                        await conn.con.basic_nack(tag.dtag, requeue=True, wait=False)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._ensure_dead()
        env = delivery.envelope
        headers = dict(env.headers)
        headers.update({
            topo.H_DEAD_REASON: reason, topo.H_DEAD_QUEUE: delivery.queue,
            topo.H_DEAD_DELIVERIES: delivery.deliveries, topo.H_DEAD_PRIORITY: delivery.priority,
            topo.H_DEAD_AT: time.time(),
        })
        copy = Outgoing(topo.DEAD_QUEUE, Envelope(env.body, env.content_type, env.content_encoding,
                                                  headers, env.properties), 0,
                        exchange=topo.DEAD_EXCHANGE, routing_key="")
        props = self._properties(copy, headers, delayed=True)
        await self._publish_raw([(env.body, (topo.DEAD_EXCHANGE, "", props))])
        await self.ack([delivery])

    async def dead_letters(self, limit: int = 100) -> list[tuple[Delivery, str]]:
        """Read the dead-letter queue on a channel of its own and give everything back."""
        await self._ensure_dead()
        conn = await self._live()
        found: list[tuple[Delivery, str]] = []
        try:
            ch = await conn.connection.channel(publisher_confirms=False)
            try:
                while True:
                    message = await ch.basic_get(topo.DEAD_QUEUE, no_ack=False)
                    if not isinstance(message.delivery, spec.Basic.GetOk):
                        break
                    found.append(_dead_entry(message))
            finally:
                await ch.close()
        except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
            raise translate(exc, "read the dead letters") from None
        found.reverse()
        return found[: max(limit, 0)]

    # -- inspection -----------------------------------------------------------------------

    async def _ready_counts(self, names: Sequence[str]) -> dict[str, int | None]:
        """Ready messages per queue by passive declare (None: no such queue), on a channel
        of its own since NOT_FOUND closes the channel."""
        conn = await self._live()
        counts: dict[str, int | None] = {}
        ch = await conn.connection.channel(publisher_confirms=False)
        try:
            for name in names:
                try:
                    ok = await ch.queue_declare(name, passive=True)
                    counts[name] = int(ok.message_count or 0)
                except amqp_errors.ChannelNotFoundEntity:
                    counts[name] = None
                    ch = await conn.connection.channel(publisher_confirms=False)
        finally:
            with contextlib.suppress(Exception):
                await ch.close()
        return counts

    def _delay_names(self, queue: str) -> list[str]:
        return [topo.delay_queue(queue, level) for level in range(topo.DELAY_LEVELS)]

    async def _existing_delay_levels(self, queue: str) -> list[str]:
        names: list[str] = []
        counts = await self._ready_counts(self._delay_names(queue)[:1])
        if counts[topo.delay_queue(queue, 0)] is None:
            return names
        known = self._delay_levels.get(queue, -1)
        level = 0
        while level < topo.DELAY_LEVELS:
            name = topo.delay_queue(queue, level)
            if level > known:
                exists = (await self._ready_counts([name]))[name] is not None
                if not exists:
                    break
            names.append(name)
            level += 1
        return names

    async def queue_size(self, queue: str) -> int:
        try:
            names = [queue, *await self._existing_delay_levels(queue)]
            counts = await self._ready_counts(names)
        except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
            raise translate(exc, f"count {queue!r}") from None
        ready = sum(c or 0 for c in counts.values())
        key = self.endpoint.key
        inflight = sum(b._inflight.get(queue, 0) for b in list(_instances)
                       if b.endpoint.key == key)
        return ready + max(inflight, 0)

    async def purge(self, queues: Sequence[str]) -> int:
        conn = await self._live()
        removed = 0
        try:
            for queue in queues:
                names = [queue, *await self._existing_delay_levels(queue)]
                counts = await self._ready_counts(names)
                for name in names:
                    if counts.get(name) is not None:
                        ok = await conn.pub.queue_purge(name)
                        removed += int(ok.message_count or 0)
        except (amqp_errors.AMQPError, OSError, ConnectionError) as exc:
            raise translate(exc, "purge") from None
        return removed


#: aiormq's publish path is per message (a lock, a task, a socket write each). With aiormq 7
#: the batch path below encodes a whole batch first (``_amqp_codec.publish_frames``), then
#: numbers it and writes it as one run of frames, keeping aiormq's own confirm bookkeeping
#: (``confirmations``, ``message_id_delivery_tag``), so returns and nacks still reach the right
#: futures. Acks and nacks are written the same way (``_write_frames``). Off when the channel
#: lacks those attributes.

_FAST_PATH = hasattr(aiormq.Channel, "_split_body") and _amqp_speedups.aiormq_7()


async def _write_frames(ch: aiormq.abc.AbstractChannel, payload: bytes) -> None:
    """Write ready-made frames on ``ch``: at once when nothing is queued before them (see
    ``_amqp_speedups.write_now``), else through aiormq's write queue, in order."""
    if ch.is_closed:
        raise amqp_errors.ChannelInvalidStateError(f"{ch!r} closed")
    chan: Any = ch
    if not _amqp_speedups.write_now(chan.connection, payload):
        from aiormq.abc import ChannelFrame

        await chan.write_queue.put(ChannelFrame(payload=payload, should_close=False))


async def _publish_batch(
    ch: aiormq.abc.AbstractChannel,
    items: list[tuple[bytes, tuple[str, str, spec.Basic.Properties]]],
    mandatory: bool,
) -> list[Any]:
    """Write ``items`` as one run of frames under the channel's publish lock; await every
    confirm together."""
    chan: Any = ch
    futures: list[asyncio.Future[Any]] = []
    async with chan.lock:
        payloads: list[bytes] = []
        number, max_content = chan.number, chan.max_content_size
        for body, (ex, key, props) in items:
            if not props.message_id:
                props.message_id = os.urandom(16).hex()
            payloads.append(_amqp_codec.publish_frames(number, ex, key, mandatory, props, body,
                                                          max_content))
        # Everything is encoded: nothing can fail between numbering a message and writing it.
        confirmations, by_message_id = chan.confirmations, chan.message_id_delivery_tag
        for _body, (_ex, _key, props) in items:
            chan.delivery_tag += 1
            tag = chan.delivery_tag
            fut = chan.create_future()
            confirmations[tag] = fut
            message_id = str(props.message_id)
            by_message_id[message_id] = tag
            fut.add_done_callback(_forget_message_id(chan, message_id, tag))
            futures.append(fut)
        await _write_frames(ch, payloads[0] if len(payloads) == 1 else b"".join(payloads))
    if len(futures) == 1:
        try:
            return [await futures[0]]
        except Exception as exc:
            return [exc]
    return list(await asyncio.gather(*futures, return_exceptions=True))


def _forget_message_id(chan: Any, message_id: str, tag: int) -> Callable[[asyncio.Future[Any]], None]:
    def forget(_: asyncio.Future[Any]) -> None:
        if chan.message_id_delivery_tag.get(message_id) == tag:
            chan.message_id_delivery_tag.pop(message_id, None)

    return forget


def _redelivered(message: DeliveredMessage) -> bool:
    return bool(getattr(message.delivery, "redelivered", False))


def _delivery_tag(message: DeliveredMessage) -> int:
    return int(getattr(message.delivery, "delivery_tag", 0) or 0)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _dead_entry(message: DeliveredMessage) -> tuple[Delivery, str]:
    props = message.header.properties
    headers: dict[str, Any] = dict(props.headers or {})
    reason = str(headers.pop(topo.H_DEAD_REASON, ""))
    queue = str(headers.pop(topo.H_DEAD_QUEUE, ""))
    deliveries = int(headers.pop(topo.H_DEAD_DELIVERIES, 1) or 1)
    priority = int(headers.pop(topo.H_DEAD_PRIORITY, 0) or 0)
    headers.pop(topo.H_DEAD_AT, None)
    extra = headers.pop(topo.H_PROPS, None)
    properties = dict(extra) if isinstance(extra, dict) else {
        name: getattr(props, name) for name in _MAPPED if getattr(props, name) is not None}
    env = Envelope(message.body, props.content_type or "application/json",
                   props.content_encoding or "utf-8", headers, properties)
    return Delivery(env, queue, None, deliveries, priority), reason


__all__ = ["AMQPBroker"]

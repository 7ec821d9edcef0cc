"""What the AMQP broker declares, and how it names things: one module to read for the layout.

**Task queues** (Celery's): a queue is durable, bound to its exchange (``""``, the default
exchange, unless ``task_queues`` says otherwise), messages are persistent. ``task_queues`` is
read as Celery expresses it, as dicts (``{"name", "exchange", "exchange_type", "routing_key",
"queue_arguments", "durable", "auto_delete"}``), as kombu ``Queue`` objects (duck-typed: their
``name``, ``exchange.name``, ``exchange.type``, ``routing_key``, ``queue_arguments``), or as a
dict ``{name: {options}}``.

**Delayed delivery** (ETA / countdown, held by RabbitMQ, never by a worker). Like Celery 5.5's
native delayed delivery, a delay is written in binary and each set bit is one wait in a queue
with a fixed TTL that dead-letters onward; unlike it, the level queues are per destination
queue (so ``queue_size`` and ``purge`` can count and delete a queue's delayed messages) and a
unit is ``delay_unit`` seconds (0.1 s by default, so sub-second countdowns are honoured):

- exchanges ``celeriac.delay.<k>`` (topic, durable) for ``k = LEVELS-1 .. 0``, and
  ``celeriac.delay.out`` (topic, durable);
- a message delayed by ``n`` units is published to ``celeriac.delay.<LEVELS-1>`` with the
  routing key ``<bit LEVELS-1>. ... .<bit 0>.<queue>`` (``1``/``0`` words, most significant
  first);
- ``celeriac.delay.<k>`` routes keys whose bit ``k`` is ``0`` on to ``celeriac.delay.<k-1>``
  (``celeriac.delay.out`` after level 0), and keys whose bit ``k`` is ``1`` and that end with
  the queue's name to the level queue ``celeriac.delay.<queue>.<k>``;
- a level queue has ``x-message-ttl`` = ``2**k`` units and dead-letters (keeping the routing
  key) into the next exchange down; ``celeriac.delay.out`` routes to the destination queue;
- level queues are quorum queues with at-least-once dead-lettering by default
  (``delay_queue_type="classic"`` for lighter, at-most-once ones); only levels up to the
  highest bit ever needed for a queue are declared;
- the message keeps its due time in the header ``x-celeriac-not-before``; a message that
  arrives early (clock skew) is sent round again instead of being handed out.

**Dead letters**: poison and undecodable messages go, with the reason in their headers, to the
durable fanout exchange ``celeriac.dead`` and its queue ``celeriac.dead``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from pamqp import commands as spec

from celeriac.errors import ConfigurationError

DELAY_LEVELS = 32
DELAY_PREFIX = "celeriac.delay"
DELAY_OUT = f"{DELAY_PREFIX}.out"
DEAD_EXCHANGE = "celeriac.dead"
DEAD_QUEUE = "celeriac.dead"

#: Private headers; stripped from envelopes handed out.
H_NOT_BEFORE = "x-celeriac-not-before"
H_DELIVERIES = "x-celeriac-deliveries"
H_PROPS = "x-celeriac-props"
H_DEAD_REASON = "x-celeriac-dead-reason"
H_DEAD_QUEUE = "x-celeriac-dead-queue"
H_DEAD_DELIVERIES = "x-celeriac-dead-deliveries"
H_DEAD_PRIORITY = "x-celeriac-dead-priority"
H_DEAD_AT = "x-celeriac-dead-at"
#: Headers RabbitMQ adds when it dead-letters (delay levels) or counts returns (quorum).
BROKER_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                  "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
                  "x-last-death-reason")

EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout", "headers"})


@dataclass(frozen=True)
class Endpoint:
    """Where to connect; ``password`` never appears in ``repr`` or ``str``."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    vhost: str
    tls: bool
    query: str = ""

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.host, self.port, self.vhost)

    def aiormq_url(self, heartbeat: float | None) -> str:
        from yarl import URL

        query: dict[str, str] = {}
        if heartbeat is not None:
            query["heartbeat"] = str(int(heartbeat))
        url = URL.build(
            scheme="amqps" if self.tls else "amqp", user=self.user, password=self.password,
            host=self.host, port=self.port, path="/" + self.vhost.replace("/", "%2F"),
            query=query, encoded=False,
        )
        return str(url)

    def redacted(self) -> str:
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.user}:***@{self.host}:{self.port}/{self.vhost}"


def parse_url(url: str) -> Endpoint:
    """``amqp://user:pass@host:port/vhost`` (also ``amqps://``, ``pyamqp://``) as Celery reads
    it: no path or ``/`` or ``//`` is the vhost ``/``; ``%2F`` in the path is a slash."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("amqp", "amqps", "pyamqp"):
        raise ConfigurationError("not an AMQP URL (expected amqp://, amqps:// or pyamqp://)")
    path = parts.path
    vhost = "/" if path in ("", "/", "//") else unquote(path[1:])
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad port in AMQP URL: {exc}") from None
    tls = scheme == "amqps"
    return Endpoint(
        host=parts.hostname or "localhost",
        port=port or (5671 if tls else 5672),
        user=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password else "guest",
        vhost=vhost, tls=tls, query=parts.query,
    )


@dataclass(frozen=True)
class QueueSpec:
    """One queue as declared: its exchange, binding and arguments."""

    name: str
    exchange: str = ""
    exchange_type: str = "direct"
    routing_key: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    durable: bool = True
    auto_delete: bool = False

    @property
    def quorum(self) -> bool:
        return self.arguments.get("x-queue-type") == "quorum"


def _queue_from(obj: Any, name: str | None = None) -> QueueSpec:
    if isinstance(obj, Mapping):
        d = dict(obj)
        qname = str(d.pop("name", None) or name or "")
        exchange = d.pop("exchange", None)
        ex_type = d.pop("exchange_type", None)
        if exchange is not None and not isinstance(exchange, str):
            ex_type = ex_type or getattr(exchange, "type", None)
            exchange = getattr(exchange, "name", "")
        args = dict(d.pop("queue_arguments", None) or d.pop("arguments", None) or {})
        if d.get("max_priority") is not None:
            args.setdefault("x-max-priority", int(d.pop("max_priority")))
        if d.get("queue_type") is not None:
            args.setdefault("x-queue-type", str(d.pop("queue_type")))
        spec = QueueSpec(
            name=qname,
            exchange=str(exchange if exchange is not None else qname),
            exchange_type=str(ex_type or "direct"),
            routing_key=str(d.pop("routing_key", None) or qname),
            arguments=args,
            durable=bool(d.pop("durable", True)),
            auto_delete=bool(d.pop("auto_delete", False)),
        )
    else:  # a kombu Queue, duck-typed
        exchange = getattr(obj, "exchange", None)
        qname = str(getattr(obj, "name", None) or name or "")
        args = dict(getattr(obj, "queue_arguments", None) or {})
        if getattr(obj, "max_priority", None) is not None:
            args.setdefault("x-max-priority", int(obj.max_priority))
        ex_name = getattr(exchange, "name", None)
        spec = QueueSpec(
            name=qname,
            exchange=str(ex_name if ex_name is not None else qname),
            exchange_type=str(getattr(exchange, "type", None) or "direct"),
            routing_key=str(getattr(obj, "routing_key", None) or qname),
            arguments=args,
            durable=bool(getattr(obj, "durable", True)),
            auto_delete=bool(getattr(obj, "auto_delete", False)),
        )
    if not spec.name:
        raise ConfigurationError(f"task_queues entry without a name: {obj!r}")
    if spec.exchange_type not in EXCHANGE_TYPES:
        raise ConfigurationError(
            f"queue {spec.name!r}: exchange type {spec.exchange_type!r} is not one of "
            f"{', '.join(sorted(EXCHANGE_TYPES))}")
    return spec


def queue_specs(task_queues: Any) -> dict[str, QueueSpec]:
    """``task_queues`` (a list of dicts / kombu Queues, or a dict name -> options) by name."""
    if not task_queues:
        return {}
    items: Iterable[tuple[str | None, Any]]
    if isinstance(task_queues, Mapping):
        items = ((str(k), v or {}) for k, v in task_queues.items())
    else:
        items = ((None, q) for q in task_queues)
    out: dict[str, QueueSpec] = {}
    for name, obj in items:
        spec = _queue_from(obj, name)
        out[spec.name] = spec
    return out


# -- delays ---------------------------------------------------------------------------------


def delay_units(delay_seconds: float, unit: float) -> int:
    """Units of delay, rounded up (a message is never early), capped at the top level."""
    n = math.ceil(max(delay_seconds, 0.0) / unit - 1e-9)
    return min(max(n, 1), (1 << DELAY_LEVELS) - 1)


def delay_routing_key(units: int, queue: str) -> str:
    bits = ".".join("1" if units >> k & 1 else "0" for k in range(DELAY_LEVELS - 1, -1, -1))
    return f"{bits}.{queue}"


def delay_exchange(level: int) -> str:
    return DELAY_OUT if level < 0 else f"{DELAY_PREFIX}.{level}"


def delay_queue(queue: str, level: int) -> str:
    return f"{DELAY_PREFIX}.{queue}.{level}"


def level_binding(level: int, bit: str, queue: str | None) -> str:
    """The topic pattern at ``celeriac.delay.<level>`` matching bit ``level`` = ``bit``
    (and ending with ``queue``, or any queue when ``None``)."""
    before = ["*"] * (DELAY_LEVELS - 1 - level)
    after = ["*"] * level
    tail = [queue] if queue is not None else ["#"]
    return ".".join([*before, bit, *after, *tail])


def out_binding(queue: str) -> str:
    return ".".join(["*"] * DELAY_LEVELS + [queue])


def declare_frame(item: tuple[Any, ...]) -> Any:
    """The AMQP method frame of one declaration as the broker logs it: ``("exchange", name,
    type, durable)``, ``("queue", name, arguments, durable, auto_delete)``, ``("bind", queue,
    exchange, key)`` or ``("e2e", destination, source, key)`` (an exchange-to-exchange bind)."""
    kind = item[0]
    if kind == "exchange":
        _, name, ex_type, durable = item
        return spec.Exchange.Declare(exchange=name, exchange_type=ex_type, durable=durable)
    if kind == "queue":
        _, name, args, durable, auto_delete = item
        return spec.Queue.Declare(queue=name, durable=durable, auto_delete=auto_delete,
                                  arguments=dict(args))
    if kind == "bind":
        _, queue, exchange, key = item
        return spec.Queue.Bind(queue=queue, exchange=exchange, routing_key=key)
    if kind == "e2e":
        _, dest, source, key = item
        return spec.Exchange.Bind(destination=dest, source=source, routing_key=key)
    raise ValueError(f"unknown declaration {kind!r}")

"""The ``rpc://`` result backend: results travel as AMQP messages to the client that asked.

Celery's layout, byte-compatible both ways (``amqp-rpc-backend-replies`` capture):

- each client (an app) has one reply queue named after its ``oid``; every task message it
  sends carries ``reply_to = oid``; the queue is declared when the backend connects (before
  the first task is sent), non-durable, auto-delete, ``x-expires`` one day;
- a worker sends each result to the default exchange with routing key = the task's
  ``reply_to``, ``correlation_id`` = the task id, empty headers, ``delivery_mode`` 1 (2 with
  ``persistent=True``), the meta as JSON;
- the client keeps what arrives in a process-wide cache per oid (``MemoryBackend`` under the
  name ``rpc-<oid>``), so ``get``/``wait`` on any event loop of the process see it. As with
  Celery, results are transient: only the client that sent a task receives its result.

The worker tells the backend each task's ``reply_to`` (``reply_to``, the ``RepliesTo``
capability) before storing its results; the addresses are kept per process (bounded, the
oldest go first), so every instance in the process (a threads pool's, say) can send a task's
``update_state``. A result whose client is unknown (or is this process) goes straight into
this process's cache.
The connection is an ``AMQPBroker`` of its own (reconnects, publisher confirms).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from celeriac import states
from celeriac.backends._common import check_expires, decode_meta, encode_meta, task_id_of
from celeriac.backends.base import Meta
from celeriac.backends.memory import MemoryBackend
from celeriac.brokers.amqp import AMQPBroker
from celeriac.errors import BackendError, BrokerError, ConfigurationError
from celeriac.message import Envelope

log = logging.getLogger("celeriac.backends.rpc")

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
#: The reply queue's ``x-expires``: Celery's (a day), whatever ``expires`` says, so that every
#: instance of one oid declares the queue alike.
QUEUE_EXPIRES_MS = 86_400_000
_CONNECTION_OPTIONS = frozenset({"heartbeat", "connect_timeout", "publish_timeout",
                                 "reconnect_max_delay"})
#: How many tasks' reply addresses a process keeps (the oldest go first).
REPLY_TO_LIMIT = 200_000


class _ReplyAddresses:
    """Task id -> the reply queue its results go to, for the whole process."""

    def __init__(self, limit: int = REPLY_TO_LIMIT) -> None:
        self._lock = threading.Lock()
        self._addresses: OrderedDict[str, str] = OrderedDict()
        self.limit = limit

    def note(self, task_id: str, address: str) -> None:
        with self._lock:
            self._addresses[task_id] = address
            if len(self._addresses) > self.limit:
                self._addresses.popitem(last=False)

    def lookup(self, task_id: str, forget: bool = False) -> str | None:
        with self._lock:
            if forget:
                return self._addresses.pop(task_id, None)
            return self._addresses.get(task_id)


_addresses = _ReplyAddresses()


class RPCBackend:
    """Results as reply messages; see the module docstring."""

    def __init__(self, url: str = "rpc://", *, expires: float | None = 86400,
                 broker_url: str | None = None, oid: str | None = None,
                 persistent: bool = False, serializer: str = "json",
                 **options: Any) -> None:
        scheme, sep, _ = url.partition("://")
        if scheme.lower() != "rpc" or not sep:
            raise ConfigurationError("not an rpc backend URL (expected rpc://)")
        self.url = url
        self.expires = check_expires(expires)
        self.broker_url = broker_url
        self.oid = oid or str(uuid.uuid4())
        self.persistent = bool(persistent)
        self.serializer = serializer
        #: Connection options for the reply connection (heartbeat, timeouts); others ignored.
        self.options = {k: v for k, v in options.items() if k in _CONNECTION_OPTIONS}
        self._broker: AMQPBroker | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._cache = MemoryBackend(f"memory://rpc-{self.oid}", expires=self.expires)

    def __repr__(self) -> str:
        return f"<RPCBackend reply queue {self.oid}>"

    #: connected with the broker, before anything is sent: the reply queue must exist then
    needed_to_send = True

    def adopt_app(self, app: Any) -> None:
        """Reply to the app's oid, over the app's broker (as Celery's ``rpc://`` does)."""
        self.oid = str(app.oid)
        self._cache = MemoryBackend(f"memory://rpc-{self.oid}", expires=self.expires)
        if self.broker_url is None:
            url = app.conf.broker_url
            self.broker_url = url if isinstance(url, str) else None

    async def connect(self) -> None:
        if self._broker is not None:
            return
        url = self.broker_url or DEFAULT_BROKER_URL
        if not url.lower().startswith(("amqp", "pyamqp")):
            raise ConfigurationError("the rpc:// result backend needs an AMQP broker_url")
        broker = AMQPBroker(url, **self.options)
        try:
            await broker.connect()
            await broker.listen(self.oid, self._on_reply, arguments={"x-expires": QUEUE_EXPIRES_MS},
                                durable=False, auto_delete=True)
        except BrokerError as exc:
            await broker.close()
            raise BackendError(f"rpc backend cannot listen on its reply queue: {exc}") from exc
        self._broker = broker

    async def close(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.close()

    def _on_reply(self, envelope: Envelope) -> None:
        try:
            meta = _decode_reply(envelope)
        except (BackendError, ValueError) as exc:
            log.error("ignoring a reply that is not a result: %s", exc)
            return
        task = asyncio.get_running_loop().create_task(self._cache.store([meta]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def reply_to(self, task_id: str, address: str) -> None:
        """Results of ``task_id`` go to the reply queue ``address`` (told by the worker)."""
        _addresses.note(task_id, address)

    async def store(self, metas: Sequence[Meta]) -> None:
        if not metas:
            return
        local: list[Meta] = []
        remote: list[tuple[str, Envelope]] = []
        for meta in metas:
            task_id = task_id_of(meta)
            ready = meta.get("status") in states.READY_STATES
            reply_to = _addresses.lookup(task_id, forget=ready)
            if reply_to is None or reply_to == self.oid:
                local.append(meta)
                continue
            ctype, cenc, body = self._encode(meta)
            remote.append((reply_to, Envelope(
                body, ctype, cenc, {},
                {"correlation_id": task_id, "delivery_mode": 2 if self.persistent else 1})))
        if local:
            await self._cache.store(local)
        if remote:
            if self._broker is None:
                raise BackendError(f"{self!r} is not connected")
            try:
                await self._broker.publish_reply(remote)
            except BrokerError as exc:
                raise BackendError(f"sending {len(remote)} result(s) failed: {exc}") from exc

    def _encode(self, meta: Meta) -> tuple[str, str, bytes]:
        if self.serializer == "json":
            return "application/json", "utf-8", encode_meta(meta)
        from celeriac.serializers import dumps

        return dumps(meta, self.serializer)

    async def get(self, task_id: str) -> Meta | None:
        return await self._cache.get(task_id)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        return await self._cache.get_many(task_ids)

    async def wait(self, task_id: str, timeout: float | None) -> Meta | None:
        return await self._cache.wait(task_id, timeout)

    async def forget(self, task_ids: Sequence[str]) -> None:
        await self._cache.forget(task_ids)

    async def expire(self) -> int:
        return await self._cache.expire()


def _decode_reply(envelope: Envelope) -> Meta:
    """A result message as Celery's workers send it (JSON; msgpack when so serialized)."""
    if envelope.content_type == "application/x-msgpack":
        import msgpack

        value = msgpack.unpackb(envelope.body, raw=False)
    elif envelope.content_type in ("application/json", "", None):
        try:
            value = decode_meta(envelope.body)
        except BackendError:
            value = orjson.loads(envelope.body)
    else:
        raise BackendError(f"result in {envelope.content_type!r}: not accepted")
    if not isinstance(value, dict):
        raise BackendError("a result message is not a JSON object")
    if "task_id" not in value and envelope.properties.get("correlation_id"):
        value["task_id"] = envelope.properties["correlation_id"]
    task_id_of(value)
    return value

"""The Redis result backend, in Celery's layout, so Celery and celeriac read each other's results.

Layout (Celery 5, see the wire captures)::

    celery-task-meta-<task id>      the meta (JSON by default), SETEX <result_expires>,
                                    then PUBLISHed on a channel of the same name
    celery-taskset-meta-<group id>  {"result": [[gid, null], [[[child id, null], null], ...]]}
                                    written by ``save_group`` (``GroupResult.save()``)

What differs from Celery, on purpose, with the bytes unchanged:

* ``store`` writes a whole batch with a Lua script (one round trip), which reads each stored
  status and applies ``states.may_replace`` on the server, atomically: a late STARTED can never
  overwrite a SUCCESS, even with several workers racing. The script's table of allowed moves is
  *computed* from ``states.may_replace`` (``_rule_table``), so the rule lives in states.py only.
* Every key gets a TTL (``expires``; ``None`` or 0 mean the default day, never "keep forever").
* ``wait`` is pushed by pub/sub: all waiters of one backend share one pub/sub connection, owned
  by a listener task that subscribes and unsubscribes channels as waiters come and go, reads
  each newly subscribed key once the subscription is confirmed (so a result stored just before
  cannot be missed), and on a lost connection reconnects, resubscribes and reads them all again.
* ``AsyncResult.get()`` from sync code (no event loop running) waits on a blocking RESP3
  connection of its own instead (``wait_blocking``, ``_redis_blocking_wait``): its UNSUBSCRIBE,
  SUBSCRIBE and GET go in one write, so ``delay().get()`` costs one round trip to set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgpack
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from celeriac import states
from celeriac.backends._common import check_expires, decode_meta, encode_meta, status_of, task_id_of
from celeriac.backends._redis_blocking_wait import BlockingResultWaiter, Unsupported
from celeriac.backends.base import Meta
from celeriac.config import redact_url
from celeriac.errors import BackendError, ConfigurationError
from celeriac.utils import forks
from celeriac.utils.redis_pipeline import Pipeline
from celeriac.utils.redis_urls import (
    SENTINEL_OPTIONS,
    BlockingSentinelConnectionPool,
    SentinelAddress,
    close_pool,
    is_sentinel_url,
    parse_sentinel_url,
    redis_py_url,
    sentinel_pool,
)
from celeriac.utils.spin import spin_budget
from celeriac.utils.sync import run_sync

__all__ = ["DEFAULT_EXPIRES", "GROUP_KEY_PREFIX", "TASK_KEY_PREFIX", "RedisBackend"]

log = logging.getLogger(__name__)

# redis-py >= 7 asks every new connection for maintenance notifications (a Redis
# Enterprise/Cloud feature): one round trip less per connection without.
_NO_MAINT_NOTIFICATIONS: dict[str, Any] = {}
with contextlib.suppress(ImportError):  # older redis-py has no such thing
    from redis.maint_notifications import MaintNotificationsConfig

    _NO_MAINT_NOTIFICATIONS["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)

# -- key names (all of them) ----------------------------------------------------------------

TASK_KEY_PREFIX = "celery-task-meta-"
GROUP_KEY_PREFIX = "celery-taskset-meta-"

DEFAULT_EXPIRES = 86400  # seconds; Celery's result_expires default (one day)
STORE_CHUNK = 250  # metas per script call: bounds how long one call holds the server
MGET_CHUNK = 1000
LISTENER_NAME = "celeriac-result-listener"  # CLIENT SETNAME of the pub/sub connection
LISTENER_LINGER = 5.0  # seconds an idle pub/sub connection is kept for the next wait()

# -- the store script -------------------------------------------------------------------------

# Stands for every state states.py does not name (custom states such as "PROGRESS"):
# may_replace treats them all alike, so one representative covers them.
_UNNAMED_STATE = "celeriac:unnamed-state"


def _lua_str(text: str) -> str:
    return '"' + "".join(c if c.isalnum() or c in "_-:" else f"\\{ord(c)}" for c in text) + '"'


def _rule_table() -> str:
    """Lua tables of ``states.may_replace``, evaluated for every pair of states.

    ``ROWS[old] = {{[new] = allowed, ...}, allowed_for_unnamed_new}``; ``ABSENT_ROW`` is the
    row for no stored meta and ``UNNAMED_ROW`` the one for an unnamed stored state.
    """
    named = sorted(states.ALL_STATES)

    def row(old: str | None) -> str:
        cells = ", ".join(
            f"[{_lua_str(new)}] = {str(states.may_replace(new, old)).lower()}" for new in named
        )
        return f"{{{{{cells}}}, {str(states.may_replace(_UNNAMED_STATE, old)).lower()}}}"

    rows = ",\n  ".join(f"[{_lua_str(old)}] = {row(old)}" for old in named)
    return (
        f"local ROWS = {{\n  {rows}\n}}\n"
        f"local ABSENT_ROW = {row(None)}\n"
        f"local UNNAMED_ROW = {row(_UNNAMED_STATE)}\n"
    )


# KEYS: the metas' keys. ARGV: the expiry command ("SETEX" or "PSETEX"), its TTL, then
# (status, blob) per key. Metas are applied in order, so a batch holding two states of one
# task ends with what may_replace allows. Returns how many metas were written.
_STORE_SCRIPT = (
    _rule_table()
    + r"""
local function stored_status(v)
  -- Celery and celeriac write "status" first: read it without decoding the whole meta.
  local s = string.match(v, '^%s*{%s*"status"%s*:%s*"([^"\\]*)"')
  if s then return s end
  local b = string.byte(v, 1)
  if b and b >= 0x80 and b <= 0x8f and string.sub(v, 2, 8) == "\166status" then
    local n = string.byte(v, 9)
    if n and n >= 0xa0 and n <= 0xbf then return string.sub(v, 10, 9 + n - 0xa0) end
  end
  local ok, meta
  if b and ((b >= 0x80 and b <= 0x8f) or b == 0xde or b == 0xdf) then
    ok, meta = pcall(cmsgpack.unpack, v)
  else
    ok, meta = pcall(cjson.decode, v)
  end
  if ok and type(meta) == "table" and type(meta["status"]) == "string" then
    return meta["status"]
  end
  return nil  -- unreadable: counts as absent
end

local setex, ttl = ARGV[1], ARGV[2]
local seen = {}
local written = 0
for i, key in ipairs(KEYS) do
  local new, blob = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local old = seen[key]
  if old == nil then
    local current = redis.call("GET", key)
    if current then old = stored_status(current) or false else old = false end
  end
  local row
  if old == false then row = ABSENT_ROW else row = ROWS[old] or UNNAMED_ROW end
  local allowed = row[1][new]
  if allowed == nil then allowed = row[2] end
  if allowed then
    redis.call(setex, key, ttl, blob)
    redis.call("PUBLISH", key, blob)
    seen[key] = new
    written = written + 1
  else
    seen[key] = old
  end
end
return written
"""
)


# -- serialization ----------------------------------------------------------------------------


def _is_msgpack_map(blob: bytes) -> bool:
    first = blob[:1]
    return bool(first) and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF))


def decode_blob(blob: bytes) -> Any:
    """A stored value, JSON or msgpack (told apart by its first byte, so a backend reads
    what writers of either serializer stored)."""
    if _is_msgpack_map(blob):
        try:
            return msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise BackendError(f"a stored result is not valid msgpack: {exc}") from exc
    return decode_meta(blob)


def _bytes(blob: bytes | str) -> bytes:
    """The client never decodes replies (``decode_responses`` is forced off); this narrows
    redis-py's ``bytes | str`` return types."""
    return blob if isinstance(blob, bytes) else blob.encode()


def _decode_meta(blob: bytes | str) -> Meta:
    value = decode_blob(_bytes(blob))
    if not isinstance(value, dict):
        raise BackendError("a stored result is not a map")
    return value


# -- errors -----------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    return redact_url(str(exc)) or type(exc).__name__


@contextlib.contextmanager
def _keep_cancellation() -> Iterator[None]:
    """Raise ``CancelledError`` if the task was cancelled during the block but the block
    returned normally: redis-py 8 on Python 3.11 sometimes loses a cancellation that comes
    in the middle of a command (its ``asyncio.wait_for`` around socket writes)."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    yield
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError


# -- the backend ------------------------------------------------------------------------------


class RedisBackend:
    """Results in Redis, readable by Celery (and Celery's by celeriac).

    ``url``: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS; certificate
    options as redis-py's query parameters), ``redis+socket:///path/to/socket[?db=N]`` or
    ``unix:///path/to/socket``; or Celery's Sentinel form,
    ``sentinel://[:password@]host:port[;sentinel://host:port...][/db]``, with the master's name
    in ``master_name`` (``result_backend_transport_options``; also ``sentinel_kwargs`` and
    ``min_other_sentinels``). Behind sentinels every connection, the listener's included,
    finds the current master when it connects, so ``store``/``get``/``wait`` follow a
    failover. Replication is asynchronous: results the dead master had not yet passed to the
    replica are lost with it (a waiter then waits until its timeout).

    ``expires``: seconds a result is kept (Celery's ``result_expires``). Every key written has
    a TTL: ``None`` and 0, which mean "never" in Celery, mean the default day here.

    Options: ``serializer`` ("json", the default, or "msgpack"; reading accepts both),
    ``global_keyprefix`` (Celery's transport option: prepended to every key and channel),
    ``ping_interval`` (seconds of silence after which the pub/sub connection is PINGed; a
    connection silent for two intervals is replaced, default 10), ``wait_spin`` (seconds a
    ``get()`` from sync code waits on the CPU for Redis's replies and for the result before it
    sleeps, default 0.001; 0 turns it off; see ``_redis_blocking_wait``), and any keyword of redis-py's
    connections (``max_connections`` (default 50), ``socket_timeout`` (default 30),
    ``socket_connect_timeout`` (default 5), ``ssl_cert_reqs``, ...).
    """

    expires_itself = True  # every key has a TTL: expire() has nothing to do

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        expires: float | None = DEFAULT_EXPIRES,
        serializer: str = "json",
        global_keyprefix: str = "",
        ping_interval: float = 10.0,
        wait_spin: float = 0.001,
        **options: Any,
    ) -> None:
        sentinel_options = {k: options.pop(k) for k in SENTINEL_OPTIONS if k in options}
        self._sentinel: SentinelAddress | None = None
        self._sentinel_options: dict[str, Any] = {}
        if is_sentinel_url(url):
            self._sentinel = parse_sentinel_url(url, "redis result backend")
            self._url = ""
            self._sentinel_options = sentinel_options
            if not sentinel_options.get("master_name"):
                raise ConfigurationError(
                    "redis result backend: a sentinel:// URL needs "
                    "result_backend_transport_options={'master_name': '<name>'}"
                )
        else:
            self._url = redis_py_url(url, "redis result backend")
        self.url = redact_url(url)
        self.expires = check_expires(expires) or float(DEFAULT_EXPIRES)
        if self.expires.is_integer():
            self._setex: tuple[str, str] = ("SETEX", str(int(self.expires)))
        else:
            self._setex = ("PSETEX", str(max(1, round(self.expires * 1000))))
        if serializer not in ("json", "msgpack"):
            raise ConfigurationError(
                f"the redis result backend stores json or msgpack, not {serializer!r}"
            )
        self.serializer = serializer
        if not isinstance(global_keyprefix, str):
            raise ConfigurationError(f"global_keyprefix must be a string, got {global_keyprefix!r}")
        self.task_prefix = global_keyprefix + TASK_KEY_PREFIX
        self.group_prefix = global_keyprefix + GROUP_KEY_PREFIX
        if ping_interval <= 0:
            raise ConfigurationError(f"ping_interval must be > 0, got {ping_interval!r}")
        self.ping_interval = float(ping_interval)
        self.wait_spin = spin_budget(wait_spin, "wait_spin", "redis result backend")
        self._pool_options: dict[str, Any] = {
            "max_connections": 50,
            "socket_timeout": 30.0,
            "socket_connect_timeout": 5.0,
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 2),
            **_NO_MAINT_NOTIFICATIONS,
            **options,
            "decode_responses": False,
        }
        if not self._url.startswith("unix:"):
            self._pool_options.setdefault("socket_keepalive", True)
        if self._sentinel is not None:
            self._where = self._sentinel.describe(self._sentinel_options["master_name"])
            self._new_pool()  # no I/O: checks the options now, not at the first command
        else:
            self._where = _check_url(self._url, self._pool_options)
        self._client: aioredis.Redis | None = None
        self._pipe: Pipeline | None = None  # stores and reads go on it
        self._listener: _Listener | None = None
        self._waiter: BlockingResultWaiter | None = None  # sync callers' (wait_blocking)
        self._waiter_lock = threading.Lock()  # threads' first waits make one waiter
        forks.reset_in_child(self, RedisBackend._new_waiter_lock)  # a parent thread's may be held

    def __repr__(self) -> str:
        return f"<RedisBackend {self.url}>"

    def _new_waiter_lock(self) -> None:
        self._waiter_lock = threading.Lock()

    # -- connection ----------------------------------------------------------------------

    def _new_pool(self) -> aioredis.ConnectionPool:
        """A blocking pool; with ``sentinel://``, one whose connections find the current
        master each time they connect (so the store, the reads and the listener's pub/sub
        connection follow a failover; see ``celeriac.utils.redis_urls``)."""
        if self._sentinel is None:
            return aioredis.BlockingConnectionPool.from_url(self._url, **self._pool_options)
        opts = self._sentinel_options
        try:
            pool = sentinel_pool(
                self._sentinel, opts["master_name"],
                sentinel_kwargs=opts.get("sentinel_kwargs"),
                min_other_sentinels=int(opts.get("min_other_sentinels") or 0),
                pool_class=BlockingSentinelConnectionPool, **self._pool_options,
            )
            kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
            aioredis.Connection(**kwargs)  # no I/O: checks the keywords
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"redis result backend {self.url!r}: {_describe(exc)}") from exc
        return pool

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis(connection_pool=self._new_pool())
        return self._client

    def _pipeline(self) -> Pipeline:
        """The pipelined connection (``celeriac.utils.redis_pipeline``): it loads the store
        script when it connects, and answers NOSCRIPT (a restarted Redis) with the script."""
        if self._pipe is None:
            self._pipe = Pipeline(self._redis().connection_pool, {"store": _STORE_SCRIPT},
                                  closed_error="the result backend is closed")
        return self._pipe

    async def connect(self) -> None:
        """Check that the server answers (and load the store script)."""
        with self._translated("connecting"):
            await self._pipeline().call("PING")

    async def close(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.close()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await client.aclose(close_connection_pool=True)
            await close_pool(client.connection_pool)  # and the sentinel clients, if any

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """redis-py's errors as ``BackendError``, naming the server but no credentials.

        Also re-raises a cancellation that redis-py lost (``_keep_cancellation``).
        """
        try:
            with _keep_cancellation():
                yield
        except (redis_errors.RedisError, OSError) as exc:
            raise self._backend_error(action, exc) from exc

    def _backend_error(self, action: str, exc: redis_errors.RedisError | OSError) -> BackendError:
        if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | OSError):
            return BackendError(
                f"redis result backend at {self._where}: {action} failed, "
                f"cannot reach the server: {_describe(exc)}"
            )
        return BackendError(
            f"redis result backend at {self._where}: {action} failed: {_describe(exc)}"
        )

    def task_key(self, task_id: str) -> str:
        """The key (and channel) of a task's meta: ``celery-task-meta-<id>``."""
        return self.task_prefix + task_id

    def group_key(self, group_id: str) -> str:
        return self.group_prefix + group_id

    # -- writing -------------------------------------------------------------------------

    def _encode(self, value: Any, what: str) -> bytes:
        if self.serializer == "msgpack":
            try:
                return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
            except (TypeError, ValueError, OverflowError) as exc:
                raise BackendError(f"cannot serialize {what} to msgpack: {exc}") from exc
        return encode_meta(value)

    async def store(self, metas: Sequence[Meta]) -> None:
        if not metas:
            return
        calls: list[tuple[list[str], list[Any]]] = []
        for start in range(0, len(metas), STORE_CHUNK):
            chunk = metas[start : start + STORE_CHUNK]
            keys = [self.task_key(task_id_of(m)) for m in chunk]
            args: list[Any] = [*self._setex]
            for meta in chunk:
                args += (status_of(meta), self._encode(meta, f"the result of {meta['task_id']}"))
            calls.append((keys, args))
        pipe = self._pipeline()
        with self._translated("store"):
            if len(calls) == 1:
                await pipe.script("store", *calls[0])
                return
            # each chunk its own EVALSHA, all on the wire at once (one round trip)
            outcomes = await asyncio.gather(*(pipe.script("store", keys, args)
                                              for keys, args in calls), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

    async def forget(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        with self._translated("forget"):
            await self._redis().delete(*(self.task_key(t) for t in task_ids))

    async def expire(self) -> int:
        """Redis deletes expired keys itself (every key has a TTL): nothing to do, 0."""
        return 0

    # -- reading -------------------------------------------------------------------------

    async def get(self, task_id: str) -> Meta | None:
        with self._translated("get"):
            blob = await self._pipeline().call("GET", self.task_key(task_id))
        return None if blob is None else _decode_meta(blob)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        blobs = await self._mget(task_ids)
        found = zip(task_ids, blobs, strict=True)
        return {tid: _decode_meta(blob) for tid, blob in found if blob is not None}

    async def _mget(self, task_ids: Sequence[str]) -> list[bytes | str | None]:
        if not task_ids:
            return []
        keys = [self.task_key(t) for t in task_ids]
        with self._translated("get"):
            chunks: list[list[bytes | None]] = await self._pipeline().calls(
                [("MGET", *keys[start : start + MGET_CHUNK])
                 for start in range(0, len(keys), MGET_CHUNK)])
        return [blob for chunk in chunks for blob in chunk]

    # -- waiting -------------------------------------------------------------------------

    async def wait(self, task_id: str, timeout: float | None) -> Meta | None:
        """Wait for a ready state, pushed by pub/sub (see ``_Listener``); None on timeout.

        The key is read while the subscription is being made, not before it: a result
        already stored is found by this read, one stored later is published to the listener
        (which reads the key again once subscribed, for one stored in between). A caller of
        ``delay().get()`` thus waits one round trip less before it is subscribed."""
        if self._listener is None:
            self._listener = _Listener(self)
        pushed = asyncio.ensure_future(self._listener.wait(task_id))
        try:
            async with asyncio.timeout(timeout):
                meta = await self.get(task_id)
                if meta is not None and meta.get("status") in states.READY_STATES:
                    return meta
                return await pushed
        except TimeoutError:
            return None
        finally:
            if pushed.done():
                if not pushed.cancelled():
                    pushed.exception()  # retrieved: a failure here was raised or superseded
            else:
                pushed.cancel()

    @property
    def waits_blocking(self) -> bool:
        """Whether ``wait_blocking`` waits without an event loop (see ``BlockingWaiter``)."""
        return self._sentinel is None and (self._waiter is None or self._waiter.supported)

    def wait_blocking(self, task_id: str, timeout: float | None) -> Meta | None:
        """``wait`` for sync code, on a blocking connection of its own (see
        ``_redis_blocking_wait``): one round trip to subscribe and read the key, then the
        published result. Must not be called with an event loop running in this thread."""
        waiter = self._waiter
        if waiter is None:
            with self._waiter_lock:  # one waiter for all threads: each has its connection
                waiter = self._waiter
                if waiter is None:
                    waiter = self._waiter = BlockingResultWaiter(
                        self._url, self._pool_options, self.ping_interval, self._ready_meta,
                        LISTENER_NAME, self.wait_spin)
        try:
            return waiter.wait(self.task_key(task_id), timeout)
        except Unsupported:
            return run_sync(self.wait(task_id, timeout))
        except (redis_errors.RedisError, OSError) as exc:
            raise self._backend_error("wait for a result", exc) from exc

    @staticmethod
    def _ready_meta(blob: bytes | str, strict: bool = False) -> Meta | None:
        """The meta in ``blob`` if its state is ready; None if not ready, or unreadable and
        not ``strict`` (a published one: logged and passed over; a stored one raises)."""
        try:
            meta = _decode_meta(blob)
        except BackendError as exc:
            if strict:
                raise
            log.warning("a result cannot be read: %s", exc)
            return None
        return meta if meta.get("status") in states.READY_STATES else None

    @property
    def pubsub_connections(self) -> int:
        """How many pub/sub connections this backend has opened so far (reconnects count)."""
        return 0 if self._listener is None else self._listener.connections_opened

    def _pubsub_connection(self) -> AbstractConnection:
        """A new connection for the listener, outside the pool: it stays in subscribed
        mode; no health-check PINGs of redis-py's own (the listener PINGs) and RESP2, whose
        pub/sub messages are plain replies. ``socket_timeout`` bounds its writes only (the
        reader waits without a limit; silence is caught by the listener's PINGs)."""
        pool = self._redis().connection_pool
        kwargs = {
            **pool.connection_kwargs,
            "health_check_interval": 0,
            "protocol": 2,
            "client_name": LISTENER_NAME,
        }
        conn: AbstractConnection = pool.connection_class(**kwargs)
        return conn

    # -- groups (GroupResult.save / restore) ---------------------------------------------

    async def save_group(self, group_id: str, result_ids: Sequence[str]) -> None:
        """Store a group's member ids as Celery's ``GroupResult.save()`` does (SETEX, then
        PUBLISH on the key)."""
        value = {"result": [[group_id, None], [[[tid, None], None] for tid in result_ids]]}
        blob = self._encode(value, f"group {group_id}")
        key = self.group_key(group_id)
        setex, ttl = self._setex
        with self._translated("save_group"):
            async with self._redis().pipeline(transaction=False) as pipe:
                pipe.execute_command(setex, key, ttl, blob)
                pipe.publish(key, blob)
                await pipe.execute()

    async def restore_group(self, group_id: str) -> list[str] | None:
        """The member ids ``save_group`` (or Celery) stored, or None."""
        with self._translated("restore_group"):
            blob = await self._redis().get(self.group_key(group_id))
        if blob is None:
            return None
        value = decode_blob(_bytes(blob))
        try:
            members = value["result"][1]
            return [str(member[0][0]) for member in members]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"group {group_id}: unexpected stored shape: {exc!r}") from exc

    async def forget_group(self, group_id: str) -> None:
        with self._translated("forget_group"):
            await self._redis().delete(self.group_key(group_id))


class _Listener:
    """One pub/sub connection shared by every ``wait`` of one backend.

    Waiters register a future under their task id and wake the supervisor task, which
    reconciles the subscriptions with the waited ids (SUBSCRIBE the new, UNSUBSCRIBE the
    forgotten, in one command each). When Redis confirms a subscription, the key is read
    (one MGET for all confirmed keys): a result stored before the subscription took effect
    is found there, one stored after is published to us. A waiter joining a key already
    subscribed gets the key read again too (its message may have passed before it joined).
    A reader task takes the messages.
    On any failure of the connection the supervisor opens a new one, which subscribes (and so
    reads again) every waited key. Waiters only ever touch their own future and the shared
    dicts, so cancelling one at any point is safe.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.waiters: dict[str, dict[asyncio.Future[Meta], None]] = {}
        self.connections_opened = 0
        self._subscribed: set[str] = set()  # task ids subscribed on the current connection
        self._confirmed: set[str] = set()  # keys to read (again) now that they are subscribed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_data = 0.0
        self._closed = False

    async def wait(self, task_id: str) -> Meta:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Meta] = loop.create_future()
        self.waiters.setdefault(task_id, {})[fut] = None
        if task_id in self._subscribed:
            # Others wait on this key already: its message may have come and gone since this
            # caller's GET. The subscription is live, so one more read now closes the gap.
            self._confirmed.add(task_id)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._supervise(), name="celeriac-redis-result-listener")
        try:
            return await fut
        finally:
            waiting = self.waiters.get(task_id)
            if waiting is not None:
                waiting.pop(fut, None)
                if not waiting:
                    del self.waiters[task_id]
                    self._wake.set()

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        error = BackendError("the result backend was closed")
        for futs in self.waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(error)
        self.waiters.clear()

    # -- resolving -----------------------------------------------------------------------

    def _resolve(self, task_id: str, blob: bytes | str) -> None:
        futs = [f for f in self.waiters.get(task_id, ()) if not f.done()]
        if not futs:
            return
        meta = self.backend._ready_meta(blob)
        if meta is None:
            return
        futs[0].set_result(meta)
        for fut in futs[1:]:  # each waiter its own copy
            fut.set_result(_decode_meta(blob))

    # -- the connection ------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Keep a subscribed connection while anyone waits; replace it when it fails."""
        delay = 0.05
        while not self._closed and self.waiters:
            conn: AbstractConnection | None = None
            reader: asyncio.Task[None] | None = None
            try:
                conn = self.backend._pubsub_connection()
                await conn.connect()  # type: ignore[no-untyped-call]
                self.connections_opened += 1
                self._subscribed = set()
                self._confirmed = set()
                self._last_data = asyncio.get_running_loop().time()
                reader = asyncio.get_running_loop().create_task(self._read(conn))
                await self._serve(conn, reader)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection failed: a new one, after a pause
                if self._closed or not self.waiters:
                    break
                log.warning(
                    "redis result listener at %s: %s; reconnecting in %.2f s",
                    self.backend._where,
                    _describe(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(BaseException):
                        await reader
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)

    async def _serve(self, conn: AbstractConnection, reader: asyncio.Task[None]) -> None:
        """Reconcile subscriptions and read confirmed keys until nobody has waited for
        ``LISTENER_LINGER`` seconds (then return) or the connection fails (then raise)."""
        loop = asyncio.get_running_loop()
        idle_until: float | None = None
        while not self._closed:
            self._wake.clear()
            wanted = self.waiters.keys()
            new = [t for t in wanted if t not in self._subscribed]
            gone = [t for t in self._subscribed if t not in wanted]
            if new:
                await self._send(conn, "SUBSCRIBE", *(self.backend.task_key(t) for t in new))
                self._subscribed.update(new)
            if gone:
                await self._send(conn, "UNSUBSCRIBE", *(self.backend.task_key(t) for t in gone))
                self._subscribed.difference_update(gone)
            if self._confirmed:
                confirmed = [t for t in self._confirmed if t in self.waiters]
                self._confirmed = set()
                for task_id, blob in zip(confirmed, await self.backend._mget(confirmed), strict=True):
                    if blob is not None:
                        self._resolve(task_id, blob)
            pause = self.ping_interval
            if self.waiters or self._subscribed:
                idle_until = None
            elif idle_until is None:
                idle_until = loop.time() + LISTENER_LINGER
            elif loop.time() >= idle_until:
                return
            if idle_until is not None:
                pause = min(pause, max(0.0, idle_until - loop.time()))
            if self._wake.is_set():
                continue
            woken = loop.create_task(self._wake.wait())
            try:
                await asyncio.wait((woken, reader), timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
            if reader.done():
                reader.result()  # raises what ended it
                raise redis_errors.ConnectionError("the pub/sub connection closed")
            silent = loop.time() - self._last_data
            if silent > 2 * self.ping_interval:
                raise redis_errors.TimeoutError(f"no reply to PING for {silent:.1f} s")
            if silent >= self.ping_interval:
                await self._send(conn, "PING")

    @property
    def ping_interval(self) -> float:
        return self.backend.ping_interval

    @staticmethod
    async def _send(conn: AbstractConnection, *args: str) -> None:
        if not conn.is_connected:  # never let redis-py reconnect it quietly, unsubscribed
            raise redis_errors.ConnectionError("the pub/sub connection closed")
        with _keep_cancellation():
            await conn.send_command(*args, check_health=False)

    async def _read(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        prefix = self.backend.task_prefix.encode()
        while True:
            reply = await conn.read_response(timeout=math.inf)
            self._last_data = loop.time()
            if not isinstance(reply, list) or len(reply) < 2:
                continue
            kind, channel = reply[0], reply[1]
            if not isinstance(channel, bytes) or not channel.startswith(prefix):
                continue
            task_id = channel[len(prefix) :].decode()
            if kind == b"message" and len(reply) == 3:
                self._resolve(task_id, reply[2])
            elif kind == b"subscribe":
                self._confirmed.add(task_id)
                self._wake.set()


# -- URLs and options -------------------------------------------------------------------------


def _check_url(url: str, options: Mapping[str, Any]) -> str:
    """Fail now (not at the first command) on a bad URL or an unknown option; return
    host:port/db (or the socket's path) for messages, never the credentials."""
    try:
        pool = aioredis.ConnectionPool.from_url(url, **options)
        pool.connection_class(**pool.connection_kwargs)  # no I/O: checks the keywords
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"redis result backend {redact_url(url)!r}: {_describe(exc)}") from exc
    kw = pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']} db {kw.get('db', 0)}"
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


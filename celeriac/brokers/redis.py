"""The Redis broker: kombu's layout on the wire, celeriac's leases underneath.

**What Celery sees** (byte-compatible with kombu 5, so Celery 5 and celeriac share one Redis):

- A queue is a list named after the queue. Producers ``LPUSH`` kombu's JSON envelope
  (``celeriac.protocol.kombu_envelope``: base64 body, ``properties.delivery_info``, a uuid
  ``delivery_tag``); consumers take from the right end, so a list is FIFO. The envelope is
  written compact by orjson (kombu reads it as its own); ``compact_envelope=False`` writes it
  byte for byte as kombu does (Python's ``", "`` separators), at about 5 µs more a message.
- Priority steps are kombu's: priority ``p`` goes to the list of step ``max(s <= p)`` of
  ``priority_steps`` (kombu's ``[0, 3, 6, 9]`` by default), named ``queue`` for step 0 and
  ``queue\\x06\\x16<step>`` for the others.
- Declaring a queue (first publish to it, first fetch from it) adds kombu's binding member
  ``routing_key\\x06\\x16\\x06\\x16queue`` to ``_kombu.binding.<exchange>`` (and to
  ``_kombu.binding_permanent.<exchange>``, as kombu 5.7 does), so Celery producers and workers
  see the queue.

**Priority.** kombu's worker empties the step lists in step order, so on Redis a *lower*
number is served first there; celeriac's contract is *higher first*. The number a producer
writes is the same on both sides (the same ``properties.priority``, the same step list: a
Celery producer's ``priority=9`` and a celeriac producer's ``priority=9`` land in the same
list, byte for byte); what differs is only the order in which each kind of *worker* empties
the step lists: a celeriac worker serves step 9 first, a Celery worker step 0 first. During a
migration where both consume one queue, set ``priority_order="kombu"`` on the celeriac side to
serve as Celery does. With kombu's four steps, priorities are coarse (5 and 3 share a list and
keep FIFO order between them); ``priority_steps=list(range(10))`` gives ten exact levels
(Celery's documented setting; give Celery workers the same setting, or they never read
steps 1, 2, 4, 5, 7 and 8).

**What celeriac adds** (keys under ``Keys``, all names in that one class):

- *Take = record, atomically.* ``fetch`` runs one Lua script (EVALSHA, cached) that, with the
  Redis server's clock (``TIME``): (1) puts back lapsed leases (at most ``sweep_limit``),
  (2) moves due delayed messages of the fetched queues to their lists, (3) ``RPOP``\\s up to
  ``max_count`` entries from the queues' step lists in order and records each in
  ``celeriac.inflight`` (hash: tag -> deliveries, queue, list key, raw entry) with a lease
  deadline in ``celeriac.leases`` (zset: tag -> deadline, ms of server time). A crash at any
  point loses nothing: an entry is always in a list, the delayed set or the in-flight hash.
- *Per-message leases.* Each take hands out a new tag (``INCRBY celeriac.tag_seq``), so
  ``renew`` (``ZADD XX`` with server time), ``requeue`` and ``ack`` are fenced for free: a
  delivery whose lease lapsed and was put back has a tag that no longer exists. There is no
  global visibility timeout: a message whose holder keeps renewing is never handed out again.
  kombu's ``unacked``/``unacked_index`` are *not* used, so a Celery worker's restore pass never
  takes back a message a celeriac worker is still running.
- *Delivery counts* survive a lapse or requeue: the entry goes back unchanged (kombu's bytes)
  and its count is kept in ``celeriac.redelivered`` (hash: sha1 of the entry -> count), read
  and cleared when the entry is taken again. (An entry a Celery worker consumes after a
  celeriac requeue leaves its count behind: one small hash field.)
- *ETA/countdown* messages (``not_before`` in the future) wait in ``celeriac.delayed.<queue>``
  (zset: score = due time in ms, member = list key + entry) and are moved to their list inside
  the take script by whichever worker fetches that queue: never held in worker memory, never
  duplicated by a restart. **A Celery worker never sees them until they are due and a celeriac
  worker has moved them into the list**; from then on they are ordinary list entries (their
  ``eta`` header is in the past, so a Celery worker runs them at once). A Celery producer's ETA
  message arrives in the list directly; the celeriac worker re-publishes it here with
  ``not_before`` and acks it (``worker.loop._hold_in_broker``).
- *Waiting without polling.* An empty ``fetch`` blocks on ``BLMOVE key key RIGHT RIGHT`` for each
  watched list (one connection each, kept armed across waits: ``_redis_watch``): a
  non-destructive wait (the entry is popped and pushed back at the same end in one command, so
  the list is unchanged and nothing ever leaves Redis), woken by any ``LPUSH``, Celery's
  included. The first queue's own list is watched with the take script queued behind its
  ``BLMOVE`` instead (``_redis_take_behind``): the take runs as the wake comes, and its
  reply brings the message. The wait is capped by the next due delayed message or lease
  deadline (the script returns it) and by ``poll_interval`` (new delayed messages of other
  producers are seen within it).
- *Dead letters* go to the list ``celeriac.dead_letter`` (``dead_letter_queue``) as JSON
  ``{"dead_at", "reason", "queue", "priority", "deliveries", "tag", "entry"}``, newest first,
  trimmed to ``dead_letter_limit``.

**Pipelined acks.** Every non-blocking command goes on one connection per broker
(``Pipeline``): writers put their bytes on the socket without waiting for earlier replies,
and one reader task reads the replies in order. Redis runs a connection's commands in the
order sent, so a ``queue_size``, ``requeue`` or ``fetch`` sent after an ``ack`` sees the ack
applied. ``ack`` returns once its bytes are written to the socket, not once Redis replied
(the broker seam allows it; AMQP's ``basic.ack`` is the same). Why that keeps the guarantees:

- *Early acks against a worker crash.* The worker acks before the task starts, and the ack's
  bytes are in the kernel's socket buffer by then. A killed process's sockets are closed by
  the kernel, which still sends what was written (with ``TCP_NODELAY``, as redis-py sets it, an
  uncongested connection sends it at once: on loopback it is in Redis's receive buffer before
  ``write`` returns). The one gap: a socket closed with unread *replies* in its receive buffer
  is reset, and bytes not yet transmitted then are dropped; that needs Redis to have stopped
  reading (a full send window) at the moment of the kill. Such a task runs again once its
  lease lapses: a duplicate of a task that was running when the fault hit, as the awaited
  ack already allowed when its reply was lost (``worker.loop._process`` runs the task anyway).
- *Late acks* are sent after the result is stored (awaited); a lost late ack only means the
  message returns after its lease and runs again (at least once).
- *A Redis crash* (or a lost connection) between the write and the apply: the ack is
  "unconfirmed". It is sent once more, first thing on the next connection (an ack is
  idempotent: tags are never reused, and an acked tag is gone); if that is lost too, or Redis
  restarted without it, the message returns after its lease. Unlike an awaited ack under
  ``appendfsync always``, an ack whose task already ran can thus be undone by a Redis crash
  in the few milliseconds after it was sent: that task runs again (at least once, counted by
  its delivery count). Publishes, fetches and results are awaited as before.
- ``close`` waits (up to 5 s) for outstanding replies, so a worker's last acks are confirmed.

A new connection loads the scripts first (``SCRIPT LOAD``); an ``EVALSHA`` refused with
NOSCRIPT anyway (``SCRIPT FLUSH`` by someone else) is sent again as ``EVAL``.

An envelope whose properties do not match what kombu's layout can carry (no ``priority``, or
transport keys of its own) gets one extra top-level key, ``x-celeriac-properties``, holding its
exact properties; kombu ignores unknown top-level keys. celeriac's own envelopes never need it.

**Sentinel.** ``sentinel://host:port;sentinel://host:port/db`` with
``broker_transport_options={"master_name": ...}`` (Celery's form; ``sentinel_kwargs`` and
``min_other_sentinels`` too): every connection asks the sentinels for the current master when it
connects (``celeriac.utils.redis_urls``), so after a failover the next command of each caller
reconnects to the promoted replica (the worker's fetch loop retries with backoff meanwhile;
unconfirmed pipelined acks are sent again there). Replication is asynchronous: what the dead
master had not yet sent to the replica is lost with it. For a message that means a publish
that returned can vanish (within the last moments before the crash), a take or ack can be
undone (the message runs again: at least once), and a stored result can vanish.

Not supported: Redis Cluster (the scripts touch keys they compute).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from celeriac.brokers import _redact
from celeriac.brokers._common import (
    MAX_PRIORITY,
    check_fetch_args,
    clamp_priority,
    idle_wait,
    positive_seconds,
    resolve_options,
)
from celeriac.brokers._redis_blocking import BlockingClient
from celeriac.brokers._redis_watch import ListWatches
from celeriac.brokers.base import DEFAULT_LEASE_SECONDS
from celeriac.config import redact_url
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError, DecodeError
from celeriac.message import Delivery, Envelope, Outgoing, build_delivery
from celeriac.protocol import kombu_envelope
from celeriac.utils.redis_pipeline import Orphaned, Pipeline, ScriptCall, first_error
from celeriac.utils.redis_urls import (
    SentinelAddress,
    close_pool,
    is_sentinel_url,
    parse_sentinel_url,
    redis_py_url,
    sentinel_pool,
)
from celeriac.utils.spin import spin_budget

__all__ = ["Keys", "RedisBroker", "connection_url"]

#: kombu's separator, in priority list names and in binding members.
KOMBU_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
#: Content type of a list entry that is not a kombu envelope (the worker dead-letters it).
UNDECODABLE = "application/x-celeriac-undecodable-entry"
_MARK_KEY = "x-celeriac-properties"
_MARK = b'{"' + _MARK_KEY.encode() + b'": '

DEFAULTS: dict[str, Any] = {
    "lease_seconds": DEFAULT_LEASE_SECONDS,
    "poll_interval": 0.25,
    "priority_steps": KOMBU_PRIORITY_STEPS,
    "priority_order": "higher_first",
    "sep": KOMBU_SEP,
    "global_keyprefix": "",
    "compact_envelope": True,
    "dead_letter_queue": "celeriac.dead_letter",
    "dead_letter_limit": 100_000,
    "sweep_limit": 1000,
    "max_connections": 1000,
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
    "socket_keepalive": True,
    "health_check_interval": 0,
    "connection_retries": 2,
    # seconds a blocking publish (``delay()`` from sync code) waits on the CPU for Redis's
    # reply before it sleeps (``celeriac.utils.spin``); 0 turns the spin off
    "reply_spin": 0.0002,
    # sentinel:// only (Celery's names): the master to follow, the sentinels' own
    # connection options (a password of theirs), and how many peers a sentinel must see.
    "master_name": None,
    "sentinel_kwargs": None,
    "min_other_sentinels": 0,
}
_WHERE = "RedisBroker"

# redis-py >= 7 asks every new connection for maintenance notifications (a Redis
# Enterprise/Cloud feature): one round trip less per connection without.
_NO_MAINT_NOTIFICATIONS: dict[str, Any] = {}
with contextlib.suppress(ImportError):  # older redis-py has no such thing
    from redis.maint_notifications import MaintNotificationsConfig

    _NO_MAINT_NOTIFICATIONS["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
log = logging.getLogger("celeriac.brokers.redis")


class Keys:
    """Every Redis key name the broker uses (all under ``global_keyprefix``)."""

    def __init__(self, prefix: str = "", sep: str = KOMBU_SEP, dead_letter: str = "") -> None:
        self.prefix = prefix
        self.sep = sep
        self.inflight = f"{prefix}celeriac.inflight"
        self.leases = f"{prefix}celeriac.leases"
        self.redelivered = f"{prefix}celeriac.redelivered"
        self.inflight_count = f"{prefix}celeriac.inflight_count"
        self.tag_seq = f"{prefix}celeriac.tag_seq"
        self.dead_letter = f"{prefix}{dead_letter or DEFAULTS['dead_letter_queue']}"

    def queue(self, queue: str, step: int = 0) -> str:
        """kombu's list for ``queue`` at priority step ``step``."""
        return f"{self.prefix}{queue}" if step == 0 else f"{self.prefix}{queue}{self.sep}{step}"

    def delayed(self, queue: str) -> str:
        return f"{self.prefix}celeriac.delayed.{queue}"

    def binding(self, exchange: str) -> str:
        return f"{self.prefix}_kombu.binding.{exchange}"

    def binding_permanent(self, exchange: str) -> str:
        return f"{self.prefix}_kombu.binding_permanent.{exchange}"

    def binding_member(self, routing_key: str, queue: str) -> str:
        return f"{routing_key}{self.sep}{self.sep}{queue}"


# -- Lua ------------------------------------------------------------------------------------
# An in-flight record: "<deliveries>:<#queue>:<#listkey>:<queue><listkey><entry>".
# A delayed member:    "<#listkey>:<listkey><entry>". Lengths are in bytes.

_LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_LUA_PARSE = """
local function parse(rec)
  local n, ql, kl, p = string.match(rec, '^(%d+):(%d+):(%d+):()')
  ql = tonumber(ql)
  kl = tonumber(kl)
  return n, string.sub(rec, p, p + ql - 1), string.sub(rec, p + ql, p + ql + kl - 1),
         string.sub(rec, p + ql + kl)
end
local function forget(tag, q)
  redis.call('HDEL', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
  if redis.call('HINCRBY', KEYS[4], q, -1) <= 0 then redis.call('HDEL', KEYS[4], q) end
end
"""

#: KEYS: inflight, leases, redelivered, inflight_count, tag_seq, then per queue its delayed
#: zset and its S step lists in serving order. ARGV: lease_ms, max_count, sweep, S, queues...
#: Returns {tag, deliveries, queue index, entry, ...} or {ms until something falls due | -1}.
TAKE_LUA = (
    _LUA_NOW
    + _LUA_PARSE
    + """
local lease = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local sweep = tonumber(ARGV[3])
local S = tonumber(ARGV[4])
local nq = #ARGV - 4

local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, sweep)
for i = 1, #lapsed do
  local tag = lapsed[i]
  local rec = redis.call('HGET', KEYS[1], tag)
  if rec then
    local n, q, lk, entry = parse(rec)
    redis.call('RPUSH', lk, entry)
    redis.call('HSET', KEYS[3], redis.sha1hex(entry), n)
    forget(tag, q)
  else
    redis.call('ZREM', KEYS[2], tag)
  end
end

for qi = 0, nq - 1 do
  local dk = KEYS[6 + qi * (S + 1)]
  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, sweep)
  for i = 1, #due do
    local m = due[i]
    local kl, p = string.match(m, '^(%d+):()')
    kl = tonumber(kl)
    redis.call('LPUSH', string.sub(m, p, p + kl - 1), string.sub(m, p + kl))
    redis.call('ZREM', dk, m)
  end
end

local got, from, lks = {}, {}, {}
for qi = 0, nq - 1 do
  local base = 6 + qi * (S + 1)
  for s = 1, S do
    local need = want - #got
    if need <= 0 then break end
    local lk = KEYS[base + s]
    local items = redis.call('RPOP', lk, need)
    if items then
      for i = 1, #items do
        got[#got + 1] = items[i]
        from[#from + 1] = qi
        lks[#lks + 1] = lk
      end
    end
  end
  if #got >= want then break end
end

if #got == 0 then
  local nxt = -1
  local l = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #l > 0 then nxt = tonumber(l[2]) end
  for qi = 0, nq - 1 do
    local d = redis.call('ZRANGE', KEYS[6 + qi * (S + 1)], 0, 0, 'WITHSCORES')
    if #d > 0 and (nxt < 0 or tonumber(d[2]) < nxt) then nxt = tonumber(d[2]) end
  end
  if nxt < 0 then return {-1} end
  return {math.max(nxt - now, 0)}
end

local last = tonumber(redis.call('INCRBY', KEYS[5], #got))
local first = last - #got
local check = redis.call('HLEN', KEYS[3]) > 0
local deadline = now + lease
local per_queue = {}
local out = {}
for i = 1, #got do
  local entry = got[i]
  local n = 1
  if check then
    local h = redis.sha1hex(entry)
    local prev = redis.call('HGET', KEYS[3], h)
    if prev then
      n = tonumber(prev) + 1
      redis.call('HDEL', KEYS[3], h)
    end
  end
  local tag = string.format('%d', first + i)
  local q = ARGV[5 + from[i]]
  local lk = lks[i]
  redis.call('HSET', KEYS[1], tag, n .. ':' .. #q .. ':' .. #lk .. ':' .. q .. lk .. entry)
  redis.call('ZADD', KEYS[2], deadline, tag)
  per_queue[q] = (per_queue[q] or 0) + 1
  out[#out + 1] = tag
  out[#out + 1] = n
  out[#out + 1] = from[i]
  out[#out + 1] = entry
end
for q, c in pairs(per_queue) do redis.call('HINCRBY', KEYS[4], q, c) end
return out
"""
)

#: KEYS: inflight, leases, redelivered, inflight_count. ARGV: tags.
ACK_LUA = (
    _LUA_PARSE
    + """
local done = 0
for i = 1, #ARGV do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if rec then
    local _, q = parse(rec)
    forget(ARGV[i], q)
    done = done + 1
  end
end
return done
"""
)

#: KEYS: inflight, leases, redelivered, inflight_count. ARGV: tags, last to go back first.
#: Each entry goes back to the consuming end of its list (it is next), its count kept.
REQUEUE_LUA = (
    _LUA_PARSE
    + """
local done = 0
for i = 1, #ARGV do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if rec then
    local n, q, lk, entry = parse(rec)
    redis.call('RPUSH', lk, entry)
    redis.call('HSET', KEYS[3], redis.sha1hex(entry), n)
    forget(ARGV[i], q)
    done = done + 1
  end
end
return done
"""
)

#: KEYS: leases. ARGV: lease_ms, tags. Only leases still recorded are extended (fenced).
RENEW_LUA = (
    _LUA_NOW
    + """
local deadline = now + tonumber(ARGV[1])
local done = 0
for i = 2, #ARGV do
  done = done + redis.call('ZADD', KEYS[1], 'XX', 'CH', deadline, ARGV[i])
end
return done
"""
)

#: KEYS: inflight, leases, redelivered, inflight_count, dead letters.
#: ARGV: tag, the wrapper JSON without its opening brace, limit.
DEAD_LUA = (
    _LUA_PARSE
    + """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if rec then
  local _, q = parse(rec)
  forget(ARGV[1], q)
end
local t = redis.call('TIME')
redis.call('LPUSH', KEYS[5],
           '{"dead_at": ' .. t[1] .. '.' .. string.format('%06d', tonumber(t[2])) .. ', '
           .. ARGV[2])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[3]) - 1)
return 1
"""
)


SCRIPTS = {"take": TAKE_LUA, "ack": ACK_LUA, "requeue": REQUEUE_LUA, "renew": RENEW_LUA,
           "dead": DEAD_LUA}


# -- URLs and options -------------------------------------------------------------------------


def connection_url(url: str) -> str:
    """``url`` as redis-py reads it: ``redis+socket:///path`` becomes ``unix:///path``."""
    return redis_py_url(url, "Redis broker")


def _steps(value: Any) -> tuple[int, ...]:
    try:
        steps = tuple(sorted({int(s) for s in value}))
    except (TypeError, ValueError):
        raise ConfigurationError(f"{_WHERE}: priority_steps must be integers, not {value!r}") from None
    if not steps or steps[0] != 0 or steps[-1] > MAX_PRIORITY:
        raise ConfigurationError(
            f"{_WHERE}: priority_steps must start at 0 and stay within 0-9, not {value!r}"
        )
    return steps


# -- the broker -------------------------------------------------------------------------------


class RedisBroker:
    """A broker on Redis, sharing kombu's layout; see the module docstring."""

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        **options: Any,
    ) -> None:
        opts = resolve_options({"lease_seconds": lease_seconds, **options}, DEFAULTS, _WHERE)
        self.url = url
        # sentinel://: the sentinels and the master's name; else one server's URL for redis-py
        self._sentinel: SentinelAddress | None = None
        self._conn_url = ""
        if is_sentinel_url(url):
            self._sentinel = parse_sentinel_url(url, "Redis broker")
            if not opts["master_name"]:
                raise ConfigurationError(
                    f"{_WHERE}: a sentinel:// URL needs broker_transport_options="
                    "{'master_name': '<name>'} (the name the sentinels monitor)"
                )
        else:
            self._conn_url = connection_url(url)
        self._master_name: str | None = opts["master_name"]
        self._sentinel_options = {"sentinel_kwargs": opts["sentinel_kwargs"],
                                  "min_other_sentinels": int(opts["min_other_sentinels"])}
        self.lease_seconds = positive_seconds(opts["lease_seconds"], "lease_seconds", _WHERE)
        self.poll_interval = positive_seconds(opts["poll_interval"], "poll_interval", _WHERE)
        self.priority_steps = _steps(opts["priority_steps"])
        order = opts["priority_order"]
        if order not in ("higher_first", "kombu"):
            raise ConfigurationError(
                f"{_WHERE}: priority_order must be 'higher_first' or 'kombu', not {order!r}"
            )
        self.priority_order: str = order
        # serving order of the steps
        self._serve_steps = (
            tuple(reversed(self.priority_steps)) if order == "higher_first" else self.priority_steps
        )
        self.compact = bool(opts["compact_envelope"])
        self.keys = Keys(str(opts["global_keyprefix"]), str(opts["sep"]),
                         str(opts["dead_letter_queue"]))
        self.dead_letter_limit = max(1, int(opts["dead_letter_limit"]))
        self.sweep_limit = max(1, int(opts["sweep_limit"]))
        self.reply_spin = spin_budget(opts["reply_spin"], "reply_spin", _WHERE)
        self._pool_options = {
            "max_connections": int(opts["max_connections"]),
            "socket_timeout": opts["socket_timeout"],
            "socket_connect_timeout": opts["socket_connect_timeout"],
            "socket_keepalive": bool(opts["socket_keepalive"]),
            "health_check_interval": opts["health_check_interval"],
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), int(opts["connection_retries"])),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
            **_NO_MAINT_NOTIFICATIONS,
        }
        if self._conn_url.startswith("unix:"):
            del self._pool_options["socket_keepalive"]  # TCP's; a unix socket takes no such option
        self._client: aioredis.Redis | None = None
        self._where = "Redis"
        self._pipe: Pipeline | None = None  # every non-blocking command goes on it
        self._blocking: BlockingClient | None = None  # publish_blocking's, made on first use
        self._declared: set[tuple[str, str, str]] = set()
        self._watches: ListWatches | None = None  # an idle fetch's BLMOVEs
        self._take_keys: dict[tuple[str, ...], list[str]] = {}

    def __repr__(self) -> str:
        shown = redact_url(self.url) if self._sentinel is not None else _redact(self.url)
        return f"<RedisBroker {shown!r}>"

    # -- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is not None:
            return
        pool: aioredis.ConnectionPool
        if self._sentinel is not None:
            # Each connection asks the sentinels for the master when it (re)connects: after a
            # failover the pipelined connection, the BLMOVE waits and the pool all land on
            # the promoted replica by themselves (see celeriac.utils.redis_urls).
            pool = sentinel_pool(self._sentinel, self._master_name, **self._sentinel_options,
                                 **self._pool_options)
            self._where = self._sentinel.describe(self._master_name)
        else:
            try:
                pool = aioredis.ConnectionPool.from_url(self._conn_url, **self._pool_options)
            except ValueError as exc:
                raise ConfigurationError(f"bad Redis URL {_redact(self.url)}: {exc}") from None
            kw = pool.connection_kwargs
            self._where = (
                f"Redis at {kw['path']}" if "path" in kw
                else f"Redis at {kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
            )
        client = aioredis.Redis(connection_pool=pool)
        self._client = client
        self._pipe = Pipeline(pool, SCRIPTS)
        self._watches = ListWatches(pool, self._unblock, self._give_back)
        with self._errors("connect"):
            await self._call("PING")

    async def close(self) -> None:
        client = self._client
        watches, self._watches = self._watches, None
        if watches is not None:  # first: what a cancelled wait took goes back on the pipe
            await watches.close()
        pipe, self._pipe = self._pipe, None
        self._declared.clear()
        if pipe is not None:
            await pipe.close()
        self._client = None
        blocking, self._blocking = self._blocking, None
        if blocking is not None:
            blocking.close()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
            await close_pool(client.connection_pool)

    def _redis(self) -> aioredis.Redis:
        client = self._client
        if client is None:
            raise BrokerConnectionError(f"{self!r} is not connected (call connect() first)")
        return client

    def _pipeline(self) -> Pipeline:
        pipe = self._pipe
        if pipe is None:
            raise BrokerConnectionError(f"{self!r} is not connected (call connect() first)")
        return pipe

    async def _call(self, *args: Any) -> Any:
        """One command, on the pipelined connection (see ``Pipeline``)."""
        return await self._pipeline().call(*args)

    async def _script(self, name: str, keys: Sequence[Any], args: Sequence[Any],
                      on_orphan: Orphaned | None = None) -> Any:
        """EVALSHA (EVAL on NOSCRIPT: a new or restarted Redis); ``on_orphan``: see ``Sent``."""
        return await self._pipeline().script(name, keys, args, on_orphan=on_orphan)

    @contextlib.contextmanager
    def _errors(self, doing: str, ops: Sequence[tuple[Any, ...]] = ()) -> Iterator[None]:
        """redis-py errors become ``BrokerError``s naming host:port (never the password).

        ``ops`` that failed may hold binding declarations Redis never got: they are sent
        again with the next publish."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise self._broker_error(doing, ops, exc) from exc

    def _broker_error(self, doing: str, ops: Sequence[tuple[Any, ...]],
                      exc: RedisError | OSError) -> BrokerError:
        """What ``_errors`` raises for ``exc``."""
        if ops:
            self._declared.clear()
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
            return BrokerConnectionError(
                f"{self._where} unreachable while trying to {doing}: {exc}")
        return BrokerError(f"{self._where} failed to {doing}: {exc}")


    # -- encoding -----------------------------------------------------------------------

    def _entry(self, out: Outgoing, runs: dict[tuple[Any, ...], Any] | None = None
               ) -> tuple[int, bytes]:
        """(priority, kombu list entry) for ``out``; ``runs`` caches, for one publish, a
        template per batch run and address (``EntrySplicer``; None where there is none)."""
        priority = clamp_priority(out.priority)
        env = out.envelope
        props = env.properties
        plain = props.get("priority", -1) == priority and kombu_envelope.TRANSPORT_PROPERTIES \
            .isdisjoint(props)
        if plain:
            routing_key = out.routing_key or out.queue
            if env.run is not None and runs is not None:
                key = (env.run, out.exchange, routing_key)
                splicer = runs.get(key, False)
                if splicer is False:
                    splicer = runs[key] = kombu_envelope.EntrySplicer.make(
                        env, out.exchange, routing_key, compact=self.compact)
                raw = None if splicer is None else splicer.entry(env)
                if raw is not None:
                    return priority, raw
            return priority, kombu_envelope.dumps(
                env, out.exchange, routing_key, compact=self.compact
            )
        wire = {k: v for k, v in props.items() if k not in kombu_envelope.TRANSPORT_PROPERTIES}
        wire["priority"] = priority
        raw = kombu_envelope.dumps(
            replace(env, properties=wire), out.exchange, out.routing_key or out.queue,
            compact=self.compact,
        )
        exact = orjson.dumps(props, option=orjson.OPT_NON_STR_KEYS)
        return priority, _MARK + exact + b", " + raw[1:]

    def _step_of(self, priority: int) -> int:
        step = 0
        for s in self.priority_steps:
            if s <= priority:
                step = s
        return step

    def _declare(self, exchange: str, routing_key: str, queue: str) -> list[tuple[Any, ...]]:
        """kombu's binding members for ``queue`` (the commands; once per instance)."""
        exchange = exchange or queue
        key = (exchange, routing_key, queue)
        if key in self._declared:
            return []
        self._declared.add(key)
        member = self.keys.binding_member(routing_key, queue)
        return [("SADD", self.keys.binding(exchange), member),
                ("SADD", self.keys.binding_permanent(exchange), member)]

    # -- the contract -------------------------------------------------------------------

    def _publish_ops(self, messages: Sequence[Outgoing]) -> list[tuple[Any, ...]]:
        """The commands that publish ``messages``, for one round trip: (command, key, *args);
        consecutive entries for one list go in one LPUSH (in order: ``LPUSH k a b`` leaves b
        at the head, a nearest the consuming end)."""
        keys = self.keys
        now = time.time()
        ops: list[tuple[Any, ...]] = []
        run_key = ""
        run: list[bytes] = []
        address: tuple[str, int, str, str | None] | None = None
        listkey = ""
        runs: dict[tuple[Any, ...], Any] = {}
        for out in messages:
            priority, raw = self._entry(out, runs)
            if (out.queue, priority, out.exchange, out.routing_key) != address:
                address = (out.queue, priority, out.exchange, out.routing_key)
                routing_key = out.routing_key or out.queue
                if (out.exchange or out.queue, routing_key, out.queue) not in self._declared:
                    ops += self._declare(out.exchange, routing_key, out.queue)
                listkey = keys.queue(out.queue, self._step_of(priority))
            if out.not_before is not None and out.not_before > now:
                lk = listkey.encode()
                ops.append(("ZADD", keys.delayed(out.queue), int(out.not_before * 1000),
                            b"%d:" % len(lk) + lk + raw))
                continue
            if listkey != run_key and run:
                ops.append(("LPUSH", run_key, *run))
                run = []
            run_key = listkey
            run.append(raw)
        if run:
            ops.append(("LPUSH", run_key, *run))
        return ops

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        self._redis()
        ops = self._publish_ops(messages)
        with self._errors("publish", ops):
            await self._execute(ops)

    def publish_blocking(self, messages: Sequence[Outgoing]) -> bool:
        """``publish`` from sync code on a blocking connection of its own (no event loop
        turn: a ``delay()`` costs one plain round trip)."""
        if not messages:
            return True
        blocking = self._blocking
        if blocking is None:
            if self._sentinel is not None or self._client is None:
                return False  # sentinel: the async pool follows failovers; use ``publish``
            blocking = self._blocking = BlockingClient(self._conn_url, self._pool_options,
                                                           self.reply_spin)
        ops = self._publish_ops(messages)
        try:  # not ``_errors``: a generator-based context manager costs a microsecond a call
            blocking.run(ops)
        except (RedisError, OSError) as exc:
            raise self._broker_error("publish", ops, exc) from exc
        return True

    async def defer(self, delivery: Delivery, not_before: float) -> None:
        """The delayed copy and the ack in one MULTI/EXEC (see ``base.Defers``). Sent again
        after a lost connection it changes nothing: the same member, the same ack."""
        ops = self._publish_ops([delivery.as_outgoing(not_before)])
        keys = self._by_tag()  # EVAL, not EVALSHA: no NOSCRIPT inside the transaction
        ack = ("EVAL", SCRIPTS["ack"], len(keys), *keys, delivery.tag)
        with self._errors("defer", ops):
            replies = await self._execute([("MULTI",), *ops, ack, ("EXEC",)])
        failed = first_error(replies[-1] or ())
        if failed is not None or replies[-1] is None:
            raise BrokerError(f"{self!r}: deferring a message failed: {failed}")

    async def _execute(self, ops: list[tuple[Any, ...]]) -> list[Any]:
        """Run ``ops`` in one round trip."""
        return await self._pipeline().calls(ops)

    def _keys_for(self, queues: Sequence[str]) -> list[str]:
        key = tuple(queues)
        found = self._take_keys.get(key)
        if found is None:
            k = self.keys
            found = [k.inflight, k.leases, k.redelivered, k.inflight_count, k.tag_seq]
            for q in queues:
                found.append(k.delayed(q))
                found += [k.queue(q, s) for s in self._serve_steps]
            self._take_keys[key] = found
        return found

    def _take_args(self, queues: Sequence[str], max_count: int) -> list[Any]:
        return [int(self.lease_seconds * 1000), max_count, self.sweep_limit,
                len(self._serve_steps), *queues]

    async def _take(self, queues: Sequence[str], max_count: int) -> tuple[list[Delivery], float]:
        """(deliveries, seconds until something falls due or -1)."""
        args = self._take_args(queues, max_count)
        with self._errors("fetch"):
            reply = await self._script("take", self._keys_for(queues), args, self._untake)
        return self._taken(queues, reply)

    def _taken(self, queues: Sequence[str], reply: list[Any]) -> tuple[list[Delivery], float]:
        """The take script's reply: (deliveries, seconds until something falls due or -1)."""
        if len(reply) == 1:
            ms = int(reply[0])
            return [], (-1.0 if ms < 0 else ms / 1000)
        out: list[Delivery] = []
        append = out.append
        items = iter(reply)
        for tag, deliveries, qi, raw in zip(items, items, items, items, strict=True):
            env, priority = _decode(raw)
            append(_delivery(env, queues[qi if type(qi) is int else int(qi)], int(tag),
                             deliveries if type(deliveries) is int else int(deliveries), priority))
        return out, -1.0

    async def _declare_consumed(self, queues: Sequence[str]) -> None:
        ops = [op for q in queues for op in self._declare("", q, q)]
        if ops:
            with self._errors("declare queues"):
                await self._execute(ops)

    def _untake(self, reply: list[Any]) -> ScriptCall | None:
        """The requeue of what a take whose fetch was cancelled took (the pipeline sends it
        when the reply comes): nobody holds those messages, so they go back at once."""
        taken = reply[0] if reply else None
        if not isinstance(taken, list) or len(taken) < 4:
            return None
        return ("requeue", self._by_tag(), taken[-4::-4])  # first taken goes back last: next

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        check_fetch_args(queues, max_count)
        if not queues:
            return []
        self._redis()
        await self._declare_consumed(queues)
        deadline = time.monotonic() + max(timeout, 0.0)
        got, due_in = await self._take(queues, max_count)
        if got:
            return got
        keys = self._keys_for(queues)
        take = self._pipeline().script_command("take", keys, self._take_args(queues, max_count))
        primary = self.keys.queue(queues[0], self._step_of(0))  # where most messages land
        others = [k for i, k in enumerate(keys[5:])  # the lists but the primary (no delayed)
                  if i % (len(self._serve_steps) + 1) and k != primary]
        while True:
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = idle_wait(remaining, None if due_in < 0 else due_in, self.poll_interval)
            watches = self._watches
            if watches is None:
                raise BrokerConnectionError(f"{self!r} is closed")
            with self._errors("wait for messages"):
                reply = await watches.wait_taking(primary, take, others, wait)
            if reply is None:  # refused (NOSCRIPT): the usual take loads the script again
                got, due_in = await self._take(queues, max_count)
            else:
                got, due_in = self._taken(queues, reply)

    async def _give_back(self, reply: list[Any]) -> None:
        """Requeue what a take whose fetch was cancelled took (its ``reply``)."""
        call = self._untake([reply])
        if call is not None:
            with self._errors("give back messages"):
                await self._script(*call)

    async def _unblock(self, client_id: int) -> None:
        """End the ``BLMOVE`` of the connection ``client_id`` now (see ``ListWatches``)."""
        await self._call("CLIENT", "UNBLOCK", client_id)

    def _by_tag(self) -> list[str]:
        k = self.keys
        return [k.inflight, k.leases, k.redelivered, k.inflight_count]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Returns once the ack is written to the socket (see "Pipelined acks" above)."""
        if not deliveries:
            return
        self._redis()
        with self._errors("ack"):
            await self._pipeline().script("ack", self._by_tag(), [d.tag for d in deliveries],
                                          wait=False)

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        self._redis()
        tags = [d.tag for d in reversed(deliveries)]  # the first given goes back last: next
        with self._errors("requeue"):
            await self._script("requeue", self._by_tag(), tags)

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        self._redis()
        args = [int(self.lease_seconds * 1000), *(d.tag for d in deliveries)]
        with self._errors("renew leases"):
            await self._script("renew", [self.keys.leases], args)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._redis()
        _, raw = self._entry(delivery.as_outgoing())
        wrapper = orjson.dumps({
            "reason": str(reason),
            "queue": delivery.queue,
            "priority": delivery.priority,
            "deliveries": delivery.deliveries,
            "tag": str(delivery.tag),
            "entry": raw.decode("utf-8"),
        })
        with self._errors("dead-letter"):
            await self._script(
                "dead",
                [*self._by_tag(), self.keys.dead_letter],
                [str(delivery.tag), wrapper[1:], self.dead_letter_limit],
            )

    def _waiting_keys(self, queue: str) -> list[str]:
        return [self.keys.queue(queue, s) for s in self.priority_steps]

    async def purge(self, queues: Sequence[str]) -> int:
        if not queues:
            return 0
        self._redis()
        ops: list[tuple[Any, ...]] = [("MULTI",)]
        for q in queues:
            ops += [("LLEN", key) for key in self._waiting_keys(q)]
            ops.append(("ZCARD", self.keys.delayed(q)))
        counted = len(ops) - 1
        ops.append(("DEL", *[k for q in queues
                             for k in (*self._waiting_keys(q), self.keys.delayed(q))]))
        ops.append(("EXEC",))
        with self._errors("purge"):
            results = (await self._execute(ops))[-1]
        return sum(int(n) for n in results[:counted])

    async def queue_size(self, queue: str) -> int:
        self._redis()
        ops: list[tuple[Any, ...]] = [("LLEN", key) for key in self._waiting_keys(queue)]
        ops += [("ZCARD", self.keys.delayed(queue)), ("HGET", self.keys.inflight_count, queue)]
        with self._errors("count a queue"):
            *sizes, inflight = await self._execute(ops)
        return sum(int(n) for n in sizes) + int(inflight or 0)

    async def dead_letters(self, limit: int = 100) -> list[tuple[Delivery, str]]:
        if limit <= 0:
            return []
        with self._errors("read dead letters"):
            self._redis()
            raw = await self._call("LRANGE", self.keys.dead_letter, 0, limit - 1)
        out: list[tuple[Delivery, str]] = []
        for item in raw:
            try:
                wrapper = orjson.loads(item)
                env, _ = _decode(wrapper["entry"].encode("utf-8"))
                tag = wrapper.get("tag")
                out.append((
                    Delivery(env, str(wrapper["queue"]), int(tag) if str(tag).isdigit() else tag,
                             int(wrapper.get("deliveries") or 1), int(wrapper.get("priority") or 0)),
                    str(wrapper.get("reason", "")),
                ))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                blob = item if isinstance(item, bytes) else str(item).encode()
                out.append((Delivery(Envelope(blob, UNDECODABLE, "binary"), "", None),
                            "unreadable dead-letter record"))
        return out


#: ``Delivery(envelope, queue, tag, deliveries, priority)``, built a little faster (``_take``)
_delivery = build_delivery


def _decode(raw: bytes) -> tuple[Envelope, int]:
    """(envelope, priority) of a list entry; one that is not a kombu envelope comes out as an
    ``UNDECODABLE`` envelope holding the raw bytes (the worker dead-letters it)."""
    try:
        env, _, _ = kombu_envelope.loads(raw)
    except DecodeError:
        return Envelope(bytes(raw), UNDECODABLE, "binary"), 0
    priority = env.properties.get("priority")
    if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
        try:
            priority = clamp_priority(int(priority or 0))
        except (TypeError, ValueError):
            priority = 0
    if raw.startswith(_MARK):
        exact = orjson.loads(raw).get(_MARK_KEY)
        if isinstance(exact, dict):
            env = replace(env, properties=exact)
    return env, priority

"""The embedded broker: one SQLite file, shared by the processes of one machine.

Layout (one table of live messages, one of dead letters)::

    celeriac_messages(id, queue, priority, ready, visible_at, deliveries,
                      body, content_type, content_encoding, headers, properties)

- ``ready = 1``: may be handed out now. Served by a partial index on
  ``(queue, priority DESC, id)``, so a fetch reads the head of the queue and nothing else.
- ``ready = 0``: delayed (``deliveries = 0``, ``visible_at`` = not_before) or leased
  (``visible_at`` = lease end). A partial index on ``visible_at`` finds those falling due; every
  fetch first flips them back to ready (``promote``), in the same transaction as the take.
- ``id`` is AUTOINCREMENT: it orders FIFO and is never reused, so a stale delivery tag can
  never name another message.
- A delivery's ``deliveries`` count fences ``requeue`` and ``renew``: only the current holder
  of a message may give it back or extend its lease.

Statements are short and run on the event loop's thread; only *waiting* is asynchronous: the
publisher notifies after its commit (``celeriac.utils.wakeup``), and an idle fetch sleeps until
a notification, the next due time, or ``poll_interval``, whichever is first. How the file is
opened, how a busy file is waited for and who checkpoints the WAL (shared with the result
backend, which by default uses the same file) is ``celeriac.utils.sqlite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import orjson

from celeriac.brokers._common import (
    check_fetch_args,
    clamp_priority,
    idle_wait,
    positive_seconds,
    resolve_options,
)
from celeriac.brokers.base import DEFAULT_LEASE_SECONDS
from celeriac.errors import BrokerConnectionError, BrokerError, ConfigurationError
from celeriac.message import Delivery, Envelope, Outgoing
from celeriac.utils import sqlite
from celeriac.utils.sqlite import Database
from celeriac.utils.wakeup import Listener, Notifier, channel_directory

DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_BUSY_TIMEOUT = 5.0
#: Bound parameters per statement (SQLite allows 32766; stay well clear).
_CHUNK = 4000

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS celeriac_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    ready INTEGER NOT NULL,
    visible_at REAL NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    headers BLOB NOT NULL,
    properties BLOB NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS celeriac_messages_ready
    ON celeriac_messages (queue, priority DESC, id) WHERE ready = 1""",
    """CREATE INDEX IF NOT EXISTS celeriac_messages_pending
    ON celeriac_messages (visible_at) WHERE ready = 0""",
    """CREATE TABLE IF NOT EXISTS celeriac_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    headers BLOB NOT NULL,
    properties BLOB NOT NULL,
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
    )""",
]

_INSERT = (
    "INSERT INTO celeriac_messages (queue, priority, ready, visible_at, body, content_type,"
    " content_encoding, headers, properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PROMOTE = "UPDATE celeriac_messages SET ready = 1 WHERE ready = 0 AND visible_at <= ?"
_RETURNING = (
    " RETURNING id, queue, priority, deliveries, body, content_type, content_encoding,"
    " headers, properties"
)
_TAKE_ONE_QUEUE = (
    "UPDATE celeriac_messages SET ready = 0, visible_at = ?, deliveries = deliveries + 1"
    " WHERE id IN (SELECT id FROM celeriac_messages WHERE ready = 1 AND queue = ?"
    " ORDER BY priority DESC, id LIMIT ?)" + _RETURNING
)
_NEXT_DUE = "SELECT min(visible_at) FROM celeriac_messages WHERE ready = 0"


def _take_many_queues(n: int) -> str:
    """One statement taking from ``n`` queues in order: each arm reads its own queue's head
    through the ready index, the outer ORDER BY ranks the arms by queue position."""
    arms = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, {i} AS pos, priority FROM celeriac_messages"
        " WHERE ready = 1 AND queue = ? ORDER BY priority DESC, id LIMIT ?)"
        for i in range(n)
    )
    return (
        "UPDATE celeriac_messages SET ready = 0, visible_at = ?, deliveries = deliveries + 1"
        f" WHERE id IN (SELECT id FROM ({arms}) ORDER BY pos, priority DESC, id LIMIT ?)"
        + _RETURNING
    )


def path_from_url(url: str) -> str:
    """The database path of a ``sqlite://`` URL (see ``celeriac.utils.sqlite.path_from_url``);
    an in-memory database is refused: the broker is shared by processes."""
    path = sqlite.path_from_url(url, "broker")
    if path == sqlite.MEMORY or path.startswith("file:"):
        raise ConfigurationError(
            "the SQLite broker needs a file shared by its processes; use memory:// for an "
            "in-process broker"
        )
    return path


def _translate(exc: Exception, doing: str) -> BrokerError:
    text = f"SQLite broker failed to {doing}: {exc}"
    if isinstance(exc, OSError) or (
        isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc)
    ):
        return BrokerConnectionError(text)
    return BrokerError(text)


def _delivery(row: tuple[Any, ...]) -> Delivery:
    mid, queue, priority, deliveries, body, ctype, cenc, headers, props = row
    envelope = Envelope(body, ctype, cenc, orjson.loads(headers), orjson.loads(props))
    return Delivery(envelope, queue, mid, deliveries, priority)


class SQLiteBroker:
    """A durable broker in one SQLite file; see the module docstring."""

    def __init__(
        self,
        url: str = "sqlite://",
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        **options: Any,
    ) -> None:
        opts = resolve_options(
            {"lease_seconds": lease_seconds, "poll_interval": poll_interval, **options},
            {
                "lease_seconds": DEFAULT_LEASE_SECONDS,
                "poll_interval": DEFAULT_POLL_INTERVAL,
                "busy_timeout": DEFAULT_BUSY_TIMEOUT,
            },
            "SQLiteBroker",
        )
        self.url = url
        self.path = path_from_url(url)
        where = "SQLiteBroker"
        self.lease_seconds = positive_seconds(opts["lease_seconds"], "lease_seconds", where)
        self.poll_interval = positive_seconds(opts["poll_interval"], "poll_interval", where)
        self.busy_timeout = positive_seconds(opts["busy_timeout"], "busy_timeout", where)
        self._db: Database | None = None
        self._notifier: Notifier | None = None
        self._listener: Listener | None = None
        self._listener_loop: asyncio.AbstractEventLoop | None = None
        self._take_sql: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"<SQLiteBroker {self.url!r}>"

    # -- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        if self._db is not None:
            return
        db = await Database.open(
            self.path, busy_timeout=self.busy_timeout, translate=_translate, schema=_SCHEMA
        )
        if self._db is not None:  # another coroutine connected meanwhile
            db.close()
            return
        self._db = db
        self._notifier = Notifier(channel_directory(self.path, "broker"))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = self._listener_loop = None
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(BrokerError):
                db.close()

    def _database(self) -> Database:
        db = self._db
        if db is None:
            raise BrokerConnectionError(f"{self!r} is not connected (call connect() first)")
        return db

    def _notify(self) -> None:
        if self._notifier is not None:
            self._notifier.notify()

    # -- the contract -------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        now = time.time()
        rows = [
            (
                out.queue,
                clamp_priority(out.priority),
                0 if out.not_before is not None and out.not_before > now else 1,
                out.not_before or 0.0,
                out.envelope.body,
                out.envelope.content_type,
                out.envelope.content_encoding,
                orjson.dumps(out.envelope.headers),
                orjson.dumps(out.envelope.properties),
            )
            for out in messages
        ]
        database = self._database()
        if len(rows) == 1:
            # autocommit: one statement, one transaction
            await database.write("publish", lambda db: db.execute(_INSERT, rows[0]), transaction=False)
        else:
            await database.write("publish", lambda db: db.executemany(_INSERT, rows))
        self._notify()

    async def _take(self, queues: Sequence[str], max_count: int) -> list[Delivery]:
        now = time.time()
        n = len(queues)
        if n == 0:
            return []
        if n == 1:
            sql, params = _TAKE_ONE_QUEUE, (now + self.lease_seconds, queues[0], max_count)
        else:
            sql = self._take_sql.get(n) or self._take_sql.setdefault(n, _take_many_queues(n))
            args: list[Any] = [now + self.lease_seconds]
            for q in queues:
                args += (q, max_count)
            args.append(max_count)
            params = tuple(args)

        def take(db: sqlite3.Connection) -> list[Any]:
            db.execute(_PROMOTE, (now,))
            return db.execute(sql, params).fetchall()

        rows = await self._database().write("fetch", take)
        if not rows:
            return []
        # RETURNING gives rows in no promised order: restore queue order, priority, FIFO.
        if n == 1:
            rows.sort(key=lambda r: (-r[2], r[0]))
        else:
            pos = {name: i for i, name in reversed(list(enumerate(queues)))}
            rows.sort(key=lambda r: (pos[r[1]], -r[2], r[0]))
        return [_delivery(r) for r in rows]

    async def _next_due_in(self) -> float | None:
        due = await self._database().read("fetch", lambda db: db.execute(_NEXT_DUE).fetchone()[0])
        return None if due is None else float(due) - time.time()

    def _listener_for_loop(self) -> Listener:
        loop = asyncio.get_running_loop()
        if self._listener is None or self._listener_loop is not loop:
            if self._listener is not None:
                self._listener.close()
            self._listener = Listener(channel_directory(self.path, "broker"))
            self._listener_loop = loop
        return self._listener

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        check_fetch_args(queues, max_count)
        deadline = time.monotonic() + max(timeout, 0.0)
        listener: Listener | None = None
        while True:
            if listener is not None:
                listener.arm()  # arm -> query -> wait: a commit after the query wakes us
            got = await self._take(queues, max_count)
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if listener is None:
                listener = self._listener_for_loop()
                continue  # look once more, now armed
            next_due_in = await self._next_due_in()
            await listener.wait(idle_wait(remaining, next_due_in, self.poll_interval))

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        tags = [d.tag for d in deliveries]

        def delete(db: sqlite3.Connection) -> None:
            for i in range(0, len(tags), _CHUNK):
                chunk = tags[i : i + _CHUNK]
                db.execute(
                    f"DELETE FROM celeriac_messages WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )

        await self._database().write("ack", delete)

    def _fenced(
        self,
        db: sqlite3.Connection,
        set_sql: str,
        head: tuple[Any, ...],
        deliveries: Sequence[Delivery],
    ) -> int:
        """Run ``UPDATE ... SET <set_sql>`` on the messages still held by ``deliveries``."""
        changed = 0
        pairs = [(d.tag, d.deliveries) for d in deliveries]
        step = _CHUNK // 2
        for i in range(0, len(pairs), step):
            chunk = pairs[i : i + step]
            values = ",".join("(?,?)" for _ in chunk)
            flat = [x for pair in chunk for x in pair]
            cur = db.execute(
                f"UPDATE celeriac_messages SET {set_sql}"
                f" WHERE (id, deliveries) IN (VALUES {values})",
                (*head, *flat),
            )
            changed += cur.rowcount
        return changed

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        changed = await self._database().write(
            "requeue", lambda db: self._fenced(db, "ready = 1, visible_at = 0", (), deliveries)
        )
        if changed:
            self._notify()

    async def defer(self, delivery: Delivery, not_before: float) -> None:
        """Send a held message back to wait until ``not_before`` (see ``base.Defers``): one
        UPDATE makes its row a delayed one (not ready, visible at ``not_before``), its take
        not counted as a delivery. A delivery no longer held (its lease lapsed and it was
        taken again) changes nothing."""
        changed = await self._database().write("defer", lambda db: self._fenced(
            db, "ready = 0, visible_at = ?, deliveries = deliveries - 1", (not_before,),
            [delivery]))
        if changed:
            self._notify()  # idle fetches work out the next due time again

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        until = time.time() + self.lease_seconds
        # ready = 0 also takes back a lapsed lease that nobody has taken since.
        await self._database().write(
            "renew", lambda db: self._fenced(db, "ready = 0, visible_at = ?", (until,), deliveries)
        )

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        env = delivery.envelope
        now = time.time()

        def move(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO celeriac_dead_letters (message_id, queue, priority, deliveries,"
                " body, content_type, content_encoding, headers, properties, reason, dead_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery.tag,
                    delivery.queue,
                    delivery.priority,
                    delivery.deliveries,
                    env.body,
                    env.content_type,
                    env.content_encoding,
                    orjson.dumps(env.headers),
                    orjson.dumps(env.properties),
                    str(reason),
                    now,
                ),
            )
            db.execute("DELETE FROM celeriac_messages WHERE id = ?", (delivery.tag,))

        await self._database().write("dead-letter", move)

    async def purge(self, queues: Sequence[str]) -> int:
        if not queues:
            return 0
        marks = ",".join("?" * len(queues))
        now = time.time()
        # Waiting = ready, delayed, or a lapsed lease; live leases stay with their holders.
        sql = (
            f"DELETE FROM celeriac_messages WHERE queue IN ({marks})"
            " AND (ready = 1 OR deliveries = 0 OR visible_at <= ?)"
        )
        return await self._database().write(
            "purge", lambda db: db.execute(sql, (*queues, now)).rowcount
        )

    async def queue_size(self, queue: str) -> int:
        sql = "SELECT count(*) FROM celeriac_messages WHERE queue = ?"
        row = await self._database().read(
            "count a queue", lambda db: db.execute(sql, (queue,)).fetchone()
        )
        return int(row[0])

    async def dead_letters(self, limit: int = 100) -> list[tuple[Delivery, str]]:
        sql = (
            "SELECT message_id, queue, priority, deliveries, body, content_type,"
            " content_encoding, headers, properties, reason FROM celeriac_dead_letters"
            " ORDER BY id DESC LIMIT ?"
        )
        rows = await self._database().read(
            "read dead letters", lambda db: db.execute(sql, (max(limit, 0),)).fetchall()
        )
        return [(_delivery(r[:9]), r[9]) for r in rows]

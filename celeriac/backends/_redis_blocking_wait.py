"""Waiting for a result from sync code on a blocking connection: ``delay().get()``.

The async wait (``RedisBackend.wait``) takes a GET, a SUBSCRIBE, its confirmation and a second
read, each handed between tasks of an event loop: about half a millisecond of CPU per ``get()``,
more than Redis needs to run the task's whole round trip. A caller with no loop running waits
here instead, on one blocking connection of its own that speaks RESP3 (Redis 6 and later):

* ``UNSUBSCRIBE`` of the last wait's channel, ``SUBSCRIBE`` of this one, and ``GET`` of the key
  go out in one write, on that one connection. Redis runs a connection's commands in order, so
  the GET runs once the subscription is live: a result stored before is read by it, one
  stored after is published to us. RESP3 is what allows a GET on a subscribed connection.
* Then the socket is read until the channel brings a ready state.
* Each read first asks the socket without blocking, for up to ``spin`` seconds, before it
  sleeps (``celeriac.utils.spin``): a short task's result is then taken without the kernel's
  wake-up, which on a small VM costs about a tenth of the whole round trip. The replies to the
  subscription and the result itself are timed apart, so long tasks stop the result's spin
  without stopping the replies'.
* A connection silent for ``ping_interval`` is PINGed, and one silent for two intervals is
  replaced, as the listener does. A connection lost while waiting is opened again (with a
  growing pause, until the caller's timeout) and the wait starts over on it.

A server that refuses RESP3 (Redis 5) makes ``wait`` raise ``Unsupported``: the backend then
waits the async way.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from celeriac.backends.base import Meta
from celeriac.utils import forks
from celeriac.utils.redis_pipeline import new_reader, pack, raw_connection
from celeriac.utils.spin import SpinReceiver

log = logging.getLogger("celeriac.backends.redis")

class Unsupported(Exception):
    """The server cannot do this wait (no RESP3: before Redis 6)."""


class _Expired(Exception):
    """The caller's timeout passed."""


#: the first pause before opening a lost connection again (doubled up to 2 s)
FIRST_PAUSE = 0.05


class _Connection:
    """A subscribed-or-not RESP3 connection, and the replies it still owes.

    Subscribing and unsubscribing are confirmed by pushes; a GET and a PING each owe one
    reply, in the order they were sent (``owed``). An error reply, whatever it answers, ends
    the connection's use: the caller drops it.
    """

    def __init__(self, pool: redis.ConnectionPool, send_timeout: float | None,
                 spin: float) -> None:
        self.conn, self.sock = raw_connection(pool)
        self.send_timeout = send_timeout
        self.replies = SpinReceiver(spin)  # reads for the replies to a wait's commands
        self.results = SpinReceiver(spin)  # reads for the result, after them
        self.reader: hiredis.Reader = new_reader()
        self.channel: str | None = None  # subscribed by the last wait, unsubscribed by the next
        self.owed: deque[str] = deque()  # "GET" / "PING": the replies still to come, in order
        self.last_data = time.monotonic()  # data received, or a command sent

    def send(self, *commands: tuple[Any, ...]) -> None:
        self.sock.settimeout(self.send_timeout)
        try:
            self.sock.sendall(pack(commands))
        except TimeoutError:
            raise RedisTimeoutError("timed out writing to the server") from None
        self.owed.extend(c[0] for c in commands if c[0] in ("GET", "PING"))
        self.last_data = time.monotonic()  # silence counts from here: not time spent idle

    def next(self, until: float, ping_interval: float, receiver: SpinReceiver) -> Any:
        """The next reply or push, read with ``receiver``; raises ``_Expired`` at ``until``
        (monotonic), and ``RedisTimeoutError`` once the server is silent for two ping
        intervals."""
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            now = time.monotonic()
            silent = now - self.last_data
            pinged = "PING" in self.owed
            if silent >= ping_interval and not pinged:
                self.send(("PING",))
                continue
            if pinged and silent >= ping_interval:
                raise RedisTimeoutError(f"no reply to PING for {silent:.1f} s")
            wake = min(until, self.last_data + ping_interval)
            if wake <= now:
                if until <= now:
                    raise _Expired
                continue
            self.sock.settimeout(wake - now)
            try:
                data = receiver.recv(self.sock, 65536, not self.reader.has_data())
            except TimeoutError:
                continue
            if not data:
                raise RedisConnectionError("connection closed by the server")
            self.last_data = time.monotonic()
            self.reader.feed(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.disconnect()


class BlockingResultWaiter:
    """Waits for one task's result at a time, on a blocking connection (one per thread).

    ``ready(blob, strict)`` is the backend's reading of a stored or published meta: the meta
    if its state is ready, else None; ``strict``: a blob that cannot be read raises (a
    stored one, as a GET would) rather than being passed over (a published one).
    """

    def __init__(self, url: str, pool_options: dict[str, Any], ping_interval: float,
                 ready: Callable[[bytes, bool], Meta | None], client_name: str,
                 spin: float = 0.0) -> None:
        options = {k: v for k, v in pool_options.items()
                   if k not in ("retry", "retry_on_error", "max_connections")}
        options.update(protocol=3, health_check_interval=0, client_name=client_name)
        self._pool = redis.ConnectionPool.from_url(url, **options)
        self._send_timeout: float | None = options.get("socket_timeout")
        self._ping_interval = ping_interval
        self._spin = spin
        self._ready = ready
        self._local = threading.local()
        self._forks = forks.generation()
        self._open: set[_Connection] = set()
        self._lock = threading.Lock()
        self.supported = True

    def wait(self, key: str, timeout: float | None) -> Meta | None:
        """The ready meta stored under ``key`` (published on the channel of that name), None
        once ``timeout`` seconds pass; ``Unsupported`` if the server cannot.

        Until the first GET is answered, what goes wrong on a new connection is raised (the
        caller maps it), as the async GET would; a connection kept from an earlier wait that
        fails then (Redis restarted, or it closed the connection) is replaced at once, and a
        connection lost after the GET is opened again until the timeout."""
        until = float("inf") if timeout is None else time.monotonic() + max(timeout, 0.0)
        subscribed = False
        pause = FIRST_PAUSE
        while True:
            conn: _Connection | None = None
            fresh = True
            try:
                conn, fresh = self._connection()
                found = self._subscribe(conn, key, until)
                subscribed = True
                return found if found is not None else self._listen(conn, key, until)
            except _Expired:
                if conn is not None:
                    self._drop(conn)  # a reply may still be on its way: out of step
                return None
            except (RedisError, OSError) as exc:
                if conn is not None:
                    self._drop(conn)
                if not subscribed:
                    if fresh:
                        raise
                    continue  # an old connection that went away while idle: a new one
                if time.monotonic() + pause >= until:
                    return None
                log.warning("redis result wait: %s; reconnecting in %.2f s",
                            str(exc) or type(exc).__name__, pause)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
            except BaseException:
                if conn is not None:
                    self._drop(conn)  # interrupted mid-read: replies may be left unread
                raise

    def _subscribe(self, conn: _Connection, key: str, until: float) -> Meta | None:
        """Subscribe to ``key``'s channel and read the key, in one round trip: the ready
        meta either brings, or None."""
        commands: list[tuple[Any, ...]] = []
        if conn.channel is not None and conn.channel != key:
            commands.append(("UNSUBSCRIBE", conn.channel))
        commands += [("SUBSCRIBE", key), ("GET", key)]
        conn.send(*commands)
        conn.channel = key
        found: Meta | None = None
        while True:  # up to the GET's reply; pushes (confirmations, a message) come between
            reply = conn.next(until, self._ping_interval, conn.replies)
            if type(reply) is hiredis.PushNotification:
                found = found or self._published(reply, key)
            elif isinstance(reply, Exception):
                raise reply  # refused (NOPERM on the channel...): the caller drops the connection
            elif conn.owed.popleft() == "GET":
                break
        if found is None and reply is not None:
            found = self._ready(reply, True)
        return found

    def _listen(self, conn: _Connection, key: str, until: float) -> Meta:
        """Read the subscribed connection until ``key``'s channel brings a ready state."""
        while True:
            reply = conn.next(until, self._ping_interval, conn.results)
            if type(reply) is hiredis.PushNotification:
                found = self._published(reply, key)
                if found is not None:
                    return found
            elif isinstance(reply, Exception):
                raise reply
            else:
                conn.owed.popleft()  # a PONG

    def _published(self, push: list[Any], key: str) -> Meta | None:
        """The ready meta a push brings on ``key``'s channel; None for anything else."""
        if len(push) == 3 and push[0] == b"message" and push[1] == key.encode():
            return self._ready(push[2], False)
        return None

    def _connection(self) -> tuple[_Connection, bool]:
        """This thread's connection, and whether it is new; ``Unsupported`` without RESP3."""
        if self._forks != forks.generation():
            # forked: the sockets are the parent's (leave them be)
            self._local = threading.local()
            self._open = set()
            self._lock = threading.Lock()
            self._forks = forks.generation()
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, False
        if not self.supported:
            raise Unsupported("the server speaks no RESP3")
        try:
            conn = _Connection(self._pool, self._send_timeout, self._spin)
        except ResponseError as exc:
            if "HELLO" not in str(exc).upper():
                raise
            self.supported = False  # a server before Redis 6: no RESP3
            raise Unsupported("the server speaks no RESP3") from None
        self._local.conn = conn
        with self._lock:
            self._open.add(conn)
        return conn, True

    def _drop(self, conn: _Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            conn.close()
        self._local = threading.local()
        self._pool.disconnect()

"""One Redis connection carrying many callers' commands, pipelined (see ``Pipeline``).

The broker sends its takes, acks, renewals and publishes on one; the result backend its stores.
A command goes on the socket at once, without waiting for earlier replies, and its reply is
parsed with hiredis straight from the connection's stream: a round trip costs the network and
Redis, plus a few microseconds here (redis-py's client adds a pool lock, a health check and a
timeout to each command).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from hashlib import sha1
from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from celeriac.utils.redis_urls import drop_connection

__all__ = ["Orphaned", "Pipeline", "ScriptCall", "Sent", "first_error", "new_reader", "pack",
           "raw_connection", "script_shas"]

log = logging.getLogger("celeriac.redis")

pack_command = hiredis.pack_command
#: what an unconfirmed or refused fire-and-forget script (a broker's ack) means
_LAPSE_HINT = "its messages return after their lease"


#: seconds a fire-and-forget script refused by a Redis not serving yet is sent again
REFUSED_RETRY_FOR = 60.0


def script_shas(scripts: dict[str, str]) -> dict[str, str]:
    """The SHA1 of each script, as ``EVALSHA`` names it."""
    return {name: sha1(lua.encode()).hexdigest() for name, lua in scripts.items()}


def pack(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """``commands`` in RESP, ready for one write."""
    if len(commands) == 1:
        packed: bytes = pack_command(commands[0])
        return packed
    return b"".join([pack_command(c) for c in commands])


def new_reader() -> hiredis.Reader:
    """A reply parser whose error replies come out as redis-py's exceptions (not raised)."""
    return hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)


def raw_connection(pool: redis.ConnectionPool) -> tuple[Any, socket.socket]:
    """A new connection from redis-py's sync ``pool`` (TLS, AUTH, SELECT, HELLO and the client
    name done), and its socket, for a client that reads and writes the socket itself."""
    conn: Any = pool.get_connection()
    sock = getattr(conn, "_sock", None)
    if not isinstance(sock, socket.socket):
        conn.disconnect()
        raise RedisConnectionError("redis-py connection without a socket")
    return conn, sock


def first_error(replies: Sequence[Any]) -> RedisError | None:
    """The first error reply. Every kind counts: redis-py types ``-LOADING`` (a restarted
    Redis reading its data back) and ``-NOAUTH`` as ConnectionErrors, not ResponseErrors."""
    for reply in replies:
        if isinstance(reply, RedisError):
            return reply
    return None


#: a script and its arguments: (name, keys, args)
ScriptCall = tuple[str, Sequence[Any], Sequence[Any]]
#: given the replies of a command whose caller was cancelled before they came, the script
#: that undoes what it did (a take's messages given back), or None
Orphaned = Callable[[list[Any]], ScriptCall | None]


class Sent:
    """Commands written to the pipelined connection whose replies are not all read yet."""

    __slots__ = ("commands", "evaled", "future", "on_orphan", "refusals", "refused_since",
                 "replies", "script", "unconfirmed")

    def __init__(self, commands: list[tuple[Any, ...]], future: asyncio.Future[Any] | None,
                 script: ScriptCall | None = None, on_orphan: Orphaned | None = None) -> None:
        self.commands = commands
        self.future = future  # None: nobody waits (a pipelined ack)
        self.replies: list[Any] = []
        self.script = script  # (name, keys, args) of a lone EVALSHA, for NOSCRIPT
        self.evaled = False  # sent again as EVAL after NOSCRIPT
        self.unconfirmed = 0  # connections lost while it was on the wire
        self.refusals = 0  # times refused by a Redis not serving yet (-LOADING)
        self.refused_since: float | None = None
        #: for a reply whose caller was cancelled meanwhile: the script that undoes it
        self.on_orphan = on_orphan


class Pipeline:
    """One connection that carries every non-blocking command of a broker (or of a result
    backend), pipelined.

    Writers put their bytes on the socket at once (no lock, no waiting for an earlier reply)
    and, if they want the reply, await a future; one reader task reads the replies in order
    while anything is outstanding and hands each to its writer. Redis runs one connection's
    commands in the order sent, so whatever a caller sends after an ack sees the ack applied.

    ``script(wait=False)`` returns once the bytes are written to the socket (see "Pipelined
    acks" in ``celeriac.brokers.redis``). NOSCRIPT is answered by sending the script itself (EVAL). A lost
    connection fails the awaited commands (their callers retry once) and keeps the unawaited
    ones to be sent again, once, first thing on the next connection.
    """

    RESEND_LIMIT = 100_000  # unconfirmed acks kept for the next connection

    def __init__(self, pool: aioredis.ConnectionPool, scripts: dict[str, str], *,
                 closed_error: str = "the broker is closed") -> None:
        self._pool = pool
        self._scripts = scripts
        self._shas = script_shas(scripts)
        self._closed_error = closed_error
        self._conn: AbstractConnection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[Sent] = deque()
        self._resend: list[Sent] = []
        self._reader: asyncio.Task[None] | None = None
        self._emptied: asyncio.Event | None = None  # set when nothing is awaited (close)
        self._progress = 0.0  # monotonic time of the last reply read (or first one awaited)
        timeout = pool.connection_kwargs.get("socket_timeout")
        self._reply_timeout: float | None = float(timeout) if timeout else None
        self._watchdog: asyncio.Handle | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._drops: set[asyncio.Task[None]] = set()

    # -- writing ---------------------------------------------------------------------------

    async def call(self, *args: Any) -> Any:
        """One command; its reply."""
        return (await self.calls([args]))[0]

    async def calls(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands in one write; their replies (the first error reply raises)."""
        return await self._ask(commands, None)

    async def script(self, name: str, keys: Sequence[Any], args: Sequence[Any],
                     *, wait: bool = True, on_orphan: Orphaned | None = None) -> Any:
        """EVALSHA ``name`` (EVAL on NOSCRIPT); ``wait=False``: return once written.
        ``on_orphan``: see ``Sent``."""
        if not wait:
            await self._write(self._script_sent(name, keys, args))
            return None
        return (await self._ask([self.script_command(name, keys, args)], (name, keys, args),
                                on_orphan))[0]

    def script_command(self, name: str, keys: Sequence[Any], args: Sequence[Any]
                       ) -> tuple[Any, ...]:
        """The EVALSHA command of ``name``, to send on another connection."""
        return ("EVALSHA", self._shas[name], len(keys), *keys, *args)


    def _script_sent(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Sent:
        """An EVALSHA nobody waits for (pipelined, as an ack)."""
        return Sent([self.script_command(name, keys, args)], None, (name, keys, args))

    async def _ask(self, commands: list[tuple[Any, ...]], script: ScriptCall | None,
                   on_orphan: Orphaned | None = None) -> list[Any]:
        """Send and wait for the replies; a connection lost before they came is reopened and
        the commands sent once more (Redis may have applied them: a publish may then be
        queued twice, a take's messages wait for their lease)."""
        for attempt in (0, 1):
            fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            try:
                try:
                    await self._write(Sent(commands, fut, script, on_orphan))
                except BaseException:
                    if fut.done() and not fut.cancelled():
                        fut.exception()  # settled by the same failure: retrieved here
                    else:
                        fut.cancel()  # cancelled while the bytes were going out: see _settle
                    raise
                return await fut
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _write(self, sent: Sent) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            writer = await self._open()
        self._put(writer, sent)
        try:
            await writer.drain()  # returns at once unless the socket's buffer is full
        except (ConnectionError, OSError) as exc:  # the connection is gone: Redis never got it
            self._lost(writer, exc)
            raise RedisConnectionError(f"Error while writing to Redis: {exc}") from exc

    def _put(self, writer: asyncio.StreamWriter, sent: Sent) -> None:
        """Write ``sent`` now (no await: writes go out in the order of the pending queue)."""
        conn = self._conn
        assert conn is not None
        pending = self._pending
        if not pending:
            self._progress = time.monotonic()  # replies are awaited from now on
        pending.append(sent)
        writer.write(pack(sent.commands))
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(conn, writer))
        if self._watchdog is None and self._reply_timeout:
            self._watchdog = asyncio.get_running_loop().call_later(
                self._reply_timeout, self._check_progress, writer)

    def _check_progress(self, writer: asyncio.StreamWriter, confirm: bool = False) -> None:
        """No reply for ``socket_timeout`` seconds while some are awaited: the connection is
        dropped (the reader then settles what was on it), as a blocked read would time out.

        Silence is confirmed one loop turn later (``confirm``): after the loop was held (a
        task on the solo pool), this timer runs in the same turn as the socket's read event,
        before the reader has had its turn to take the replies that did come."""
        self._watchdog = None
        limit = self._reply_timeout
        if self._writer is not writer or not self._pending or limit is None:
            return
        loop = asyncio.get_running_loop()
        silent = time.monotonic() - self._progress
        if silent < limit:
            self._watchdog = loop.call_later(limit - silent, self._check_progress, writer)
        elif not confirm:
            self._watchdog = loop.call_soon(self._check_progress, writer, True)
        else:
            self._lost(writer, RedisTimeoutError(f"no reply from Redis for {silent:.1f} s"))

    async def _open(self) -> asyncio.StreamWriter:
        async with self._opening:
            writer = self._writer
            if writer is not None and not writer.transport.is_closing():
                return writer
            if writer is not None:
                self._lost(writer, RedisConnectionError("connection closed by the server"))
            if self._closed:
                raise RedisConnectionError(self._closed_error)
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            writer = getattr(conn, "_writer", None)
            if not isinstance(writer, asyncio.StreamWriter):  # not a socket connection
                await self._pool.release(conn)
                raise RedisConnectionError("redis-py connection without a stream writer")
            self._conn, self._writer = conn, writer
            # Scripts first: an EVALSHA refused with NOSCRIPT is sent again as EVAL, but
            # behind whatever was sent meanwhile (an ack would land after a later read).
            self._put(writer, Sent([("SCRIPT", "LOAD", lua) for lua in self._scripts.values()],
                                    None))
            resend, self._resend = self._resend, []
            for sent in resend:  # acks whose replies never came: once more (they are idempotent)
                self._put(writer, sent)
            return writer

    # -- reading ---------------------------------------------------------------------------

    async def _read(self, conn: AbstractConnection, writer: asyncio.StreamWriter) -> None:
        """Read the replies of this connection for as long as it lives.

        One reader task per connection, parsing with hiredis straight from the connection's
        stream (redis-py's ``read_response`` would open a timeout per reply; the watchdog of
        ``_put`` bounds the wait instead). Redis sends nothing unasked on this connection, so
        while nothing is awaited the read simply waits."""
        stream = getattr(conn, "_reader", None)
        parser = new_reader()
        try:
            if not isinstance(stream, asyncio.StreamReader):
                raise RedisConnectionError("redis-py connection without a stream reader")
            while self._writer is writer:
                reply = parser.gets()
                if reply is False:
                    data = await stream.read(65536)
                    if not data:
                        raise RedisConnectionError("connection closed by the server")
                    self._progress = time.monotonic()
                    parser.feed(data)
                    continue
                pending = self._pending
                if not pending:
                    raise InvalidResponse(f"a reply nobody asked for: {reply!r}")
                head = pending[0]
                head.replies.append(reply)
                if len(head.replies) == len(head.commands):
                    pending.popleft()
                    self._settle(writer, head)
                    if not pending and self._emptied is not None:
                        self._emptied.set()
        except (RedisError, OSError) as exc:
            self._lost(writer, exc)
        except BaseException as exc:  # cancelled (closing), or a bug: the stream is unusable
            self._lost(writer, RedisConnectionError(f"reading replies stopped: {exc!r}"))
            raise
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    def _settle(self, writer: asyncio.StreamWriter, sent: Sent) -> None:
        error = first_error(sent.replies)
        if isinstance(error, NoScriptError) and sent.script is not None and not sent.evaled:
            name, keys, args = sent.script  # a new or restarted Redis: send the script itself
            sent.commands = [("EVAL", self._scripts[name], len(keys), *keys, *args)]
            sent.replies = []
            sent.evaled = True
            self._put(writer, sent)
            return
        fut = sent.future
        if fut is not None and fut.cancelled():
            undo = sent.on_orphan(sent.replies) if error is None and sent.on_orphan else None
            if undo is not None:  # its caller is gone (a fetch cancelled at shutdown)
                self._put(writer, self._script_sent(*undo))
        elif fut is None:
            if isinstance(error, RedisConnectionError) and sent.script is not None \
                    and self._send_again_later(sent):
                return
            if error is not None and sent.script is None:
                log.debug("a pipelined command was refused by Redis: %s", error)
            elif error is not None:
                log.warning("a pipelined %s was refused by Redis (%s); %s", _what(sent), error,
                            _LAPSE_HINT)
        elif not fut.done():
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(sent.replies)

    def _send_again_later(self, sent: Sent) -> bool:
        """A script nobody waits for (an ack) refused by a Redis that does not serve yet
        (``-LOADING``: restarted, reading its data back; it applied nothing): send it again
        after a pause, doubling up to a second, for ``REFUSED_RETRY_FOR`` seconds. An ack is
        idempotent; dropping it would run its task again once its lease lapses."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if sent.refused_since is None:
            sent.refused_since = now
        if self._closed or now - sent.refused_since > REFUSED_RETRY_FOR:
            return False
        pause = min(0.05 * 2 ** sent.refusals, 1.0)
        sent.refusals += 1
        sent.replies = []
        loop.call_later(pause, self._send_again, sent)
        return True

    def _send_again(self, sent: Sent) -> None:
        writer = self._writer
        if self._closed:
            log.warning("a pipelined %s refused by Redis was not sent again before closing; %s",
                        _what(sent), _LAPSE_HINT)
        elif writer is None or writer.transport.is_closing():
            self._resend.append(sent)  # first thing on the next connection
        else:
            self._put(writer, sent)

    def _lost(self, writer: asyncio.StreamWriter, exc: BaseException) -> None:
        """The connection behind ``writer`` is gone: settle what was on it."""
        if self._writer is not writer:
            return  # already handled
        conn = self._conn
        self._conn = self._writer = None
        self._reader = None  # the old one ends on its own
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self._pending = self._pending, deque()
        for sent in pending:
            if sent.future is not None:
                if not sent.future.done():
                    sent.future.set_exception(
                        exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc)))
            elif sent.unconfirmed == 0 and len(self._resend) < self.RESEND_LIMIT:
                sent.unconfirmed = 1
                sent.replies = []
                self._resend.append(sent)
            else:
                log.warning("a pipelined %s was not confirmed (%s); if Redis did not apply it, "
                            "%s", _what(sent), exc, _LAPSE_HINT)
        if conn is not None:
            task = asyncio.get_running_loop().create_task(self._drop(conn))
            self._drops.add(task)
            task.add_done_callback(self._drops.discard)

    async def _drop(self, conn: AbstractConnection) -> None:
        await drop_connection(self._pool, conn)

    async def close(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds for outstanding replies (the last acks' among
        them), then close."""
        reader = self._reader
        if reader is not None and not reader.done() and self._pending:
            self._emptied = emptied = asyncio.Event()
            waiting = asyncio.ensure_future(emptied.wait())
            await asyncio.wait([reader, waiting], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
        self._closed = True
        reader, self._reader = self._reader, None
        writer = self._writer
        if writer is not None:
            self._lost(writer, RedisConnectionError(self._closed_error))
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if self._drops:
            await asyncio.gather(*self._drops, return_exceptions=True)
        for sent in self._resend:
            log.warning("a pipelined %s was not confirmed before closing; if Redis did not "
                        "apply it, %s", _what(sent), _LAPSE_HINT)
        self._resend = []


def _what(sent: Sent) -> str:
    return f"{sent.script[0]} of {len(sent.script[2])} message(s)" if sent.script else "command"

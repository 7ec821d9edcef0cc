"""A blocking Redis connection for publishing from sync code.

``delay()`` from a script or a web view has no event loop running; driving one per call (a task,
a loop turn, ``epoll``, a reader task) costs more than the round trip to Redis itself. This
client sends the same commands the async path would, on one blocking connection of its own:
redis-py opens it (TLS, a unix socket, AUTH, SELECT, the client name), then each publish is
one ``sendall`` of commands packed by hiredis and ``recv``\\s parsed by a hiredis reader,
nothing else in between (redis-py's ``read_response`` adds about 20 µs a call).

The reply is first awaited on the CPU for up to ``reply_spin`` seconds (a broker option,
200 µs by default), then in ``recv``: on a small VM the kernel's wake-up of a sleeping thread
costs about as much as Redis's whole round trip (``celeriac.utils.spin``).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from celeriac.utils import forks
from celeriac.utils.redis_pipeline import first_error, new_reader, pack, raw_connection
from celeriac.utils.spin import SpinReceiver


class BlockingClient:
    """Runs a list of commands in one round trip on one blocking connection."""

    def __init__(self, url: str, pool_options: dict[str, Any], reply_spin: float = 0.0) -> None:
        """``pool_options``: the async pool's; its ``retry`` (an asyncio one) is left out:
        the caller retries (``Celeriac.publish_sync``), reconnecting on the next call.
        ``reply_spin``: seconds to wait for a reply on the CPU before sleeping
        (``SpinReceiver``)."""
        options = {k: v for k, v in pool_options.items() if k not in ("retry", "retry_on_error")}
        self._pool = redis.ConnectionPool.from_url(url, **options)
        self._conn: Any = None
        self._sock: socket.socket | None = None
        self._reader: hiredis.Reader | None = None
        self._forks = forks.generation()
        self._lock = threading.Lock()
        timeout = options.get("socket_timeout")  # the kernel's: the spin stays within it
        self._receiver = SpinReceiver(min(reply_spin, timeout) if timeout else reply_spin)

    def run(self, ops: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``ops``, sent together; the first error reply raises once every
        reply is read (the connection stays in step)."""
        if self._forks != forks.generation():
            # forked: the socket is the parent's (leave it be), and the lock may have been
            # held by a parent thread that does not exist here
            self._lock = threading.Lock()
            self._conn = self._sock = self._reader = None
            self._forks = forks.generation()
        with self._lock:
            if self._sock is None:
                self._open()
            sock, reader = self._sock, self._reader
            assert sock is not None and reader is not None
            try:
                sock.sendall(pack(ops))
                replies: list[Any] = []
                while len(replies) < len(ops):
                    reply = reader.gets()
                    if reply is False:
                        data = self._receiver.recv(sock, 65536, not reader.has_data())
                        if not data:
                            raise RedisConnectionError("connection closed by the server")
                        reader.feed(data)
                    else:
                        replies.append(reply)
            except BlockingIOError as exc:  # the kernel's timeout (see _kernel_timeouts)
                self._drop()
                raise TimeoutError("timed out") from exc
            except BaseException:
                # a lost connection, or anything raised between two reads (a soft time
                # limit's signal): replies may be left unread, so the connection goes
                self._drop()
                raise
        error = first_error(replies)  # -LOADING among them: the caller retries
        if error is not None:
            raise error
        return replies

    def _open(self) -> None:
        conn, sock = raw_connection(self._pool)
        _kernel_timeouts(sock)
        self._conn, self._sock = conn, sock
        self._reader = new_reader()

    def _drop(self) -> None:
        conn, self._conn, self._sock, self._reader = self._conn, None, None, None
        if conn is not None:
            conn.disconnect()

    def close(self) -> None:
        with self._lock:
            self._conn = self._sock = self._reader = None
            self._pool.disconnect()


def _kernel_timeouts(sock: socket.socket) -> None:
    """Leave a plain TCP or unix socket's timeout to the kernel (``SO_SNDTIMEO`` and
    ``SO_RCVTIMEO``) and make it blocking in Python's eyes.

    With a timeout of its own, CPython polls a socket before every send and every receive:
    two more system calls a publish, for nothing on a connection only this client uses. The
    kernel bounds each wait rather than a whole ``sendall`` (a send that keeps making progress
    in pieces may take longer in all); a wait that runs out raises ``BlockingIOError``
    (EAGAIN), which ``run`` turns into ``TimeoutError``. TLS sockets and Windows keep
    Python's timeout.
    """
    timeout = sock.gettimeout()
    if not timeout or type(sock) is not socket.socket or sys.platform == "win32":
        return
    seconds = int(timeout)
    micros = int((timeout - seconds) * 1_000_000)
    if seconds == 0 and micros == 0:
        micros = 1  # an all-zero timeval means no timeout at all
    value = struct.pack("ll", seconds, micros)  # struct timeval
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.settimeout(None)

"""A blocking Redis connection for publishing from sync code.

``delay()`` from a script or a web view has no event loop running; driving one per call (a task,
a loop turn, ``epoll``, a reader task) costs more than the round trip to Redis itself. This
client sends the same commands the async path would, on one blocking connection of its own:
redis-py opens it (TLS, a unix socket, AUTH, SELECT, the client name), then each publish is
one ``sendall`` of commands packed by hiredis and ``recv``\\s parsed by a hiredis reader,
nothing else in between (redis-py's ``read_response`` adds about 20 µs a call).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from celeriac.utils.redis_pipeline import first_error, new_reader, pack


class BlockingClient:
    """Runs a list of commands in one round trip on one blocking connection."""

    def __init__(self, url: str, pool_options: dict[str, Any]) -> None:
        """``pool_options``: the async pool's; its ``retry`` (an asyncio one) is left out:
        the caller retries (``Celeriac.publish_sync``), reconnecting on the next call."""
        options = {k: v for k, v in pool_options.items() if k not in ("retry", "retry_on_error")}
        self._pool = redis.ConnectionPool.from_url(url, **options)
        self._conn: Any = None
        self._sock: socket.socket | None = None
        self._reader: hiredis.Reader | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def run(self, ops: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``ops``, sent together; the first error reply raises once every
        reply is read (the connection stays in step)."""
        if self._pid != os.getpid():
            # forked: the socket is the parent's (leave it be), and the lock may have been
            # held by a parent thread that does not exist here
            self._lock = threading.Lock()
            self._conn = self._sock = self._reader = None
            self._pid = os.getpid()
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
                        data = sock.recv(65536)
                        if not data:
                            raise RedisConnectionError("connection closed by the server")
                        reader.feed(data)
                    else:
                        replies.append(reply)
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
        conn: Any = self._pool.get_connection()
        sock = getattr(conn, "_sock", None)
        if not isinstance(sock, socket.socket):
            conn.disconnect()
            raise RedisConnectionError("redis-py connection without a socket")
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

"""A blocking Redis connection for publishing from sync code.

``delay()`` from a script or a web view has no event loop running; driving one per call (a task,
a loop turn, ``epoll``, a reader task) costs more than the round trip to Redis itself. This
client sends the same commands the async path would, on one blocking redis-py connection of
its own (hiredis parser): one ``send`` and one ``recv`` per publish, nothing else in between.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ResponseError


class BlockingClient:
    """Runs a list of commands in one round trip on one blocking connection."""

    def __init__(self, url: str, pool_options: dict[str, Any]) -> None:
        """``pool_options``: the async pool's; its ``retry`` (an asyncio one) is left out:
        the caller retries (``Celeriac.publish_sync``), reconnecting on the next call."""
        options = {k: v for k, v in pool_options.items() if k not in ("retry", "retry_on_error")}
        self._pool = redis.ConnectionPool.from_url(url, **options)
        self._conn: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def run(self, ops: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``ops``, sent together; the first error reply raises once every
        reply is read (the connection stays in step)."""
        if self._pid != os.getpid():
            # forked: the socket is the parent's (leave it be), and the lock may have been
            # held by a parent thread that does not exist here
            self._lock = threading.Lock()
            self._conn, self._pid = None, os.getpid()
        with self._lock:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._pool.get_connection()
            try:
                packed = conn.pack_command(*ops[0]) if len(ops) == 1 else conn.pack_commands(ops)
                conn.send_packed_command(packed, check_health=False)
                replies: list[Any] = []
                for _ in ops:
                    try:
                        replies.append(conn.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
            except BaseException:
                # a lost connection, or anything raised between two reads (a soft time
                # limit's signal): replies may be left unread, so the connection goes
                self._conn = None
                conn.disconnect()
                raise
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        with self._lock:
            self._conn = None
            self._pool.disconnect()

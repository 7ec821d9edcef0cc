"""Waiting for a push to Redis lists without polling: one blocked ``BLMOVE`` per list.

``BLMOVE key key RIGHT RIGHT`` pops a list's last entry and pushes it back where it was, in one
command: the list is unchanged, nothing ever leaves Redis, and the command blocks until the
list holds an entry. It is woken by any ``LPUSH``, Celery's included.

Each watched list has its own connection and its own watch, **kept armed across waits**: a
wait that ends (a push, or the caller's timeout) leaves the other lists' watches blocked in
Redis, and the next wait re-arms only those that returned. A solo worker going idle after each
task (one round trip at a time) thus sends one ``BLMOVE`` per task, not one per list plus the
``CLIENT UNBLOCK``\\s of the others. A watch that returned before a wait starts is stale (the
caller's take, just before, has seen the list since) and is armed again: a push that landed in
between makes the new ``BLMOVE`` return at once, so no push is missed.

The server-side block is ``BLOCK_SECONDS`` (a watch nobody waits on any more, for a queue no
longer consumed, ends by itself); a lost connection fails the wait (the caller retries) and
the next wait starts a fresh watch on a new connection.

One list per wait is watched differently, with the take script behind its ``BLMOVE``
(``wait_taking``, see ``_redis_take_behind``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from celeriac.brokers._redis_take_behind import GiveBack, TakeBehind, Unblock
from celeriac.utils.redis_urls import drop_connection

#: How long one BLMOVE blocks in Redis before it returns empty (and is armed again if waited on).
BLOCK_SECONDS = 10
#: How long a watch's reply may be late beyond its block before its connection is given up.
REPLY_SECONDS = 5.0


class ListWatches:
    """The armed watches of one broker instance (one event loop)."""

    def __init__(self, pool: aioredis.ConnectionPool, unblock: Unblock,
                 give_back: GiveBack) -> None:
        self._pool = pool
        self._watches: dict[str, asyncio.Task[Any]] = {}
        self._conns: dict[str, AbstractConnection] = {}
        self._taking = TakeBehind(pool, unblock, give_back)
        self._closed = False

    async def wait_taking(self, key: str, take: tuple[Any, ...], others: Sequence[str],
                          seconds: float) -> Any:
        """Wait up to ``seconds`` for an entry in ``key`` or in one of ``others``, with the
        command ``take`` run behind ``key``'s ``BLMOVE`` (see ``_redis_take_behind``).

        Returns the take's reply once it ran (an entry landed in ``key``, another list woke,
        or the time ran out); None if it was refused (an error reply such as NOSCRIPT: the
        caller takes the usual way). A failed watch raises its error."""
        self._discard_returned(others, stale=True)
        taking = self._taking
        started = taking.start(key, take, seconds)
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            while True:
                watches = [self._arm(other) for other in others]
                left = deadline - asyncio.get_running_loop().time()
                done, _ = await asyncio.wait(
                    [started.running, *watches], return_when=asyncio.FIRST_COMPLETED,
                    timeout=max(left, 0.0) if taking.can_unblock else None)
                if started.running in done:
                    break
                if not done or self._discard_returned(others):
                    break  # the time ran out, or another list woke: end it now
                # only server-side timeouts of other lists: arm them again
            return await started.stop()
        except BaseException:
            started.abandon()
            raise

    def _arm(self, key: str) -> asyncio.Task[Any]:
        watch = self._watches.get(key)
        if watch is None:
            watch = asyncio.get_running_loop().create_task(self._watch(key))
            self._watches[key] = watch
        return watch

    def _discard_returned(self, keys: Sequence[str], *, stale: bool = False) -> bool:
        """Forget the watches of ``keys`` that returned; True if one saw an entry. A failed
        one raises its error (its connection is already dropped), unless ``stale``: it failed
        before this wait, which tries again on a new connection."""
        woke = False
        failed: BaseException | None = None
        for key in keys:
            watch = self._watches.get(key)
            if watch is None or not watch.done():
                continue
            del self._watches[key]
            if watch.cancelled():
                continue
            exc = watch.exception()
            if exc is not None:
                failed = failed or exc
            elif watch.result() is not None:
                woke = True
        if failed is not None and not stale:
            raise failed
        return woke

    async def _watch(self, key: str) -> Any:
        conn = self._conns.pop(key, None)
        if conn is None:
            if self._closed:
                raise aioredis.ConnectionError("the broker is closed")
            conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(BLOCK_SECONDS + REPLY_SECONDS):  # not read_response's
                # timeout: it returns None and leaves the reply to be read as the next one's
                # (given here only so that the pool's socket_timeout never ends it first)
                await conn.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", BLOCK_SECONDS)
                reply = await conn.read_response(timeout=BLOCK_SECONDS + 2 * REPLY_SECONDS)
        except BaseException:
            await drop_connection(self._pool, conn)
            raise
        if self._closed:
            await drop_connection(self._pool, conn)
        else:
            self._conns[key] = conn
        return reply

    async def close(self) -> None:
        """End every watch (their connections are closed, so Redis forgets the blocks)."""
        self._closed = True
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            await drop_connection(self._pool, conn)
        await self._taking.close()

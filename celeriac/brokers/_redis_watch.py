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

**The take behind the watch** (``wait_taking``): one list, the one most messages land on (the
first queue's own list), is watched for one wait at a time with the take script queued behind
its ``BLMOVE`` on the same connection. Redis runs a connection's commands in order, so the
take runs the moment the ``BLMOVE`` returns, and an idle worker gets its message in the reply
to the wake: one round trip less between a ``delay()`` and the task starting. The ``BLMOVE``
blocks no longer than the wait, so the take also runs when the wait ends (it then moves what
has fallen due); when another list wakes first, ``CLIENT UNBLOCK`` makes it run at once. The
take runs only inside a wait: a worker that is not waiting takes nothing, and its messages stay
free for others. A wait cancelled after Redis ran the take but before its reply was read leaves
those messages in flight until their lease lapses (then they are handed out again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from celeriac.utils.redis_pipeline import pack
from celeriac.utils.redis_urls import drop_connection

#: How long one BLMOVE blocks in Redis before it returns empty (and is armed again if waited on).
BLOCK_SECONDS = 10
#: How often a take-behind watch that was told to stop is told again (see ``_stop_taking``).
UNBLOCK_EVERY = 0.05

#: sends ``CLIENT UNBLOCK <id>`` on another connection
Unblock = Callable[[int], Awaitable[Any]]


class ListWatches:
    """The armed watches of one broker instance (one event loop)."""

    def __init__(self, pool: aioredis.ConnectionPool, unblock: Unblock | None = None) -> None:
        self._pool = pool
        self._unblock = unblock
        self._watches: dict[str, asyncio.Task[Any]] = {}
        self._conns: dict[str, AbstractConnection] = {}
        self._taking_conn: tuple[AbstractConnection, int] | None = None  # and its client id
        self._taking_id: int | None = None  # the client id of the take-behind watch in use
        self._closed = False

    async def wait_taking(self, key: str, take: tuple[Any, ...], others: Sequence[str],
                          seconds: float) -> Any:
        """Wait up to ``seconds`` for an entry in ``key`` or in one of ``others``, with the
        command ``take`` run behind ``key``'s ``BLMOVE`` (see the module's docstring).

        Returns the take's reply; None if it was refused (an error reply, such as NOSCRIPT:
        the caller takes the usual way). A failed watch raises its error."""
        self._discard_returned(others, stale=True)
        taking = asyncio.get_running_loop().create_task(self._take_behind(key, take, seconds))
        try:
            while True:
                watches = [self._arm(other) for other in others]
                done, _ = await asyncio.wait([taking, *watches],
                                             return_when=asyncio.FIRST_COMPLETED)
                if taking in done:
                    break
                if self._discard_returned(others):
                    await self._stop_taking(taking)
                    break
                # only server-side timeouts of other lists: arm them again
            return taking.result()
        except BaseException:
            taking.cancel()
            raise

    async def _take_behind(self, key: str, take: tuple[Any, ...], seconds: float) -> Any:
        conn, client_id = await self._taking_connection()
        self._taking_id = client_id
        block = f"{min(max(seconds, 0.001), BLOCK_SECONDS):.3f}"  # 0 would block for ever
        try:
            await conn.send_packed_command(
                pack([("BLMOVE", key, key, "RIGHT", "RIGHT", block), take]), check_health=False)
            await conn.read_response(timeout=float(block) + 5.0)
            try:
                reply = await conn.read_response(timeout=5.0)
            except aioredis.ResponseError:
                reply = None  # refused (NOSCRIPT after a restart); the connection is in step
        except BaseException:
            await drop_connection(self._pool, conn)
            raise
        finally:
            self._taking_id = None
        if self._closed:
            await drop_connection(self._pool, conn)
        else:
            self._taking_conn = (conn, client_id)
        return reply

    async def _taking_connection(self) -> tuple[AbstractConnection, int]:
        found, self._taking_conn = self._taking_conn, None
        if found is not None:
            return found
        if self._closed:
            raise aioredis.ConnectionError("the broker is closed")
        conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command("CLIENT", "ID")
            client_id = int(await conn.read_response(timeout=5.0))
        except BaseException:
            await drop_connection(self._pool, conn)
            raise
        return conn, client_id

    async def _stop_taking(self, taking: asyncio.Task[Any]) -> None:
        """End a take-behind watch's BLMOVE now, so its take runs: told again until it has
        (a BLMOVE still on its way to Redis is not blocked yet when first told)."""
        while not taking.done():
            if self._taking_id is not None and self._unblock is not None:
                await self._unblock(self._taking_id)
            await asyncio.wait([taking], timeout=UNBLOCK_EVERY)

    async def wait(self, keys: Sequence[str], seconds: float) -> bool:
        """Block until one of the lists ``keys`` holds an entry (True) or ``seconds`` pass
        (False). A watch that failed raises its error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        self._discard_returned(keys, stale=True)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            watches = [self._arm(key) for key in keys]
            done, _ = await asyncio.wait(watches, timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return False
            if self._discard_returned(keys):
                return True
            # only server-side timeouts (or other lists' stale returns): arm again

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
            await conn.send_command("BLMOVE", key, key, "RIGHT", "RIGHT", BLOCK_SECONDS)
            reply = await conn.read_response(timeout=BLOCK_SECONDS + 5.0)
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
        taking, self._taking_conn = self._taking_conn, None
        if taking is not None:
            conns.append(taking[0])
        for conn in conns:
            await drop_connection(self._pool, conn)

"""The take behind the watch: an idle fetch's message in the reply to the push that wakes it.

One list (the one most messages land on: the first queue's own list) is watched, for one
wait at a time, by a ``BLMOVE`` with the take script queued behind it on the same
connection. Redis runs a connection's commands in order, so the take runs the moment the
``BLMOVE`` returns, and an idle worker gets its message with the reply to the wake: one round
trip less between a ``delay()`` and the task starting.

* The wait's end is timed here: ``CLIENT UNBLOCK`` then ends the ``BLMOVE`` and its take runs
  (and moves what has fallen due). So does a wake on another list. The ``BLMOVE``'s own
  timeout is only a backstop (Redis times blocked clients ten times a second: too coarse).
* Without the right to ``CLIENT UNBLOCK`` (an ACL user without ``@admin``), the ``BLMOVE``
  times itself, and a wake on another list drops the connection instead (Redis then
  forgets the queued take, unless it has just run: its messages return when their lease
  lapses).
* The take runs only inside a wait: a worker that is not waiting takes nothing, and its
  messages stay free for other workers.
* A wait that is cancelled hands its watch to a background task, which ends it, reads the
  take's reply and gives back what it took. So does a watch whose replies are late (a Redis
  that stalled): they are read, for up to ``LATE_SECONDS``, by a background task, while the
  fetch fails and is retried.
* Without the right to ``CLIENT ID`` either, the ``BLMOVE`` times itself, as above.
* Each wait has a connection of its own (idle ones are kept for the next waits), so waits
  may run side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoPermissionError, ResponseError

from celeriac.utils.redis_pipeline import pack
from celeriac.utils.redis_urls import drop_connection

log = logging.getLogger("celeriac.redis")

#: the longest a take-behind BLMOVE blocks by itself (a backstop: waits are timed here)
BLOCK_SECONDS = 10.0
#: how often a watch told to stop is told again (a BLMOVE on its way is not blocked yet)
UNBLOCK_EVERY = 0.05
#: how long the replies of a stopped watch may take before the wait fails
REPLY_SECONDS = 5.0
#: how long replies that came too late for their wait are still read (and given back)
LATE_SECONDS = 60.0

#: sends ``CLIENT UNBLOCK <id>`` on another connection
Unblock = Callable[[int], Awaitable[Any]]
#: gives back what a take whose wait was cancelled took (its reply)
GiveBack = Callable[[Any], Awaitable[None]]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A background task's failure is logged, not left unretrieved."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("giving back what a take brought failed (the messages return after "
                    "their lease): %s", task.exception())


class _Watch:
    """One take-behind watch: its connection and that connection's client id."""

    def __init__(self, conn: AbstractConnection, client_id: int, *, fresh: bool) -> None:
        self.conn = conn
        self.client_id = client_id
        self.fresh = fresh


class TakeBehind:
    """The take-behind watches of one broker instance (one event loop)."""

    def __init__(self, pool: aioredis.ConnectionPool, unblock: Unblock,
                 give_back: GiveBack) -> None:
        self._pool = pool
        self._unblock = unblock
        self._give_back = give_back
        self.can_unblock = True
        self._idle: list[_Watch] = []
        self._salvaging: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self, key: str, take: tuple[Any, ...], seconds: float) -> Started:
        """Watch ``key`` with ``take`` behind, for a wait of ``seconds``."""
        return Started(self, key, take, seconds)

    async def _watch(self) -> _Watch:
        if self._idle:
            return self._idle.pop()
        if self._closed:
            raise aioredis.ConnectionError("the broker is closed")
        conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        client_id = 0
        try:
            if self.can_unblock:
                async with asyncio.timeout(REPLY_SECONDS):
                    await conn.send_command("CLIENT", "ID")
                    client_id = int(await conn.read_response(timeout=2 * REPLY_SECONDS))
        except NoPermissionError:
            self._cannot_unblock()
        except BaseException:
            await drop_connection(self._pool, conn)
            raise
        return _Watch(conn, client_id, fresh=True)

    def _cannot_unblock(self) -> None:
        self.can_unblock = False
        log.warning("CLIENT ID or CLIENT UNBLOCK is not allowed for this Redis user: idle "
                    "fetches end their waits by a timeout of Redis's or by dropping a "
                    "connection instead")

    async def _run(self, watch: _Watch, key: str, take: tuple[Any, ...], seconds: float) -> Any:
        """BLMOVE and the take; the take's reply (None if refused, e.g. NOSCRIPT). A kept
        connection that fails before its first reply (closed by Redis while idle) is
        replaced once."""
        block = seconds + 1.0 if self.can_unblock else seconds  # timed here, if it can be
        block = max(min(block, BLOCK_SECONDS), 0.001)  # 0 would block for ever
        command = pack([("BLMOVE", key, key, "RIGHT", "RIGHT", f"{block:.3f}"), take])
        while True:
            owed = 2  # replies still to read: the BLMOVE's, then the take's
            try:
                async with asyncio.timeout(block + REPLY_SECONDS):
                    await watch.conn.send_packed_command(command, check_health=False)
                    await self._read(watch.conn)  # the BLMOVE's: an entry, or nil
                    owed = 1
                    reply = await self._read(watch.conn)
                break
            except TimeoutError:  # a Redis that stalled: its take may yet run
                self._late(watch.conn, owed)
                raise
            except (aioredis.ConnectionError, OSError) as exc:
                await drop_connection(self._pool, watch.conn)
                if watch.fresh or self._closed:
                    raise
                replacement = await self._watch_fresh()
                watch.conn, watch.client_id, watch.fresh = (
                    replacement.conn, replacement.client_id, True)
                log.debug("take-behind connection replaced: %s", exc)
            except BaseException:  # cancelled: replies may be left unread
                await drop_connection(self._pool, watch.conn)
                raise
        watch.fresh = False
        if self._closed:
            await drop_connection(self._pool, watch.conn)
        else:
            self._idle.append(watch)
        return reply

    @staticmethod
    async def _read(conn: AbstractConnection) -> Any:
        """One reply; None for an error reply (a refused take: NOSCRIPT), which leaves the
        connection in step. (The timeout only keeps the pool's socket_timeout from ending
        the read first: the caller bounds it. A read cut short by that bound leaves the
        connection open, for ``_late`` to go on reading: callers drop it themselves.)"""
        try:
            return await conn.read_response(timeout=BLOCK_SECONDS + LATE_SECONDS,
                                            disconnect_on_error=False)
        except ResponseError:
            return None

    def _late(self, conn: AbstractConnection, owed: int) -> None:
        """Read a late watch's remaining replies in the background, give back what its take
        brought, then drop the connection."""

        async def late() -> None:
            try:
                async with asyncio.timeout(LATE_SECONDS):
                    reply = None
                    for _ in range(owed):
                        reply = await self._read(conn)
                if reply is not None:
                    await self._give_back(reply)
            finally:
                await drop_connection(self._pool, conn)

        self._background(late())

    def _background(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._salvaging.add(task)
        task.add_done_callback(self._salvaging.discard)
        task.add_done_callback(_retrieve)

    async def _watch_fresh(self) -> _Watch:
        idle, self._idle = self._idle, []
        for old in idle:  # kept as long: as likely closed too
            await drop_connection(self._pool, old.conn)
        return await self._watch()

    async def _stop(self, watch: _Watch, running: asyncio.Task[Any]) -> None:
        """End the watch's BLMOVE now, so its take runs (told again until it has). Returns
        with ``running`` done, whatever happens: a watch that cannot be ended is dropped
        (Redis then forgets the queued take)."""
        try:
            while not running.done() and self.can_unblock:
                try:
                    await self._unblock(watch.client_id)
                except NoPermissionError:
                    self._cannot_unblock()
                    break
                await asyncio.wait([running], timeout=UNBLOCK_EVERY)
        finally:
            if not running.done():
                running.cancel()
                await asyncio.wait([running])

    def _salvage(self, watch: _Watch | None, running: asyncio.Task[Any]) -> None:
        """A cancelled wait's watch: end it in the background and give back what its take
        brought (nobody holds those messages)."""

        async def salvage() -> None:
            if watch is not None:  # (None: ``running`` has ended already)
                await self._stop(watch, running)
            reply = None if running.cancelled() or running.exception() else running.result()
            if reply is not None:
                await self._give_back(reply)

        self._background(salvage())

    async def close(self) -> None:
        self._closed = True
        while self._salvaging:  # (one may start another)
            await asyncio.wait(list(self._salvaging), timeout=LATE_SECONDS)
        idle, self._idle = self._idle, []
        for watch in idle:
            await drop_connection(self._pool, watch.conn)


class Started:
    """One wait's take-behind watch: ``running`` ends by itself when the BLMOVE returns;
    ``stop()`` ends it now; either way ``stop()`` then returns the take's reply."""

    def __init__(self, owner: TakeBehind, key: str, take: tuple[Any, ...],
                 seconds: float) -> None:
        self._owner = owner
        self._watch: _Watch | None = None
        self.running = asyncio.get_running_loop().create_task(self._run(key, take, seconds))

    async def _run(self, key: str, take: tuple[Any, ...], seconds: float) -> Any:
        self._watch = await self._owner._watch()
        return await self._owner._run(self._watch, key, take, seconds)

    async def stop(self) -> Any:
        """End the watch now (its take runs) and return the take's reply (None if it was
        refused or never ran)."""
        running = self.running
        while not running.done():
            if self._watch is None:  # still connecting: its BLMOVE is not sent yet
                await asyncio.wait([running], timeout=UNBLOCK_EVERY)
            else:
                await self._owner._stop(self._watch, running)
        return None if running.cancelled() else running.result()

    def abandon(self) -> None:
        """The wait is over without its reply (cancelled, or failed elsewhere): what its take
        brought, now or later, is given back."""
        if self._watch is None and not self.running.done():
            self.running.cancel()  # nothing sent yet
            return
        self._owner._salvage(self._watch, self.running)

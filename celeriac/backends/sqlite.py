"""The SQLite result backend: one file shared by every process on the machine.

One row per task in ``celeriac_results``: the meta as a JSON blob plus the columns the
queries need. ``store`` writes a whole batch in one transaction; the rule that a state never
moves backwards (``states.may_replace``) is part of the upsert's ``WHERE``, so it holds even
when several processes write the same ids at once.

Waiting is pushed, not polled: after a commit that holds a ready state the writer wakes every
listening process (``celeriac.utils.wakeup``). In each backend one waiter task owns the
listener and resolves a future per waiting call, so any number of ``wait()`` calls share one
socket and one query per wakeup.

Statements run on the event loop thread; how the file is opened, how a busy file is waited
for (never by sleeping in SQLite on the loop) and who checkpoints the WAL (a thread, never a
COMMIT on the loop) is shared with the SQLite broker, which by default uses the same file:
``celeriac.utils.sqlite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from celeriac import states
from celeriac.backends._common import (
    check_expires,
    decode_meta,
    encode_meta,
    expires_at,
    status_of,
    task_id_of,
)
from celeriac.backends.base import Meta
from celeriac.errors import BackendError
from celeriac.utils.sqlite import MEMORY, Database, path_from_url
from celeriac.utils.wakeup import Listener, Notifier, channel_directory

TABLE = "celeriac_results"
CHANNEL = "results"
_CHUNK = 500  # ids per IN (...) list, well under SQLite's variable limit

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        task_id TEXT PRIMARY KEY NOT NULL,
        status TEXT NOT NULL,
        date_done TEXT,
        expires_at REAL,
        meta BLOB NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_expires_at ON {TABLE} (expires_at) WHERE expires_at IS NOT NULL",
)

# The stored row is replaced only if states.may_replace allows it; an expired row counts as
# absent. The rule lives in states.py alone: it is registered as an SQL function.
_UPSERT = f"""
    INSERT INTO {TABLE} (task_id, status, date_done, expires_at, meta) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (task_id) DO UPDATE SET
        status = excluded.status, date_done = excluded.date_done,
        expires_at = excluded.expires_at, meta = excluded.meta
    WHERE celeriac_may_replace(
        excluded.status,
        CASE WHEN {TABLE}.expires_at <= ? THEN NULL ELSE {TABLE}.status END
    )
"""
_T = TypeVar("_T")
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_READY = "status IN ({})".format(", ".join(f"'{s}'" for s in sorted(states.READY_STATES)))


def sqlite_path(url: str) -> str:
    """The database file of a ``sqlite://`` URL (see ``celeriac.utils.sqlite.path_from_url``),
    made absolute; bare ``sqlite://`` is the SQLite broker's default file."""
    path = path_from_url(url, "backend")
    return path if path == MEMORY else os.path.abspath(path)


def _translate(exc: Exception, doing: str) -> BackendError:
    return BackendError(f"sqlite result backend: {doing} failed: {exc}")


def _prepare(db: sqlite3.Connection) -> None:
    db.create_function("celeriac_may_replace", 2, states.may_replace, deterministic=True)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class SQLiteBackend:
    """Results in a SQLite file; safe for many processes on one machine.

    Options: ``busy_timeout`` (seconds a statement waits for another process's write lock,
    default 5), ``recheck_interval`` (seconds between safety re-checks of waited ids, in case
    a wakeup is lost, default 1).
    """

    def __init__(
        self,
        url: str = "sqlite://",
        *,
        expires: float | None = 86400,
        busy_timeout: float = 5.0,
        recheck_interval: float = 1.0,
        **options: Any,
    ) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.expires = check_expires(expires)
        self.busy_timeout = busy_timeout
        self.recheck_interval = recheck_interval
        self.options = options
        self._db: Database | None = None
        self._notifier: Notifier | None = None
        self._listener: Listener | None = None
        self._waiters: dict[str, dict[asyncio.Future[Meta], None]] = {}
        self._waiter_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<SQLiteBackend {self.path}>"

    # -- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        await self._connection()

    async def _connection(self) -> Database:
        if self._db is None:
            db = await Database.open(
                self.path,
                busy_timeout=self.busy_timeout,
                translate=_translate,
                prepare=_prepare,
                schema=_SCHEMA,
            )
            if self._db is None:  # another coroutine may have opened it meanwhile
                self._db = db
                self._notifier = Notifier(channel_directory(self.path, CHANNEL))
            else:
                db.close()
        return self._db

    async def _read(self, action: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await (await self._connection()).read(action, fn)

    async def _write(self, action: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await (await self._connection()).write(action, fn)

    async def close(self) -> None:
        task, self._waiter_task = self._waiter_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_waiters(BackendError("the result backend was closed"))
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    # -- writing ------------------------------------------------------------------------

    async def store(self, metas: Sequence[Meta]) -> None:
        if not metas:
            return
        now = time.time()
        expiry = expires_at(self.expires, now)
        rows = [(task_id_of(m), status_of(m), m.get("date_done"), expiry, encode_meta(m), now) for m in metas]
        await self._write("store", lambda db: db.executemany(_UPSERT, rows))
        if self._notifier is not None and any(r[1] in states.READY_STATES for r in rows):
            self._notifier.notify()

    async def forget(self, task_ids: Sequence[str]) -> None:
        def delete(db: sqlite3.Connection) -> None:
            for chunk in _chunks(task_ids):
                db.execute(f"DELETE FROM {TABLE} WHERE task_id IN ({_marks(len(chunk))})", chunk)

        if task_ids:
            await self._write("forget", delete)

    async def expire(self) -> int:
        """Delete expired rows, a few thousand per transaction so that other writers and
        this event loop are never held up for long."""
        now = time.time()
        total = 0

        def delete_some(db: sqlite3.Connection) -> int:
            return db.execute(
                f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} "
                "WHERE expires_at <= ? LIMIT 5000)",
                (now,),
            ).rowcount

        while True:
            deleted = await self._write("expire", delete_some)
            total += deleted
            if deleted < 5000:
                return total
            await asyncio.sleep(0)

    # -- reading ------------------------------------------------------------------------

    async def get(self, task_id: str) -> Meta | None:
        def select(db: sqlite3.Connection) -> Any:
            return db.execute(
                f"SELECT meta FROM {TABLE} WHERE task_id = ? AND {_LIVE}", (task_id, time.time())
            ).fetchone()

        row = await self._read("get", select)
        return None if row is None else decode_meta(row[0])

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        found = await self._select(task_ids, ready_only=False)
        return {tid: decode_meta(blob) for tid, blob in found}

    async def _select(self, task_ids: Sequence[str], *, ready_only: bool) -> list[tuple[str, bytes]]:
        where = f"{_LIVE} AND {_READY}" if ready_only else _LIVE

        def select(db: sqlite3.Connection) -> list[tuple[str, bytes]]:
            now = time.time()
            found: list[tuple[str, bytes]] = []
            for chunk in _chunks(task_ids):
                found += db.execute(
                    f"SELECT task_id, meta FROM {TABLE} WHERE task_id IN ({_marks(len(chunk))}) AND {where}",
                    (*chunk, now),
                ).fetchall()
            return found

        return await self._read("get", select)

    # -- waiting ------------------------------------------------------------------------

    async def wait(self, task_id: str, timeout: float | None) -> Meta | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Meta] = loop.create_future()
        # Register, then look: the waiter task looks at every registered id after arming
        # its listener, so a commit at any moment is seen by this look or by the task.
        self._waiters.setdefault(task_id, {})[fut] = None
        try:
            ready = await self._select([task_id], ready_only=True)
            if ready:
                return decode_meta(ready[0][1])
            if self._waiter_task is None or self._waiter_task.done():
                self._waiter_task = loop.create_task(self._run_waiters())
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(task_id)
            if waiting is not None:
                waiting.pop(fut, None)
                if not waiting:
                    del self._waiters[task_id]

    async def _run_waiters(self) -> None:
        """Resolve waiting futures: arm the listener, look up every waited id, sleep until a
        wakeup (or the safety re-check), until nobody waits."""
        try:
            if self._listener is None:
                self._listener = Listener(channel_directory(self.path, CHANNEL))
            listener = self._listener
            while self._waiters:
                listener.arm()
                for task_id, blob in await self._select(list(self._waiters), ready_only=True):
                    for fut in self._waiters.pop(task_id, {}):
                        if not fut.done():
                            fut.set_result(decode_meta(blob))
                if not self._waiters:
                    return
                await listener.wait(self.recheck_interval)
        except (BackendError, OSError) as exc:
            error = exc if isinstance(exc, BackendError) else BackendError(f"waiting failed: {exc}")
            self._fail_waiters(error)

    def _fail_waiters(self, error: BackendError) -> None:
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(error)

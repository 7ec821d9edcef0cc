"""What the SQLite broker and the SQLite result backend share: how the file is opened, how a
busy file is waited for, and who checkpoints its WAL.

By default both seams use one file (``./celeriac.sqlite3``), each with its own tables and
connections, often in one process (a worker has a broker connection on its loop, another on
its lease keeper's thread, and a backend connection). Anything decided per connection is
therefore decided here, once, for the file:

- **Opening** (``open_connection``): WAL, ``synchronous = NORMAL``, a 16 MB page cache (batched
  writes touch far fewer pages twice: measured about a third faster), no automatic checkpoint,
  a cap on the WAL file's size at rest.
- **Busy** (``retry``): no connection has a busy timeout, so no event loop ever sleeps in
  SQLite's busy handler (which naps 1, 2, 5 ... 100 ms at a time). A statement that finds the
  write lock taken is run again after a short ``asyncio.sleep`` (0.2 ms growing to 5 ms, with
  jitter) until ``busy_timeout``. Statements themselves stay on the caller's thread: in WAL
  they take tens of microseconds, less than a hop to a thread would.
- **Checkpoints** (``Checkpointer``): with automatic checkpoints on, the COMMIT that crosses
  the threshold copies the whole shared WAL into the database and fsyncs it (5-10 ms), on
  whichever event loop made it. Instead, every write is counted by the one checkpointer of
  its file in this process, whose daemon thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a
  connection of its own after ``CHECKPOINT_ROWS`` written rows.

``Database`` ties the three together for one seam's connection; ``path_from_url`` reads
both seams' ``sqlite://`` URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from celeriac.errors import ConfigurationError

T = TypeVar("T")

#: Turns a driver error (or an OSError while opening) into the seam's own error; the second
#: argument says what was being done ("publish", "store", ...).
Translate = Callable[[Exception, str], Exception]

MEMORY = ":memory:"
#: The file of a bare ``sqlite://``: the broker's and the backend's by default.
DEFAULT_PATH = "celeriac.sqlite3"
#: Rows written (inserted, updated, deleted) between two checkpoints: 400-6000 WAL pages
#: (a row in a batch costs a fraction of a page, a transaction of one row about three).
CHECKPOINT_ROWS = 2000
#: A WAL restarts from its beginning only when a write finds it fully copied; writers that
#: never pause keep a thread's checkpoint behind, and the WAL grows. Past this many frames the
#: next writer checkpoints once itself, between two of its transactions (the thread has
#: copied most pages: a few ms), after which the WAL restarts. A trade-off, measured: every
#: statement is a little slower in a longer WAL (a publish-fetch-store-ack cycle 100 us at
#: 1000 frames, 130 us at 8000), but a lower limit means more of these stalls on the loop
#: (at 2000, round-trip p99 4-5 ms instead of 1.5-2).
WAL_FRAMES_LIMIT = 8000
JOURNAL_SIZE_LIMIT = 16 << 20
CACHE_KIB = 16000
FIRST_DELAY = 0.0002
MAX_DELAY = 0.005


# -- opening ---------------------------------------------------------------------------------


def path_from_url(url: str, what: str) -> str:
    """The database path of a ``sqlite://`` URL, read as SQLAlchemy reads it.

    ``sqlite:///rel/path.db`` is relative, ``sqlite:////abs/path.db`` absolute, and a bare
    ``sqlite://`` means ``./celeriac.sqlite3``. ``what`` ("broker", "backend") is for errors.
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ConfigurationError(f"not a SQLite {what} URL: {url!r}")
    rest = rest.split("?", 1)[0]
    if rest in ("", "/"):
        return DEFAULT_PATH
    if not rest.startswith("/"):
        raise ConfigurationError(
            f"SQLite URL {url!r} names a host; use sqlite:///relative.db or sqlite:////abs.db"
        )
    return rest[1:]


def open_connection(
    path: str,
    *,
    check_same_thread: bool = False,
    timeout: float = 0.0,
    prepare: Callable[[sqlite3.Connection], None] | None = None,
    schema: Sequence[str] = (),
) -> sqlite3.Connection:
    """A connection to ``path`` in autocommit mode, set up as the module docstring says.

    One attempt: a file busy with another connection (switching to WAL, or creating the
    schema) raises ``sqlite3.OperationalError`` and leaves nothing open, so the caller can
    run it again (``retry``). ``timeout`` is SQLite's own busy timeout: keep it 0 on an event
    loop. ``prepare`` runs before the schema (to register SQL functions, say); ``schema`` is
    created in one ``BEGIN IMMEDIATE`` transaction, so racing processes never see half of it.
    """
    if path != MEMORY:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        mode = str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        if mode != "wal" and path != MEMORY:
            raise sqlite3.OperationalError(f"could not switch {path!r} to WAL (got {mode})")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer's job
        db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        if prepare is not None:
            prepare(db)
        if schema:
            in_transaction(db, lambda c: [c.execute(s) for s in schema])
    except BaseException:
        db.close()
        raise
    return db


def in_transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(db)`` in one write transaction. ``IMMEDIATE`` takes the write lock up front, so a
    busy file fails at ``BEGIN`` (and the whole is retried), never half-way or on a
    read-to-write upgrade."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = fn(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    return result


# -- busy --------------------------------------------------------------------------------------


def is_busy(exc: BaseException) -> bool:
    """Another connection holds the lock (SQLITE_BUSY / SQLITE_LOCKED, any extended code)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


async def retry(fn: Callable[[], T], *, doing: str, busy_timeout: float, translate: Translate) -> T:
    """``fn()``, run again after a short ``asyncio.sleep`` while the file is busy, for up to
    ``busy_timeout`` seconds; driver errors (and OSError) leave as ``translate(exc, doing)``."""
    deadline: float | None = None
    delay = FIRST_DELAY
    while True:
        try:
            return fn()
        except (sqlite3.Error, OSError) as exc:
            now = time.monotonic()
            if deadline is None:
                deadline = now + busy_timeout
            if not is_busy(exc) or now >= deadline:
                raise translate(exc, doing) from exc
        await asyncio.sleep(min(delay * random.uniform(0.5, 1.5), deadline - now))
        delay = min(delay * 2, MAX_DELAY)


# -- checkpoints -------------------------------------------------------------------------------


def checkpoint(db: sqlite3.Connection) -> int:
    """``PRAGMA wal_checkpoint(PASSIVE)``: copy what can be copied now, blocking nobody; the
    number of frames the WAL held (0 if unknown or on error)."""
    try:
        row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[1]) if row and row[1] > 0 else 0


class Checkpointer:
    """The WAL checkpoints of one file in this process (get it with ``checkpointer_for``).

    Writers call ``wrote(rows, db)`` after each commit, from any thread or event loop. Every
    ``CHECKPOINT_ROWS`` rows a daemon thread checkpoints on its own connection, at once again
    if that many came in while it ran. A write restarts the WAL from its beginning when it
    finds it fully copied, which a checkpoint in a pause between writes achieves; a writer
    that never pauses gets the safety valve (see ``wrote``). Chaining a checkpoint after every
    few rows would not help: a checkpoint takes milliseconds (two fsyncs), a busy writer
    commits within that time, so it would keep fsyncing without ever catching up.

    The thread starts at the first checkpoint and ends when the last user calls ``release()``.
    """

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.checkpoints = 0  # how many the thread ran (for tests and curiosity)
        self.valves = 0  # how many writers ran
        self._users = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._rows = 0  # written since the running or last checkpoint began
        self._running = False
        self._valve = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Checkpointer {self.path!r} users={self._users}>"

    def wrote(self, rows: int, db: sqlite3.Connection) -> None:
        """Count ``rows`` just committed on ``db``; start a checkpoint if it is time.

        The safety valve: when the thread found the WAL past ``WAL_FRAMES_LIMIT`` frames, it
        stops chaining checkpoints and the next writer checkpoints once on its own
        connection, between two of its transactions, so the WAL is fully copied when it next
        writes, and restarts.
        """
        with self._lock:
            self._rows += rows
            valve = self._valve and not self._running
            if valve:
                self._valve = False
                self._running = True
            elif self._rows >= CHECKPOINT_ROWS and not self._running and not self._stopping:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="celeriac-wal-checkpoint", daemon=True
                    )
                    self._thread.start()
                self._wake.set()
        if valve:
            try:
                checkpoint(db)
            finally:
                with self._lock:
                    self._running = False
                    self._rows = 0
                    self.valves += 1

    def release(self) -> None:
        """One user fewer; the last one stops the thread (without waiting for it)."""
        with _registry_lock:
            self._users -= 1
            if self._users > 0:
                return
            if _registry.get(self.path) is self:
                del _registry[self.path]
        with self._lock:
            self._stopping = True
        self._wake.set()

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                with self._lock:
                    self._wake.clear()
                    if self._stopping:
                        return
                    self._rows = 0
                    self._running = True
                try:
                    if db is None:
                        db = open_connection(self.path, timeout=self.busy_timeout)
                    frames = checkpoint(db)
                except sqlite3.Error:
                    frames = 0
                with self._lock:
                    self._running = False
                    self.checkpoints += 1
                    if frames > WAL_FRAMES_LIMIT:
                        self._valve = True  # over to the next writer (see wrote)
                    elif self._rows >= CHECKPOINT_ROWS:
                        self._wake.set()  # enough came in meanwhile: go again at once
        finally:
            if db is not None:
                db.close()


_registry: dict[str, Checkpointer] = {}
_registry_lock = threading.Lock()


def checkpointer_for(path: str, busy_timeout: float) -> Checkpointer:
    """The checkpointer of the file at ``path``, with one more user (call ``release()``)."""
    key = os.path.abspath(path)
    with _registry_lock:
        cp = _registry.get(key)
        if cp is None:
            cp = _registry[key] = Checkpointer(key, busy_timeout)
        cp._users += 1
        return cp


def _forget_after_fork() -> None:
    # A child inherits the registry but not the threads, and must not use the parent's
    # connections: it starts afresh.
    global _registry_lock
    _registry.clear()
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


# -- one seam's connection -----------------------------------------------------------------------


class Database:
    """One open connection of a seam to its file, used from one event loop at a time.

    ``read`` / ``write`` run a function of the connection with ``retry``; ``write`` counts the
    rows it changed with the file's checkpointer. Get one with ``await Database.open(...)``.
    """

    def __init__(
        self, db: sqlite3.Connection, path: str, busy_timeout: float, translate: Translate
    ) -> None:
        self.connection = db
        self.path = path
        self.busy_timeout = busy_timeout
        self.translate = translate
        self._changes = db.total_changes
        self._checkpointer = None if path == MEMORY else checkpointer_for(path, busy_timeout)

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        busy_timeout: float,
        translate: Translate,
        prepare: Callable[[sqlite3.Connection], None] | None = None,
        schema: Sequence[str] = (),
    ) -> Database:
        db = await retry(
            lambda: open_connection(path, prepare=prepare, schema=schema),
            doing="open the database",
            busy_timeout=busy_timeout,
            translate=translate,
        )
        return cls(db, path, busy_timeout, translate)

    def close(self) -> None:
        """Close the connection (once; later calls do nothing). Errors are translated."""
        cp, self._checkpointer = self._checkpointer, None
        if cp is not None:
            cp.release()
        try:
            self.connection.close()
        except sqlite3.Error as exc:
            raise self.translate(exc, "close the database") from exc

    async def read(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self.connection
        return await retry(
            lambda: fn(db), doing=doing, busy_timeout=self.busy_timeout, translate=self.translate
        )

    async def write(
        self, doing: str, fn: Callable[[sqlite3.Connection], T], *, transaction: bool = True
    ) -> T:
        """``fn`` in one ``BEGIN IMMEDIATE`` transaction (or, with ``transaction=False``, as
        it is: one statement in autocommit is a transaction of its own)."""
        db = self.connection
        run = (lambda: in_transaction(db, fn)) if transaction else (lambda: fn(db))
        result = await retry(
            run, doing=doing, busy_timeout=self.busy_timeout, translate=self.translate
        )
        self._wrote()
        return result

    def _wrote(self) -> None:
        total = self.connection.total_changes
        rows, self._changes = total - self._changes, total
        if rows and self._checkpointer is not None:
            self._checkpointer.wrote(rows, self.connection)

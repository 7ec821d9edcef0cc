"""celeriac.utils.sqlite: opening, waiting for a busy file, and the shared WAL checkpointer,
against real SQLite files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celeriac.utils import sqlite as plumbing
from celeriac.utils.sqlite import Database, checkpointer_for, open_connection

SCHEMA = ["CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)"]


class Failed(Exception):
    pass


def translate(exc: Exception, doing: str) -> Exception:
    return Failed(f"{doing}: {exc}")


async def open_db(path: Path, busy_timeout: float = 5.0) -> Database:
    return await Database.open(
        str(path), busy_timeout=busy_timeout, translate=translate, schema=SCHEMA
    )


def insert(rows: int, size: int = 1000) -> Callable[[sqlite3.Connection], object]:
    payload = os.urandom(size)
    return lambda db: db.executemany(
        "INSERT INTO t (payload) VALUES (?)", [(payload,) for _ in range(rows)]
    )


@pytest.fixture(autouse=True)
def no_leftover_checkpointers() -> Iterator[None]:
    yield
    leftover = list(plumbing._registry.values())
    for cp in leftover:
        cp.release()
    assert not leftover, "a Database was left open"


def test_open_connection_sets_up_the_file(tmp_path: Path) -> None:
    db = open_connection(str(tmp_path / "sub" / "x.db"), schema=SCHEMA)  # makes the directory
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert db.execute("PRAGMA cache_size").fetchone()[0] == -16000
        assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == 16 << 20
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        assert db.isolation_level is None
    finally:
        db.close()


async def test_busy_write_waits_on_the_loop_for_the_lock_then_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    database = await open_db(path)
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    holder.execute("INSERT INTO t (payload) VALUES (x'00')")
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, holder.execute, "COMMIT")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        await database.write("insert", insert(3))
    finally:
        ticking.cancel()
        holder.close()
    waited = time.monotonic() - started
    assert waited >= 0.25  # it really waited for the other connection
    assert ticks >= 15  # and the loop ran other work meanwhile (no sleeping inside SQLite)
    count = await database.read("count", lambda db: db.execute("SELECT count(*) FROM t").fetchone())
    assert count[0] == 4
    database.close()


async def test_busy_past_the_timeout_raises_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    database = await open_db(path, busy_timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    try:
        with pytest.raises(Failed, match=r"^insert: database is locked") as info:
            await database.write("insert", insert(1))
    finally:
        holder.close()
        database.close()
    assert 0.15 <= time.monotonic() - started < 2
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


async def test_errors_other_than_busy_are_translated_at_once(tmp_path: Path) -> None:
    database = await open_db(tmp_path / "x.db")
    started = time.monotonic()
    with pytest.raises(Failed, match="no such table"):
        await database.read("read", lambda db: db.execute("SELECT * FROM missing").fetchall())
    assert time.monotonic() - started < 0.1
    database.close()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(Failed, match=r"^open the database"):
        await open_db(blocked / "x.db")  # its directory cannot be made


async def test_a_failed_transaction_is_rolled_back(tmp_path: Path) -> None:
    database = await open_db(tmp_path / "x.db")

    def half(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t (payload) VALUES (x'00')")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await database.write("half", half)
    assert not database.connection.in_transaction
    count = await database.read("count", lambda db: db.execute("SELECT count(*) FROM t").fetchone())
    assert count[0] == 0
    database.close()


def wal_restarts(path: Path) -> int:
    """The WAL header's checkpoint sequence number: it counts the restarts of the WAL."""
    with open(f"{path}-wal", "rb") as wal:
        header = wal.read(16)
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else 0


async def test_checkpointer_restarts_the_wal_under_sustained_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that never pauses: the thread's checkpoints stay behind it, so it is the
    # safety valve (the writer checkpointing once itself, on its own thread) that lets the
    # WAL restart.
    monkeypatch.setattr(plumbing, "WAL_FRAMES_LIMIT", 1000)  # about 4 MB
    on_writer: list[int] = []
    real = plumbing.checkpoint

    def spy(db: sqlite3.Connection) -> int:
        if threading.current_thread() is threading.main_thread():
            on_writer.append(1)
        return real(db)

    monkeypatch.setattr(plumbing, "checkpoint", spy)
    path = tmp_path / "grow.db"
    database = await open_db(path)
    cp = database._checkpointer
    assert cp is not None
    first = wal_restarts(path)
    deadline = time.monotonic() + 30
    batches = 0
    try:
        while wal_restarts(path) < first + 2 and time.monotonic() < deadline:
            await database.write("insert", insert(100))  # 100 KB
            batches += 1
        assert wal_restarts(path) >= first + 2
        assert cp.checkpoints >= 1 and cp.valves >= 1 and on_writer
        count = await database.read(
            "count", lambda db: db.execute("SELECT count(*) FROM t").fetchone()
        )
        assert count[0] == batches * 100
    finally:
        thread = cp._thread
        database.close()
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive()  # the last user's close stops it


async def test_thread_checkpoints_let_a_pausing_writer_restart_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "bursts.db"
    database = await open_db(path)
    cp = database._checkpointer
    assert cp is not None
    first = wal_restarts(path)
    try:
        for _ in range(20):  # bursts of CHECKPOINT_ROWS, with pauses the thread can catch up in
            for _ in range(plumbing.CHECKPOINT_ROWS // 100):
                await database.write("insert", insert(100))
            await asyncio.sleep(0.05)
        assert cp.checkpoints >= 5 and cp.valves == 0
        assert wal_restarts(path) >= first + 5
    finally:
        database.close()


def test_two_loops_in_two_threads_share_one_checkpointer(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    seen: list[object] = []
    errors: list[BaseException] = []
    opened = threading.Barrier(2)

    async def write() -> None:
        database = await open_db(path)
        seen.append(database._checkpointer)
        await asyncio.to_thread(opened.wait, 5)
        for _ in range(60):
            await database.write("insert", insert(50))
        cp = database._checkpointer
        assert cp is not None
        deadline = time.monotonic() + 10
        while cp.checkpoints == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # give the thread its turn on a loaded machine
        await asyncio.to_thread(opened.wait, 10)  # both still open: one checkpointer in use
        database.close()

    def run() -> None:
        try:
            asyncio.run(write())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0] is not None
    cp = seen[0]
    assert isinstance(cp, plumbing.Checkpointer)
    assert cp.checkpoints >= 1  # 6,000 rows from two loops
    assert cp._thread is not None
    cp._thread.join(timeout=5)
    assert not cp._thread.is_alive()
    # A later user of the same file gets a fresh one.
    again = checkpointer_for(str(path), 1.0)
    assert again is not cp
    again.release()


def test_checkpointer_is_per_file_and_counts_users(tmp_path: Path) -> None:
    a = checkpointer_for(str(tmp_path / "a.db"), 1.0)
    a2 = checkpointer_for(str(tmp_path / ".." / tmp_path.name / "a.db"), 1.0)  # same file
    b = checkpointer_for(str(tmp_path / "b.db"), 1.0)
    assert a is a2 and a is not b
    a.release()
    assert checkpointer_for(str(tmp_path / "a.db"), 1.0) is a
    a.release()
    a2.release()
    b.release()

"""The SQLite result backend across real processes: wakeups and racing writers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from celeriac import states
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.testing.backend_kit import celery_meta

ROOT = Path(__file__).resolve().parents[2]

# Stores SUCCESS for each task id read from stdin; prints the time after each commit.
STORER = r"""
import asyncio, sys, time
from celeriac.backends.sqlite import SQLiteBackend

async def main():
    backend = SQLiteBackend(sys.argv[1])
    await backend.connect()
    print("ready", flush=True)
    for line in sys.stdin:
        meta = {"status": "SUCCESS", "result": line.strip(), "traceback": None,
                "children": [], "date_done": None, "task_id": line.strip()}
        await backend.store([meta])
        print(time.time(), flush=True)
    await backend.close()

asyncio.run(main())
"""

# Writes STATUS for every id of a range, over and over, in batches, until the deadline.
RACER = r"""
import asyncio, random, sys, time
from celeriac.backends.sqlite import SQLiteBackend

async def main():
    url, status, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    backend = SQLiteBackend(url)
    await backend.connect()
    ids = [f"race-{i}" for i in range(n)]
    result = {"pid": 1, "hostname": "w@h"} if status == "STARTED" else 1
    sys.stdin.readline()  # start together
    deadline = time.monotonic() + seconds
    rounds = 0
    while rounds == 0 or time.monotonic() < deadline:
        random.shuffle(ids)
        for start in range(0, n, 50):
            await backend.store([
                {"status": status, "result": result, "traceback": None, "children": [],
                 "date_done": None, "task_id": tid}
                for tid in ids[start:start + 50]
            ])
        rounds += 1
    print(rounds, flush=True)
    await backend.close()

asyncio.run(main())
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _stop(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


async def _readline(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
    assert line, f"process {proc.pid} exited early ({proc.poll()})"
    return line.strip()


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


async def test_waiter_woken_by_store_in_another_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/results.db"
    backend = SQLiteBackend(url, recheck_interval=30)  # the push must do it, not the re-check
    await backend.connect()
    storer = _spawn(STORER, url)
    try:
        assert await _readline(storer) == "ready"
        latencies = []
        for _ in range(10):
            task_id = str(uuid.uuid4())
            waiter = asyncio.create_task(backend.wait(task_id, 10))
            await asyncio.sleep(0.02)
            _send(storer, task_id)
            meta = await asyncio.wait_for(waiter, 5)
            woken = time.time()
            committed = float(await _readline(storer))
            assert meta is not None and meta["status"] == states.SUCCESS
            assert meta["result"] == task_id
            latencies.append(woken - committed)
        # generous: a lost wakeup would show as the 30 s re-check, a poll as ~interval
        assert max(latencies) < 0.5, latencies
    finally:
        _stop(storer)
        await backend.close()


async def test_racing_writers_never_move_success_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/results.db"
    n = 2000
    backend = SQLiteBackend(url)
    await backend.connect()  # creates the schema before the racers start
    # STARTED writers keep going for a while; the SUCCESS writer writes each id once.
    started_a = _spawn(RACER, url, states.STARTED, str(n), "1.5")
    started_b = _spawn(RACER, url, states.RECEIVED, str(n), "1.5")
    success = _spawn(RACER, url, states.SUCCESS, str(n), "0")
    procs = (started_a, started_b, success)
    try:
        await asyncio.sleep(0.3)  # let them import and connect
        for proc in procs:
            _send(proc, "go")
        rounds = [int(await _readline(proc, 30)) for proc in procs]
        assert rounds[0] > 1 and rounds[1] > 1, rounds  # the late writers really raced
        for proc in procs:
            assert proc.wait(timeout=10) == 0
        got = await backend.get_many([f"race-{i}" for i in range(n)])
        assert len(got) == n
        wrong = {tid: m["status"] for tid, m in got.items() if m["status"] != states.SUCCESS}
        assert not wrong, list(wrong.items())[:5]
        # and the SUCCESS meta is the one kept, whole
        assert got["race-0"] == {**celery_meta("race-0", states.SUCCESS, 1), "date_done": None}
    finally:
        _stop(*procs)
        await backend.close()

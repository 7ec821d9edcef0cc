"""The basic test app plus tasks that misbehave the ways a prefork pool must survive.

Run with ``-A tests.apps.prefork_app``; the client side imports this module too, so the
tasks are registered on ``tests.apps.basic.app``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celeriac import SoftTimeLimitExceeded
from celeriac.signals import worker_process_init
from tests.apps.basic import app

__all__ = ["app"]

INIT_PID: int | None = None
_LEAKED: list[bytearray] = []


@worker_process_init.connect
def _remember_init(**kwargs: Any) -> None:
    global INIT_PID
    INIT_PID = os.getpid()


def _mark(marker: str) -> None:
    if marker:
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")


@app.task(name="prefork.pid")
def pid() -> int:
    return os.getpid()


@app.task(name="prefork.init_pid")
def init_pid() -> list[int | None]:
    """The pid the worker_process_init hook saw, and ours: equal in a pool process."""
    return [INIT_PID, os.getpid()]


@app.task(name="prefork.sleep_marked")
def sleep_marked(seconds: float, marker: str) -> float:
    _mark(marker)
    time.sleep(seconds)
    return seconds


@app.task(name="prefork.exit")
def exit_now(code: int) -> None:
    os._exit(code)


@app.task(name="prefork.segfault")
def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


@app.task(name="prefork.catch_soft", soft_time_limit=0.3)
def catch_soft() -> str:
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "not interrupted"


@app.task(name="prefork.ignore_soft", soft_time_limit=0.3, time_limit=1.0)
def ignore_soft(marker: str = "", run_for: float = 30.0) -> str:
    """Swallows its soft limit and sleeps on: only the hard limit stops it."""
    deadline = time.monotonic() + run_for
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            _mark(marker)
    return "survived"


@app.task(name="prefork.leak")
def leak(kib: int) -> int:
    """Keeps ``kib`` KiB more alive in this process, touched so that it is resident."""
    block = bytearray(kib * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _LEAKED.append(block)
    return os.getpid()


@app.task(name="prefork.kill_child", acks_late=True, reject_on_worker_lost=True)
def kill_child(marker: str) -> None:
    """Kills its own process every time it runs: requeued, then dead-lettered."""
    _mark(marker)
    os._exit(3)


@app.task(name="prefork.write_after", ignore_result=False)
def write_after(seconds: float, path: str) -> str:
    time.sleep(seconds)
    Path(path).write_text("written")
    return "written"

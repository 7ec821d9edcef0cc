"""Fixtures of the interop tests: real Celery 5 and celeriac worker processes, and the two
client apps, on one Redis.

Every process a test starts is stopped by pid at the end of the test (``interop_procs``).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT
from tests.processes import LoggedProcess

CELERY_SIDE = "tests.interop.apps.celery_side"
CELERIAC_SIDE = "tests.interop.apps.celeriac_side"
REDIS_ENV = "CELERIAC_INTEROP_REDIS_URL"


InteropProc = LoggedProcess


@pytest.fixture
def interop_procs() -> Iterator[list[InteropProc]]:
    """The processes this test started; all stopped by pid at the end. Their logs are
    printed (pytest shows them only when the test fails)."""
    started: list[InteropProc] = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()
            print(f"---- {' '.join(p.cmd[2:])} (pid {p.pid}) ----\n{p.log()[-6000:]}")


@pytest.fixture
def interop_redis(redis_url: str) -> Iterator[str]:
    """A flushed Redis db, also named in os.environ for the client apps of this process."""
    saved = os.environ.get(REDIS_ENV)
    os.environ[REDIS_ENV] = redis_url
    try:
        yield redis_url
    finally:
        if saved is None:
            os.environ.pop(REDIS_ENV, None)
        else:
            os.environ[REDIS_ENV] = saved


def _env(url: str, extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, REDIS_ENV: url, "PYTHONPATH": str(ROOT), **(extra or {})}


StartWorker = Callable[..., InteropProc]


@pytest.fixture
def start_celery_worker(interop_redis: str, interop_procs: list[InteropProc],
                        tmp_path: Path) -> StartWorker:
    """``start_celery_worker("q1,q2")``: ``python -m celery -A celery_side worker -P solo``."""

    def start(queues: str = "celery", *extra: str, env: dict[str, str] | None = None,
              ready: bool = True) -> InteropProc:
        n = len(interop_procs)
        cmd = [sys.executable, "-m", "celery", "-A", CELERY_SIDE, "worker", "-P", "solo",
               "-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-Q", queues, "-n", f"celeryw{n}@%h", *extra]
        p = InteropProc(cmd, _env(interop_redis, env), tmp_path / f"celery-worker-{n}.log",
                        " ready.")
        interop_procs.append(p)
        return p.wait_ready() if ready else p

    return start


@pytest.fixture
def start_celeriac_worker(interop_redis: str, interop_procs: list[InteropProc],
                          tmp_path: Path) -> StartWorker:
    """``start_celeriac_worker("q1,q2")``: ``python -m celeriac.cli.main -A celeriac_side
    worker`` (solo pool unless ``extra`` says otherwise)."""

    def start(queues: str = "celery", *extra: str, env: dict[str, str] | None = None,
              ready: bool = True) -> InteropProc:
        n = len(interop_procs)
        pool = [] if "-P" in extra else ["-P", "solo"]
        cmd = [sys.executable, "-m", "celeriac.cli.main", "-A", CELERIAC_SIDE, "worker",
               "-l", "info", "-Q", queues, "-n", f"celeriacw{n}@%h", *pool, *extra]
        p = InteropProc(cmd, _env(interop_redis, env), tmp_path / f"celeriac-worker-{n}.log",
                        " ready: ")
        interop_procs.append(p)
        return p.wait_ready() if ready else p

    return start


@pytest.fixture
def celery_client(interop_redis: str) -> Iterator[ModuleType]:
    """``tests.interop.apps.celery_side``, (re)loaded against this test's Redis."""
    module = importlib.reload(importlib.import_module(CELERY_SIDE))
    try:
        yield module
    finally:
        module.app.close()


@pytest.fixture
def celeriac_client(interop_redis: str) -> Iterator[ModuleType]:
    """``tests.interop.apps.celeriac_side``, (re)loaded against this test's Redis."""
    module = importlib.reload(importlib.import_module(CELERIAC_SIDE))
    try:
        yield module
    finally:
        module.app.close()

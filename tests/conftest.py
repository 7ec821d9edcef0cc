"""Shared fixtures: a SQLite file per test and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import ROOT, LoggedProcess


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


class WorkerProcess(LoggedProcess):
    """A real ``celeriac worker`` subprocess; stopped by pid at the end of the test."""

    def __init__(self, url: str, log_path: Path, *args: str, app: str = "tests.apps.basic",
                 env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "celeriac.cli.main", "-A", app, "worker", "-l", "info", *args]
        full_env = {**os.environ, "CELERIAC_TEST_URL": url, "PYTHONPATH": str(ROOT),
                    **(env or {})}
        super().__init__(cmd, full_env, log_path, " ready: ")

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"worker did not stop on SIGTERM:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, grace: float = 0.0) -> None:
        super().stop(grace)  # SIGKILL at once


@pytest.fixture
def start_worker(db_url: str, tmp_path: Path) -> Iterator[object]:
    """Start real workers: ``start_worker("-P", "threads", "-c", "4")``."""
    started: list[WorkerProcess] = []

    def start(*args: str, url: str | None = None, ready: bool = True,
              env: dict[str, str] | None = None, app: str = "tests.apps.basic") -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        proc = WorkerProcess(url or db_url, log_path, *args, env=env, app=app)
        started.append(proc)
        return proc.wait_ready() if ready else proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def basic_app(db_url: str) -> Iterator[object]:
    """The test app of ``tests.apps.basic``, pointed at this test's SQLite file."""
    from tests.apps import basic

    basic.app.conf.broker_url = db_url
    basic.app.conf.result_backend = db_url
    yield basic
    basic.app.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a Redis for this test session (a private one unless given by env)."""
    given = os.environ.get("CELERIAC_TEST_REDIS_URL")
    if given:
        yield given
        return
    from tests.services import RedisServer

    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A Redis URL with a clean database for one test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    yield redis_server


@pytest.fixture
def private_redis() -> Iterator[object]:
    """A Redis of this test's own, for tests that kill or restart it."""
    from tests.services import RedisServer

    server = RedisServer(appendonly=True)
    try:
        yield server.start()
    finally:
        server.cleanup()


# -- RabbitMQ (tests/rabbitmq.py): one private node per session, a fresh vhost per test ------


@pytest.fixture(scope="session")
def rabbitmq_node() -> Iterator[object]:
    """The session's private RabbitMQ node (``None`` when ``CELERIAC_TEST_AMQP_URL`` is given)."""
    if os.environ.get("CELERIAC_TEST_AMQP_URL"):
        yield None
        return
    from tests.rabbitmq import RabbitMQNode

    node = RabbitMQNode()
    try:
        yield node.start()
    finally:
        node.cleanup()


@pytest.fixture
def amqp_url(rabbitmq_node: object) -> str:
    """An AMQP URL on a vhost of this test's own (from the node's pool of fresh vhosts)."""
    given = os.environ.get("CELERIAC_TEST_AMQP_URL")
    if given:
        return given
    from tests.rabbitmq import RabbitMQNode

    assert isinstance(rabbitmq_node, RabbitMQNode)
    return rabbitmq_node.url(rabbitmq_node.vhost())

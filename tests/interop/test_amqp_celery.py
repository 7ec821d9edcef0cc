"""Real Celery 5 and celeriac on one RabbitMQ, both directions, with the rpc:// backend.

Each test runs in a vhost it creates and deletes. Celery's worker is started as
``python -m celery -A tests.interop.apps.amqp_celery_app worker -P solo``, celeriac's as
``python -m celeriac.cli.main -A tests.interop.apps.amqp_celeriac_app worker``; both are
killed by pid at the end.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.processes import LoggedProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CELERY_APP = "tests.interop.apps.amqp_celery_app"
CELERIAC_APP = "tests.interop.apps.amqp_celeriac_app"
_ENV_KEYS = ("CELERIAC_TEST_AMQP_URL", "CELERIAC_TEST_BACKEND")


class Proc(LoggedProcess):
    def stop(self, grace: float = 0.0) -> None:
        super().stop(grace)  # SIGKILL at once


@pytest.fixture
def vhost_url(rabbitmq_node: Any) -> Iterator[str]:
    """A vhost this test creates and deletes."""
    if rabbitmq_node is None:
        pytest.skip("interop tests need the private node (to create a vhost)")
    name = f"interop-{uuid.uuid4().hex[:8]}"
    rabbitmq_node.add_vhost(name)
    try:
        yield rabbitmq_node.url(name)
    finally:
        rabbitmq_node.delete_vhost(name)


@pytest.fixture
def env(vhost_url: str) -> Iterator[dict[str, str]]:
    values = {"CELERIAC_TEST_AMQP_URL": vhost_url, "CELERIAC_TEST_BACKEND": "rpc://"}
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ.update(values)
    try:
        yield {**os.environ, "PYTHONPATH": str(ROOT), **values}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def celery_worker(env: dict[str, str], procs: list[Proc], tmp_path: Path) -> Proc:
    cmd = [sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "-P", "solo", "-l", "info",
           "-Q", "celery,hipri", "--without-mingle", "--without-gossip", "--without-heartbeat",
           "-n", "celeryw@%h"]
    p = Proc(cmd, env, tmp_path / "celery-worker.log", " ready.")
    procs.append(p)
    return p.wait_ready()


def celeriac_worker(env: dict[str, str], procs: list[Proc], tmp_path: Path) -> Proc:
    cmd = [sys.executable, "-m", "celeriac.cli.main", "-A", CELERIAC_APP, "worker", "-l", "info",
           "-P", "threads", "-c", "2", "-Q", "celery,hipri"]
    p = Proc(cmd, env, tmp_path / "celeriac-worker.log", " ready: ")
    procs.append(p)
    return p.wait_ready()


@pytest.fixture
def celery_client(env: dict[str, str]) -> Iterator[Any]:
    module = importlib.reload(importlib.import_module(CELERY_APP))
    yield module
    module.app.close()


@pytest.fixture
def celeriac_client(env: dict[str, str]) -> Iterator[Any]:
    module = importlib.reload(importlib.import_module(CELERIAC_APP))
    yield module
    module.app.close()


def test_celery_client_celeriac_worker(
    env: dict[str, str], procs: list[Proc], tmp_path: Path, celery_client: Any
) -> None:
    worker = celeriac_worker(env, procs, tmp_path)
    try:
        assert celery_client.add.delay(2, 3).get(timeout=20) == 5
        assert celery_client.add.apply_async((1, 1), {"z": 1}, queue="hipri").get(timeout=20) == 3
        routed = celery_client.add.apply_async((4, 4), exchange="media", routing_key="media.video")
        assert routed.get(timeout=20) == 8
        with pytest.raises(ValueError, match="boom"):
            celery_client.fail.delay("boom").get(timeout=20)
        start = time.monotonic()
        later = celery_client.add.apply_async((10, 1), countdown=2)  # ETA from Celery
        assert later.get(timeout=20) == 11
        assert time.monotonic() - start >= 1.9
        many = [celery_client.add.delay(i, i) for i in range(50)]
        assert [r.get(timeout=20) for r in many] == [2 * i for i in range(50)]
    except BaseException:
        print(worker.log())
        raise


def test_celeriac_client_celery_worker(
    env: dict[str, str], procs: list[Proc], tmp_path: Path, celeriac_client: Any
) -> None:
    worker = celery_worker(env, procs, tmp_path)
    try:
        assert celeriac_client.add.delay(2, 3).get(timeout=20) == 5
        assert celeriac_client.add.apply_async((1, 2), queue="hipri").get(timeout=20) == 3
        with pytest.raises(ValueError, match="boom"):
            celeriac_client.fail.delay("boom").get(timeout=20)
        later = celeriac_client.add.apply_async((3, 4), countdown=1)  # waits in RabbitMQ
        assert later.get(timeout=20) == 7
        many = [celeriac_client.add.delay(i, 1) for i in range(50)]
        assert [r.get(timeout=20) for r in many] == [i + 1 for i in range(50)]
    except BaseException:
        print(worker.log())
        raise


def test_celery_eta_hours_away_waits_in_rabbitmq_not_in_the_worker(
    env: dict[str, str], procs: list[Proc], tmp_path: Path, celery_client: Any,
    rabbitmq_node: Any, vhost_url: str,
) -> None:
    worker = celeriac_worker(env, procs, tmp_path)
    vhost = vhost_url.rsplit("/", 1)[1]
    celery_client.add.apply_async((1, 1), countdown=3 * 3600)
    deadline = time.monotonic() + 20
    while True:
        listing = rabbitmq_node.ctl("list_queues", "-p", vhost, "name", "messages_ready",
                                    "messages_unacknowledged", "--no-table-headers", "-q")
        rows = {line.split()[0]: (int(line.split()[1]), int(line.split()[2]))
                for line in listing.splitlines() if line.strip()}
        delayed = sum(r + u for name, (r, u) in rows.items()
                      if name.startswith("celeriac.delay.celery."))
        if delayed == 1 and rows.get("celery") == (0, 0):
            break  # moved into the delay levels and acked: the worker holds nothing
        assert time.monotonic() < deadline, (rows, worker.log())
        time.sleep(0.3)

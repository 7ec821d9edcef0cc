"""A real ``celeriac worker`` process on RabbitMQ (a vhost of the session's private node), and
the faults: SIGKILL mid-task, the connection cut by a proxy, the memory alarm."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.brokers.amqp import AMQPBroker
from celeriac.errors import BrokerError
from celeriac.message import Envelope, Outgoing
from tests.conftest import ROOT
from tests.processes import LoggedProcess
from tests.rabbitmq import memory_alarm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

APP = "tests.interop.apps.amqp_celeriac_app"


class CeleriacWorker(LoggedProcess):
    """``celeriac worker`` on the AMQP test app; killed by pid at the end."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "celeriac.cli.main", "-A", APP, "worker", "-l", "info", *args]
        super().__init__(cmd, env, log_path, " ready: ")

    def stop(self, grace: float = 0.0) -> None:
        super().stop(grace)  # SIGKILL at once


@pytest.fixture
def amqp_env(amqp_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CELERIAC_TEST_AMQP_URL": amqp_url,
           "CELERIAC_TEST_BACKEND": f"sqlite:///{tmp_path / 'results.db'}"}
    saved = {k: os.environ.get(k) for k in ("CELERIAC_TEST_AMQP_URL", "CELERIAC_TEST_BACKEND")}
    os.environ.update({k: env[k] for k in saved})
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def client_app(amqp_env: dict[str, str]) -> Iterator[Any]:
    module = importlib.import_module(APP)
    module = importlib.reload(module)  # picks up this test's URLs
    yield module
    module.app.close()


@pytest.fixture
def workers(amqp_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    started: list[CeleriacWorker] = []

    def start(*args: str, env: dict[str, str] | None = None) -> CeleriacWorker:
        w = CeleriacWorker({**amqp_env, **(env or {})}, tmp_path / f"w{len(started)}.log", *args)
        started.append(w)
        return w.wait_ready()

    yield start
    for w in started:
        w.stop()


def test_round_trip_many_and_failure(client_app: Any, workers: Any) -> None:
    workers("-P", "threads", "-c", "4")
    assert client_app.add.delay(2, 2).get(timeout=20) == 4
    results = [client_app.add.delay(i, 1) for i in range(200)]
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(200)]
    with pytest.raises(ValueError, match="boom"):
        client_app.fail.delay("boom").get(timeout=20)


def test_named_exchange_route_and_countdown(client_app: Any, workers: Any) -> None:
    workers("-P", "threads", "-c", "2", "-Q", "celery,hipri")
    routed = client_app.add.apply_async((1, 2), exchange="media", routing_key="media.video",
                                        queue="hipri")
    assert routed.get(timeout=20) == 3
    start = time.monotonic()
    later = client_app.add.apply_async((5, 5), countdown=1.5)
    assert later.get(timeout=20) == 10
    assert time.monotonic() - start >= 1.4


def test_sigkill_mid_task_under_acks_late_is_redelivered(
    client_app: Any, workers: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "runs.txt"
    first = workers("-P", "solo")
    res = client_app.slow_add.apply_async((2, 3), {"marker": str(marker), "seconds": 3.0})
    deadline = time.monotonic() + 20
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.05)
    first.stop()  # SIGKILL while the task sleeps: its message was never acked
    workers("-P", "solo")
    assert res.get(timeout=30) == 5
    assert len(marker.read_text().split()) == 2


class CuttingProxy:
    """A tiny TCP proxy on its own thread and loop; ``cut()`` drops every open connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for w in list(self._writers):
                w.transport.abort()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        def abort_all() -> None:
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()

        self.cuts += 1
        self._loop.call_soon_threadsafe(abort_all)


def test_worker_reconnects_after_cut_and_loses_nothing(
    amqp_env: dict[str, str], client_app: Any, workers: Any, tmp_path: Path
) -> None:
    url = amqp_env["CELERIAC_TEST_AMQP_URL"]
    port = int(url.split("@", 1)[1].split(":", 1)[1].split("/", 1)[0])
    with CuttingProxy(port) as proxy:
        via_proxy = url.replace(f":{port}/", f":{proxy.port}/")
        worker = workers("-P", "threads", "-c", "4",
                         env={"CELERIAC_TEST_AMQP_URL": via_proxy})
        results = [client_app.slow_add.apply_async((i, 0), {"seconds": 0.02}) for i in range(150)]
        time.sleep(0.5)
        proxy.cut()
        time.sleep(1.0)
        proxy.cut()
        more = [client_app.add.delay(i, 1000) for i in range(50)]
        assert [r.get(timeout=60) for r in results] == list(range(150)), worker.log()
        assert [r.get(timeout=60) for r in more] == [i + 1000 for i in range(50)]
        assert "reconnected" in worker.log()


async def test_memory_alarm_blocks_publishers_then_raises(rabbitmq_node: Any, amqp_url: str) -> None:
    if rabbitmq_node is None:
        pytest.skip("needs the private node (to raise its memory alarm)")
    broker = AMQPBroker(amqp_url, publish_timeout=1.5)
    await broker.connect()
    try:
        await broker.publish([Outgoing("alarm", Envelope(b"before"))])
        assert broker.publish_blocking([Outgoing("alarm", Envelope(b"before, sync"))])
        async with memory_alarm(rabbitmq_node):
            start = time.monotonic()
            with pytest.raises(BrokerError, match="did not confirm"):
                await broker.publish([Outgoing("alarm", Envelope(b"blocked"))])
            elapsed = time.monotonic() - start
            assert 1.2 <= elapsed < 5, elapsed
            start = time.monotonic()  # the same from sync code, on the blocking channel
            with pytest.raises(BrokerError, match=r"did not confirm .* \(blocked by RabbitMQ: "):
                broker.publish_blocking([Outgoing("alarm", Envelope(b"blocked, sync"))])
            elapsed = time.monotonic() - start
            assert 1.2 <= elapsed < 5, elapsed
        assert broker.publish_blocking([Outgoing("alarm", Envelope(b"after, sync"))])
        await broker.publish([Outgoing("alarm", Envelope(b"after"))])
        got = [d.envelope.body for d in await broker.fetch(["alarm"], 10, 2.0)]
        # nothing dropped (a publish that raised may still have landed)
        assert got[:2] == [b"before", b"before, sync"] and got[-2:] == [b"after, sync", b"after"]
    finally:
        await broker.close()


async def test_coroutines_sending_together_first_open_one_connection(amqp_url: str) -> None:
    """An async web app's first requests arrive together: they wait for one connect of the
    loop's broker rather than each opening (and leaking) an AMQP connection of its own."""
    from urllib.parse import urlsplit

    import psutil

    from celeriac import Celeriac

    port = urlsplit(amqp_url).port
    app = Celeriac("together", broker=amqp_url, backend="memory://together")
    try:
        await asyncio.gather(*(app.asend_task("t.add", (i, i), queue="together")
                               for i in range(20)))
        ours = [c for c in psutil.Process().net_connections(kind="tcp")
                if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
        assert len(ours) == 1
        broker = await app.broker()
        assert await broker.queue_size("together") == 20
    finally:
        await app.aclose()


async def test_consumer_takes_empty_small_and_multi_frame_bodies(amqp_url: str) -> None:
    """Deliveries pushed to a consumer come whole whatever their size: no body, a small one,
    and one longer than a frame (several body frames), interleaved."""
    bodies = [b"", b"x" * 100, bytes(range(256)) * 2000, b"", b"y"] * 20
    broker = AMQPBroker(amqp_url)
    await broker.connect()
    try:
        await broker.publish([Outgoing("sizes", Envelope(body, headers={"i": i}))
                              for i, body in enumerate(bodies)])
        got: list[Any] = []
        while len(got) < len(bodies):
            batch = await broker.fetch(["sizes"], 8, 10.0)
            assert batch
            await broker.ack(batch)
            got += batch
        assert [d.envelope.body for d in got] == bodies
        assert [d.envelope.headers["i"] for d in got] == list(range(len(bodies)))
    finally:
        await broker.close()


async def test_a_connection_closed_in_the_handshake_is_a_connection_error() -> None:
    """A peer that takes the protocol header and hangs up (a node shutting down, a proxy
    that lost its upstream): ``connect`` raises ``BrokerConnectionError``, nothing rawer."""
    import socket

    from celeriac.errors import BrokerConnectionError

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                peer, _ = server.accept()
                peer.recv(8)
                peer.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        broker = AMQPBroker(f"amqp://guest:guest@127.0.0.1:{port}//", connect_timeout=5)
        with pytest.raises(BrokerConnectionError, match="closed during the handshake"):
            await broker.connect()
    finally:
        server.close()

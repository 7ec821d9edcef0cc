"""Publishing from sync code on RabbitMQ: the broker's blocking channel (``_amqp_blocking``),
against a vhost of the session's private node."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiormq
import pytest

from celeriac import Celeriac
from celeriac.brokers.amqp import AMQPBroker
from celeriac.errors import BrokerError, ConfigurationError
from celeriac.message import Envelope, Outgoing
from celeriac.utils.sync import run_sync, thread_loop
from tests.rabbitmq import memory_alarm

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _admin(url: str, act: Callable[[aiormq.abc.AbstractChannel], Awaitable[Any]]) -> Any:
    """Run ``act`` on a channel of a connection of its own (a loop of its own, too)."""

    async def run() -> Any:
        connection = await aiormq.connect(url)
        try:
            return await act(await connection.channel())
        finally:
            await connection.close()

    return asyncio.run(run())


def _take_all(url: str, queue: str) -> list[aiormq.abc.DeliveredMessage]:
    async def take(channel: aiormq.abc.AbstractChannel) -> list[aiormq.abc.DeliveredMessage]:
        got = []
        while True:
            message = await channel.basic_get(queue, no_ack=True)
            if message.delivery_tag is None:
                return got
            got.append(message)

    return list(_admin(url, take))


@pytest.fixture
def app(amqp_url: str) -> Iterator[Celeriac]:
    app = Celeriac("blockingamqp", broker=amqp_url, backend="memory://blockingamqp")
    yield app
    app.close()


def _broker(app: Celeriac) -> AMQPBroker:
    broker = app._resources[thread_loop()].broker
    assert isinstance(broker, AMQPBroker)
    return broker


def test_sync_sends_go_out_on_the_blocking_channel_in_order(app: Celeriac, amqp_url: str) -> None:
    """The first send to a queue declares it (the async path); the next ones, ``send_many``
    too, go out on the blocking channel, confirmed, in call order."""
    sent = [app.send_task("t.add", (0, 0), queue="bq").id]
    assert _broker(app)._blocking is None  # the route had to be declared first
    sent += [app.send_task("t.add", (i, 1), queue="bq").id for i in range(20)]
    sent += [r.id for r in app.send_many([app.signature("t.add", (i, 2), queue="bq")
                                          for i in range(5)])]
    blocking = _broker(app)._blocking
    assert blocking is not None and blocking._sock is not None
    # a countdown: the first declares the delay levels, the second goes out blocking
    tags = blocking._tag
    delayed = {app.send_task("t.add", (0, 3), queue="bq", countdown=0.5).id for _ in range(2)}
    assert blocking._tag == tags + 1
    assert [m.header.properties.headers["id"] for m in _take_all(amqp_url, "bq")] == sent
    time.sleep(1.5)
    assert {m.header.properties.headers["id"] for m in _take_all(amqp_url, "bq")} == delayed


async def test_a_message_is_the_same_on_either_path(amqp_url: str) -> None:
    """Properties, headers and body of a blocking publish are those of ``publish``."""
    broker = AMQPBroker(amqp_url)
    await broker.connect()
    try:
        envelope = Envelope(b'[[1, 2], {}, {}]', headers={"id": "x1", "task": "t.add"},
                            properties={"correlation_id": "x1", "reply_to": "r1",
                                        "delivery_mode": 2, "priority": 4})
        out = Outgoing("same", envelope, priority=4)
        await broker.publish([out])
        assert broker.publish_blocking([out])
    finally:
        await broker.close()
    first, second = await asyncio.to_thread(_take_all, amqp_url, "same")
    assert first.body == second.body == envelope.body
    a, b = (dict(m.header.properties) for m in (first, second))
    assert a.pop("message_id") != b.pop("message_id")  # one per publish, as returns match it
    assert a == b


async def test_refusals_raise_and_the_next_publish_reopens(amqp_url: str) -> None:
    """A message no queue takes (``mandatory``) and a channel closed by an error (an exchange
    deleted under a declared route) raise ``BrokerError``; the channel is opened anew."""
    broker = AMQPBroker(amqp_url)
    await broker.connect()
    try:
        await broker.publish([Outgoing("gone", Envelope(b"a")), Outgoing("kept", Envelope(b"b")),
                              Outgoing("kept", Envelope(b"x"), exchange="bx", routing_key="kept")])
        assert broker.publish_blocking([Outgoing("kept", Envelope(b"c"))])

        async def delete(channel: aiormq.abc.AbstractChannel) -> None:
            await channel.queue_delete("gone")
            await channel.exchange_delete("bx")

        await asyncio.to_thread(_admin, amqp_url, delete)
        with pytest.raises(BrokerError, match=r"1 message\(s\) unroutable \(exchange '' key 'gone'\)"):
            broker.publish_blocking([Outgoing("gone", Envelope(b"d"))])
        with pytest.raises(BrokerError, match="refused the publish: 404 NOT_FOUND"):
            broker.publish_blocking([Outgoing("kept", Envelope(b"e"), exchange="bx",
                                              routing_key="kept")])
        assert broker._blocking is not None and broker._blocking._sock is None
        assert broker.publish_blocking([Outgoing("kept", Envelope(b"f"))])
    finally:
        await broker.close()
    got = await asyncio.to_thread(_take_all, amqp_url, "kept")
    assert [m.body for m in got] == [b"b", b"x", b"c", b"f"]


def test_a_connection_closed_by_rabbitmq_is_reopened_and_the_send_retried(
    app: Celeriac, amqp_url: str, rabbitmq_node: Any,
) -> None:
    if rabbitmq_node is None:
        pytest.skip("needs the private node (to close connections)")
    first = app.send_task("t.add", (1, 1), queue="cut").id
    second = app.send_task("t.add", (2, 2), queue="cut").id
    blocking = _broker(app)._blocking
    assert blocking is not None and blocking._sock is not None
    old = blocking._sock
    rabbitmq_node.ctl("close_all_connections", "-p", _vhost(amqp_url), "test closes it")
    third = app.send_task("t.add", (3, 3), queue="cut").id  # retried per the default policy
    assert blocking._sock is not None and blocking._sock is not old
    assert [m.header.properties.headers["id"] for m in _take_all(amqp_url, "cut")] == \
        [first, second, third]


def test_a_queue_lost_with_the_connection_is_declared_again_before_the_next_send(
    app: Celeriac, amqp_url: str, rabbitmq_node: Any,
) -> None:
    """A node restarted without a queue (not durable, or its data gone): the blocking
    channel's new connection declares again what the broker declared, and the send lands."""
    if rabbitmq_node is None:
        pytest.skip("needs the private node (to close connections)")
    app.send_task("t.add", (1, 1), queue="lost")
    app.send_task("t.add", (2, 2), queue="lost")  # on the blocking channel

    async def delete(channel: aiormq.abc.AbstractChannel) -> None:
        await channel.queue_delete("lost")

    _admin(amqp_url, delete)
    rabbitmq_node.ctl("close_all_connections", "-p", _vhost(amqp_url), "test closes it")
    sent = app.send_task("t.add", (3, 3), queue="lost").id
    assert [m.header.properties.headers["id"] for m in _take_all(amqp_url, "lost")] == [sent]


def _vhost(url: str) -> str:
    return aiormq.connection.URL(url).path[1:].replace("%2F", "/") or "/"


async def test_an_idle_connection_is_opened_anew_before_use(amqp_url: str) -> None:
    """No heartbeats go out between calls: past the heartbeat interval the connection is
    replaced rather than trusted (a firewall may have dropped it)."""
    broker = AMQPBroker(amqp_url, heartbeat=1)
    await broker.connect()
    try:
        await broker.publish([Outgoing("idle", Envelope(b"a"))])
        assert broker.publish_blocking([Outgoing("idle", Envelope(b"b"))])
        assert broker._blocking is not None
        sock = broker._blocking._sock
        assert broker.publish_blocking([Outgoing("idle", Envelope(b"c"))])
        assert broker._blocking._sock is sock
        await asyncio.sleep(1.3)
        assert broker.publish_blocking([Outgoing("idle", Envelope(b"d"))])
        assert broker._blocking._sock is not sock
    finally:
        await broker.close()
    got = await asyncio.to_thread(_take_all, amqp_url, "idle")
    assert [m.body for m in got] == [b"a", b"b", b"c", b"d"]


def test_sync_sends_keep_the_async_connection_alive(amqp_url: str) -> None:
    """Sync sends on the blocking channel alone still let the broker's loop run now and then,
    so its connection answers RabbitMQ's heartbeats and is not dropped."""
    app = Celeriac("heartbeats", broker=amqp_url, backend="memory://heartbeats")
    app.conf.broker_transport_options = {"heartbeat": 1}
    try:
        app.send_task("t.add", (0, 0), queue="beat")
        broker = _broker(app)
        assert broker.heartbeat == 1
        conn = broker._conn
        assert conn is not None
        deadline = time.monotonic() + 4.5  # past two missed heartbeats and then some
        while time.monotonic() < deadline:
            app.send_task("t.add", (0, 0), queue="beat")
            time.sleep(0.05)
        assert broker._blocking is not None and broker._blocking._sock is not None
        run_sync(asyncio.sleep(0.2))  # a dropped connection would be seen closed now
        assert broker._conn is conn and not conn.connection.is_closed
    finally:
        app.close()


@pytest.mark.timeout(120)
def test_a_forked_child_publishes_on_a_connection_of_its_own(app: Celeriac, amqp_url: str) -> None:
    """Parent and child publish at once after a fork, each on its own socket: every
    confirm reaches its own publisher, and every message lands once."""
    app.send_task("t.add", (0, 0), queue="forked")
    app.send_task("t.add", (0, 0), queue="forked")  # the blocking channel is open
    n = 200
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for i in range(n):
                app.send_task("t.add", (i, 1), queue="forked")
            code = 0
        finally:
            os._exit(code)
    for i in range(n):
        app.send_task("t.add", (i, 2), queue="forked")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    async def size() -> int:
        return await (await app.broker()).queue_size("forked")

    assert run_sync(size()) == 2 * n + 2


async def test_without_confirms_sync_sends_take_the_async_path(amqp_url: str) -> None:
    broker = AMQPBroker(amqp_url, confirm_publish=False)
    await broker.connect()
    try:
        await broker.publish([Outgoing("noconfirm", Envelope(b"a"))])
        assert not broker.publish_blocking([Outgoing("noconfirm", Envelope(b"b"))])
        assert broker._blocking is None
    finally:
        await broker.close()


# -- the confirm window (``confirm_window``) ------------------------------------------------


async def _windowed(amqp_url: str, window: int, **options: Any) -> AMQPBroker:
    broker = AMQPBroker(amqp_url, confirm_window=window, **options)
    await broker.connect()
    return broker


async def test_a_window_returns_before_the_confirms_and_close_waits_for_them(
    amqp_url: str,
) -> None:
    """Publishes return with confirms still owed, never more than the window; ``close``
    takes every confirm; every message lands once, in order."""
    broker = await _windowed(amqp_url, 16)
    try:
        await broker.publish([Outgoing("win", Envelope(b"0"))])  # declares the route
        most = 0
        for i in range(1, 301):
            assert broker.publish_blocking([Outgoing("win", Envelope(str(i).encode()))])
            blocking = broker._blocking
            assert blocking is not None
            most = max(most, len(blocking._owed))
            # reads wait with timeouts of their own; writes get the whole publish timeout
            assert blocking._sock is not None and blocking._sock.gettimeout() == blocking.timeout
        assert 0 < most <= 16
    finally:
        await broker.close()
    assert blocking._owed == {} and blocking._again == []
    got = await asyncio.to_thread(_take_all, amqp_url, "win")
    assert [m.body for m in got] == [str(i).encode() for i in range(301)]


async def test_a_window_batch_larger_than_the_window_goes_out_whole(amqp_url: str) -> None:
    broker = await _windowed(amqp_url, 4)
    try:
        await broker.publish([Outgoing("big", Envelope(b"-"))])
        for batch in range(3):
            assert broker.publish_blocking(
                [Outgoing("big", Envelope(f"{batch}.{i}".encode())) for i in range(10)])
        assert broker._blocking is not None
        broker._blocking.flush()
        assert broker._blocking._owed == {}
    finally:
        await broker.close()
    got = await asyncio.to_thread(_take_all, amqp_url, "big")
    assert [m.body for m in got] == [b"-"] + [f"{b}.{i}".encode() for b in range(3)
                                             for i in range(10)]


async def test_a_window_gives_up_nacked_and_unroutable_messages_and_flush_reports_them(
    amqp_url: str,
) -> None:
    """A full queue that rejects publishes nacks: the message is sent again, then given up
    after ``MAX_SENDS``; a message whose queue is gone comes back unroutable. Neither stops
    the others; ``flush`` raises for both, once."""
    broker = await _windowed(amqp_url, 32, queue_arguments={
        "x-max-length": 2, "x-overflow": "reject-publish"})
    try:
        await broker.publish([Outgoing("full", Envelope(b"a")), Outgoing("doomed", Envelope(b"x"))])
        envelope = Envelope(b"b", properties={"correlation_id": "id-b", "delivery_mode": 2})
        assert broker.publish_blocking([Outgoing("full", envelope)])  # the channel is open

        async def delete(channel: aiormq.abc.AbstractChannel) -> None:
            await channel.queue_delete("doomed")

        await asyncio.to_thread(_admin, amqp_url, delete)
        rejected = Envelope(b"c", properties={"correlation_id": "id-c", "delivery_mode": 2})
        assert broker.publish_blocking([Outgoing("full", rejected)])
        lost = Envelope(b"y", properties={"correlation_id": "id-y", "delivery_mode": 2})
        assert broker.publish_blocking([Outgoing("doomed", lost)])
        blocking = broker._blocking
        assert blocking is not None
        with pytest.raises(BrokerError, match=r"did not take 2 message\(s\)") as caught:
            blocking.flush()
        text = str(caught.value)
        assert "id-c nacked 3 times" in text
        assert "id-y unroutable (exchange '' key 'doomed')" in text
        blocking.flush()  # reported once
    finally:
        await broker.close()
    got = await asyncio.to_thread(_take_all, amqp_url, "full")
    assert [m.body for m in got] == [b"a", b"b"]


async def test_a_window_publish_to_a_deleted_exchange_is_sent_again_or_given_up(
    amqp_url: str,
) -> None:
    """The channel closed by the node (404) forgets the publishes after the bad one: all that
    is owed goes again on a new channel, which declares the exchange again, so all lands. An
    exchange that cannot come back is given up after ``MAX_SENDS``; the rest still lands."""
    broker = await _windowed(amqp_url, 64)
    try:
        await broker.publish([Outgoing("keep", Envelope(b"k0")),
                              Outgoing("keep", Envelope(b"x"), exchange="gx", routing_key="keep")])
        assert broker.publish_blocking([Outgoing("keep", Envelope(b"k1"))])  # the channel is open

        async def delete(channel: aiormq.abc.AbstractChannel) -> None:
            await channel.exchange_delete("gx")

        def send(body: bytes) -> None:
            envelope = Envelope(body, properties={"correlation_id": body.decode(),
                                                  "delivery_mode": 2})
            assert broker.publish_blocking([Outgoing("keep", envelope, exchange="gx",
                                                     routing_key="keep")])

        await asyncio.to_thread(_admin, amqp_url, delete)
        send(b"back")
        for i in range(2, 11):
            assert broker.publish_blocking([Outgoing("keep", Envelope(f"k{i}".encode()))])
        blocking = broker._blocking
        assert blocking is not None
        blocking.flush(timeout=20)

        await asyncio.to_thread(_admin, amqp_url, delete)
        broker._declare_log[:] = [d for d in broker._declare_log if "gx" not in d]
        send(b"gone")
        for i in range(11, 21):
            assert broker.publish_blocking([Outgoing("keep", Envelope(f"k{i}".encode()))])
        with pytest.raises(BrokerError, match=r"did not take 1 message\(s\).*gone refused"):
            blocking.flush(timeout=20)
    finally:
        await broker.close()
    got = {m.body for m in await asyncio.to_thread(_take_all, amqp_url, "keep")}
    assert got == {b"x", b"back"} | {f"k{i}".encode() for i in range(21)}  # at least once each


async def test_a_window_keeps_what_a_blocked_node_dropped_and_sends_it_again(
    rabbitmq_node: Any, amqp_url: str,
) -> None:
    """Under RabbitMQ's memory alarm the node stops reading: publishes fill the window, the
    next one waits ``publish_timeout`` and raises without being sent. The connection is then
    closed with the written messages unread; once the alarm clears, ``flush`` sends them
    again on a new connection and every one lands."""
    if rabbitmq_node is None:
        pytest.skip("needs the private node (to raise its memory alarm)")
    broker = await _windowed(amqp_url, 8, publish_timeout=1.5)
    try:
        await broker.publish([Outgoing("held", Envelope(b"first"))])
        async with memory_alarm(rabbitmq_node):
            for i in range(8):
                assert broker.publish_blocking([Outgoing("held", Envelope(f"w{i}".encode()))])
            start = time.monotonic()
            with pytest.raises(BrokerError, match=r"not sent \(blocked by RabbitMQ: "):
                broker.publish_blocking([Outgoing("held", Envelope(b"no room"))])
            assert 1.2 <= time.monotonic() - start < 5
            blocking = broker._blocking
            assert blocking is not None and len(blocking._owed) >= 7
            await asyncio.to_thread(rabbitmq_node.ctl, "close_all_connections", "-p",
                                    _vhost(amqp_url), "test closes it")
        blocking.flush(timeout=20)
        assert blocking._owed == {} and blocking._again == []
    finally:
        await broker.close()
    got = [m.body for m in await asyncio.to_thread(_take_all, amqp_url, "held")]
    assert set(got) == {b"first"} | {f"w{i}".encode() for i in range(8)}, got


async def test_a_window_write_cut_short_by_a_blocked_node_drops_the_connection(
    rabbitmq_node: Any, amqp_url: str,
) -> None:
    """A batch too big for the socket's buffers, sent while the node reads nothing, times out
    in the middle of a frame: the publish raises and the connection goes, so the publishes
    after it do not follow half a frame; all of them land."""
    if rabbitmq_node is None:
        pytest.skip("needs the private node (to raise its memory alarm)")
    broker = await _windowed(amqp_url, 10_000, publish_timeout=1.5)

    def out(name: str, size: int = 10) -> Outgoing:
        return Outgoing("cut", Envelope(name.encode() + b"." * size,
                                        properties={"correlation_id": name, "delivery_mode": 2}))

    try:
        await broker.publish([out("first")])
        assert broker.publish_blocking([out("open")])
        async with memory_alarm(rabbitmq_node):
            with pytest.raises(BrokerError, match="did not confirm 2 message"):
                broker.publish_blocking([out("small"), out("big", 8_000_000)])
            assert broker._blocking is not None and broker._blocking._sock is None
        later = [f"later{i}" for i in range(20)]
        for name in later:
            assert broker.publish_blocking([out(name)])
        broker._blocking.flush(timeout=20)
    finally:
        await broker.close()
    got = {m.header.properties.correlation_id
           for m in await asyncio.to_thread(_take_all, amqp_url, "cut")}
    assert {"first", "open", *later} <= got, got


def test_a_window_is_flushed_when_the_interpreter_exits(amqp_url: str, tmp_path: Any) -> None:
    """A script that sends with a window and ends without ``close`` loses nothing."""
    script = tmp_path / "send.py"
    script.write_text(
        "import sys\n"
        "from celeriac import Celeriac\n"
        f"app = Celeriac('exits', broker={amqp_url!r}, backend='memory://exits')\n"
        "app.conf.broker_transport_options = {'confirm_window': 512}\n"
        "for i in range(400):\n"
        "    app.send_task('t.add', (i, 0), queue='atexit')\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr
    got = _take_all(amqp_url, "atexit")
    assert [m.header.properties.headers["argsrepr"] for m in got] == \
        [repr((i, 0)) for i in range(400)]


@pytest.mark.parametrize("bad", [-1, True, 1.5, "8"])
def test_confirm_window_must_be_a_whole_number(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="confirm_window must be a whole number"):
        AMQPBroker("amqp://guest:guest@localhost:5672//", confirm_window=bad)


def test_app_flush_waits_for_what_the_window_owes(amqp_url: str) -> None:
    """``app.flush()`` returns once every send of this thread is confirmed; without a window
    (or before any send) it returns at once."""
    app = Celeriac("flushes", broker=amqp_url, backend="memory://flushes")
    app.conf.broker_transport_options = {"confirm_window": 1000}
    try:
        app.flush()  # nothing sent, nothing connected
        ids = [app.send_task("t.add", (i, 0), queue="flushed").id for i in range(200)]
        blocking = _broker(app)._blocking
        assert blocking is not None and blocking._owed  # sends returned before their confirms
        app.flush()
        assert blocking._owed == {} and blocking._again == []
        assert [m.header.properties.headers["id"] for m in _take_all(amqp_url, "flushed")] == ids
    finally:
        app.close()


async def test_a_window_flushes_soon_after_a_memory_alarm_clears(
    rabbitmq_node: Any, amqp_url: str,
) -> None:
    """Messages written while the node is blocked are confirmed once the alarm clears, even
    with no publish after them: ``flush`` does not wait out its timeout for confirms the
    node holds back."""
    if rabbitmq_node is None:
        pytest.skip("needs the private node (to raise its memory alarm)")
    broker = await _windowed(amqp_url, 64, publish_timeout=60)
    try:
        await broker.publish([Outgoing("thaw", Envelope(b"first"))])
        assert broker.publish_blocking([Outgoing("thaw", Envelope(b"open"))])
        async with memory_alarm(rabbitmq_node):
            for i in range(5):
                assert broker.publish_blocking([Outgoing("thaw", Envelope(f"b{i}".encode()))])
        blocking = broker._blocking
        assert blocking is not None
        blocking.flush(timeout=15)  # well short of the publish timeout
        assert blocking._owed == {} and blocking._again == []
    finally:
        await broker.close()
    got = [m.body for m in await asyncio.to_thread(_take_all, amqp_url, "thaw")]
    assert got == [b"first", b"open"] + [f"b{i}".encode() for i in range(5)]


def test_a_forked_child_exits_without_the_parents_window(amqp_url: str, tmp_path: Any) -> None:
    """A child forked while a parent thread held the channel's lock, with confirms owed,
    exits at once: what is owed is the parent's, flushed by the parent, each message once.
    The channel is reset by the fork itself, so any thread of the child finds a free lock."""
    script = tmp_path / "forks.py"
    script.write_text(
        "import os, sys, threading, time\n"
        "from celeriac import Celeriac\n"
        "from celeriac.utils.sync import thread_loop\n"
        f"app = Celeriac('forks', broker={amqp_url!r}, backend='memory://forks')\n"
        "app.conf.broker_transport_options = {'confirm_window': 512}\n"
        "for i in range(50):\n"
        "    app.send_task('t.add', (i, 0), queue='forked')\n"
        "blocking = app._resources[thread_loop()].broker._blocking\n"
        "assert blocking._owed\n"
        "held, release = threading.Event(), threading.Event()\n"
        "def hold():\n"
        "    with blocking._lock:\n"
        "        held.set()\n"
        "        release.wait()\n"
        "holder = threading.Thread(target=hold)\n"
        "holder.start()\n"
        "held.wait()\n"
        "pid = os.fork()\n"
        "if pid == 0:  # reset at the fork, before any call: a lock of its own, no socket\n"
        "    mine = blocking._lock.acquire(blocking=False)\n"
        "    sys.exit(0 if mine and blocking._sock is None and not blocking._owed else 3)\n"
        "deadline = time.monotonic() + 30\n"
        "while time.monotonic() < deadline:\n"
        "    done, status = os.waitpid(pid, os.WNOHANG)\n"
        "    if done:\n"
        "        break\n"
        "    time.sleep(0.05)\n"
        "else:\n"
        "    os.kill(pid, 9)\n"
        "    sys.exit('the child hung at exit')\n"
        "release.set()\n"
        "holder.join()\n"
        "app.flush()\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "ignore", str(script)], capture_output=True,
                          text=True, timeout=80, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    got = _take_all(amqp_url, "forked")
    assert [m.header.properties.headers["argsrepr"] for m in got] == \
        [repr((i, 0)) for i in range(50)]


async def test_a_window_flush_keeps_its_timeout_while_sending_again_one_by_one(
    rabbitmq_node: Any, amqp_url: str,
) -> None:
    """After a refusal closed the channel, what is owed goes again one message at a time; a
    node blocked meanwhile makes ``flush(timeout)`` raise after its own timeout, not the
    publish timeout per message, and the next ``flush`` lands everything."""
    if rabbitmq_node is None:
        pytest.skip("needs the private node (to raise its memory alarm)")
    broker = await _windowed(amqp_url, 64, publish_timeout=60)
    try:
        await broker.publish([Outgoing("probe", Envelope(b"p0")),
                              Outgoing("probe", Envelope(b"x"), exchange="px",
                                       routing_key="probe")])
        assert broker.publish_blocking([Outgoing("probe", Envelope(b"p1"))])

        async def delete(channel: aiormq.abc.AbstractChannel) -> None:
            await channel.exchange_delete("px")

        await asyncio.to_thread(_admin, amqp_url, delete)
        assert broker.publish_blocking([Outgoing("probe", Envelope(b"back"), exchange="px",
                                                 routing_key="probe")])
        for i in range(2, 6):
            assert broker.publish_blocking([Outgoing("probe", Envelope(f"p{i}".encode()))])
        blocking = broker._blocking
        assert blocking is not None
        async with memory_alarm(rabbitmq_node):
            start = time.monotonic()
            with pytest.raises(BrokerError, match="did not confirm"):
                blocking.flush(timeout=3)
            assert time.monotonic() - start < 30  # its own timeout, not 60 s a message
            blocking.timeout = 2.0
            with pytest.raises(BrokerError, match="not sent"):  # the one-by-one waits first
                broker.publish_blocking([Outgoing("probe", Envelope(b"never"))])
            assert blocking._sock is not None  # still in step: kept
            blocking.timeout = 60.0
        blocking.flush(timeout=30)
        assert blocking._owed == {} and blocking._again == []
    finally:
        await broker.close()
    got = {m.body for m in await asyncio.to_thread(_take_all, amqp_url, "probe")}
    assert got == {b"p0", b"x", b"p1", b"back"} | {f"p{i}".encode() for i in range(2, 6)}


async def test_a_window_closed_while_another_thread_sends_loses_nothing(amqp_url: str) -> None:
    """``close`` from one thread while another keeps sending: every send that returned
    lands (close waits for the sends in flight, and a send after it opens anew)."""
    import threading

    broker = await _windowed(amqp_url, 64)
    sent: list[bytes] = []
    try:
        await broker.publish([Outgoing("busy", Envelope(b"-"))])
        assert broker.publish_blocking([Outgoing("busy", Envelope(b"open"))])
        blocking = broker._blocking
        assert blocking is not None

        def send() -> None:
            for i in range(1500):
                body = f"s{i}".encode()
                if broker.publish_blocking([Outgoing("busy", Envelope(body))]):
                    sent.append(body)

        sender = threading.Thread(target=send)
        sender.start()
        while sender.is_alive():
            blocking.close()
            time.sleep(0.005)
        sender.join()
        blocking.flush(timeout=30)
    finally:
        await broker.close()
    got = {m.body for m in await asyncio.to_thread(_take_all, amqp_url, "busy")}
    assert len(sent) == 1500 and set(sent) <= got


async def test_a_window_waits_through_an_alarm_with_many_files_open(
    rabbitmq_node: Any, amqp_url: str,
) -> None:
    """A busy process's socket numbers run past 1,024 (``select``'s limit): a confirm wait
    long enough to nudge the node still ends in celeriac's error, then flushes."""
    if rabbitmq_node is None:
        pytest.skip("needs the private node (to raise its memory alarm)")
    files = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        broker = await _windowed(amqp_url, 16, publish_timeout=30)
        try:
            await broker.publish([Outgoing("fds", Envelope(b"a"))])  # declares the route
            assert broker.publish_blocking([Outgoing("fds", Envelope(b"open"))])
            blocking = broker._blocking
            assert blocking is not None and blocking._sock is not None
            assert blocking._sock.fileno() > 1024
            async with memory_alarm(rabbitmq_node):
                assert broker.publish_blocking([Outgoing("fds", Envelope(b"b"))])
                with pytest.raises(BrokerError, match="did not confirm"):
                    blocking.flush(timeout=2.5)
            blocking.flush(timeout=20)
        finally:
            await broker.close()
    finally:
        for fd in files:
            os.close(fd)
    got = [m.body for m in await asyncio.to_thread(_take_all, amqp_url, "fds")]
    assert got == [b"a", b"open", b"b"]

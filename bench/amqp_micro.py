"""RabbitMQ floors: what raw aiormq does on a node, next to celeriac's AMQP broker.

    .venv/bin/python -m bench.amqp_micro --amqp-url amqp://guest:guest@127.0.0.1:5672// \\
        [--n 20000] [--batch 1000] [--prefetch 1000] [--ack-every 100] [--repeat 3] \\
        [--only socket,confirm,consume,celeriac]

``socket confirm-one`` (the node's own floor): a blocking socket, no event loop, the publish
frames marshalled once; send one publish, read until its ``basic.ack``, in a loop.

Raw aiormq (one connection, a classic durable queue of its own, deleted afterwards):

``confirm-one``
    ``basic_publish`` one message and await its confirm, in a loop (persistent and transient),
    on a running loop; ``confirm-one sync`` does the same with one ``run_until_complete`` per
    message, as a sync producer's ``delay()`` does.
``confirm-window``
    N publishes written at once, then every confirm awaited: what the node can confirm.
``consume``
    N pre-loaded messages taken with ``basic.consume`` (QoS ``--prefetch``), acked with
    ``multiple=True`` every ``--ack-every`` messages.

celeriac (``AMQPBroker``, the message of ``bench/broker_micro.py``): ``publish`` one at a time,
in batches of ``--batch``, and ``fetch`` + ``ack`` with a consumer (``fetch_mode="consume"``).
Rates are messages per second; each figure is the median of ``--repeat`` runs (with the
spread). The raw figures run before celeriac's AMQP broker is imported, so they are plain
aiormq's; run them and the celeriac ones side by side, the machine's load varies.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import struct
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote, urlsplit

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader, ProtocolHeader

from bench.broker_micro import BODY, HEADERS, message


def _props(mode: int) -> spec.Basic.Properties:
    return spec.Basic.Properties(content_type="application/json", content_encoding="utf-8",
                                 headers=dict(HEADERS), delivery_mode=mode, priority=0,
                                 correlation_id=str(HEADERS["id"]), reply_to="c1d2")


async def _channel(url: str) -> tuple[aiormq.abc.AbstractConnection, aiormq.abc.AbstractChannel, str]:
    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=True)
    queue = f"amqp-micro-{uuid.uuid4().hex[:8]}"
    await channel.queue_declare(queue, durable=True)
    return connection, channel, queue


async def _drop(connection: aiormq.abc.AbstractConnection, channel: aiormq.abc.AbstractChannel,
                queue: str) -> None:
    await channel.queue_delete(queue)
    await connection.close()


class _Blocking:
    """Just enough AMQP over a blocking socket: handshake, then frames in and out."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        vhost = unquote(parts.path[1:]) or "/"
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sock.sendall(amqp_frame.marshal(ProtocolHeader(), 0))
        self.expect(spec.Connection.Start)
        user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        self.send(0, spec.Connection.StartOk(response=f"\0{user}\0{password}"))
        tune = self.expect(spec.Connection.Tune)
        self.send(0, spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max,
                                            heartbeat=0))
        self.send(0, spec.Connection.Open(virtual_host=vhost))
        self.expect(spec.Connection.OpenOk)
        self.send(1, spec.Channel.Open())
        self.expect(spec.Channel.OpenOk)

    def send(self, channel: int, *frames: Any) -> None:
        self.sock.sendall(b"".join(amqp_frame.marshal(f, channel) for f in frames))

    def read(self) -> Any:
        while True:
            if len(self.buf) >= 7:
                end = 8 + struct.unpack_from(">I", self.buf, 3)[0]
                if len(self.buf) >= end:
                    frame = amqp_frame.unmarshal(self.buf[:end])[2]
                    self.buf = self.buf[end:]
                    return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data

    def expect(self, kind: type) -> Any:
        frame = self.read()
        if not isinstance(frame, kind):
            raise RuntimeError(f"expected {kind.__name__}, got {frame!r}")
        return frame

    def close(self) -> None:
        self.sock.close()


def socket_confirm_one(url: str, n: int, mode: int) -> float:
    amqp = _Blocking(url)
    try:
        queue = f"amqp-micro-{uuid.uuid4().hex[:8]}"
        amqp.send(1, spec.Confirm.Select())
        amqp.expect(spec.Confirm.SelectOk)
        amqp.send(1, spec.Queue.Declare(queue=queue, durable=True))
        amqp.expect(spec.Queue.DeclareOk)
        props = _props(mode)
        props.message_id = uuid.uuid4().hex
        payload = b"".join(amqp_frame.marshal(f, 1) for f in (
            spec.Basic.Publish(routing_key=queue, mandatory=True),
            ContentHeader(properties=props, body_size=len(BODY)), ContentBody(BODY)))
        for _ in range(50):
            amqp.sock.sendall(payload)
            amqp.expect(spec.Basic.Ack)
        start = time.perf_counter()
        for _ in range(n):
            amqp.sock.sendall(payload)
            amqp.expect(spec.Basic.Ack)
        rate = n / (time.perf_counter() - start)
        amqp.send(1, spec.Queue.Delete(queue=queue))
        amqp.expect(spec.Queue.DeleteOk)
        return rate
    finally:
        amqp.close()


async def raw_confirm_one(url: str, n: int, mode: int) -> float:
    connection, channel, queue = await _channel(url)
    try:
        props = _props(mode)
        for _ in range(50):
            await channel.basic_publish(BODY, routing_key=queue, properties=props, mandatory=True)
        start = time.perf_counter()
        for _ in range(n):
            props.message_id = None
            await channel.basic_publish(BODY, routing_key=queue, properties=props, mandatory=True)
        return n / (time.perf_counter() - start)
    finally:
        await _drop(connection, channel, queue)


def raw_confirm_one_sync(url: str, n: int, mode: int) -> float:
    loop = asyncio.new_event_loop()
    try:
        connection, channel, queue = loop.run_until_complete(_channel(url))
        props = _props(mode)

        async def one() -> None:
            props.message_id = None
            await channel.basic_publish(BODY, routing_key=queue, properties=props, mandatory=True)

        for _ in range(50):
            loop.run_until_complete(one())
        start = time.perf_counter()
        for _ in range(n):
            loop.run_until_complete(one())
        rate = n / (time.perf_counter() - start)
        loop.run_until_complete(_drop(connection, channel, queue))
        return rate
    finally:
        loop.close()


async def raw_confirm_window(url: str, n: int, mode: int) -> float:
    connection, channel, queue = await _channel(url)
    try:
        start = time.perf_counter()
        await asyncio.gather(*(channel.basic_publish(BODY, routing_key=queue, properties=_props(mode),
                                                     mandatory=True) for _ in range(n)))
        return n / (time.perf_counter() - start)
    finally:
        await _drop(connection, channel, queue)


async def raw_consume(url: str, n: int, prefetch: int, ack_every: int) -> float:
    connection, channel, queue = await _channel(url)
    try:
        props = _props(2)
        for first in range(0, n, 1000):
            await asyncio.gather(*(channel.basic_publish(BODY, routing_key=queue, properties=props,
                                                         mandatory=True)
                                   for _ in range(min(1000, n - first))))
            props.message_id = None
        con = await connection.channel(publisher_confirms=False)
        await con.basic_qos(prefetch_count=prefetch)
        done = asyncio.Event()
        seen = 0

        async def on_message(msg: DeliveredMessage) -> None:
            nonlocal seen
            seen += 1
            if seen % ack_every == 0 or seen == n:
                await con.basic_ack(msg.delivery.delivery_tag, multiple=True, wait=False)  # type: ignore[union-attr]
            if seen == n:
                done.set()

        start = time.perf_counter()
        await con.basic_consume(queue, on_message, no_ack=False)
        await done.wait()
        rate = n / (time.perf_counter() - start)
        await con.close()
        return rate
    finally:
        await _drop(connection, channel, queue)


async def celeriac_broker(url: str, n: int, batch: int, prefetch: int) -> dict[str, float]:
    # Imported here: importing it adjusts aiormq for the whole process (_amqp_speedups), and
    # the raw figures are plain aiormq's.
    from celeriac.brokers.amqp import AMQPBroker

    broker = AMQPBroker(url)
    await broker.connect()
    name = f"amqp-micro-{uuid.uuid4().hex[:8]}"
    try:
        for _ in range(50):
            await broker.publish([message(name + "-one")])
        one = n // 4
        start = time.perf_counter()
        for _ in range(one):
            await broker.publish([message(name + "-one")])
        single = one / (time.perf_counter() - start)

        msgs = [message(name) for _ in range(batch)]
        total = n // batch * batch
        start = time.perf_counter()
        for _ in range(n // batch):
            await broker.publish(msgs)
        batched = total / (time.perf_counter() - start)

        start = time.perf_counter()
        taken = 0
        while taken < total:
            got = await broker.fetch([name], prefetch, 5.0)
            if not got:
                break
            await broker.ack(got)
            taken += len(got)
        drained = taken / (time.perf_counter() - start)
        await broker.purge([name, name + "-one"])
        return {"publish one": single, f"publish x{batch}": batched,
                f"fetch{prefetch}+ack": drained}
    finally:
        await broker.close()


def _median(label: str, runs: list[float]) -> None:
    spread = f"{min(runs):,.0f}..{max(runs):,.0f}" if len(runs) > 1 else ""
    print(f"  {label:<34} {statistics.median(runs):>9,.0f}/s  {spread}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--amqp-url", required=True)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--prefetch", type=int, default=1000)
    ap.add_argument("--ack-every", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="socket,confirm,consume,celeriac")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    url, n = args.amqp_url, args.n

    def repeat(make: Callable[[], Coroutine[Any, Any, float]]) -> list[float]:
        return [asyncio.run(make()) for _ in range(args.repeat)]

    if "socket" in parts:
        print("blocking socket, frames built once (classic durable queue):")
        for mode, kind in ((2, "persistent"), (1, "transient")):
            _median(f"socket confirm-one {kind}",
                    [socket_confirm_one(url, n // 4, mode) for _ in range(args.repeat)])
    if "confirm" in parts:
        print("raw aiormq publish (classic durable queue):")
        for mode, kind in ((2, "persistent"), (1, "transient")):
            _median(f"confirm-one {kind}", repeat(lambda m=mode: raw_confirm_one(url, n // 4, m)))
            _median(f"confirm-one sync {kind}",
                    [raw_confirm_one_sync(url, n // 4, mode) for _ in range(args.repeat)])
            _median(f"confirm-window {kind}", repeat(lambda m=mode: raw_confirm_window(url, n, m)))
    if "consume" in parts:
        print("raw aiormq consume (persistent messages, classic durable queue):")
        _median(f"consume prefetch {args.prefetch}, ack x{args.ack_every}",
                repeat(lambda: raw_consume(url, n, args.prefetch, args.ack_every)))
    if "celeriac" in parts:
        print("celeriac AMQPBroker:")
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for label, rate in asyncio.run(celeriac_broker(url, n, args.batch, args.prefetch)).items():
                runs.setdefault(label, []).append(rate)
        for label, values in runs.items():
            _median(label, values)


if __name__ == "__main__":
    main()

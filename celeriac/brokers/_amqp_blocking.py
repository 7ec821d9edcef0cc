"""A blocking AMQP channel for publishing from sync code.

``delay()`` from a script or a web view has no event loop running. Driving one per call (a
task, loop turns, ``epoll``, aiormq's frame reader) cost about as much as RabbitMQ's own work
on a confirmed publish. This channel does what the async path does for a publish, on a plain
socket of its own: the frames are written in one ``sendall``, then read until every confirm is
in. pamqp frames the handshake and whatever is not on the hot path; ``_amqp_codec`` writes the
publishes and reads the acks.

The connection negotiates no heartbeat (nothing would answer one between calls); one left idle
longer than ``idle_seconds`` is opened anew before it is used, so a connection a firewall or
the node dropped in the meantime is never written to. Each new connection first declares again
what the broker has declared (``declarations``), as the broker's own reconnect does: a node
restarted without a queue gets it back before a publish needs it. Errors: a lost connection
raises ``BrokerConnectionError`` (the caller retries per its policy), a refusal by the node (an
unroutable message, a nack, a channel closed by an error) ``BrokerError``, as ``publish``; a
publish not confirmed within ``timeout`` raises ``BrokerError`` (it may still land).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.header import ProtocolHeader

from celeriac.brokers import _amqp_codec
from celeriac.brokers import _amqp_topology as topo
from celeriac.errors import BrokerConnectionError, BrokerError
from celeriac.utils import forks

#: The one channel this connection opens.
CHANNEL = 1
_FRAME_HEADER = struct.Struct(">BHI")

#: A publish ready to write: exchange, routing key, properties, body.
Item = tuple[str, str, spec.Basic.Properties, bytes]


class _Refused(Exception):
    """The node closed the channel with an error (its reply code and text)."""


class BlockingChannel:
    """One AMQP connection and channel with publisher confirms on a blocking socket, used by
    one thread at a time; a forked child opens its own."""

    def __init__(self, endpoint: topo.Endpoint, *, timeout: float, connect_timeout: float,
                 idle_seconds: float | None,
                 declarations: Callable[[], Sequence[tuple[Any, ...]]] = list) -> None:
        """``declarations``: what to declare on each new connection, in order (the items of
        ``_amqp_topology.declare_frame``)."""
        self.endpoint = endpoint
        self.declarations = declarations
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._tag = 0  # the delivery tag of the last publish on this channel
        self._max_content = 131072 - 8
        self._blocked: str | None = None  # connection.blocked's reason, until unblocked
        self._used = 0.0
        self._forks = forks.generation()
        self._lock = threading.Lock()

    def publish(self, items: Sequence[Item], mandatory: bool = True) -> None:
        """Write ``items`` together; return once the node confirmed every one."""
        if self._forks != forks.generation():
            # forked: the socket is the parent's (leave it be), and the lock may have been
            # held by a parent thread that does not exist here
            self._lock = threading.Lock()
            self._sock = None
            self._forks = forks.generation()
        with self._lock:
            now = time.monotonic()
            if self._sock is not None and self.idle_seconds is not None \
                    and now - self._used > self.idle_seconds:
                self._drop()
            if self._sock is None:
                self._open()
            sock = self._sock
            assert sock is not None
            try:
                payload = b"".join(
                    _amqp_codec.publish_frames(CHANNEL, ex, key, mandatory, props, body,
                                               self._max_content)
                    for ex, key, props, body in items)
                sock.sendall(payload)
                first = self._tag + 1
                self._tag += len(items)
                self._await_confirms(first, self._tag, time.monotonic() + self.timeout)
                self._used = time.monotonic()
            except BrokerError:
                self._used = time.monotonic()  # refused, every reply read: still in step
                raise
            except _Refused as exc:
                self._drop()
                raise BrokerError(f"RabbitMQ refused the publish: {exc}") from None
            except TimeoutError:
                self._drop()
                why = f"blocked by RabbitMQ: {self._blocked}" if self._blocked \
                    else "is a memory or disk alarm blocking publishers?"
                raise BrokerError(f"RabbitMQ did not confirm {len(items)} message(s) within "
                                  f"{self.timeout}s ({why})") from None
            except (OSError, ConnectionError) as exc:
                self._drop()
                raise BrokerConnectionError(
                    f"publish to {self.endpoint.redacted()}: connection lost ({exc})") from None
            except BaseException:
                # anything raised between two reads (a soft time limit's signal): frames
                # may be left unread, so the connection goes
                self._drop()
                raise

    def _await_confirms(self, first: int, last: int, deadline: float) -> None:
        """Read until every tag in ``first..last`` is acked or nacked (in any order); a
        ``basic.return`` (unroutable, sent before its ack) or a nack raises once all are in."""
        pending = set(range(first, last + 1))
        nacked = False
        returned: list[spec.Basic.Return] = []
        while pending:
            frame = self._read(deadline)
            if isinstance(frame, spec.Basic.Ack | spec.Basic.Nack):
                tag = frame.delivery_tag
                settled = {t for t in pending if t <= tag} if frame.multiple else {tag} & pending
                pending -= settled
                nacked = nacked or (isinstance(frame, spec.Basic.Nack) and bool(settled))
            elif isinstance(frame, spec.Basic.Return):
                returned.append(frame)
                self._skip_content(deadline)
        if returned:
            frame = returned[0]
            raise BrokerError(
                f"{len(returned)} message(s) unroutable (exchange {frame.exchange!r} key "
                f"{frame.routing_key!r}): {frame.reply_text}")
        if nacked:
            raise BrokerError("RabbitMQ refused (nacked) a message")

    def _skip_content(self, deadline: float) -> None:
        """Read past the content header and body frames that follow a ``basic.return``."""
        remaining = int(self._read(deadline).body_size)
        while remaining > 0:
            remaining -= len(self._read(deadline).value)

    def _read(self, deadline: float) -> Any:
        """The next frame on our channel, by ``deadline`` (``time.monotonic()``; else
        ``TimeoutError``); connection-level frames are handled here."""
        sock = self._sock
        assert sock is not None
        buf = self._buf
        while True:
            if len(buf) >= 7:
                end = 8 + _FRAME_HEADER.unpack_from(buf, 0)[2]
                if len(buf) >= end:
                    data = bytes(buf[:end])
                    del buf[:end]
                    frame = _amqp_codec.unmarshal(data)[2]
                    if not self._control(frame):
                        return frame
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by RabbitMQ")
            buf += chunk

    def _control(self, frame: Any) -> bool:
        """Handle a frame that is not an answer to us; True if it was one."""
        if isinstance(frame, spec.Connection.Blocked):
            self._blocked = frame.reason or "blocked"
            return True
        if isinstance(frame, spec.Connection.Unblocked):
            self._blocked = None
            return True
        if isinstance(frame, spec.Connection.Close):
            self._send(0, spec.Connection.CloseOk())
            raise ConnectionError(f"RabbitMQ closed the connection: {frame.reply_code} "
                                  f"{frame.reply_text}")
        if isinstance(frame, spec.Channel.Close):
            self._send(CHANNEL, spec.Channel.CloseOk())
            raise _Refused(f"{frame.reply_code} {frame.reply_text}")
        return bool(frame.name == "Heartbeat")

    def _send(self, channel: int, *frames: Any) -> None:
        sock = self._sock
        assert sock is not None
        sock.sendall(b"".join(pamqp_frame.marshal(f, channel) for f in frames))

    def _expect(self, kind: type, deadline: float) -> Any:
        frame = self._read(deadline)
        if not isinstance(frame, kind):
            raise ConnectionError(f"expected {kind.__name__} from RabbitMQ, got {frame.name}")
        return frame

    def _open(self) -> None:
        where = self.endpoint.redacted()
        try:
            sock = socket.create_connection((self.endpoint.host, self.endpoint.port),
                                            timeout=self.connect_timeout)
        except OSError as exc:
            raise BrokerConnectionError(f"connect to {where}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.endpoint.tls:
                sock = ssl.create_default_context().wrap_socket(
                    sock, server_hostname=self.endpoint.host)
            self._sock, self._buf, self._tag, self._blocked = sock, bytearray(), 0, None
            self._handshake(time.monotonic() + self.connect_timeout)
            self._declare(time.monotonic() + self.timeout)
        except _Refused as exc:
            self._drop()
            raise BrokerError(f"open a channel on {where}: {exc}") from None
        except (OSError, ConnectionError) as exc:
            self._drop()
            raise BrokerConnectionError(f"connect to {where}: {exc}") from None
        except BaseException:
            self._drop()
            raise

    def _handshake(self, deadline: float) -> None:
        sock = self._sock
        assert sock is not None
        sock.sendall(pamqp_frame.marshal(ProtocolHeader(), 0))
        self._expect(spec.Connection.Start, deadline)
        capabilities: dict[str, Any] = {"publisher_confirms": True, "basic.nack": True,
                        "connection.blocked": True, "authentication_failure_close": True}
        self._send(0, spec.Connection.StartOk(
            client_properties={"product": "celeriac", "capabilities": capabilities,
                               "connection_name": f"celeriac publisher pid {os.getpid()}"},
            mechanism="PLAIN", response=f"\0{self.endpoint.user}\0{self.endpoint.password}"))
        tune = self._expect(spec.Connection.Tune, deadline)
        frame_max = tune.frame_max or 131072
        self._max_content = frame_max - 8
        self._send(0, spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=frame_max,
                                             heartbeat=0))
        self._send(0, spec.Connection.Open(virtual_host=self.endpoint.vhost))
        self._expect(spec.Connection.OpenOk, deadline)
        self._send(CHANNEL, spec.Channel.Open())
        self._expect(spec.Channel.OpenOk, deadline)
        self._send(CHANNEL, spec.Confirm.Select())
        self._expect(spec.Confirm.SelectOk, deadline)

    def _declare(self, deadline: float) -> None:
        """Declare ``declarations`` again, written together, then read every answer."""
        frames = [topo.declare_frame(item) for item in self.declarations()]
        if not frames:
            return
        self._send(CHANNEL, *frames)
        for frame in frames:
            answer = self._read(deadline)
            if answer.name != f"{frame.name}Ok":
                raise ConnectionError(f"expected {frame.name}Ok from RabbitMQ, got {answer.name}")

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._buf = bytearray()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

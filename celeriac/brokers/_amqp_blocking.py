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

**A confirm window** (``window`` > 0, the broker's ``confirm_window``) trades that guarantee for
throughput: a publish returns once its frames are written, and up to ``window`` messages may
await their confirm, kept here until it comes. RabbitMQ confirms a persistent message after its
fsync, and one fsync covers every message waiting for it, so messages in flight together cost
about what one does. Confirms are read without waiting once half the window is owed, and
waited for only when it is full (a publish that finds no room within ``timeout`` raises
``BrokerError`` and is not sent). What is owed is sent again, at least once in all (it then
comes after later ones): when it is nacked (given up after ``MAX_NACKS``), when its connection
is lost, or when the node closes the channel for a refusal (then one message at a time, each
confirmed, so that the one at fault is given up alone). A message given up, or returned as
unroutable, is logged as an error and reported by the next ``flush``. ``flush`` waits for
every confirm; the broker's ``close`` and the interpreter's exit call it. A process that ends
without either (``os._exit``, a signal) loses what it still owed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.header import ProtocolHeader

from celeriac.brokers import _amqp_codec
from celeriac.brokers import _amqp_topology as topo
from celeriac.errors import BrokerConnectionError, BrokerError
from celeriac.utils import forks

log = logging.getLogger(__name__)

#: The one channel this connection opens.
CHANNEL = 1
_FRAME_HEADER = struct.Struct(">BHI")
#: How many nacks of one message, in a confirm window, before it is given up.
MAX_NACKS = 3
#: Seconds a wait for confirms goes without a frame before it nudges the node (``_read``).
NUDGE_SECONDS = 1.0

#: A publish ready to write: exchange, routing key, properties, body.
Item = tuple[str, str, spec.Basic.Properties, bytes]


class _Owed:
    """A message written in a confirm window and not yet confirmed."""

    __slots__ = ("item", "mandatory", "nacks", "unknown")

    def __init__(self, item: Item, mandatory: bool) -> None:
        self.item = item
        self.mandatory = mandatory
        self.nacks = 0
        self.unknown = False  # written on a connection or channel lost before its confirm


#: Channels with a confirm window, flushed when the interpreter exits.
_windowed: weakref.WeakSet[BlockingChannel] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for channel in list(_windowed):
        try:
            channel.close()
        except Exception:  # the others are still flushed
            log.exception("flushing a publishing channel at exit")


class _Refused(Exception):
    """The node closed the channel with an error (its reply code and text)."""


class _NoRoom(Exception):
    """The confirm window stayed full for the whole publish timeout; nothing was written."""


class BlockingChannel:
    """One AMQP connection and channel with publisher confirms on a blocking socket, used by
    one thread at a time; a forked child opens its own."""

    def __init__(self, endpoint: topo.Endpoint, *, timeout: float, connect_timeout: float,
                 idle_seconds: float | None,
                 declarations: Callable[[], Sequence[tuple[Any, ...]]] = list,
                 window: int = 0) -> None:
        """``declarations``: what to declare on each new connection, in order (the items of
        ``_amqp_topology.declare_frame``); ``window``: the confirm window (0: none)."""
        self.endpoint = endpoint
        self.declarations = declarations
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self.window = window
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._tag = 0  # the delivery tag of the last publish on this channel
        self._owed: dict[int, _Owed] = {}  # confirm window: delivery tag -> message, in order
        self._again: list[_Owed] = []  # confirm window: to write again (nacked, or lost)
        self._probing = False  # confirm window: a refusal closed the channel (_probe_again)
        self._refused: list[str] = []  # confirm window: messages given up, for ``flush``
        self._max_content = 131072 - 8
        self._blocked: str | None = None  # connection.blocked's reason, until unblocked
        self._nudges = -1  # nudges unanswered (-1: the channel is not open yet)
        self._used = 0.0
        self._forks = forks.generation()
        self._lock = threading.RLock()
        forks.reset_in_child(self, BlockingChannel._after_fork)
        if window:
            _windowed.add(self)

    def publish(self, items: Sequence[Item], mandatory: bool = True) -> None:
        """Write ``items`` together; return once the node confirmed every one (with a confirm
        window: once they are written and the window has room)."""
        self._after_fork()
        with self._lock:
            if self._sock is not None and self.idle_seconds is not None \
                    and time.monotonic() - self._used > self.idle_seconds:
                if self._owed:  # their confirms are in by now: take them, not send again
                    with contextlib.suppress(OSError, ConnectionError, _Refused):
                        self._settle(None, 0)
                self._drop()
            if self._sock is None:
                self._open()
            with self._failures(len(items)):
                if self.window:
                    self._publish_in_window(items, mandatory)
                else:
                    self._write(items, mandatory)
                    self._await_confirms(self._tag - len(items) + 1, self._tag,
                                         time.monotonic() + self.timeout)
                self._used = time.monotonic()

    def _after_fork(self) -> None:
        """In a forked child: the socket is the parent's (left be), what it owes is the
        parent's, and the lock may be held by a parent thread that does not exist here.

        Run by the fork hook, while the child has one thread (so two of its threads never
        each make a lock), and again by each call (a no-op then)."""
        if self._forks == forks.generation():
            return
        self._lock = threading.RLock()
        self._sock, self._buf = None, bytearray()
        self._owed, self._again, self._refused, self._probing = {}, [], [], False
        self._forks = forks.generation()

    @contextlib.contextmanager
    def _failures(self, count: int) -> Iterator[None]:
        """What goes wrong in a publish of ``count`` messages, as celeriac's errors."""
        try:
            yield
        except BrokerError:
            self._used = time.monotonic()  # refused, every reply read: still in step
            raise
        except _Refused as exc:
            self._drop()
            raise BrokerError(f"RabbitMQ refused the publish: {exc}") from None
        except _NoRoom:
            # still in step with the node: what is owed stays owed, on this connection
            raise BrokerError(
                f"RabbitMQ confirmed too few of the {len(self._owed)} message(s) in the "
                f"confirm window within {self.timeout}s to send {count} more; not sent "
                f"({self._why_slow()})") from None
        except TimeoutError:
            # confirms still to come would be taken for the next publish's, or a write was
            # cut short and the stream holds part of a frame: the connection goes
            self._drop()
            raise BrokerError(f"RabbitMQ did not confirm {count} message(s) within "
                              f"{self.timeout}s ({self._why_slow()})") from None
        except (OSError, ConnectionError) as exc:
            self._drop()
            raise BrokerConnectionError(
                f"publish to {self.endpoint.redacted()}: connection lost ({exc})") from None
        except BaseException:
            # anything raised between two reads (a soft time limit's signal): frames
            # may be left unread, so the connection goes
            self._drop()
            raise

    def _send_publishes(self, payload: bytes) -> None:
        """``sendall``; one cut short by the socket's timeout (a node that stopped reading)
        leaves part of a frame in the stream, so the connection goes at once."""
        sock = self._sock
        assert sock is not None
        try:
            sock.sendall(payload)
        except TimeoutError:
            self._drop()
            raise

    def _why_slow(self) -> str:
        return f"blocked by RabbitMQ: {self._blocked}" if self._blocked \
            else "is a memory or disk alarm blocking publishers?"

    def _write(self, items: Sequence[Item], mandatory: bool) -> None:
        self._send_publishes(b"".join(
            _amqp_codec.publish_frames(CHANNEL, ex, key, mandatory, props, body,
                                       self._max_content)
            for ex, key, props, body in items))
        self._tag += len(items)

    # -- the confirm window -----------------------------------------------------------------

    def _publish_in_window(self, items: Sequence[Item], mandatory: bool) -> None:
        room = max(0, self.window - len(items))
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._write_again(deadline)
                while len(self._owed) + len(self._again) > room:
                    self._settle(deadline, room)
                    self._write_again(deadline)
                break
            except _Refused as exc:  # a message owed, not these items (not written yet)
                self._channel_refused(exc)
                self._open()
            except TimeoutError:  # (what was owed stays owed; these items were not written)
                raise _NoRoom from None
        first = self._tag + 1
        self._write(items, mandatory)
        for tag, item in enumerate(items, first):
            self._owed[tag] = _Owed(item, mandatory)
        if len(self._owed) < self.window // 2:
            return  # confirms wait in the socket's buffer until the window is half full
        try:
            self._settle(None, 0)  # take what has come in, without waiting
        except _Refused as exc:
            self._channel_refused(exc)
        except (OSError, ConnectionError):
            self._drop()  # written: what is owed goes again on the next connection

    def _channel_refused(self, exc: _Refused) -> None:
        """A message owed closed the channel (say, its exchange is gone), and the node
        forgot every publish after it: all that is owed goes again on a new connection, one
        at a time (``_probe_again``), so that the one at fault is known."""
        log.warning("RabbitMQ closed the publishing channel (%s); opening it anew", exc)
        self._probing = True
        self._drop()

    def _settle(self, deadline: float | None, room: int) -> None:
        """Read confirms until at most ``room`` messages are owed, by ``deadline``; with no
        deadline, read only what has already come in."""
        while deadline is None or len(self._owed) > room:
            frame = self._read(deadline)
            if frame is None:
                return
            if isinstance(frame, spec.Basic.Ack | spec.Basic.Nack):
                settled = self._pop_owed(frame.delivery_tag, bool(frame.multiple))
                if isinstance(frame, spec.Basic.Nack):
                    for one in settled:
                        one.nacks += 1
                    self._again.extend(settled)
            elif isinstance(frame, spec.Basic.Return):
                header = self._read_content(deadline or time.monotonic() + self.timeout)
                self._give_up(None, header.properties, f"unroutable (exchange {frame.exchange!r} "
                              f"key {frame.routing_key!r}): {frame.reply_text}")

    def _pop_owed(self, tag: int, multiple: bool) -> list[_Owed]:
        owed = self._owed
        if not multiple:
            one = owed.pop(tag, None)
            return [] if one is None else [one]
        settled = []
        while owed:
            first = next(iter(owed))
            if first > tag:
                break
            settled.append(owed.pop(first))
        return settled

    def _write_again(self, deadline: float) -> None:
        """Write once more what was nacked or left unconfirmed by a lost connection; give up
        what was nacked ``MAX_NACKS`` times. ``deadline``: for confirms awaited one by one
        (``_probe_again``)."""
        if not self._again:
            return
        if self._probing:
            self._probe_again(deadline)
            return
        again = []
        for one in self._again:
            if one.nacks >= MAX_NACKS:
                self._give_up(one, one.item[2], f"nacked {one.nacks} times")
            else:
                again.append(one)
        self._again = again  # a write that fails leaves these to go again, and only these
        try:
            self._send_publishes(b"".join(
                _amqp_codec.publish_frames(CHANNEL, ex, key, one.mandatory, props, body,
                                           self._max_content)
                for one in again for ex, key, props, body in (one.item,)))
        except (OSError, ConnectionError):
            for one in again:
                one.unknown = True  # some may have gone out whole
            raise
        self._again = []
        for tag, one in enumerate(again, self._tag + 1):
            self._owed[tag] = one
        self._tag += len(again)

    def _probe_again(self, deadline: float) -> None:
        """After a channel closed by a refusal: write what is owed one message at a time,
        each confirmed before the next; the one the node refuses again is given up. One
        whose confirm is still out at ``deadline`` stays owed (``TimeoutError``)."""
        if self._owed:  # left owed by a deadline: its confirm first, or a later one takes it
            self._settle(deadline, 0)
        while self._again:
            one = self._again[0]
            self._write([one.item], one.mandatory)
            try:
                self._await_confirms(self._tag, self._tag, deadline)
            except _Refused as exc:
                self._give_up(one, one.item[2], f"refused: {exc}")
                del self._again[0]
                self._drop()
                self._open()
                continue
            except BrokerError as exc:  # unroutable, or nacked
                self._give_up(one, one.item[2], str(exc))
            except TimeoutError:
                self._owed[self._tag] = self._again.pop(0)
                self._probing = bool(self._again)
                raise
            except (OSError, ConnectionError):
                one.unknown = True  # written, then the connection went
                raise
            del self._again[0]
        self._probing = False

    def _give_up(self, one: _Owed | None, props: Any, why: str) -> None:
        what = f"message {getattr(props, 'correlation_id', None) or '?'} {why}"
        if one is not None and one.unknown:
            what += " (a copy sent earlier, on a connection or channel lost before its " \
                    "confirm, may have landed)"
        log.error("RabbitMQ did not take a message published earlier: %s", what)
        self._refused.append(what)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message in the confirm window is confirmed (``timeout``: the
        publish timeout); raise ``BrokerError`` for those given up since the last flush."""
        self._after_fork()
        seconds = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        pause = 0.05
        with self._lock:
            while self._owed or self._again:
                try:
                    if self._sock is None:
                        self._open()
                    self._write_again(deadline)
                    self._settle(deadline, 0)
                except TimeoutError:
                    raise BrokerError(
                        f"RabbitMQ did not confirm {len(self._owed) + len(self._again)} "
                        f"message(s) within {seconds}s ({self._why_slow()}); they may "
                        f"still land") from None
                except _Refused as exc:
                    self._channel_refused(exc)
                except (OSError, ConnectionError) as exc:
                    self._drop()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BrokerConnectionError(
                            f"{len(self._again)} message(s) unconfirmed (they may have "
                            f"landed): no connection to {self.endpoint.redacted()} within "
                            f"{seconds}s ({exc})") from None
                    time.sleep(min(pause, left))  # the node may be restarting: not a busy loop
                    pause = min(pause * 2, 1.0)
            refused, self._refused = self._refused, []
        if refused:
            raise BrokerError(f"RabbitMQ did not take {len(refused)} message(s) published "
                              f"earlier: {'; '.join(refused[:5])}")

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
                self._read_content(deadline)
        if returned:
            frame = returned[0]
            raise BrokerError(
                f"{len(returned)} message(s) unroutable (exchange {frame.exchange!r} key "
                f"{frame.routing_key!r}): {frame.reply_text}")
        if nacked:
            raise BrokerError("RabbitMQ refused (nacked) a message")

    def _read_content(self, deadline: float) -> Any:
        """Read the content header and body frames that follow a ``basic.return``; return
        the header."""
        header = self._read(deadline)
        remaining = int(header.body_size)
        while remaining > 0:
            remaining -= len(self._read(deadline).value)
        return header

    def _read(self, deadline: float | None) -> Any:
        """The next frame on our channel, by ``deadline`` (``time.monotonic()``; else
        ``TimeoutError``), or with no deadline the next one already in (else None);
        connection-level frames are handled here.

        A node that blocked publishers for an alarm reads them again once it clears, but may
        hold their confirms until something else comes in: a wait that sees no frame for
        ``NUDGE_SECONDS`` sends a ``confirm.select`` (a no-op on this channel), whose answer
        is dropped."""
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
                    continue
            if deadline is None:
                sock.settimeout(0.0)
                try:
                    chunk = sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    return None
                finally:
                    sock.settimeout(self.timeout)  # for the writes that follow
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                nudging = self._nudges >= 0 and left > NUDGE_SECONDS
                sock.settimeout(NUDGE_SECONDS if nudging else left)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    if not nudging:
                        raise
                    self._nudge()
                    continue
                finally:
                    sock.settimeout(self.timeout)  # for the writes that follow
            if not chunk:
                raise ConnectionError("connection closed by RabbitMQ")
            buf += chunk

    def _nudge(self) -> None:
        """Send a ``confirm.select`` if the socket has room for it now (a node that is not
        reading may have left none; the next wait tries again)."""
        sock = self._sock
        assert sock is not None
        room = select.poll()
        room.register(sock, select.POLLOUT)
        if not room.poll(0):
            return
        data = pamqp_frame.marshal(spec.Confirm.Select(), CHANNEL)
        sock.settimeout(0.0)
        try:
            sent = sock.send(data)
        except BlockingIOError:
            return  # nothing was written
        except ssl.SSLWantWriteError:  # TLS keeps the record to write later: out of step
            raise ConnectionError("a write to RabbitMQ could not finish") from None
        finally:
            sock.settimeout(self.timeout)
        if sent < len(data):
            raise ConnectionError("a write to RabbitMQ was cut short")  # part of a frame
        self._nudges += 1

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
        if isinstance(frame, spec.Confirm.SelectOk) and self._nudges > 0:
            self._nudges -= 1
            return True
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
            self._nudges = -1
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
        self._nudges = 0

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
        """Close the connection; what is owed goes again on the next one (it may have
        landed: a channel closed by a refusal of one message drops the confirms of the
        others routed before it)."""
        sock, self._sock = self._sock, None
        self._buf = bytearray()
        if self._owed:  # their confirms will never come: they go again on the next connection
            for one in self._owed.values():
                one.unknown = True
            self._again.extend(self._owed.values())
            self._owed = {}
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        """Flush the confirm window (errors are logged), then close; a publish from another
        thread waits until it is closed (then opens a connection anew)."""
        self._after_fork()
        with self._lock:
            try:
                if self._owed or self._again:
                    self.flush()
            except (BrokerError, OSError) as exc:
                log.error("closing the publishing channel: %s", exc)
            finally:
                self._drop()
                self._owed, self._again, self._probing = {}, [], False

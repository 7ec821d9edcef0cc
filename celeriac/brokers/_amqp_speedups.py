"""Process-wide adjustments to the AMQP libraries, applied when the AMQP broker is imported.

Each patch of aiormq's internals applies only to aiormq 7.x (``aiormq_7``), whose private
methods it replaces or wraps; with another version aiormq runs as it is.

1. **Doubles, not floats.** pamqp writes a Python ``float`` in a header table as a 32-bit
   ``f``; py-amqp (Celery) writes a 64-bit ``d``, and a float32 cannot even hold a timestamp to
   the second. pamqp is made to write ``d``: more precision harms no other pamqp user.
2. **Buffered frame reading.** aiormq 7 reads each frame with three ``readexactly`` calls under
   a lock; a delivery is three frames. The reader below reads what the socket has (up to
   256 KiB) and cuts every complete frame out of it, with the same results and errors (a clean
   end of stream ends the iteration, a cut mid-frame is ``AMQPConnectionError``). Measured: a
   drain of 20,000 deliveries went from about 5,100 to 7,800 per second. Applied only to aiormq
   7.x, whose ``FrameReceiver`` it replaces a method of. Frames are decoded by ``unmarshal``.
3. **A faster codec for the hot frames**: ``_amqp_codec`` (frames are decoded by its
   ``unmarshal``).
4. **Writing without a hop.** aiormq hands every frame to a writer task through a queue: a
   frame goes out on the next turn of the loop, one socket write per frame. ``write_now``
   writes straight to the connection's transport when that queue is empty (then everything
   queued earlier has been written, so the order of frames is kept), else it queues as aiormq
   does. The transport is the one aiormq's writer task was given (kept by wrapping that task's
   method).
5. **No task per delivery.** aiormq runs every consumer callback in a task of its own: one
   more task and one more turn of the loop per delivery. A plain function marked with
   ``direct`` is called right in the channel's reader instead (in delivery order; an error is
   logged as aiormq logs a failed callback); others still get their task.
"""
from __future__ import annotations

import struct
from collections import deque
from functools import cache
from typing import Any

from celeriac.brokers._amqp_codec import unmarshal

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_READ_SIZE = 262_144


@cache
def aiormq_7() -> bool:
    """Whether the installed aiormq is 7.x, the version the patches were written against."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aiormq").split(".", 1)[0] == "7"
    except PackageNotFoundError:
        return False


# ---- writing --------------------------------------------------------------------------------

def write_now(connection: Any, payload: bytes) -> bool:
    """Write ``payload`` to ``connection``'s socket now if nothing is queued before it;
    ``False`` (nothing written) when the caller must queue it as aiormq does."""
    writer = getattr(connection, "_celeriac_writer", None)
    task = getattr(connection, "_writer_task", None)
    if writer is None or task is None or task.done() or not connection.write_queue.empty() \
            or writer.is_closing():
        return False
    writer.write(payload)
    return True


def keep_writer() -> None:
    """Keep, on each aiormq connection, the stream its writer task writes to."""
    if not aiormq_7():
        return
    from aiormq import connection

    cls: Any = connection.Connection
    original = getattr(cls, "_Connection__writer", None)
    if original is None or getattr(original, "_celeriac", False):
        return

    async def writer_task(self: Any, writer: Any) -> None:
        self._celeriac_writer = writer
        try:
            await original(self, writer)
        finally:
            self._celeriac_writer = None

    writer_task._celeriac = True  # type: ignore[attr-defined]
    cls._Connection__writer = writer_task


def doubles_for_floats() -> None:
    from pamqp import encode

    original = encode.encode_table_value
    if getattr(original, "_celeriac", False):
        return

    def encode_table_value(value: Any) -> bytes:
        if type(value) is float:
            return b"d" + encode.double(value)
        return original(value)

    encode_table_value._celeriac = True  # type: ignore[attr-defined]
    encode.encode_table_value = encode_table_value


def buffered_frame_reader() -> None:
    if not aiormq_7():
        return
    from aiormq import connection

    receiver: Any = getattr(connection, "FrameReceiver", None)
    if receiver is None or getattr(receiver.get_frame, "_celeriac", False):
        return
    import pamqp.exceptions
    from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError

    async def get_frame(self: Any) -> Any:
        frames: deque[Any] | None = getattr(self, "_celeriac_frames", None)
        if frames is None:
            frames = self._celeriac_frames = deque()
            self._celeriac_buf = bytearray()
        if frames:
            return frames.popleft()
        buf: bytearray = self._celeriac_buf
        while True:
            while len(buf) >= 7:
                if not self.started:
                    if buf[:4] == b"AMQP":
                        raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                    self.started = True
                end = 8 + _HEADER.unpack_from(buf)[2]
                if len(buf) < end:
                    break
                try:
                    frames.append(unmarshal(bytes(buf[:end])))
                except pamqp.exceptions.PAMQPException as exc:
                    raise InvalidFrameError(str(exc)) from exc
                del buf[:end]
            if frames:
                return frames.popleft()
            try:
                data = await self.reader.read(_READ_SIZE)
            except (ConnectionError, OSError) as exc:
                raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
            if not data:
                if buf:
                    raise AMQPConnectionError(
                        f"Server connection unexpectedly closed mid-frame ({len(buf)} bytes)")
                raise StopAsyncIteration
            buf += data

    get_frame._celeriac = True  # type: ignore[attr-defined]
    receiver.get_frame = get_frame


def direct(callback: Any) -> Any:
    """Mark a plain (non-async) consumer callback to be called in the channel's reader."""
    callback._celeriac_direct = True
    return callback


def direct_consumers() -> None:
    if not aiormq_7():
        return
    import logging

    from aiormq import channel

    cls: Any = channel.Channel
    original = getattr(cls, "_on_deliver_frame", None)
    if original is None or getattr(original, "_celeriac", False) \
            or not hasattr(cls, "_Channel__get_content_header"):
        return
    log = logging.getLogger("aiormq.channel")

    async def on_deliver_frame(self: Any, frame: Any) -> None:
        header = await self._Channel__get_content_header()
        message = await self._read_content(frame, header)
        if frame.consumer_tag is None:
            log.warning("Frame %r has no consumer tag", frame)
            return
        consumer = self.consumers.get(frame.consumer_tag)
        if consumer is None:
            return
        target: Any = getattr(consumer, "__wrapped__", None)
        if getattr(target, "_celeriac_direct", False):
            try:
                target(message)
            except Exception:
                log.exception("Consumer callback failed")
            return
        task = self.create_task(consumer(message))
        task.add_done_callback(self._on_consumer_done)

    on_deliver_frame._celeriac = True  # type: ignore[attr-defined]
    cls._on_deliver_frame = on_deliver_frame


def apply() -> None:
    doubles_for_floats()
    buffered_frame_reader()
    keep_writer()
    direct_consumers()

"""Two process-wide adjustments to the AMQP libraries, applied when the AMQP broker is imported.

1. **Doubles, not floats.** pamqp writes a Python ``float`` in a header table as a 32-bit
   ``f``; py-amqp (Celery) writes a 64-bit ``d``, and a float32 cannot even hold a timestamp to
   the second. pamqp is made to write ``d``: more precision harms no other pamqp user.
2. **Buffered frame reading.** aiormq 7 reads each frame with three ``readexactly`` calls under
   a lock; a delivery is three frames. The reader below reads what the socket has (up to
   256 KiB) and cuts every complete frame out of it, with the same results and errors (a clean
   end of stream ends the iteration, a cut mid-frame is ``AMQPConnectionError``). Measured: a
   drain of 20,000 deliveries went from about 5,100 to 7,800 per second. Applied only to aiormq
   7.x, whose ``FrameReceiver`` it replaces a method of.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_READ_SIZE = 262_144


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
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = version("aiormq").split(".", 1)[0]
    except PackageNotFoundError:
        return
    from aiormq import connection

    receiver: Any = getattr(connection, "FrameReceiver", None)
    if major != "7" or receiver is None or getattr(receiver.get_frame, "_celeriac", False):
        return
    import pamqp.exceptions
    import pamqp.frame
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
                    frames.append(pamqp.frame.unmarshal(bytes(buf[:end])))
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


def apply() -> None:
    doubles_for_floats()
    buffered_frame_reader()

"""A fast codec for the AMQP 0-9-1 frames on the hot paths, beside pamqp.

``unmarshal`` decodes ``basic.deliver``, ``basic.ack``, content headers and bodies itself (struct
and offsets, no per-field dispatch) into the same pamqp objects pamqp would build, and hands
every other frame, and any frame it cannot take whole (a timestamp or decimal in a header
table, a malformed frame), to pamqp, so errors are pamqp's. ``publish_frames`` writes
``basic.publish`` + header + body frames the same way (the method frame is built by pamqp once
per exchange/key and cached), and ``ack_frame`` a ``basic.ack``/``basic.nack``. Their output is
byte for byte pamqp's (tests/unit/test_amqp_codec.py). Measured per call against pamqp: content
header decode 17.2 -> 7.7 us, a delivery frame 4.1 -> 1.0 us, properties encode 19.0 -> 8.2 us.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any

from pamqp import commands as spec
from pamqp import encode as pamqp_encode
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_FRAME_END = 0xCE
_U8 = struct.Struct(">B")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_DELIVER = 0x003C003C
_ACK = 0x003C0050
_METHOD_ACK = struct.Struct(">BHIIqB")  # frame header, class+method, delivery tag, bits
_CONTENT = struct.Struct(">HHQH")  # class id, weight, body size, property flags
_HEADER_START = struct.Struct(">BHIHHQ")  # frame header, class id, weight, body size

#: Basic.Properties in wire order: (attribute, flag, kind); kinds: s shortstr, o octet,
#: F table, T timestamp.
_PROPERTIES = (
    ("content_type", 1 << 15, "s"), ("content_encoding", 1 << 14, "s"),
    ("headers", 1 << 13, "F"), ("delivery_mode", 1 << 12, "o"), ("priority", 1 << 11, "o"),
    ("correlation_id", 1 << 10, "s"), ("reply_to", 1 << 9, "s"), ("expiration", 1 << 8, "s"),
    ("message_id", 1 << 7, "s"), ("timestamp", 1 << 6, "T"), ("message_type", 1 << 5, "s"),
    ("user_id", 1 << 4, "s"), ("app_id", 1 << 3, "s"), ("cluster_id", 1 << 2, "s"),
)
_PROPERTY_DEFAULTS = tuple((name, "" if name == "cluster_id" else None) for name, _, _ in _PROPERTIES)


class _Unhandled(Exception):
    """Not for the fast codec: pamqp takes the frame or value."""


# ---- decoding -------------------------------------------------------------------------------

def _value(data: bytes, pos: int) -> tuple[Any, int]:
    kind = data[pos]
    pos += 1
    if kind == 0x53:  # S: long string (bytes when not UTF-8, as pamqp)
        n = _U32.unpack_from(data, pos)[0]
        raw = data[pos + 4:pos + 4 + n]
        try:
            return raw.decode(), pos + 4 + n
        except UnicodeDecodeError:
            return raw, pos + 4 + n
    if kind == 0x46:  # F
        return _table(data, pos)
    if kind == 0x74:  # t
        return data[pos] != 0, pos + 1
    if kind == 0x62:  # b
        return _I8.unpack_from(data, pos)[0], pos + 1
    if kind == 0x73:  # s
        return _I16.unpack_from(data, pos)[0], pos + 2
    if kind == 0x49:  # I
        return _I32.unpack_from(data, pos)[0], pos + 4
    if kind == 0x6C or kind == 0x4C:  # l, L: pamqp reads both as signed
        return _I64.unpack_from(data, pos)[0], pos + 8
    if kind == 0x64:  # d
        return _F64.unpack_from(data, pos)[0], pos + 8
    if kind == 0x56 or kind == 0:  # V (and a zero byte, as pamqp)
        return None, pos
    if kind == 0x41:  # A
        n = _U32.unpack_from(data, pos)[0]
        pos += 4
        end = pos + n
        if end > len(data):
            raise _Unhandled
        items = []
        while pos < end:
            item, pos = _value(data, pos)
            items.append(item)
        return items, pos
    if kind == 0x42:  # B
        return data[pos], pos + 1
    if kind == 0x75:  # u
        return _U16.unpack_from(data, pos)[0], pos + 2
    if kind == 0x69:  # i
        return _U32.unpack_from(data, pos)[0], pos + 4
    if kind == 0x66:  # f
        return _F32.unpack_from(data, pos)[0], pos + 4
    raise _Unhandled  # T, D, x and unknown kinds: pamqp


def _table(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
    n = _U32.unpack_from(data, pos)[0]
    pos += 4
    end = pos + n
    if end > len(data):
        raise _Unhandled
    table: dict[str, Any] = {}
    while pos < end:
        klen = data[pos]
        pos += 1
        if pos + klen > end:
            raise _Unhandled
        key = data[pos:pos + klen].decode()
        pos += klen
        kind = data[pos]
        if kind == 0x53:  # the usual value, a long string: inline
            n = _U32.unpack_from(data, pos + 1)[0]
            raw = data[pos + 5:pos + 5 + n]
            pos += 5 + n
            try:
                table[key] = raw.decode()
            except UnicodeDecodeError:
                table[key] = raw
        elif kind == 0x56:
            table[key] = None
            pos += 1
        else:
            table[key], pos = _value(data, pos)
    return table, end


def _short(data: bytes, pos: int) -> tuple[str, int]:
    n = data[pos]
    end = pos + 1 + n
    if end > len(data):
        raise _Unhandled
    return data[pos + 1:end].decode(), end


def _content_header(data: bytes, end: int) -> ContentHeader:
    class_id, weight, body_size, flags = _CONTENT.unpack_from(data, 7)
    if flags & 1 or class_id != 60:
        raise _Unhandled  # a second flag word, or not Basic: pamqp
    props: Any = spec.Basic.Properties.__new__(spec.Basic.Properties)
    for name, default in _PROPERTY_DEFAULTS:
        setattr(props, name, default)
    pos = 21
    body = data[:end]  # values never run past the frame's payload
    for name, flag, kind in _PROPERTIES:
        if not flags & flag:
            continue
        value: Any
        if kind == "s":
            value, pos = _short(body, pos)
        elif kind == "F":
            value, pos = _table(body, pos)
        elif kind == "o":
            value = body[pos]
            pos += 1
        else:
            stamp = _U64.unpack_from(body, pos)[0]
            value = datetime.datetime.fromtimestamp(stamp, tz=datetime.UTC)
            pos += 8
        setattr(props, name, value)
    header = ContentHeader(weight, body_size, props)
    header.class_id = class_id
    return header


def _method(data: bytes) -> Any:
    index = _U32.unpack_from(data, 7)[0]
    if index == _DELIVER:
        frame: Any = spec.Basic.Deliver.__new__(spec.Basic.Deliver)
        frame.consumer_tag, pos = _short(data, 11)
        frame.delivery_tag = _I64.unpack_from(data, pos)[0]
        frame.redelivered = bool(data[pos + 8] & 1)
        frame.exchange, pos = _short(data, pos + 9)
        frame.routing_key, pos = _short(data, pos)
        return frame
    if index == _ACK:
        frame = spec.Basic.Ack.__new__(spec.Basic.Ack)
        frame.delivery_tag = _I64.unpack_from(data, 11)[0]
        frame.multiple = bool(data[19] & 1)
        return frame
    raise _Unhandled


def unmarshal(data: bytes) -> tuple[int, int, Any]:
    """Decode one whole frame (``data`` holds exactly one): ``(bytes used, channel, frame)``,
    as ``pamqp.frame.unmarshal``; frames not on the hot paths go to pamqp."""
    try:
        kind, channel, size = _HEADER.unpack_from(data)
        end = 7 + size
        if len(data) == end + 1 and data[end] == _FRAME_END:
            if kind == 3:
                return end + 1, channel, ContentBody(data[7:end])
            if kind == 1:
                return end + 1, channel, _method(data)
            if kind == 2:
                return end + 1, channel, _content_header(data, end)
    except (_Unhandled, IndexError, ValueError, struct.error):
        pass
    return pamqp_frame.unmarshal(data)


# ---- encoding -------------------------------------------------------------------------------

def _int_value(value: int) -> bytes:
    if -128 <= value <= 127:
        return b"b" + _I8.pack(value)
    if -32768 <= value <= 32767:
        return b"s" + _I16.pack(value)
    if 0 <= value <= 65535:
        return b"u" + _U16.pack(value)
    if -2147483648 <= value <= 2147483647:
        return b"I" + _I32.pack(value)
    if 0 <= value <= 4294967295:
        return b"i" + _U32.pack(value)
    return pamqp_encode.encode_table_value(value)  # 'l', or pamqp's error


def _encode_value(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        raw: bytes = value.encode()
        return b"S" + _U32.pack(len(raw)) + raw
    if value is None:
        return b"V"
    if kind is bool:
        return b"t\x01" if value else b"t\x00"
    if kind is int:
        if pamqp_encode.DEPRECATED_RABBITMQ_SUPPORT:
            return pamqp_encode.encode_table_value(value)
        return _int_value(value)
    if kind is float and getattr(pamqp_encode.encode_table_value, "_celeriac", False):
        return b"d" + _F64.pack(value)
    if kind is dict:
        return b"F" + _encode_table(value)
    if kind is list:
        out = b"".join([_encode_value(item) for item in value])
        return b"A" + _U32.pack(len(out)) + out
    return pamqp_encode.encode_table_value(value)


#: A table key as written (length byte and UTF-8), by key: headers repeat the same few keys.
_table_keys: dict[str, bytes] = {}


def _table_key(key: Any) -> bytes:
    if type(key) is not str:
        raise _Unhandled
    raw = key.encode()
    if len(raw) > 128:
        raise _Unhandled  # pamqp truncates it, with a warning
    out = _U8.pack(len(raw)) + raw
    if len(_table_keys) < 4096:
        _table_keys[key] = out
    return out


def _encode_table(table: dict[str, Any]) -> bytes:
    if not table:
        return b"\0\0\0\0"
    parts: list[bytes] = []
    append = parts.append
    keys = _table_keys
    for key in sorted(table):
        append(keys.get(key) or _table_key(key))
        value = table[key]
        # the usual kinds inline (a Celery header is mostly strings and None), others below
        if type(value) is str:
            raw = value.encode()
            append(b"S" + _U32.pack(len(raw)))
            append(raw)
        elif value is None:
            append(b"V")
        else:
            append(_encode_value(value))
    out = b"".join(parts)
    return _U32.pack(len(out)) + out


def encode_properties(props: Any) -> bytes:
    """``props.marshal()``, faster for the usual types (pamqp's for the rest)."""
    try:
        flags = 0
        parts: list[bytes] = []
        for name, flag, kind in _PROPERTIES:
            value = getattr(props, name)
            if value is None or value == "":
                continue
            flags |= flag
            if kind == "s":
                if type(value) is not str:
                    raise _Unhandled
                raw = value.encode()
                if len(raw) > 255:
                    raise _Unhandled
                parts.append(_U8.pack(len(raw)) + raw)
            elif kind == "F":
                if type(value) is not dict:
                    raise _Unhandled
                parts.append(_encode_table(value))
            elif kind == "o":
                if type(value) is not int or not 0 <= value <= 255:
                    raise _Unhandled
                parts.append(_U8.pack(value))
            else:
                raise _Unhandled
        return _U16.pack(flags) + b"".join(parts)
    except _Unhandled:
        return bytes(props.marshal())


_publish_methods: dict[tuple[int, str, str, bool], bytes] = {}


def _publish_method(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    key = (channel, exchange, routing_key, mandatory)
    frame = _publish_methods.get(key)
    if frame is None:
        frame = pamqp_frame.marshal(spec.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                                       mandatory=mandatory), channel)
        if len(_publish_methods) >= 4096:
            _publish_methods.clear()
        _publish_methods[key] = frame
    return frame


def publish_frames(channel: int, exchange: str, routing_key: str, mandatory: bool, props: Any,
                   body: bytes, max_content: int) -> bytes:
    """The frames of one ``basic.publish``: method, content header, body (cut to size)."""
    properties = encode_properties(props)
    header = _HEADER_START.pack(2, channel, 12 + len(properties), 60, 0, len(body))
    parts = [_publish_method(channel, exchange, routing_key, mandatory), header, properties,
             b"\xce"]
    for start in range(0, len(body), max_content):
        chunk = body[start:start + max_content]
        parts.append(_HEADER.pack(3, channel, len(chunk)))
        parts.append(chunk)
        parts.append(b"\xce")
    return b"".join(parts)


def ack_frame(channel: int, delivery_tag: int, multiple: bool = False,
              requeue: bool | None = None) -> bytes:
    """A ``basic.ack`` frame, or ``basic.nack`` when ``requeue`` is given."""
    if requeue is None:
        return _METHOD_ACK.pack(1, channel, 13, _ACK, delivery_tag, int(multiple)) + b"\xce"
    return _METHOD_ACK.pack(1, channel, 13, 0x003C0078, delivery_tag,
                            int(multiple) | (int(requeue) << 1)) + b"\xce"

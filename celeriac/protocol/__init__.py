"""Celery's task message protocol: v2 encode, v2 and v1 decode, kombu's Redis envelope.

    encode_task(TaskMessage) -> Envelope          (protocol 2, as Celery 5 sends it)
    decode_task(Envelope, accept) -> TaskMessage  (protocol 2, or protocol 1 bodies)
    kombu_envelope.dumps / loads                  (the JSON a Redis list entry holds)

Decoding never raises anything but ProtocolError subclasses (DecodeError,
ContentDisallowed) on bad input.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from celeriac.errors import DecodeError
from celeriac.message import Envelope, TaskMessage
from celeriac.protocol import kombu_envelope
from celeriac.protocol.v1 import decode_v1, looks_like_v1
from celeriac.protocol.v2 import decode_v2, encode_many, encode_task, format_time, parse_time, safe_repr
from celeriac.serializers import decompress, loads

__all__ = [
    "encode_many",
    "decode_task",
    "encode_task",
    "format_time",
    "kombu_envelope",
    "parse_time",
    "safe_repr",
]


def decode_task(envelope: Envelope, accept: Collection[str]) -> TaskMessage:
    """Decode a task message of protocol 2 (a ``task`` header) or protocol 1 (a body dict).

    Raises ContentDisallowed if the content type is not in ``accept`` and DecodeError,
    with a short reason, for anything malformed.
    """
    headers = envelope.headers
    properties = envelope.properties
    body = envelope.body
    content_type = envelope.content_type
    content_encoding = envelope.content_encoding
    if (
        type(headers) is dict and type(properties) is dict and type(body) is bytes
        and type(content_type) is str and type(content_encoding) is str
        and "task" in headers and "compression" not in headers
    ):  # the usual protocol 2 message, checked below in full
        payload = loads(body, content_type, content_encoding, accept)
        return decode_v2(headers, payload, properties, content_type, content_encoding)
    if not isinstance(headers, dict):
        raise DecodeError(f"headers must be a mapping, got {type(headers).__name__}")
    if not isinstance(properties, Mapping):
        raise DecodeError(f"properties must be a mapping, got {type(properties).__name__}")
    if not isinstance(body, bytes | bytearray | memoryview | str):
        raise DecodeError(f"body must be bytes, got {type(body).__name__}")
    if (content_type is not None and type(content_type) is not str) or (
        content_encoding is not None and type(content_encoding) is not str
    ):
        raise DecodeError("content type and encoding must be strings")
    compression = headers.get("compression")
    if compression is not None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        body = decompress(bytes(body), compression)
    payload = loads(body, content_type, content_encoding, accept)
    if "task" in headers:
        return decode_v2(headers, payload, properties, content_type, content_encoding)
    if looks_like_v1(payload):
        return decode_v1(headers, payload, properties, content_type, content_encoding, compression)
    raise DecodeError("not a task message: no 'task' header and the body is not a protocol 1 dict")

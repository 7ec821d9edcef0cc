"""kombu's JSON envelope: what a Redis (or SQS) list entry holds.

    {"body": <base64>, "content-encoding": ..., "content-type": ..., "headers": {...},
     "properties": {<message properties>..., "delivery_info": {"exchange", "routing_key"},
                    "priority": p, "body_encoding": "base64", "delivery_tag": <uuid4>}}

:func:`dumps` writes it byte for byte as kombu does (Python's ``json.dumps`` defaults:
``", "`` and ``": "`` separators, non-ASCII escaped), unless ``compact=True``, which uses
orjson: about ten times faster, and kombu reads it just the same.
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson

from celeriac.errors import DecodeError
from celeriac.message import Envelope, build_envelope
from celeriac.serializers import EncodeError
from celeriac.serializers._json import json_default, json_loads, stdlib_encoder
from celeriac.utils.ids import new_id

__all__ = ["dumps", "loads"]

#: properties kombu's virtual transport owns; never part of an Envelope's properties
TRANSPORT_PROPERTIES = frozenset({"delivery_info", "body_encoding", "delivery_tag"})

_ORJSON_OPTS = orjson.OPT_PASSTHROUGH_DATETIME


def dumps(
    envelope: Envelope,
    exchange: str,
    routing_key: str,
    delivery_tag: str | None = None,
    *,
    compact: bool = False,
) -> bytes:
    """Serialize ``envelope`` as a kombu Redis list entry (a new uuid4 tag if None)."""
    properties: dict[str, Any] = {}
    priority: Any = 0
    for key, value in envelope.properties.items():
        if key == "priority":
            priority = value
        elif key not in TRANSPORT_PROPERTIES:
            properties[key] = value
    properties["delivery_info"] = {"exchange": exchange, "routing_key": routing_key}
    properties["priority"] = 0 if priority is None else priority
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = new_id() if delivery_tag is None else delivery_tag
    entry = {
        "body": binascii.b2a_base64(envelope.body, newline=False).decode("ascii"),
        "content-encoding": envelope.content_encoding,
        "content-type": envelope.content_type,
        "headers": envelope.headers,
        "properties": properties,
    }
    if compact:
        try:
            return orjson.dumps(entry, default=json_default, option=_ORJSON_OPTS)
        except EncodeError:
            raise
        except TypeError:
            pass  # UUIDs, non-str keys, huge ints: let the stdlib encoder handle them
    try:
        return stdlib_encoder.encode(entry).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"cannot serialize the envelope: {exc}") from None


def loads(raw: bytes | str) -> tuple[Envelope, dict[str, Any], str]:
    """Parse a kombu list entry; return ``(envelope, delivery_info, delivery_tag)``.

    Raises DecodeError, with a short reason, on anything malformed.
    """
    if type(raw) is not bytes:
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        elif isinstance(raw, bytes | bytearray | memoryview):
            raw = bytes(raw)
        else:
            raise DecodeError(f"envelope must be bytes, got {type(raw).__name__}")
    try:
        entry = json_loads(raw)
    except Exception as exc:
        raise DecodeError(f"envelope is not JSON: {str(exc)[:120]}") from None
    if type(entry) is not dict:
        raise DecodeError(f"envelope must be a JSON object, got {type(entry).__name__}")
    get = entry.get
    props = get("properties")
    if props is None:
        props = {}
    elif type(props) is not dict:
        raise DecodeError(f"envelope properties must be an object, got {type(props).__name__}")
    headers = get("headers")
    if headers is None:
        headers = {}
    elif type(headers) is not dict:
        raise DecodeError(f"envelope headers must be an object, got {type(headers).__name__}")
    content_type = get("content-type")
    content_encoding = get("content-encoding")
    if content_type is not None and type(content_type) is not str:
        raise DecodeError("envelope content-type must be a string")
    if content_encoding is not None and type(content_encoding) is not str:
        raise DecodeError("envelope content-encoding must be a string")

    # the transport's own keys leave the (freshly parsed) properties: what is left is the
    # envelope's properties, in their order
    delivery_info = props.pop("delivery_info", None)
    body_encoding = props.pop("body_encoding", None)
    tag = props.pop("delivery_tag", None)
    body = get("body")
    if body is None:
        data = b""
    elif type(body) is not str:
        raise DecodeError(f"envelope body must be a string, got {type(body).__name__}")
    elif body_encoding == "base64":
        try:
            data = binascii.a2b_base64(body, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError(f"envelope body is not base64: {exc}") from None
    elif body_encoding is None:
        data = body.encode("utf-8", "surrogatepass")
    else:
        raise DecodeError(f"unknown body_encoding {body_encoding!r}")

    if delivery_info is None:
        delivery_info = {}
    elif type(delivery_info) is not dict:
        raise DecodeError("envelope delivery_info must be an object")
    envelope = build_envelope(
        data,
        "application/data" if content_type is None else content_type,
        "utf-8" if content_encoding is None else content_encoding,
        headers,
        props,
    )
    return envelope, delivery_info, "" if tag is None else str(tag)

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
import re
import uuid
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import orjson

from celeriac.errors import DecodeError
from celeriac.message import Envelope, build_envelope
from celeriac.serializers import EncodeError
from celeriac.serializers._json import json_default, json_loads, stdlib_encoder
from celeriac.utils.ids import new_id

__all__ = ["EntrySplicer", "dumps", "loads"]

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


#: stand-ins for each message's own values in a run's template (hex: valid JSON text and
#: valid base64, so the body's stand-in survives the base64 step unchanged)
_SLOTS = tuple(uuid.uuid4().hex for _ in range(7))
_BODY, _ID, _ROOT, _ARGSREPR, _KWARGSREPR, _CORRELATION, _TAG = _SLOTS
_SLOT_RE = re.compile(b'"(' + b"|".join(slot.encode() for slot in _SLOTS) + b')"')


class EntrySplicer:
    """The kombu entries of one run's envelopes (``Envelope.run``), for one address.

    One envelope of the run is serialized by ``dumps`` with stand-ins for each message's own
    values (body, id, root_id, argsrepr, kwargsrepr, correlation_id, delivery tag); each
    entry is then that template with the message's values, JSON-encoded by the same
    encoder, put in their place: the same JSON as ``dumps`` writes, at a fraction of the
    cost. Build with :meth:`make`, which returns None when the template does not split
    cleanly (the caller then uses ``dumps``).
    """

    __slots__ = ("_encode", "_format", "_order", "_sizes")

    def __init__(self, fmt: bytes, order: Callable[[tuple[bytes, ...]], tuple[bytes, ...]],
                 encode: Callable[[Any], bytes], sizes: tuple[int, int]) -> None:
        self._format = fmt
        self._order = order
        self._encode = encode
        self._sizes = sizes

    @classmethod
    def make(cls, envelope: Envelope, exchange: str, routing_key: str, *,
             compact: bool = False) -> EntrySplicer | None:
        headers = {**envelope.headers, "id": _ID, "root_id": _ROOT, "argsrepr": _ARGSREPR,
                   "kwargsrepr": _KWARGSREPR}
        properties = {**envelope.properties, "correlation_id": _CORRELATION}
        probe = build_envelope(binascii.a2b_base64(_BODY), envelope.content_type,
                               envelope.content_encoding, headers, properties)
        parts = _SLOT_RE.split(dumps(probe, exchange, routing_key, _TAG, compact=compact))
        found = [_SLOTS.index(slot.decode()) for slot in parts[1::2]]
        if sorted(found) != list(range(len(_SLOTS))):
            return None  # a stand-in went missing or appears twice: no template
        fmt = b"%b".join(part.replace(b"%", b"%%") for part in parts[::2])
        encode = _compact_value if compact else _exact_value
        sizes = (len(envelope.headers), len(envelope.properties))
        return cls(fmt, itemgetter(*found), encode, sizes)

    def entry(self, envelope: Envelope, delivery_tag: str | None = None) -> bytes | None:
        """The entry for ``envelope`` (of this run; a new uuid4 tag if None), or None if it
        no longer fits the run."""
        headers = envelope.headers
        properties = envelope.properties
        if (len(headers), len(properties)) != self._sizes:
            return None
        encode = self._encode
        try:
            task_id = headers["id"]
            root_id = headers["root_id"]
            correlation_id = properties["correlation_id"]
            id_json = encode(task_id)
            values = (
                b'"' + binascii.b2a_base64(envelope.body, newline=False) + b'"',
                id_json,
                id_json if root_id is task_id else encode(root_id),
                encode(headers["argsrepr"]),
                encode(headers["kwargsrepr"]),
                id_json if correlation_id is task_id else encode(correlation_id),
                encode(new_id() if delivery_tag is None else delivery_tag),
            )
        except (KeyError, TypeError, ValueError):
            return None  # not this run's shape, or a value only the general path encodes
        return self._format % self._order(values)


def _compact_value(value: Any) -> bytes:
    return orjson.dumps(value, option=_ORJSON_OPTS)


def _exact_value(value: Any) -> bytes:
    return stdlib_encoder.encode(value).encode("ascii")


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

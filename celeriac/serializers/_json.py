"""JSON as kombu writes it, made fast with orjson.

kombu's JSON encoder (which Celery uses) wraps the types plain JSON lacks in a marker
object ``{"__type__": <name>, "__value__": <value>}``: ``datetime``, ``date``, ``time``,
``decimal`` (``str(d)``) and ``uuid`` (``{"hex": u.hex}``). We write and read the same
markers, so a celeriac worker hands a task the same Python values a Celery worker would.

The fast path is orjson. It differs from the stdlib in a few places, each handled:

- orjson writes datetimes and UUIDs natively as plain strings. Datetimes are routed to
  ``default`` with ``OPT_PASSTHROUGH_DATETIME``; UUIDs cannot be, so a cheap pre-scan
  (:func:`_has_uuid`) sends bodies that hold one to the stdlib encoder.
- orjson refuses non-``str`` dict keys and integers beyond 64 bits, which ``json`` accepts:
  on such a ``TypeError`` we fall back to the stdlib encoder (same markers).
- orjson refuses ``NaN``/``Infinity`` on input, which Python's ``json`` writes: on a decode
  error we retry with the stdlib decoder before giving up.

Known difference: orjson reads an integer literal wider than 64 bits as a float (the stdlib
keeps an ``int``); detecting it would cost a scan of every body, so it is not done.
Output bytes differ from kombu's only in spacing (orjson is compact, kombu writes ``", "``
and ``": "``) and in that non-ASCII text is raw UTF-8 rather than ``\\uXXXX`` escapes; both
parse to the same value everywhere.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import orjson

from celeriac.errors import EncodeError

__all__ = [
    "EncodeError",
    "call_dumper",
    "json_default",
    "json_dumps",
    "json_loads",
    "stdlib_encoder",
    "walk_markers",
]


_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_ATOMIC = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = frozenset({list, tuple, dict})
_CONTAINER_TYPES = (list, tuple, dict)
_SEQUENCES = frozenset({list, tuple})  # isinstance on a tuple: a few times a union's speed
_MARKER = b'"__type__"'


def _marker(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def _default(obj: Any) -> Any:
    """Encode what JSON lacks the way kombu's ``JSONEncoder.default`` does."""
    reducer = getattr(obj, "__json__", None)
    if reducer is not None:
        return reducer()
    if isinstance(obj, datetime):
        return _marker("datetime", obj.isoformat())
    if isinstance(obj, date):
        return _marker("date", obj.isoformat())
    if isinstance(obj, time):
        return _marker("time", obj.isoformat())
    if isinstance(obj, Decimal):
        return _marker("decimal", str(obj))
    if isinstance(obj, uuid.UUID):
        return _marker("uuid", {"hex": obj.hex})
    if isinstance(obj, bytes | bytearray | memoryview):
        raise EncodeError(
            "bytes cannot be sent with the json serializer; decode them to str, "
            "base64-encode them, or use serializer='msgpack'"
        )
    raise EncodeError(f"object of type {type(obj).__name__} is not JSON serializable")


#: kombu's exact output (``", "`` / ``": "`` separators, ASCII-only), for when bytes matter.
stdlib_encoder = json.JSONEncoder(default=_default)
json_default = _default


def _has_uuid(obj: Any) -> bool:
    """Whether a UUID hides anywhere in ``obj`` (lists, tuples, dicts).

    Iterative and type-dispatched: this runs on every message body (a task's args, kwargs
    and embed), so it must cost well under a microsecond for the usual flat values.
    """
    stack = [obj]
    pop, push = stack.pop, stack.append
    while stack:
        current = pop()
        is_map = type(current) is dict or isinstance(current, dict)
        for v in current.values() if is_map else current:
            t = type(v)
            if t in _ATOMIC:
                continue
            if t in _CONTAINERS:
                if v:
                    push(v)
            elif isinstance(v, uuid.UUID):
                return True
            elif isinstance(v, _CONTAINER_TYPES):
                push(v)
    return False


def json_dumps(obj: Any) -> bytes:
    """Serialize to JSON bytes with kombu's type markers."""
    if isinstance(obj, _CONTAINER_TYPES):
        if _has_uuid(obj):
            return _stdlib_dumps(obj)
    elif isinstance(obj, uuid.UUID):
        return _stdlib_dumps(obj)
    return _orjson_dumps(obj)


def _orjson_dumps(obj: Any) -> bytes:
    """orjson, or the stdlib encoder for what orjson refuses (non-str dict keys, integers
    over 64 bits, UUIDs at the top level...)."""
    try:
        return orjson.dumps(obj, default=_default, option=_OPTS)
    except EncodeError:
        raise
    except TypeError:
        return _stdlib_dumps(obj)


def call_dumper(embed: Any) -> Callable[[Any, Any], bytes]:
    """``(args, kwargs) -> json_dumps((args, kwargs, embed))`` for calls sharing ``embed``.

    The UUID scan of ``embed`` is done here, once, instead of in every body of a batch;
    each call scans only its own args and kwargs, flat args of plain values with one set
    test (the same bytes as ``json_dumps``).
    """
    if _has_uuid((embed,)):
        return lambda args, kwargs: _stdlib_dumps((args, kwargs, embed))

    def dump(args: Any, kwargs: Any) -> bytes:
        obj = (args, kwargs, embed)
        if type(kwargs) is not dict or type(args) not in _SEQUENCES:
            return json_dumps(obj)  # odd containers: the general path decides
        if (not _ATOMIC.issuperset(map(type, args)) and _has_uuid(args)) or (
                kwargs and _has_uuid(kwargs)):
            return _stdlib_dumps(obj)
        return _orjson_dumps(obj)

    return dump


def _stdlib_dumps(obj: Any) -> bytes:
    try:
        return stdlib_encoder.encode(obj).encode("utf-8")
    except EncodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"cannot serialize to json: {exc}") from None


_DECODERS: dict[str, Any] = {
    "datetime": datetime.fromisoformat,
    "date": lambda v: datetime.fromisoformat(v).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": lambda v: uuid.UUID(**v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("utf-8")),
}


def _unmark(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
            decoder = _DECODERS.get(obj["__type__"])
            if decoder is None:
                raise ValueError(f"unsupported __type__ marker {obj['__type__']!r}")
            return decoder(obj["__value__"])
        for k, v in obj.items():
            if isinstance(v, dict | list):
                obj[k] = _unmark(v)
        return obj
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, dict | list):
                obj[i] = _unmark(v)
    return obj


def walk_markers(obj: Any) -> Any:
    """Replace kombu ``__type__`` markers by their Python values, in place."""
    return _unmark(obj)


def json_loads(data: bytes) -> Any:
    """Parse JSON bytes, turning kombu type markers back into Python values.

    Raises ``ValueError`` (or a subclass) on malformed input.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        # Python's json also writes NaN / Infinity; orjson refuses them.
        obj = json.loads(data)
    if _MARKER in data:
        obj = _unmark(obj)
    return obj

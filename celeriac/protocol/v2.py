"""Celery task message protocol 2: encode a TaskMessage, decode headers + body.

Layout (see DESIGN.md §3 and the captures in ``shared/fixtures/celery-wire``):

- headers, in this order: lang, task, id, shadow, eta, expires, group, group_index,
  retries, timelimit, root_id, parent_id, argsrepr, kwargsrepr, origin, ignore_result,
  replaced_task_nesting, stamped_headers, stamps; then the user's headers, flat; then
  ``compression`` when the body is compressed.
- properties: correlation_id, reply_to, delivery_mode, expiration (only with expires),
  priority.
- body: ``[args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from celeriac.errors import DecodeError
from celeriac.message import (
    Envelope,
    EnvelopeRun,
    TaskMessage,
    build_envelope,
    build_run_envelope,
    build_task_message,
)
from celeriac.serializers import EncodeError, compress, dumps, get_serializer
from celeriac.serializers._json import call_dumper, json_dumps

__all__ = [
    "encode_many",
    "KNOWN_HEADERS",
    "REPR_MAXSIZE",
    "decode_v2",
    "encode_task",
    "format_time",
    "parse_time",
    "safe_repr",
]

_ZERO = timedelta(0)
#: what ``safe_repr`` cuts before it calls ``repr`` (a tuple: ``isinstance`` on a union
#: costs a few times more, on every argument list sent)
_SIZED = (list, tuple, dict, str, bytes)

#: Celery's ``argsrepr_maxsize`` / ``kwargsrepr_maxsize``.
REPR_MAXSIZE = 1024

#: The headers protocol 2 defines; any other header is the user's (``extra_headers``).
KNOWN_HEADERS = frozenset(
    {
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
        "compression",
    }
)

_origin_cache: tuple[int, str] = (-1, "")


def default_origin() -> str:
    """Celery's anonymous node name for a client: ``gen<pid>@<host>`` (cached per pid)."""
    global _origin_cache
    pid = os.getpid()
    if _origin_cache[0] != pid:
        _origin_cache = (pid, f"gen{pid}@{socket.gethostname()}")
    return _origin_cache[1]


def safe_repr(obj: Any, maxsize: int = REPR_MAXSIZE) -> str:
    """``repr(obj)`` cut to ``maxsize`` characters (ending in ``...`` when cut).

    Like Celery's ``saferepr`` it does bounded work on huge sequences and never raises.
    """
    try:
        if isinstance(obj, _SIZED) and len(obj) > maxsize // 2:
            # bounded work: each element takes >= 3 characters ("x, "), so a prefix of
            # maxsize // 2 elements (or maxsize characters) is long enough to cut
            if isinstance(obj, dict):
                obj = dict(islice(obj.items(), maxsize // 2))
            else:
                obj = obj[: maxsize // 2] if isinstance(obj, list | tuple) else obj[:maxsize]
        text = repr(obj)
    except Exception as exc:  # a user __repr__ may fail; the message must still go
        return f"<unrepresentable {type(obj).__name__}: {type(exc).__name__}>"
    if len(text) > maxsize:
        return text[: maxsize - 3] + "..."
    return text


def format_time(dt: datetime) -> str:
    """ISO-8601 in UTC with ``+00:00``, as Celery writes eta/expires (naive means UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    elif dt.utcoffset() != _ZERO:
        dt = dt.astimezone(UTC)
    return dt.isoformat()


def parse_time(value: Any, name: str, naive_is_utc: bool = True) -> datetime | None:
    """Parse an eta/expires header into an aware datetime (None stays None)."""
    if value is None:
        return None
    if type(value) is not str:
        raise DecodeError(f"{name} must be an ISO-8601 string, got {type(value).__name__}")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise DecodeError(f"{name} is not an ISO-8601 time: {value[:64]!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC) if naive_is_utc else dt.astimezone()
    return dt


# -- encode ----------------------------------------------------------------------------


def encode_task(
    msg: TaskMessage, serializer: str = "json", compression: str | None = None
) -> Envelope:
    """Build the protocol 2 envelope Celery would send for ``msg``.

    ``compression`` is a name (``zlib``, ``bzip2``, ``lzma``) or a header value
    (``application/x-gzip``...). Raises EncodeError (a TypeError) for args that are not a
    list/tuple, kwargs that are not a mapping, or values the serializer cannot write, and
    ConfigurationError for an unknown serializer or compression.
    """
    args = msg.args
    kwargs = msg.kwargs
    if not isinstance(args, list | tuple):
        raise EncodeError(f"task args must be a list or tuple, not {type(args).__name__}")
    if not isinstance(kwargs, Mapping):
        raise EncodeError(f"task kwargs must be a mapping, not {type(kwargs).__name__}")
    eta = msg.eta
    expires = msg.expires
    expires_text = None if expires is None else format_time(expires)
    hard, soft = msg.timelimit
    headers: dict[str, Any] = {
        "lang": "py",
        "task": msg.task,
        "id": msg.id,
        "shadow": msg.shadow,
        "eta": None if eta is None else format_time(eta),
        "expires": expires_text,
        "group": msg.group,
        "group_index": msg.group_index,
        "retries": msg.retries,
        "timelimit": [hard, soft],
        "root_id": msg.root_id or msg.id,
        "parent_id": msg.parent_id,
        "argsrepr": safe_repr(args) if msg.argsrepr is None else msg.argsrepr,
        "kwargsrepr": safe_repr(kwargs) if msg.kwargsrepr is None else msg.kwargsrepr,
        "origin": msg.origin or default_origin(),
        "ignore_result": msg.ignore_result,
        "replaced_task_nesting": msg.replaced_task_nesting,
        "stamped_headers": msg.stamped_headers,
        "stamps": msg.stamps,
    }
    if msg.extra_headers:
        headers.update(msg.extra_headers)

    content_type, content_encoding, body = dumps(
        (
            args,
            kwargs,
            {
                "callbacks": msg.callbacks,
                "errbacks": msg.errbacks,
                "chain": msg.chain,
                "chord": msg.chord,
            },
        ),
        serializer,
    )
    if compression:
        body, headers["compression"] = compress(body, compression)

    properties: dict[str, Any] = {
        "correlation_id": msg.correlation_id or msg.id,
        "reply_to": msg.reply_to or "",
        "delivery_mode": msg.delivery_mode,
    }
    if expires is not None:
        # Celery passes expires to kombu as a TTL in seconds from now; AMQP brokers
        # then drop the message themselves once it is due.
        ttl = expires.timestamp() if expires.tzinfo else expires.replace(tzinfo=UTC).timestamp()
        properties["expiration"] = str(int(max(0.0, ttl - time.time()) * 1000))
    properties["priority"] = msg.priority
    return build_envelope(body, content_type, content_encoding, headers, properties)


# -- decode ----------------------------------------------------------------------------


def encode_many(
    proto: TaskMessage,
    calls: Sequence[tuple[str, Sequence[Any], Mapping[str, Any]]],
    serializer: str = "json",
    compression: str | None = None,
) -> list[Envelope]:
    """Encode many calls ``(task_id, args, kwargs)`` of the task ``proto`` describes.

    Every header and property but the call's own (id, root_id, argsrepr, kwargsrepr,
    correlation_id) is the same for all: they are built once from ``proto`` and copied,
    which makes batch publishing several times cheaper than ``encode_task`` per call. The
    envelopes share one ``EnvelopeRun``, so a broker may serialize them from one template.
    """
    template = encode_task(proto, serializer, compression)
    base_headers = template.headers
    base_properties = template.properties
    content_type = template.content_type
    content_encoding = template.content_encoding
    own_root = proto.root_id is None
    dump = _body_dumper(serializer, {"callbacks": proto.callbacks, "errbacks": proto.errbacks,
                                     "chain": proto.chain, "chord": proto.chord})
    run = EnvelopeRun()
    out: list[Envelope] = []
    append = out.append
    for task_id, args, kwargs in calls:
        if not isinstance(args, list | tuple):
            raise EncodeError(f"task args must be a list or tuple, not {type(args).__name__}")
        if not isinstance(kwargs, Mapping):
            raise EncodeError(f"task kwargs must be a mapping, not {type(kwargs).__name__}")
        headers = base_headers.copy()
        headers["id"] = task_id
        if own_root:
            headers["root_id"] = task_id
        headers["argsrepr"] = safe_repr(args if type(args) is tuple else tuple(args))  # as Celery
        headers["kwargsrepr"] = "{}" if type(kwargs) is dict and not kwargs else safe_repr(kwargs)
        properties = base_properties.copy()
        properties["correlation_id"] = task_id
        body = dump(args, kwargs)
        if compression:
            body, _ = compress(body, compression)
        append(build_run_envelope(body, content_type, content_encoding, headers, properties, run))
    return out


def _body_dumper(serializer: str, embed: dict[str, Any]) -> Callable[[Any, Any], bytes]:
    """``(args, kwargs) -> body`` for calls sharing ``embed``, as ``dumps`` writes it; for
    kombu's JSON (the registered default), ``embed`` is checked for UUIDs once, not per call."""
    if get_serializer(serializer).dumps is json_dumps:
        return call_dumper(embed)
    return lambda args, kwargs: dumps((args, kwargs, embed), serializer)[2]


def _opt_str(headers: Mapping[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if value is None or type(value) is str:
        return value
    raise DecodeError(f"header {key!r} must be a string or null, got {type(value).__name__}")


def _req_str(value: Any, what: str) -> str:
    if type(value) is str and value:
        return value
    if value is None:
        raise DecodeError(f"missing {what}")
    raise DecodeError(f"{what} must be a non-empty string, got {type(value).__name__}")


def _opt_int(value: Any, what: str, default: int | None) -> int | None:
    if value is None:
        return default
    if type(value) is int:
        return value
    raise DecodeError(f"{what} must be an integer, got {type(value).__name__}")


def _timelimit(value: Any, what: str) -> tuple[float | None, float | None]:
    if value is None:
        return (None, None)
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise DecodeError(f"{what} must be [hard, soft], got {_describe(value)}")
    hard, soft = value
    for limit in value:
        if limit is not None and (type(limit) is bool or not isinstance(limit, int | float)):
            raise DecodeError(f"{what} must hold numbers or nulls, got {_describe(value)}")
    return (hard, soft)


def _opt_list_of_dicts(value: Any, what: str) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise DecodeError(f"{what} must be a list of signatures, got {type(value).__name__}")
    for sig in value:
        if not isinstance(sig, dict):
            raise DecodeError(f"{what} must hold signature dicts, got {type(sig).__name__}")
    return value if isinstance(value, list) else list(value)


def _opt_dict(value: Any, what: str) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    raise DecodeError(f"{what} must be a dict or null, got {type(value).__name__}")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_args(args: Any, kwargs: Any) -> None:
    if not isinstance(args, list | tuple):
        raise DecodeError(f"task args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise DecodeError(f"task kwargs must be a dict, got {type(kwargs).__name__}")


_STR_OR_NONE = frozenset({str, type(None)})
_INT_OR_NONE = frozenset({int, type(None)})
_NUMBER_OR_NONE = frozenset({int, float, type(None)})
_NO_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def decode_v2(
    headers: dict[str, Any],
    payload: Any,
    properties: Mapping[str, Any],
    content_type: str,
    content_encoding: str,
) -> TaskMessage:
    """Build a TaskMessage from protocol 2 ``headers`` and the deserialized body.

    The usual message (every field of the type protocol 2 gives it, no signatures embedded)
    takes a fast path of plain type tests; anything else, well formed or not, goes through
    the field-by-field checks, which also say what is wrong (the same result either way).
    """
    if type(payload) is list and len(payload) == 3:
        args, kwargs, embed = payload
        get = headers.get
        task_id = get("id")
        name = get("task")
        root_id = get("root_id")
        parent_id = get("parent_id")
        group = get("group")
        shadow = get("shadow")
        argsrepr = get("argsrepr")
        kwargsrepr = get("kwargsrepr")
        origin = get("origin")
        group_index = get("group_index")
        retries = get("retries")
        nesting = get("replaced_task_nesting")
        timelimit = get("timelimit")
        stamped = get("stamped_headers")
        stamps = get("stamps")
        ignore_result = get("ignore_result")
        compression = get("compression")
        reply_to = properties.get("reply_to")
        correlation_id = properties.get("correlation_id")
        priority = properties.get("priority")
        delivery_mode = properties.get("delivery_mode")
        if (
            type(task_id) is str and task_id and type(name) is str and name
            and type(args) is list and type(kwargs) is dict
            and (embed is None or embed == _NO_EMBED)
            and type(root_id) in _STR_OR_NONE and type(parent_id) in _STR_OR_NONE
            and type(group) in _STR_OR_NONE and type(shadow) in _STR_OR_NONE
            and type(argsrepr) in _STR_OR_NONE and type(kwargsrepr) in _STR_OR_NONE
            and type(origin) in _STR_OR_NONE
            and type(group_index) in _INT_OR_NONE and type(retries) in _INT_OR_NONE
            and type(nesting) in _INT_OR_NONE
            and (stamped is None or type(stamped) is list)
            and (stamps is None or type(stamps) is dict)
            and (ignore_result is None or type(ignore_result) is bool)
            and type(reply_to) in _STR_OR_NONE and type(correlation_id) in _STR_OR_NONE
            and type(priority) in _INT_OR_NONE and type(delivery_mode) in _INT_OR_NONE
            and (timelimit is None or (
                type(timelimit) is list and len(timelimit) == 2
                and type(timelimit[0]) in _NUMBER_OR_NONE
                and type(timelimit[1]) in _NUMBER_OR_NONE))
        ):
            # every other field is valid here: a bad time is the first error, as below
            eta = get("eta")
            expires = get("expires")
            return build_task_message(
                task_id, name, args, kwargs, root_id, parent_id, group, group_index, shadow,
                None if eta is None else parse_time(eta, "header 'eta'"),
                None if expires is None else parse_time(expires, "header 'expires'"),
                retries or 0,
                (None, None) if timelimit is None else (timelimit[0], timelimit[1]),
                argsrepr, kwargsrepr, origin, bool(ignore_result), nesting or 0, stamped,
                {} if stamps is None else stamps,
                {} if headers.keys() <= KNOWN_HEADERS
                else {k: v for k, v in headers.items() if k not in KNOWN_HEADERS},
                None, None, None, None, reply_to, correlation_id, priority or 0,
                delivery_mode or 2, content_type, content_encoding,
                compression if type(compression) is str else None,
            )
    return _decode_v2_checked(headers, payload, properties, content_type, content_encoding)


def _decode_v2_checked(
    headers: dict[str, Any],
    payload: Any,
    properties: Mapping[str, Any],
    content_type: str,
    content_encoding: str,
) -> TaskMessage:
    """decode_v2, field by field, raising DecodeError for the first field that is wrong."""
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        raise DecodeError(
            "protocol 2 body must be a list [args, kwargs, embed], got "
            + (f"{len(payload)} items" if isinstance(payload, list | tuple) else _describe(payload))
        )
    args, kwargs, embed = payload
    check_args(args, kwargs)
    if embed is None:
        embed = {}
    elif not isinstance(embed, dict):
        raise DecodeError(f"body embed must be a dict, got {type(embed).__name__}")

    get = headers.get
    if headers.keys() <= KNOWN_HEADERS:
        extra: dict[str, Any] = {}
    else:
        extra = {k: v for k, v in headers.items() if k not in KNOWN_HEADERS}
    stamped = get("stamped_headers")
    if stamped is not None and not isinstance(stamped, list):
        raise DecodeError(f"header 'stamped_headers' must be a list, got {_describe(stamped)}")
    stamps = get("stamps")
    if stamps is None:
        stamps = {}
    elif not isinstance(stamps, dict):
        raise DecodeError(f"header 'stamps' must be a dict, got {type(stamps).__name__}")
    ignore_result = get("ignore_result")
    if ignore_result is not None and type(ignore_result) is not bool:
        raise DecodeError(f"header 'ignore_result' must be a bool, got {_describe(ignore_result)}")
    compression = get("compression")

    priority = properties.get("priority")
    delivery_mode = properties.get("delivery_mode")
    reply_to = properties.get("reply_to")
    correlation_id = properties.get("correlation_id")
    if reply_to is not None and type(reply_to) is not str:
        raise DecodeError(f"property 'reply_to' must be a string, got {_describe(reply_to)}")
    if correlation_id is not None and type(correlation_id) is not str:
        raise DecodeError(
            f"property 'correlation_id' must be a string, got {_describe(correlation_id)}"
        )

    return TaskMessage(
        id=_req_str(get("id"), "header 'id'"),
        task=_req_str(get("task"), "header 'task'"),
        args=args,
        kwargs=kwargs,
        root_id=_opt_str(headers, "root_id"),
        parent_id=_opt_str(headers, "parent_id"),
        group=_opt_str(headers, "group"),
        group_index=_opt_int(get("group_index"), "header 'group_index'", None),
        shadow=_opt_str(headers, "shadow"),
        eta=parse_time(get("eta"), "header 'eta'"),
        expires=parse_time(get("expires"), "header 'expires'"),
        retries=_opt_int(get("retries"), "header 'retries'", 0) or 0,
        timelimit=_timelimit(get("timelimit"), "header 'timelimit'"),
        argsrepr=_opt_str(headers, "argsrepr"),
        kwargsrepr=_opt_str(headers, "kwargsrepr"),
        origin=_opt_str(headers, "origin"),
        ignore_result=bool(ignore_result),
        replaced_task_nesting=_opt_int(
            get("replaced_task_nesting"), "header 'replaced_task_nesting'", 0
        )
        or 0,
        stamped_headers=stamped,
        stamps=stamps,
        extra_headers=extra,
        callbacks=_opt_list_of_dicts(embed.get("callbacks"), "embed 'callbacks'"),
        errbacks=_opt_list_of_dicts(embed.get("errbacks"), "embed 'errbacks'"),
        chain=_opt_list_of_dicts(embed.get("chain"), "embed 'chain'"),
        chord=_opt_dict(embed.get("chord"), "embed 'chord'"),
        reply_to=reply_to,
        correlation_id=correlation_id,
        priority=_opt_int(priority, "property 'priority'", 0) or 0,
        delivery_mode=_opt_int(delivery_mode, "property 'delivery_mode'", 2) or 2,
        content_type=content_type,
        content_encoding=content_encoding,
        compression=compression if type(compression) is str else None,
    )

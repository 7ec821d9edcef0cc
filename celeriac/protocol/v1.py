"""Celery task message protocol 1 (decode only).

Protocol 1 carries everything in the body, a dict: ``task``, ``id``, ``args``, ``kwargs``,
``eta``, ``expires``, ``retries``, ``callbacks``, ``errbacks``, ``utc``, ``taskset`` (old
name of ``group``), ``group_index``, ``chord``, ``timelimit``. Headers, if any, are the
user's. ``utc=False`` means a naive eta/expires is in the sender's local time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celeriac.errors import DecodeError
from celeriac.message import TaskMessage
from celeriac.protocol.v2 import (
    _opt_dict,
    _opt_int,
    _opt_list_of_dicts,
    _opt_str,
    _req_str,
    _timelimit,
    check_args,
    parse_time,
)

__all__ = ["decode_v1", "looks_like_v1"]


def looks_like_v1(payload: Any) -> bool:
    return isinstance(payload, dict) and "task" in payload and "id" in payload


def decode_v1(
    headers: Mapping[str, Any],
    body: dict[str, Any],
    properties: Mapping[str, Any],
    content_type: str,
    content_encoding: str,
    compression: str | None = None,
) -> TaskMessage:
    """Build a TaskMessage from a protocol 1 body dict."""
    args = body.get("args", ())
    kwargs = body.get("kwargs", {})
    if args is None:
        args = ()
    if kwargs is None:
        kwargs = {}
    check_args(args, kwargs)
    utc = body.get("utc", True)
    if type(utc) is not bool:
        raise DecodeError(f"body 'utc' must be a bool, got {type(utc).__name__}")
    group = _opt_str(body, "taskset") if "taskset" in body else _opt_str(body, "group")
    reply_to = properties.get("reply_to")
    correlation_id = properties.get("correlation_id")
    return TaskMessage(
        id=_req_str(body.get("id"), "body 'id'"),
        task=_req_str(body.get("task"), "body 'task'"),
        args=args,
        kwargs=kwargs,
        root_id=_opt_str(body, "root_id"),
        parent_id=_opt_str(body, "parent_id"),
        group=group,
        group_index=_opt_int(body.get("group_index"), "body 'group_index'", None),
        shadow=_opt_str(body, "shadow"),
        eta=parse_time(body.get("eta"), "body 'eta'", naive_is_utc=utc),
        expires=parse_time(body.get("expires"), "body 'expires'", naive_is_utc=utc),
        retries=_opt_int(body.get("retries"), "body 'retries'", 0) or 0,
        timelimit=_timelimit(body.get("timelimit"), "body 'timelimit'"),
        origin=_opt_str(body, "origin"),
        extra_headers=dict(headers),
        callbacks=_opt_list_of_dicts(body.get("callbacks"), "body 'callbacks'"),
        errbacks=_opt_list_of_dicts(body.get("errbacks"), "body 'errbacks'"),
        chord=_opt_dict(body.get("chord"), "body 'chord'"),
        reply_to=reply_to if type(reply_to) is str else None,
        correlation_id=correlation_id if type(correlation_id) is str else None,
        priority=_opt_int(properties.get("priority"), "property 'priority'", 0) or 0,
        delivery_mode=_opt_int(properties.get("delivery_mode"), "property 'delivery_mode'", 2) or 2,
        content_type=content_type,
        content_encoding=content_encoding,
        compression=compression,
    )

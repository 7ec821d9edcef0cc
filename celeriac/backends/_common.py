"""Helpers shared by the backends in this package: the meta codec, expiry, readiness."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson

from celeriac import states
from celeriac.backends.base import Meta
from celeriac.errors import BackendError, ConfigurationError

# A blob written by the stdlib fallback starts with this byte (JSON allows leading
# whitespace, so any JSON reader still reads it); orjson's output of a dict starts with "{".
_STDLIB_MARK = b" "


def encode_meta(meta: Meta) -> bytes:
    """Serialize a meta to JSON bytes.

    orjson is the fast path; integers beyond 64 bits (which orjson refuses, and would read
    back as floats) and non-string keys fall back to the stdlib, marked so that decoding
    uses the stdlib too and the values come back exactly.
    """
    try:
        return orjson.dumps(meta)
    except TypeError:
        pass
    try:
        return _STDLIB_MARK + json.dumps(meta, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise BackendError(f"cannot serialize the result of task {task_id_of(meta)}: {exc}") from exc


def decode_meta(blob: bytes) -> Meta:
    """The meta ``encode_meta`` wrote."""
    try:
        if blob[:1] == _STDLIB_MARK:
            value: Any = json.loads(blob)
        else:
            value = orjson.loads(blob)
    except ValueError as exc:
        raise BackendError(f"a stored result is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BackendError("a stored result is not a JSON object")
    return value


def task_id_of(meta: Meta) -> str:
    """The meta's ``task_id``, checked."""
    task_id = meta.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        raise BackendError(f"a result meta needs a task_id string, got {task_id!r}")
    return task_id


def status_of(meta: Meta) -> str:
    """The meta's ``status``, checked."""
    status = meta.get("status")
    if not isinstance(status, str):
        raise BackendError(f"a result meta needs a status string, got {status!r}")
    return status


def is_ready(meta: Meta) -> bool:
    return meta.get("status") in states.READY_STATES


def expires_at(expires: float | None, now: float | None = None) -> float | None:
    """The wall-clock time at which a meta stored now expires (``None``: never)."""
    if expires is None:
        return None
    return (time.time() if now is None else now) + expires


def check_expires(expires: float | None) -> float | None:
    """Validate the ``expires`` option: seconds; ``None`` or 0 mean never (as in Celery)."""
    if expires is None:
        return None
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires < 0:
        raise ConfigurationError(f"result expires must be a number of seconds >= 0 or None, got {expires!r}")
    return float(expires) or None

"""Serializers and compression, by name and by content type, as kombu names them.

========  ==================================  ================
name      content type                        content encoding
========  ==================================  ================
json      application/json                    utf-8
msgpack   application/x-msgpack               binary
pickle    application/x-python-serialize      binary
yaml      application/x-yaml                  utf-8 (only when PyYAML is installed)
========  ==================================  ================

:func:`loads` refuses any content type that ``accept`` does not name (by short name or
content type), so pickle is only ever decoded when the caller asked for it. kombu's two
"trusted" raw types, ``application/data`` and ``application/text``, pass untouched.

Compression (the ``compression`` header value kombu writes): ``zlib`` ->
``application/x-gzip`` (a zlib stream, despite the name), ``bzip2`` -> ``application/x-bz2``
and ``lzma`` -> ``application/x-lzma``.
"""

from __future__ import annotations

import bz2
import lzma
import pickle
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import msgpack

from celeriac.errors import ConfigurationError, ContentDisallowed, DecodeError
from celeriac.serializers._json import EncodeError, json_dumps, json_loads

__all__ = [
    "EncodeError",
    "Serializer",
    "compress",
    "compression_names",
    "decompress",
    "dumps",
    "get_serializer",
    "loads",
    "register",
    "serializer_names",
]

TRUSTED_CONTENT = frozenset({"application/data", "application/text"})
#: content encodings whose bytes the decoders read as they are (UTF-8 and its subsets)
_AS_IS_ENCODINGS = frozenset({"utf-8", "utf8", "binary", "ascii", "us-ascii", "ascii-8bit"})


@dataclass(frozen=True, slots=True)
class Serializer:
    """One way to turn a Python value into bytes and back."""

    name: str
    content_type: str
    content_encoding: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


_BY_NAME: dict[str, Serializer] = {}
_BY_TYPE: dict[str, Serializer] = {}


def register(serializer: Serializer) -> None:
    """Add (or replace) a serializer, reachable by its name and its content type."""
    _BY_NAME[serializer.name] = serializer
    _BY_TYPE[serializer.content_type] = serializer


def serializer_names() -> list[str]:
    return sorted(_BY_NAME)


def get_serializer(name: str) -> Serializer:
    """The serializer called ``name`` (or with that content type)."""
    ser = _BY_NAME.get(name) or _BY_TYPE.get(name)
    if ser is None:
        raise ConfigurationError(
            f"unknown serializer {name!r}; known: {', '.join(serializer_names())}"
        )
    return ser


def dumps(obj: Any, serializer: str = "json") -> tuple[str, str, bytes]:
    """Serialize ``obj``; return ``(content_type, content_encoding, data)``.

    Raises ConfigurationError for an unknown serializer and EncodeError (a TypeError)
    for a value the serializer cannot represent.
    """
    ser = _BY_NAME.get(serializer)
    if ser is None:
        ser = get_serializer(serializer)
    return ser.content_type, ser.content_encoding, ser.dumps(obj)


def _disallowed(content_type: str) -> ContentDisallowed:
    ser = _BY_TYPE.get(content_type)
    shown = f"{ser.name} ({content_type})" if ser is not None else content_type
    return ContentDisallowed(f"Refusing to deserialize untrusted content of type {shown}")


def loads(
    data: bytes | str,
    content_type: str | None,
    content_encoding: str | None,
    accept: Collection[str],
) -> Any:
    """Deserialize ``data`` if its content type (or its short name) is in ``accept``.

    Raises ContentDisallowed when it is not, DecodeError when the bytes are malformed.
    """
    ser = _BY_TYPE.get(content_type or "application/data")
    if (
        ser is not None
        and type(data) is bytes
        and (content_encoding in _AS_IS_ENCODINGS or ser.content_encoding == "binary")
        and (ser.name in accept or content_type in accept)
    ):  # the usual case, in short: an accepted type, bytes, no re-encoding
        try:
            return ser.loads(data)
        except Exception as exc:
            raise DecodeError(f"malformed {ser.name} body: {_short(exc)}") from None
    ctype = content_type or "application/data"
    ser = _BY_TYPE.get(ctype)
    if (
        ctype not in accept
        and (ser is None or ser.name not in accept)
        and ctype not in TRUSTED_CONTENT
    ):
        raise _disallowed(ctype)
    if ser is None:
        if ctype in TRUSTED_CONTENT or not data:
            return _raw(data, content_encoding)
        raise DecodeError(f"no serializer for content type {ctype!r}")
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, bytes):
        data = bytes(data)
    if (
        content_encoding
        and content_encoding not in _AS_IS_ENCODINGS
        and ser.content_encoding != "binary"
        and content_encoding.lower() not in _AS_IS_ENCODINGS
    ):
        data = _recode(data, content_encoding)
    try:
        return ser.loads(data)
    except Exception as exc:
        raise DecodeError(f"malformed {ser.name} body: {_short(exc)}") from None


def _raw(data: bytes | str, content_encoding: str | None) -> Any:
    if isinstance(data, str) or (content_encoding or "utf-8").lower() in ("binary", "ascii-8bit"):
        return data
    try:
        return data.decode(content_encoding or "utf-8")
    except (UnicodeDecodeError, LookupError) as exc:
        raise DecodeError(f"cannot decode body as {content_encoding}: {_short(exc)}") from None


def _recode(data: bytes, content_encoding: str) -> bytes:
    try:
        return data.decode(content_encoding).encode("utf-8")
    except (UnicodeDecodeError, LookupError) as exc:
        raise DecodeError(f"cannot decode body as {content_encoding}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- the serializers -------------------------------------------------------------------


def _msgpack_dumps(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot serialize to msgpack: {exc}") from None


def _msgpack_loads(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def _pickle_dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.DEFAULT_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise EncodeError(f"cannot pickle: {exc}") from None


register(Serializer("json", "application/json", "utf-8", json_dumps, json_loads))
register(Serializer("msgpack", "application/x-msgpack", "binary", _msgpack_dumps, _msgpack_loads))
register(
    Serializer("pickle", "application/x-python-serialize", "binary", _pickle_dumps, pickle.loads)
)

try:  # optional, as in kombu
    import yaml as _yaml
except ImportError:  # pragma: no cover - depends on the environment
    _yaml = None

if _yaml is not None:  # pragma: no cover - PyYAML is not a dependency

    def _yaml_dumps(obj: Any) -> bytes:
        try:
            return _yaml.safe_dump(obj).encode("utf-8")  # type: ignore[no-any-return]
        except _yaml.YAMLError as exc:
            raise EncodeError(f"cannot serialize to yaml: {exc}") from None

    register(Serializer("yaml", "application/x-yaml", "utf-8", _yaml_dumps, _yaml.safe_load))


# -- compression -----------------------------------------------------------------------

_COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "application/x-gzip": (zlib.compress, zlib.decompress),
    "application/x-bz2": (bz2.compress, bz2.decompress),
    "application/x-lzma": (lzma.compress, lzma.decompress),
}
_COMPRESSION_ALIASES: dict[str, str] = {
    "zlib": "application/x-gzip",
    "gzip": "application/x-gzip",
    "bzip2": "application/x-bz2",
    "bzip": "application/x-bz2",
    "bz2": "application/x-bz2",
    "lzma": "application/x-lzma",
    "xz": "application/x-lzma",
}
for _ctype in _COMPRESSORS:
    _COMPRESSION_ALIASES[_ctype] = _ctype


def compression_names() -> list[str]:
    return sorted(k for k in _COMPRESSION_ALIASES if "/" not in k)


def compress(data: bytes, name: str) -> tuple[bytes, str]:
    """Compress with ``name`` (``zlib``, ``bzip2``, ``lzma`` or a header value).

    Returns ``(compressed, header_value)``; the header value goes in the ``compression``
    header. An unknown name raises ConfigurationError.
    """
    ctype = _COMPRESSION_ALIASES.get(name)
    if ctype is None:
        raise ConfigurationError(
            f"unknown compression {name!r}; known: {', '.join(compression_names())}"
        )
    return _COMPRESSORS[ctype][0](data), ctype


def decompress(data: bytes, header_value: str) -> bytes:
    """Undo :func:`compress`; ``header_value`` is the message's ``compression`` header.

    Raises DecodeError for an unknown method or corrupt data.
    """
    ctype = _COMPRESSION_ALIASES.get(header_value) if isinstance(header_value, str) else None
    if ctype is None:
        raise DecodeError(f"unknown compression {header_value!r}")
    try:
        return _COMPRESSORS[ctype][1](data)
    except Exception as exc:
        raise DecodeError(f"corrupt {ctype} body: {_short(exc)}") from None

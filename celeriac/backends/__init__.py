"""Result backends, and the one place where a backend URL becomes a backend object.

Backend modules are imported only when their URL is used, so a missing optional driver
(redis-py, aiormq, ...) matters only to those who ask for that backend.
"""

from __future__ import annotations

import importlib
from typing import Any

from celeriac.backends.base import Meta, ResultBackend
from celeriac.errors import ConfigurationError, MissingExtra

__all__ = ["BACKENDS", "Meta", "ResultBackend", "backend_from_url"]

# URL scheme (the part before "+" for "db+postgresql://", "cache+memcached://") ->
# ("module:Class", the pip extra that brings its driver, or None).
BACKENDS: dict[str, tuple[str, str | None]] = {
    "memory": ("celeriac.backends.memory:MemoryBackend", None),
    "sqlite": ("celeriac.backends.sqlite:SQLiteBackend", None),
    "redis": ("celeriac.backends.redis:RedisBackend", "redis"),
    "rediss": ("celeriac.backends.redis:RedisBackend", "redis"),
    "unix": ("celeriac.backends.redis:RedisBackend", "redis"),
    "sentinel": ("celeriac.backends.redis:RedisBackend", "redis"),
    "rpc": ("celeriac.backends.rpc:RPCBackend", "amqp"),
    "db": ("celeriac.backends.sql:SQLBackend", "sql"),
    "cache": ("celeriac.backends.memcached:MemcachedBackend", "memcached"),
    "file": ("celeriac.backends.file:FileBackend", None),
}

_DISABLED = frozenset({"", "disabled", "none"})


def backend_from_url(url: str | None, **options: Any) -> ResultBackend | None:
    """The backend for ``url`` (not yet connected), or ``None`` when results are off.

    ``options`` (``expires`` and backend-specific ones) go to the backend's constructor.
    """
    if url is None or url.strip().lower() in _DISABLED:
        return None
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    key = scheme.split("+", 1)[0]
    if key not in BACKENDS:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        raise ConfigurationError(
            f"unknown result backend {scheme or url!r}; known schemes: {known} "
            "(or None / 'disabled' for no results)"
        )
    target, extra = BACKENDS[key]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ConfigurationError(
                f"the {scheme}:// result backend is not available in this version of celeriac"
            ) from exc
        hint = f"pip install 'celeriac[{extra}]'" if extra else "a missing dependency"
        raise MissingExtra(
            f"the {scheme}:// result backend needs the {exc.name!r} module: {hint}"
        ) from exc
    cls = getattr(module, class_name)
    backend: ResultBackend = cls(url, **options)
    return backend

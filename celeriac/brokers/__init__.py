"""Brokers, and the one place where a broker URL becomes a broker object.

``broker_from_url("sqlite:///tasks.db", lease_seconds=60)`` picks the class from the URL's
scheme and imports its module only then, so that an optional driver (redis, aiormq) is needed
only by those who use it.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from celeriac.brokers.base import DEFAULT_LEASE_SECONDS, Broker
from celeriac.errors import ConfigurationError, MissingExtra

__all__ = ["BROKER_CLASSES", "Broker", "DEFAULT_LEASE_SECONDS", "broker_from_url"]

#: URL scheme -> "module:Class".
BROKER_CLASSES: dict[str, str] = {
    "memory": "celeriac.brokers.memory:MemoryBroker",
    "sqlite": "celeriac.brokers.sqlite:SQLiteBroker",
    "redis": "celeriac.brokers.redis:RedisBroker",
    "rediss": "celeriac.brokers.redis:RedisBroker",
    "redis+socket": "celeriac.brokers.redis:RedisBroker",
    "unix": "celeriac.brokers.redis:RedisBroker",
    "sentinel": "celeriac.brokers.redis:RedisBroker",
    "amqp": "celeriac.brokers.amqp:AMQPBroker",
    "amqps": "celeriac.brokers.amqp:AMQPBroker",
    "pyamqp": "celeriac.brokers.amqp:AMQPBroker",
}

#: URL scheme -> the pip extra that brings its driver.
EXTRAS: dict[str, str] = {
    "redis": "redis",
    "rediss": "redis",
    "redis+socket": "redis",
    "unix": "redis",
    "sentinel": "redis",
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
}


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"broker URL {url!r} has no scheme; known schemes: {', '.join(BROKER_CLASSES)}"
        )
    return scheme.lower()


def broker_class(url: str) -> type[Any]:
    """The class serving ``url``'s scheme, imported now."""
    scheme = _scheme(url)
    target = BROKER_CLASSES.get(scheme)
    if target is None:
        close = difflib.get_close_matches(scheme, BROKER_CLASSES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(
            f"unknown broker scheme {scheme!r} in {_redact(url)}.{hint}"
            f" Known schemes: {', '.join(BROKER_CLASSES)}."
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(scheme)
        if extra is None:
            raise
        raise MissingExtra(
            f"the {scheme}:// broker needs the {extra!r} extra, which is not installed: "
            f"pip install 'celeriac[{extra}]' ({exc})"
        ) from exc
    cls: type[Any] = getattr(module, class_name)
    return cls


def broker_from_url(url: str, **transport_options: Any) -> Broker:
    """A new, unconnected broker for ``url``.

    ``transport_options`` go to the broker's constructor; Celery's ``visibility_timeout`` is
    accepted for ``lease_seconds``. An unknown option raises ``ConfigurationError`` naming the
    closest known one.
    """
    cls = broker_class(url)
    broker: Broker = cls(url, **transport_options)
    return broker


def _redact(url: str) -> str:
    """``url`` without its password (URLs end up in error messages and logs)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"

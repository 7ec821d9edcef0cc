"""Redis URLs, read once for the broker and the result backend alike.

- ``redis://``, ``rediss://`` and ``unix://`` go to redis-py as they are; Celery's
  ``redis+socket:///path`` (and ``socket://``) become ``unix:///path`` (``virtual_host=`` as
  ``db=``).
- ``sentinel://[[user]:password@]host:port[;sentinel://host:port...][/db]`` is Celery's form for
  Redis Sentinel: every ``;``-separated part names one sentinel; the password (and user) and
  the database are those of the *master*, written on any one part (two parts that disagree
  are an error). The master's name is not in the URL: it comes from the transport options
  (``master_name``, Celery's key). Sentinels that want a password of their own get it in
  ``sentinel_kwargs`` (``{"password": ...}``), as in Celery.

``sentinel_pool`` builds a pool whose connections ask the sentinels for the current master
each time they (re)connect (redis-py's ``SentinelConnectionPool``), so after a failover every
new connection lands on the promoted replica; a connection still open to a demoted master
fails on its first write (READONLY) and is replaced.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from celeriac.config import redact_url
from celeriac.errors import ConfigurationError

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "BlockingSentinelConnectionPool",
    "SENTINEL_OPTIONS",
    "SentinelAddress",
    "close_pool",
    "is_sentinel_url",
    "parse_sentinel_url",
    "redis_py_url",
    "sentinel_pool",
]

DEFAULT_SENTINEL_PORT = 26379
#: Transport options that only a ``sentinel://`` URL reads (Celery's names).
SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs", "min_other_sentinels")

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_SOCKET_SCHEMES = ("redis+socket", "socket")


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def is_sentinel_url(url: str) -> bool:
    return _scheme(url) == "sentinel"


def redis_py_url(url: str, what: str = "Redis") -> str:
    """``url`` as redis-py's ``from_url`` reads it (not for ``sentinel://``)."""
    scheme = _scheme(url)
    rest = url.partition("://")[2]
    if scheme in _SOCKET_SCHEMES:
        return "unix://" + rest.replace("virtual_host=", "db=")
    if scheme in _REDIS_SCHEMES:
        return f"{scheme}://{rest}"
    raise ConfigurationError(
        f"not a {what} URL: {redact_url(url)!r} "
        "(expected redis://, rediss://, redis+socket://, unix:// or sentinel://)"
    )


@dataclass(frozen=True)
class SentinelAddress:
    """Where the sentinels are, and the master's database and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def describe(self, master_name: str | None) -> str:
        """For messages and reprs: no credentials."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"Redis master {master_name!r} (db {self.db}) via sentinels {hosts}"


def parse_sentinel_url(url: str, what: str = "Redis") -> SentinelAddress:
    """Celery's ``sentinel://...;sentinel://...[/db]`` (see the module docstring)."""
    sentinels: list[tuple[str, int]] = []
    found: dict[str, Any] = {}

    def keep(name: str, value: Any) -> None:
        if value is None:
            return
        if name in found and found[name] != value:
            raise ConfigurationError(
                f"{what} URL {redact_url(url)!r}: its parts give two different {name}s"
            )
        found[name] = value

    for part in filter(None, (p.strip() for p in url.split(";"))):
        if _scheme(part) != "sentinel":
            raise ConfigurationError(
                f"{what} URL {redact_url(url)!r}: every ';'-separated part must be "
                "sentinel://host:port"
            )
        try:
            split = urlsplit(part)
            host, port = split.hostname, split.port or DEFAULT_SENTINEL_PORT
        except ValueError as exc:
            raise ConfigurationError(f"{what} URL {redact_url(url)!r}: {exc}") from None
        if not host:
            raise ConfigurationError(f"{what} URL {redact_url(url)!r}: a part has no host")
        sentinels.append((host, port))
        keep("user", unquote(split.username) if split.username else None)
        keep("password", unquote(split.password) if split.password is not None else None)
        path = split.path.strip("/")
        if path:
            if not path.isdigit():
                raise ConfigurationError(
                    f"{what} URL {redact_url(url)!r}: the database must be a number, not {path!r}"
                )
            keep("database", int(path))
    if not sentinels:
        raise ConfigurationError(f"{what} URL {redact_url(url)!r} names no sentinel")
    return SentinelAddress(tuple(sentinels), int(found.get("database", 0)),
                           found.get("user"), found.get("password"))


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel-managed, and waits for a free connection when all are taken (instead of
    raising), as ``BlockingConnectionPool`` does."""


def sentinel_pool(
    address: SentinelAddress,
    master_name: str | None,
    *,
    sentinel_kwargs: dict[str, Any] | None = None,
    min_other_sentinels: int = 0,
    pool_class: type[SentinelConnectionPool] = SentinelConnectionPool,
    **connection_kwargs: Any,
) -> SentinelConnectionPool:
    """A pool of connections to ``master_name``'s current master (no I/O yet).

    ``connection_kwargs`` are those of any redis-py connection; the sentinels themselves get
    ``sentinel_kwargs``, or else the ``socket_*`` ones of ``connection_kwargs`` (redis-py's rule).
    """
    if not master_name or not isinstance(master_name, str):
        raise ConfigurationError(
            "a sentinel:// URL needs the master's name in the transport options: "
            "{'master_name': 'mymaster'} (broker_transport_options or "
            "result_backend_transport_options)"
        )
    if sentinel_kwargs is not None and not isinstance(sentinel_kwargs, dict):
        raise ConfigurationError(f"sentinel_kwargs must be a dict, not {type(sentinel_kwargs)}")
    kwargs = {**connection_kwargs, "db": address.db}
    if address.password is not None:
        kwargs["password"] = address.password
    if address.username is not None:
        kwargs["username"] = address.username
    manager = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(address.sentinels), min_other_sentinels=int(min_other_sentinels),
        sentinel_kwargs=sentinel_kwargs, **kwargs)
    client = manager.master_for(master_name, connection_pool_class=pool_class)
    pool: SentinelConnectionPool = client.connection_pool
    return pool


async def drop_connection(pool: ConnectionPool, conn: AbstractConnection) -> None:
    """Close ``conn`` (whatever state its stream is in) and give it back to ``pool``."""
    with contextlib.suppress(Exception):
        await conn.disconnect(nowait=True)
    with contextlib.suppress(Exception):
        await pool.release(conn)


async def close_pool(pool: ConnectionPool) -> None:
    """Disconnect ``pool``, and the sentinel clients behind it if it has some."""
    with contextlib.suppress(Exception):
        await pool.disconnect()
    manager = getattr(pool, "sentinel_manager", None)
    if isinstance(manager, Sentinel):
        with contextlib.suppress(Exception):
            await manager.aclose()

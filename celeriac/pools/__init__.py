"""Pools by name (the CLI's ``-P``). Each pool is one module behind ``pools/base.py``."""

from __future__ import annotations

import importlib
from typing import Any

from celeriac.errors import ConfigurationError
from celeriac.pools.base import Pool

POOLS: dict[str, str] = {
    "solo": "celeriac.pools.solo:SoloPool",
    "threads": "celeriac.pools.threads:ThreadPool",
    "asyncio": "celeriac.pools.aio:AsyncioPool",
    "prefork": "celeriac.pools.prefork:PreforkPool",
    "processes": "celeriac.pools.prefork:PreforkPool",
    "gevent": "celeriac.pools.gevent:GeventPool",
    "eventlet": "celeriac.pools.eventlet:EventletPool",
}
NOT_YET: tuple[str, ...] = ()


def pool_from_name(name: str, concurrency: int, **options: Any) -> Pool:
    """The pool named ``name``, for ``concurrency`` tasks at once; ``options`` go to its
    constructor (e.g. prefork's ``max_tasks_per_child``)."""
    try:
        module_name, _, cls_name = POOLS[name].partition(":")
    except KeyError:
        if name in NOT_YET:
            raise ConfigurationError(
                f"the {name} pool is not available yet; use -P solo, threads or asyncio"
            ) from None
        raise ConfigurationError(
            f"unknown pool {name!r}; choose one of: {', '.join(sorted(POOLS))}"
        ) from None
    cls = getattr(importlib.import_module(module_name), cls_name)
    pool: Pool = cls(concurrency, **options)
    return pool

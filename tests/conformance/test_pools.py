"""Every pool passes the pool conformance kit (one line per pool)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from celeriac.pools.aio import AsyncioPool
from celeriac.pools.base import Pool
from celeriac.pools.prefork import PreforkPool
from celeriac.pools.solo import SoloPool
from celeriac.pools.threads import ThreadPool
from celeriac.testing.pool_kit import POOL_CHECKS, PoolCheck, run_pool_check

POOLS: dict[str, Callable[[], Pool]] = {
    "solo": SoloPool,
    "threads": lambda: ThreadPool(4),
    "asyncio": lambda: AsyncioPool(8),
    "prefork": lambda: PreforkPool(2),
}


@pytest.mark.parametrize("pool_name", sorted(POOLS))
@pytest.mark.parametrize("check", POOL_CHECKS, ids=lambda c: c.__name__)
async def test_pool_conformance(pool_name: str, check: PoolCheck) -> None:
    await run_pool_check(POOLS[pool_name], check)

"""``-P asyncio -c N``: up to N tasks at once on the worker's event loop.

``async def`` tasks run natively on the loop (cancelled at their hard time limit); plain
functions given to this pool run on a few threads so they never block the loop.
"""

from __future__ import annotations

from celeriac.pools.threads import ThreadPool


class AsyncioPool(ThreadPool):
    name = "asyncio"

    def __init__(self, concurrency: int) -> None:
        super().__init__(concurrency, threads=min(max(1, int(concurrency)), 32))

"""``-P solo``: one task at a time, run right on the worker's event loop.

No thread hop: the fastest pool for short tasks. While a plain function runs, the loop waits
for it; leases are still renewed, from the lease keeper's own thread (worker/leases.py), and
a second stop signal interrupts the task (cold shutdown).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.worker.execute import Outcome, run_async_task, run_sync_task

if TYPE_CHECKING:
    from celeriac.context import Context
    from celeriac.task import Task


class SoloPool:
    name = "solo"
    blocks_loop = True
    concurrency = 1

    def __init__(self, concurrency: int = 1) -> None:
        """``concurrency`` runs nothing more at once: as in Celery, it only sizes the worker's
        prefetch window (multiplier x concurrency)."""
        self.running = 0
        self.prefetch_concurrency = max(1, concurrency)

    async def start(self) -> None:
        """Nothing to start: tasks run on the caller's loop."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def execute(self, task: Task[Any, Any], ctx: Context) -> Outcome:
        self.running += 1
        try:
            if task.is_async:
                return await run_async_task(task, ctx, ctx.timelimit[0])
            return run_sync_task(task, ctx)
        finally:
            self.running -= 1

    def stats(self) -> dict[str, Any]:
        return {"pool": self.name, "max-concurrency": 1, "running": self.running}

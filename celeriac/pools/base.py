"""The pool seam: where a task's code runs.

The worker awaits ``pool.execute(task, ctx)`` from up to ``concurrency`` coroutines at once.
``async def`` tasks run on the worker's own event loop in every pool; plain functions run
where the pool puts them (one thread, N threads, or child processes). Every pool passes
``celeriac.testing.check_pool``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from celeriac.context import Context
    from celeriac.task import Task
    from celeriac.worker.execute import Outcome


@runtime_checkable
class Pool(Protocol):
    """Runs tasks for the worker."""

    name: str
    concurrency: int
    #: True when plain-function tasks run on the worker's event loop itself (solo).
    blocks_loop: bool

    async def start(self) -> None:
        """Create threads or processes."""

    async def stop(self) -> None:
        """Release them; running plain-function tasks cannot be interrupted."""

    async def execute(self, task: Task[Any, Any], ctx: Context) -> Outcome:
        """Run one task to its outcome; never raises for what the task does."""

    def stats(self) -> dict[str, Any]:
        """Figures for the worker's stats (running tasks, threads, ...)."""

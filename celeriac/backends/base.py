"""The result backend seam.

A backend keeps one *meta* per task id: a dict in Celery's shape (DESIGN.md §3)::

    {"task_id": str, "status": str, "result": Any, "traceback": str | None,
     "children": list, "date_done": str | None, ...}

``result`` is already JSON/msgpack-able here (exceptions are turned into
``{"exc_type", "exc_message", "exc_module"}`` by ``celeriac.result`` before they reach a
backend). A backend never lets a state move backwards (``celeriac.states.may_replace``) and
gives every meta an expiry of ``expires`` seconds. Every implementation passes
``celeriac.testing.check_backend``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

Meta = dict[str, Any]


@runtime_checkable
class ResultBackend(Protocol):
    """What the worker and ``AsyncResult`` need of a result store."""

    url: str

    async def connect(self) -> None:
        """Open connections and create what the backend needs."""

    async def close(self) -> None:
        """Release every resource."""

    async def store(self, metas: Sequence[Meta]) -> None:
        """Store many metas in one round trip; a meta whose state may not replace the
        stored one (see ``states.may_replace``) is skipped, not an error."""

    async def get(self, task_id: str) -> Meta | None:
        """The stored meta, or ``None`` (the task is PENDING: unknown or expired)."""

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        """The stored metas of those ids that have one."""

    async def wait(self, task_id: str, timeout: float | None) -> Meta | None:
        """Wait until the task's meta is in a ready state and return it.

        Returns ``None`` on timeout. Readiness is pushed (a notification), not found by
        sleep-polling, where the backend allows it.
        """

    async def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the metas of ``task_ids``."""

    async def expire(self) -> int:
        """Delete the metas whose expiry has passed; return how many.

        A backend whose server expires keys by itself (Redis) returns 0 and has the class
        attribute ``expires_itself = True``.
        """


@runtime_checkable
class RepliesTo(Protocol):
    """Optional: a backend that sends each result to the client that asked (``rpc://``).

    The worker tells it a task's ``reply_to`` (from the task message) before it stores
    anything for that task.
    """

    def reply_to(self, task_id: str, address: str) -> None: ...


@runtime_checkable
class BlockingWaiter(Protocol):
    """Optional: a backend that can wait for a result from sync code without an event loop.

    ``AsyncResult.get()`` with no loop running uses it when ``waits_blocking`` is true.
    Same contract as ``wait``.
    """

    @property
    def waits_blocking(self) -> bool: ...

    def wait_blocking(self, task_id: str, timeout: float | None) -> Meta | None: ...

"""The request of the task being run: ``self.request`` inside a task.

Kept in a context variable, so each thread and each asyncio task sees its own.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class Context:
    """What a running task knows of its own call (Celery's ``Task.request``)."""

    id: str | None = None
    task: str | None = None
    args: Any = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    is_eager: bool = False
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    origin: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    ignore_result: bool = False
    priority: int = 0
    shadow: str | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


current_request: ContextVar[Context | None] = ContextVar("celeriac_request", default=None)

"""A few hooks with Celery's names, for code that must run at a point of a worker's life.

``worker_process_init`` runs in each new pool process (prefork) before it takes its first
task: open database connections there, not at import time, since a forked process must not
share the parent's. ``worker_process_shutdown`` runs in a pool process that is leaving
normally. Receivers take keyword arguments only::

    from celeriac.signals import worker_process_init

    @worker_process_init.connect
    def setup(**kwargs):
        db.connect()

Kept deliberately small: no senders to filter on, no weak references.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Receiver = Callable[..., Any]


class Signal:
    """A list of receivers called in order by ``send``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[Receiver] = []

    def connect(self, fn: Receiver | None = None, **_options: Any) -> Any:
        """Add ``fn`` (usable as ``@sig.connect`` or ``@sig.connect()``)."""
        if fn is None:
            return self.connect
        if fn not in self.receivers:
            self.receivers.append(fn)
        return fn

    def disconnect(self, fn: Receiver) -> None:
        if fn in self.receivers:
            self.receivers.remove(fn)

    def send(self, sender: Any = None, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver; an exception from one propagates (the caller decides)."""
        return [(fn, fn(sender=sender, signal=self, **kwargs)) for fn in list(self.receivers)]

    def __repr__(self) -> str:
        return f"<Signal {self.name}: {len(self.receivers)} receiver(s)>"


worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")

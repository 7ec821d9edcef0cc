"""Which event loop a worker runs on: uvloop when it is installed, else asyncio's own.

The worker's loop carries every message: socket reads, frame parsing callbacks, the hand-offs
between the consumer, the runners and the writers. uvloop runs that loop in C (libuv), and a
solo worker draining no-op tasks spends about a tenth less CPU per task on it (Redis and
RabbitMQ, measured with ``bench``). Nothing else changes: the same coroutines, transports and
timeouts run on either loop.

``worker_event_loop`` (or ``celeriac worker --loop``) chooses: ``auto`` (the default: uvloop if
it can be imported, except under gevent, whose patched selectors need asyncio's own loop),
``uvloop`` (an error if it is missing) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from celeriac.errors import ConfigurationError

T = TypeVar("T")

CHOICES = ("auto", "uvloop", "asyncio")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: Any, pool: str) -> tuple[str, LoopFactory | None]:
    """The loop to run a worker of ``pool`` on, by name, with its factory (None: asyncio's)."""
    if choice not in CHOICES:
        raise ConfigurationError(
            f"worker_event_loop must be one of {', '.join(CHOICES)}, got {choice!r}")
    if pool in ("gevent", "eventlet"):  # patched selectors: asyncio's own loop only
        if choice == "uvloop":
            raise ConfigurationError(f"the {pool} pool runs on asyncio's own loop, not uvloop")
        return "asyncio", None
    if choice == "asyncio":
        return "asyncio", None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError("worker_event_loop = 'uvloop' needs uvloop installed "
                                     "(pip install 'celeriac[uvloop]')") from None
        return "asyncio", None
    factory: LoopFactory = uvloop.new_event_loop
    return "uvloop", factory


def run(coro: Coroutine[Any, Any, T], factory: LoopFactory | None) -> T:
    """``asyncio.run(coro)`` on a loop made by ``factory`` (asyncio's when None)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)

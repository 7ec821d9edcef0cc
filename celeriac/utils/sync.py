"""The thin sync facade over celeriac's async core.

``run_sync(coroutine)`` runs a coroutine to completion from plain sync code:

- in a thread with no running event loop (a script, a Django view, a worker thread), on a
  loop private to that thread, kept for the thread's life: no thread hop, and connections
  made on it are reused by the next call from the same thread;
- in a thread whose loop is running (sync code called from inside ``async def``), on one
  shared background loop thread, since a running loop cannot be re-entered.

Brokers and backends bind to the loop they were created on, so the app keeps one of each per
loop (see ``Celeriac.resources``).
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_local = threading.local()
_portal_lock = threading.Lock()
_portal_loop: asyncio.AbstractEventLoop | None = None


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's private loop, created on first use."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
    return loop


def _portal() -> asyncio.AbstractEventLoop:
    global _portal_loop
    with _portal_lock:
        if _portal_loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="celeriac-sync-portal", daemon=True
            )
            thread.start()
            _portal_loop = loop
        return _portal_loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion and return its result (or raise its exception)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return thread_loop().run_until_complete(coro)
    return asyncio.run_coroutine_threadsafe(coro, _portal()).result()


@atexit.register
def _stop_portal() -> None:
    loop = _portal_loop
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)

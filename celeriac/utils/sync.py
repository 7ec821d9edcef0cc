"""The thin sync facade over celeriac's async core.

``run_sync(coroutine)`` runs a coroutine to completion from plain sync code:

- in a thread with no running event loop (a script, a Django view, a worker thread), on a
  loop private to that thread, kept for the thread's life: no thread hop, and connections
  made on it are reused by the next call from the same thread;
- in a thread whose loop is running (sync code called from inside ``async def``), on one
  shared background loop thread, since a running loop cannot be re-entered.

Brokers and backends bind to the loop they were created on, so the app keeps one of each per
loop (see ``Celeriac.resources``). A forked child starts afresh: new loops, so new connections.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("celeriac")

_local = threading.local()
_portal_lock = threading.Lock()
_portal_loop: asyncio.AbstractEventLoop | None = None


#: called with a thread's private loop when that thread has ended (see ``on_thread_end``)
_thread_end_hooks: list[weakref.WeakMethod[Callable[[asyncio.AbstractEventLoop], None]]] = []


class _LoopOwner:
    """Lives in a thread's locals beside its loop: when the thread ends its locals go, and
    this one's finalizer closes what was opened on the loop (thread-per-request servers
    would otherwise leave a loop and its connections behind per request)."""

    __slots__ = ("__weakref__",)


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's private loop, created on first use."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _local.loop = loop
        if threading.current_thread() is not threading.main_thread():
            _local.owner = owner = _LoopOwner()
            weakref.finalize(owner, _thread_ended, loop, os.getpid()).atexit = False
    return loop


def on_thread_end(hook: Callable[[asyncio.AbstractEventLoop], None]) -> None:
    """Have the bound method ``hook`` called with a thread's private loop once that thread
    has ended (kept weakly: an app that is gone is not called)."""
    _thread_end_hooks.append(weakref.WeakMethod(hook))


def _thread_ended(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    if os.getpid() != pid:
        # a forked child dropping the parent's threads: their sockets (and the epoll set)
        # are the parent's, still in use there; closing them here would unregister them
        return
    for ref in list(_thread_end_hooks):
        hook = ref()
        if hook is None:
            with contextlib.suppress(ValueError):  # another thread ending removed it
                _thread_end_hooks.remove(ref)
            continue
        try:
            hook(loop)
        except Exception as exc:  # a thread's end must not raise
            log.debug("closing an ended thread's connections: %s", exc)
    if not loop.is_running():
        loop.close()


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


def _forget_after_fork() -> None:
    """In a forked child: the parent's loops (and the connections the app made on them) are
    not this process's to use; the next call makes new ones."""
    global _local, _portal_loop
    _local = threading.local()
    _portal_loop = None


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def _stop_portal() -> None:
    loop = _portal_loop
    if loop is not None and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)

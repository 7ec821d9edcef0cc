"""The in-memory result backend: for tests and single-process use.

Every instance created for the same URL in one process shares one store, so the app's
per-event-loop instances (in several threads) see one another's results. Metas are kept
serialized, as a real backend keeps them: what ``get`` returns never aliases what was stored.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac import states
from celeriac.backends._common import (
    check_expires,
    decode_meta,
    encode_meta,
    expires_at,
    status_of,
    task_id_of,
)
from celeriac.backends.base import Meta
from celeriac.errors import ConfigurationError
from celeriac.utils.stores import NamedStores


@dataclass(slots=True)
class _Entry:
    status: str
    expires_at: float | None
    blob: bytes

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass
class _Store:
    """One URL's results and the futures waiting on them, guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: dict[str, _Entry] = field(default_factory=dict)
    # task id -> {future: the loop it belongs to}
    waiters: dict[str, dict[asyncio.Future[bytes], asyncio.AbstractEventLoop]] = field(default_factory=dict)


_stores: NamedStores[_Store] = NamedStores(_Store)


def _resolve(fut: asyncio.Future[bytes], blob: bytes) -> None:
    if not fut.done():
        fut.set_result(blob)


class MemoryBackend:
    """Results in this process's memory; ``memory://`` or ``memory://<name>``."""

    def __init__(self, url: str = "memory://", *, expires: float | None = 86400, **options: Any):
        scheme, sep, name = url.partition("://")
        if scheme.lower() != "memory" or not sep:
            raise ConfigurationError(f"not a memory backend URL: {url!r}")
        self.url = url
        self.expires = check_expires(expires)
        self.options = options
        self._store = _stores.get(name)

    def __repr__(self) -> str:
        return f"<MemoryBackend {self.url}>"

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def store(self, metas: Sequence[Meta]) -> None:
        now = time.time()
        expiry = expires_at(self.expires, now)
        rows = [(task_id_of(m), status_of(m), encode_meta(m)) for m in metas]
        wake: list[tuple[asyncio.Future[bytes], asyncio.AbstractEventLoop, bytes]] = []
        store = self._store
        with store.lock:
            for task_id, status, blob in rows:
                old = store.entries.get(task_id)
                old_status = old.status if old is not None and old.live(now) else None
                if not states.may_replace(status, old_status):
                    continue
                store.entries[task_id] = _Entry(status, expiry, blob)
                if status in states.READY_STATES and task_id in store.waiters:
                    waiting = store.waiters.pop(task_id)
                    wake.extend((fut, loop, blob) for fut, loop in waiting.items())
        if wake:
            _wake(wake)

    async def get(self, task_id: str) -> Meta | None:
        now = time.time()
        with self._store.lock:
            entry = self._store.entries.get(task_id)
            blob = entry.blob if entry is not None and entry.live(now) else None
        return None if blob is None else decode_meta(blob)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Meta]:
        now = time.time()
        entries = self._store.entries
        with self._store.lock:
            blobs = [(tid, e.blob) for tid in task_ids if (e := entries.get(tid)) and e.live(now)]
        return {tid: decode_meta(blob) for tid, blob in blobs}

    async def wait(self, task_id: str, timeout: float | None) -> Meta | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        store = self._store
        # Check and register under one lock hold: a store cannot slip in between.
        with store.lock:
            entry = store.entries.get(task_id)
            if entry is not None and entry.live(time.time()) and entry.status in states.READY_STATES:
                return decode_meta(entry.blob)
            store.waiters.setdefault(task_id, {})[fut] = loop
        try:
            async with asyncio.timeout(timeout):
                blob = await fut
        except TimeoutError:
            return None
        finally:
            with store.lock:
                waiting = store.waiters.get(task_id)
                if waiting is not None:
                    waiting.pop(fut, None)
                    if not waiting:
                        del store.waiters[task_id]
        return decode_meta(blob)

    async def forget(self, task_ids: Sequence[str]) -> None:
        with self._store.lock:
            for task_id in task_ids:
                self._store.entries.pop(task_id, None)

    async def expire(self) -> int:
        now = time.time()
        with self._store.lock:
            entries = self._store.entries
            dead = [tid for tid, e in entries.items() if not e.live(now)]
            for tid in dead:
                del entries[tid]
        return len(dead)


def _wake(wake: list[tuple[asyncio.Future[bytes], asyncio.AbstractEventLoop, bytes]]) -> None:
    """Resolve waiters' futures, each on its own loop (which may run in another thread)."""
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for fut, loop, blob in wake:
        if loop is current:
            _resolve(fut, blob)
        else:
            try:
                loop.call_soon_threadsafe(_resolve, fut, blob)
            except RuntimeError:
                pass  # that loop is closed; nobody is waiting any more

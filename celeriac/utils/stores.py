"""Process-wide named stores for the in-memory broker and backend.

The app keeps one broker and one backend per event loop, so several instances of
``memory://name`` (one per loop, in several threads) must share one store: it lives here,
created on first use, keyed by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class NamedStores(Generic[T]):
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._stores: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> T:
        """The store named ``name``, created on first use."""
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                store = self._stores[name] = self._factory()
            return store

    def clear(self) -> None:
        with self._lock:
            self._stores.clear()

"""Keeping the leases of held messages alive, from a thread of its own.

A worker holds each fetched message under a lease; this keeper renews all of them every third
of the lease. It runs on its own thread with its own broker connection (the app gives each
event loop its own), so a task that blocks the worker's event loop, as every plain function
on the solo pool does, cannot let its lease lapse and have its message handed to another
worker while it still runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celeriac.app import Celeriac
from celeriac.errors import BrokerError
from celeriac.message import Delivery
from celeriac.utils.sync import run_sync

log = logging.getLogger("celeriac.worker")


class LeaseKeeper:
    def __init__(self, app: Celeriac, held: Callable[[], list[Delivery]], lease: float) -> None:
        self.app = app
        self.held = held
        self.interval = max(0.05, lease / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                deliveries = self.held()
                if deliveries:
                    self._renew(deliveries)
        finally:
            try:
                run_sync(self.app.aclose())
            except Exception as exc:  # closing at exit must not raise
                log.debug("closing the lease keeper's connection: %s", exc)

    def _renew(self, deliveries: list[Delivery]) -> None:
        async def renew() -> None:
            broker = await self.app.broker()
            await broker.renew(deliveries)

        try:
            run_sync(renew())
        except BrokerError as exc:
            log.error("renewing %d lease(s) failed: %s", len(deliveries), exc)
        except Exception:  # anything else must not end the keeper: it tries again next time
            log.exception("renewing %d lease(s) failed", len(deliveries))

"""The app the Redis broker tests run in real worker processes.

Broker from CELERIAC_TEST_BROKER (a Redis URL), result backend from CELERIAC_TEST_BACKEND
(a SQLite file, so that killing Redis does not lose the results the test reads).
"""

from __future__ import annotations

import os
import time

from celeriac import Celeriac

broker = os.environ.get("CELERIAC_TEST_BROKER", "memory://")
app = Celeriac("redis_app", broker=broker, backend=os.environ.get("CELERIAC_TEST_BACKEND"))
app.conf.broker_transport_options = {
    "lease_seconds": float(os.environ.get("CELERIAC_TEST_LEASE", "30"))
}


@app.task(name="capapp.add")
def add(x: int, y: int, z: int = 0) -> int:
    """Named as in the Celery captures, so a captured message runs here."""
    return x + y + z


@app.task(acks_late=True)
def run_late(seconds: float, marker: str) -> float:
    """Appends a line to ``marker`` each time it starts, so a test can count runs."""
    with open(marker, "a") as fh:
        fh.write(f"{os.getpid()} {time.time()}\n")
    time.sleep(seconds)
    return seconds


@app.task
def record(marker: str, name: str) -> str:
    """Appends ``name`` and the time to ``marker``."""
    with open(marker, "a") as fh:
        fh.write(f"{name} {time.time()}\n")
    return name

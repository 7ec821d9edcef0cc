"""The app the Redis Sentinel tests run in real worker processes.

Broker and result backend from CELERIAC_TEST_BROKER / CELERIAC_TEST_BACKEND (``sentinel://``
URLs), the master's name from CELERIAC_TEST_MASTER, the lease from CELERIAC_TEST_LEASE.
"""

from __future__ import annotations

import os
import time

from celeriac import Celeriac

app = Celeriac("sentinel_app", broker=os.environ.get("CELERIAC_TEST_BROKER", "memory://"),
               backend=os.environ.get("CELERIAC_TEST_BACKEND"))
_master = os.environ.get("CELERIAC_TEST_MASTER", "mymaster")
app.conf.broker_transport_options = {
    "master_name": _master,
    "lease_seconds": float(os.environ.get("CELERIAC_TEST_LEASE", "30")),
}
app.conf.result_backend_transport_options = {"master_name": _master}


@app.task(name="sentinel_app.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="sentinel_app.record")
def record(marker: str, name: str, seconds: float = 0.0) -> str:
    """Appends ``name`` to ``marker`` each time it starts (a test counts the runs)."""
    with open(marker, "a") as fh:
        fh.write(f"{name}\n")
    time.sleep(seconds)
    return name

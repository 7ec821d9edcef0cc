"""A small celeriac project: the app and its tasks.

Run a worker for it with::

    celeriac -A tasks worker -P threads -c 4 -l info     # from this directory
"""

from __future__ import annotations

import os
import random
import time

from celeriac import Celeriac

# No broker or backend given: both default to the embedded SQLite file ./celeriac.sqlite3.
app = Celeriac("tasks", broker=os.environ.get("DEMO_URL"), backend=os.environ.get("DEMO_URL"))


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def resize_image(size: int) -> str:
    time.sleep(random.uniform(0.001, 0.01))  # some I/O
    return f"{size}x{size}"


@app.task
def divide(x: float, y: float) -> float:
    return x / y  # fails with ZeroDivisionError when y == 0


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
def fetch_page(self, url: str) -> str:  # type: ignore[no-untyped-def]
    """Fails its first try, as a flaky network call would, and retries after 0.2 s."""
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError(f"{url}: connection reset"))
    return f"<html>{url}</html>"

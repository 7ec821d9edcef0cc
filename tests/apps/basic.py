"""The app the integration tests run in real worker processes.

Its broker and backend come from CELERIAC_TEST_URL (one SQLite file per test).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from celeriac import Celeriac, Reject

url = os.environ.get("CELERIAC_TEST_URL", "memory://")
app = Celeriac("basic", broker=url, backend=url)
app.conf.broker_transport_options = {
    "lease_seconds": float(os.environ.get("CELERIAC_TEST_LEASE", "30"))
}


class Boom(Exception):
    """An exception type of the app's own, rebuilt on the client side."""


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fail(msg: str) -> None:
    raise ValueError(msg)


@app.task
def fail_own(msg: str) -> None:
    raise Boom(msg)


@app.task(bind=True, max_retries=3, default_retry_delay=0.05)
def flaky(self, times: int) -> int:  # type: ignore[no-untyped-def]
    if self.request.retries < times:
        raise self.retry(exc=RuntimeError(f"try {self.request.retries}"))
    return self.request.retries


@app.task(autoretry_for=(KeyError,), retry_backoff=0.05, retry_jitter=False, max_retries=2)
def always_keyerror() -> None:
    raise KeyError("missing")


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(acks_late=True)
def sleep_late(seconds: float, marker: str = "") -> float:
    """Appends to a marker file each time it starts, so a test can count runs."""
    if marker:
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return seconds


@app.task
async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0.01)
    return x + y


@app.task
def loop_kind() -> str:
    """The module of the worker's event loop (a solo worker runs tasks on its loop)."""
    return type(asyncio.get_running_loop()).__module__


@app.task(time_limit=0.2)
async def async_too_slow() -> None:
    await asyncio.sleep(5)


@app.task(bind=True)
def whoami(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {"id": self.request.id, "retries": self.request.retries,
            "hostname": self.request.hostname, "queue": self.request.delivery_info["routing_key"]}


@app.task(bind=True, acks_late=True)
def reject_me(self, requeue: bool) -> None:  # type: ignore[no-untyped-def]
    raise Reject("no thanks", requeue=requeue)


@app.task(track_started=True)
def tracked(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.task
def write_file(path: str, text: str) -> str:
    Path(path).write_text(text)
    return text


@app.task(queue="other")
def on_other_queue() -> str:
    return "other"


@app.task(ignore_result=True)
def ignored() -> int:
    return 1


@app.task
def unserializable() -> object:
    return object()


@app.task
def record_errback(failed_task_id: str, path: str) -> str:
    """An errback: called with the failed task's id first."""
    Path(path).write_text(failed_task_id)
    return failed_task_id


@app.task(bind=True)
def ignore_me(self, path: str) -> None:  # type: ignore[no-untyped-def]
    from celeriac import Ignore

    Path(path).write_text("ran")
    raise Ignore()

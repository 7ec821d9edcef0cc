"""celeriac's side of the AMQP tests: broker from CELERIAC_TEST_AMQP_URL, results from
CELERIAC_TEST_BACKEND (a SQLite file, or rpc://)."""

from __future__ import annotations

import os
import time

from celeriac import Celeriac

app = Celeriac(
    "amqpapp",
    broker=os.environ.get("CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("CELERIAC_TEST_BACKEND", "rpc://"),
)
app.conf.accept_content = ["json", "msgpack"]
app.conf.broker_transport_options = {
    "lease_seconds": float(os.environ.get("CELERIAC_TEST_LEASE", "30")),
}
app.conf.task_queues = [
    {"name": "celery", "exchange": "celery", "exchange_type": "direct", "routing_key": "celery"},
    {"name": "hipri", "exchange": "media", "exchange_type": "direct",
     "routing_key": "media.video"},
]


@app.task(name="capapp.add")
def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


@app.task(name="capapp.fail")
def fail(msg: str) -> None:
    raise ValueError(msg)


@app.task(name="capapp.slow_add", acks_late=True)
def slow_add(x: int, y: int, marker: str = "", seconds: float = 0.0) -> int:
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return x + y

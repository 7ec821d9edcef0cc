"""Celery's side of the AMQP interop tests (real Celery 5): the capture app's task names."""

from __future__ import annotations

import os
import time

from celery import Celery
from kombu import Exchange, Queue

app = Celery(
    "amqpapp",
    broker=os.environ.get("CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("CELERIAC_TEST_BACKEND", "rpc://"),
)
app.conf.accept_content = ["json", "msgpack"]
app.conf.task_queues = [
    Queue("celery", Exchange("celery", type="direct"), routing_key="celery"),
    Queue("hipri", Exchange("media", type="direct"), routing_key="media.video"),
]
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True


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

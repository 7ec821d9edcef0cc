"""celeriac's side of the Redis interop tests: the same tasks as ``celery_side``.

Broker and result backend are both the Redis of ``CELERIAC_INTEROP_REDIS_URL`` (the broker
in kombu's layout, the backend in Celery's ``celery-task-meta-<id>`` layout).
``CELERIAC_INTEROP_PRIORITY_ORDER`` sets the broker's ``priority_order`` (``kombu`` serves as
a Celery worker does).
"""

from __future__ import annotations

import json
import os
import time

from celeriac import Celeriac

SIDE = "celeriac"
URL = os.environ.get("CELERIAC_INTEROP_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celeriac("interop", broker=URL, backend=URL)
app.conf.accept_content = ["json", "msgpack"]
_options: dict[str, object] = {"lease_seconds": 30.0}
if os.environ.get("CELERIAC_INTEROP_PRIORITY_ORDER"):
    _options["priority_order"] = os.environ["CELERIAC_INTEROP_PRIORITY_ORDER"]
app.conf.broker_transport_options = _options


def _iso(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else value.isoformat()  # type: ignore[attr-defined]


@app.task(name="interop.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="interop.echo")
def echo(*args: object, **kwargs: object) -> dict[str, object]:
    return {"args": list(args), "kwargs": kwargs, "side": SIDE}


@app.task(name="interop.fail")
def fail(msg: str) -> None:
    raise ValueError(msg)


@app.task(name="interop.fail_app")
def fail_app(msg: str) -> None:
    from tests.interop.apps.worker_only_errors import AppError  # only workers import it

    raise AppError(msg)


@app.task(name="interop.flaky", bind=True, max_retries=3)
def flaky(self, hop_queue: str | None = None) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Fails its first try and retries at once (on ``hop_queue`` when given)."""
    if self.request.retries == 0:
        options = {"queue": hop_queue} if hop_queue else {}
        raise self.retry(countdown=0, **options)
    return {"retries": self.request.retries, "side": SIDE}


@app.task(name="interop.record", bind=True)
def record(self, path: str, label: str = "") -> str:  # type: ignore[no-untyped-def]
    """Appends what this side's worker saw of the request to ``path`` (JSON lines)."""
    req = self.request
    line = {
        "side": SIDE, "label": label, "id": req.id, "retries": req.retries,
        "eta": _iso(req.eta), "expires": _iso(req.expires), "priority": req.delivery_info.get(
            "priority"), "delivery_info": dict(req.delivery_info or {}), "time": time.time(),
        "hostname": req.hostname,
    }
    with open(path, "a") as fh:
        fh.write(json.dumps(line, default=str) + "\n")
    return label


@app.task(name="interop.on_err", bind=True)
def on_err(self, failed_id: str, path: str) -> str:  # type: ignore[no-untyped-def]
    """An errback (Celery's portable form: the failed task's id first)."""
    with open(path, "a") as fh:
        fh.write(json.dumps({"side": SIDE, "failed_id": failed_id}) + "\n")
    return failed_id


@app.task(name="interop.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds

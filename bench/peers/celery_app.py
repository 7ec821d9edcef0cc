"""The Celery 5 app of the ``celery-*`` peer rows: the same two no-op tasks as
``bench.tasks`` (with the same first/last marks), on the broker and result backend named by
``BENCH_CELERY_BROKER`` / ``BENCH_CELERY_BACKEND`` (default: Celery's SQLAlchemy broker and
database backend); ``BENCH_CELERY_CONF``, a JSON object, adds settings (``task_acks_late``).
Runs in ``.venv-bench`` only.

Celery's own knobs, set for speed where they exist: the SQLAlchemy transport's idle
``polling_interval`` is 0.01 s (default 1 s, which would make every round trip ~0.5 s), JSON
serializer, no gossip/mingle/heartbeat (``celery_driver`` passes the flags).
"""

from __future__ import annotations

import json
import os

from celery import Celery
from kombu.transport.sqlalchemy import Transport as SQLATransport

from bench.common import FIRST_MARK, LAST_MARK, write_mark

POLL = float(os.environ.get("BENCH_CELERY_POLL", "0.01"))
# kombu's SQLAlchemy transport hands every transport option to create_engine(), which
# rejects ``polling_interval``: set the transport's class default instead.
SQLATransport.polling_interval = POLL

MARKS_DIR = os.environ.get("CELERIAC_BENCH_MARKS")
_last = os.environ.get("CELERIAC_BENCH_LAST")
LAST = int(_last) if _last else None


def _mark(i: int) -> None:
    if MARKS_DIR:
        write_mark(MARKS_DIR, FIRST_MARK if i == 0 else LAST_MARK)


def noop(i: int) -> None:
    if i == 0 or i == LAST:
        _mark(i)


def noop_r(i: int) -> int:
    if i == 0 or i == LAST:
        _mark(i)
    return i


def make_app(broker: str, backend: str) -> Celery:
    """A Celery app with the two tasks (the driver makes a new one per run)."""
    app = Celery("benchpeer", broker=broker, backend=backend, set_as_current=True)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    app.conf.update(json.loads(os.environ.get("BENCH_CELERY_CONF") or "{}"))
    app.task(ignore_result=True, name=f"{__name__}.noop")(noop)
    app.task(name=f"{__name__}.noop_r")(noop_r)
    return app


app = make_app(
    os.environ.get("BENCH_CELERY_BROKER", "sqla+sqlite:///celery-broker.sqlite3"),
    os.environ.get("BENCH_CELERY_BACKEND", "db+sqlite:///celery-results.sqlite3"),
)

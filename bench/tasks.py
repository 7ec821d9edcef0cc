"""The app the celeriac rows run: two no-op tasks, in a worker process or in the bench itself.

Its broker and backend come from ``CELERIAC_BENCH_BROKER`` / ``CELERIAC_BENCH_BACKEND``
(the bench process sets ``app.conf`` directly instead); ``CELERIAC_BENCH_CONF``, a JSON object,
adds settings for the worker (e.g. ``{"task_acks_late": true}``). A task does nothing, except that the
run with ``i == 0`` and the run with ``i == CELERIAC_BENCH_LAST`` record the wall-clock time
in the directory ``CELERIAC_BENCH_MARKS`` (see ``bench.common.write_mark``): the drain figures
are timed from those two marks, so the worker's start-up is not counted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from bench.common import FIRST_MARK, LAST_MARK, write_mark
from celeriac import Celeriac

app = Celeriac(
    "bench",
    broker=os.environ.get("CELERIAC_BENCH_BROKER", "memory://bench"),
    backend=os.environ.get("CELERIAC_BENCH_BACKEND", "memory://bench"),
)
app.conf.update(json.loads(os.environ.get("CELERIAC_BENCH_CONF") or "{}"))

MARKS_DIR: str | None = os.environ.get("CELERIAC_BENCH_MARKS")
_last = os.environ.get("CELERIAC_BENCH_LAST")
LAST: int | None = int(_last) if _last else None
#: In-process runs: times recorded here, and a callback when the last task has run.
MARKS: dict[str, float] = {}
ON_LAST: Callable[[], None] | None = None


def _mark(i: int) -> None:
    if i == 0:
        name = FIRST_MARK
    elif i == LAST:
        name = LAST_MARK
    else:
        return
    MARKS[name] = time.time()
    if MARKS_DIR:
        write_mark(MARKS_DIR, name)
    if name == LAST_MARK and ON_LAST is not None:
        ON_LAST()


@app.task(ignore_result=True)
def noop(i: int) -> None:
    """Results off."""
    if i == 0 or i == LAST:
        _mark(i)


@app.task
def noop_r(i: int) -> int:
    """Results on."""
    if i == 0 or i == LAST:
        _mark(i)
    return i

"""The celeriac rows: how each figure is measured.

Every figure uses no-op tasks (``bench.tasks``) and a fresh store per run (a new SQLite file
in a temporary directory, a new in-memory store name).

enqueue_one
    A sync producer calls ``noop.delay(i)`` N times; tasks/s over those N calls. A few
    warm-up sends before timing keep the connection and schema set-up out of the figure.
enqueue_batch
    ``app.send_many([noop.s(i) for i in batch])`` with batches of ``--batch`` (1,000)
    signatures, N in all; building the signatures is counted.
drain_off / drain_on
    N messages are loaded first (``send_many``), with ``ignore_result`` (``noop``) or with
    results stored (``noop_r``). Then ONE worker is started: a real ``celeriac -A bench.tasks
    worker -P solo`` process (or, for the in-process memory row, ``Worker(...).run()`` on this
    process's loop). Task 0 and task N-1 write wall-clock marks (``bench.tasks._mark``); the
    solo worker runs them in FIFO order, so the rate is (N-1) / (t_last - t_first). Start-up
    (interpreter, imports, connecting, the first fetch) falls before the first mark and is not
    counted. Results off: the clock stops at the last task's mark (acks are taken before a
    task runs, so nothing of the queue is left then; the queue is checked empty afterwards;
    with ``task_acks_late`` the last batch of acks goes out just after the mark).
    Results on: the clock stops when the bench process, waiting on the last task's
    ``AsyncResult.get()`` (pushed, not polled), sees its result stored.
rtt_p50 / rtt_p99
    With one warm worker running (one task's round trip waited for, then ``--warmup`` more),
    K times ``noop_r.delay(i).get()`` one after another from this process; percentiles of
    those K latencies.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import tasks
from bench.common import (
    FIRST_MARK,
    LAST_MARK,
    MARK_POLL,
    ROOT,
    Params,
    Proc,
    Samples,
    percentile,
    read_mark,
    wait_until,
)
from celeriac.errors import TimeoutError as ResultTimeout
from celeriac.pools.solo import SoloPool
from celeriac.result import AsyncResult
from celeriac.utils.sync import run_sync
from celeriac.worker.loop import Worker

Say = Callable[[str], None]
app = tasks.app


SOLO = ["-P", "solo"]


def worker_command(loglevel: str = "warning", pool: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "celeriac.cli.main", "-A", "bench.tasks", "worker",
            *(pool or SOLO), "-l", loglevel]


#: settings a row gave the bench app, with the values they replaced (see ``configure``)
_row_settings: dict[str, Any] = {}


def configure(broker: str, backend: str, conf: dict[str, Any] | None = None) -> None:
    """Point the bench app at a new store (closing this thread's old connections), with a
    row's own settings (``conf``) in place of the defaults for as long as that row runs."""
    app.close()
    for name, old in _row_settings.items():
        app.conf[name] = old
    _row_settings.clear()
    for name, value in (conf or {}).items():
        _row_settings[name] = app.conf[name]
        app.conf[name] = value
    app.conf.broker_url = broker
    app.conf.result_backend = backend
    app.purge()  # a server given by URL may hold an earlier run's messages


def enqueue_one(n: int, warmup: int) -> float:
    for _ in range(warmup):
        tasks.noop.delay(-1)
    start = time.perf_counter()
    for i in range(n):
        tasks.noop.delay(i)
    app.flush()  # every send confirmed (RabbitMQ's confirm window lets sends return before)
    return n / (time.perf_counter() - start)


def enqueue_batch(n: int, batch: int) -> float:
    app.send_many([tasks.noop.s(-1) for _ in range(10)])  # warm-up
    start = time.perf_counter()
    for first in range(0, n, batch):
        app.send_many([tasks.noop.s(i) for i in range(first, min(n, first + batch))])
    app.flush()
    return n / (time.perf_counter() - start)


def preload(n: int, batch: int, results: bool) -> str:
    """Enqueue tasks 0..n-1; the id of the last."""
    task = tasks.noop_r if results else tasks.noop
    last = ""
    for first in range(0, n, batch):
        sent = app.send_many([task.s(i) for i in range(first, min(n, first + batch))])
        last = sent[-1].id
    return last


def queue_size() -> int:
    async def size() -> int:
        broker = await app.broker()
        return await broker.queue_size(app.conf.task_default_queue)

    return run_sync(size())


def _worker_env(broker: str, backend: str, marks: Path | None, last: int | None,
                conf: dict[str, Any] | None = None) -> dict[str, str]:
    env = {"CELERIAC_BENCH_BROKER": broker, "CELERIAC_BENCH_BACKEND": backend,
           "CELERIAC_BENCH_CONF": json.dumps(conf or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if marks is not None:
        env["CELERIAC_BENCH_MARKS"] = str(marks)
    if last is not None:
        env["CELERIAC_BENCH_LAST"] = str(last)
    return env


def _wait_result(task_id: str, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    res: AsyncResult[Any] = AsyncResult(task_id, app=app)
    while True:
        try:
            res.get(timeout=1.0)
            return
        except ResultTimeout:
            if not proc.alive():
                raise RuntimeError(f"the worker exited ({proc.proc.returncode}):\n"
                                   f"{proc.log_tail()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for the last task within {timeout:.0f}s:\n"
                                   f"{proc.log_tail()}") from None


def drain_process(broker: str, backend: str, n: int, batch: int, results: bool,
                  workdir: Path, pool: list[str] | None = None,
                  conf: dict[str, Any] | None = None) -> float:
    """Drain rate of one worker process over N pre-loaded tasks (see the module docstring)."""
    last_id = preload(n, batch, results)
    marks = workdir / f"marks-{uuid.uuid4().hex[:8]}"
    marks.mkdir()
    timeout = max(120.0, n / 50)
    proc = Proc(worker_command(pool=pool), workdir / f"worker-{marks.name}.log",
                env=_worker_env(broker, backend, marks, n - 1, conf))
    try:
        if results:
            _wait_result(last_id, proc, timeout)
            end = time.time()
        else:
            end = wait_until(lambda: read_mark(marks, LAST_MARK), timeout,
                             "the last task", proc=proc, interval=MARK_POLL)
        first = read_mark(marks, FIRST_MARK)
        if first is None:
            raise RuntimeError("the first task left no mark")
        wait_until(lambda: queue_size() == 0, 30, "the queue to empty", proc=proc, interval=0.05)
    finally:
        proc.stop()
    return (n - 1) / (end - first)


def round_trips(broker: str, backend: str, k: int, warmup: int, workdir: Path,
                pool: list[str] | None = None,
                conf: dict[str, Any] | None = None) -> list[float]:
    """K sequential delay().get() latencies (ms) against one warm worker process."""
    proc = Proc(worker_command(pool=pool), workdir / f"worker-rtt-{uuid.uuid4().hex[:8]}.log",
                env=_worker_env(broker, backend, None, None, conf))
    try:
        _wait_result(tasks.noop_r.delay(-1).id, proc, 60)  # the worker is up and warm
        return timed_round_trips(k, warmup)
    finally:
        proc.stop()


def timed_round_trips(k: int, warmup: int) -> list[float]:
    """K sequential delay().get() latencies (ms), sorted, after ``warmup`` untimed ones,
    against a worker that is up."""
    for _ in range(warmup):
        tasks.noop_r.delay(-1).get(timeout=30)
    latencies = []
    for _ in range(k):
        start = time.perf_counter()
        tasks.noop_r.delay(-1).get(timeout=30)
        latencies.append((time.perf_counter() - start) * 1000)
    return sorted(latencies)


# ---- in-process (memory) -------------------------------------------------------------------

async def _drain_in_process(n: int, batch: int, results: bool) -> float:
    last_id = ""
    task = tasks.noop_r if results else tasks.noop
    for first in range(0, n, batch):
        sent = await app.asend_many([task.s(i) for i in range(first, min(n, first + batch))])
        last_id = sent[-1].id
    tasks.MARKS.clear()
    tasks.LAST = n - 1
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def on_last() -> None:
        loop.call_soon_threadsafe(done.set)

    tasks.ON_LAST = on_last
    worker = Worker(app, SoloPool())
    running = loop.create_task(worker.run(install_signals=False))
    try:
        if results:
            await AsyncResult(last_id, app=app).aget(timeout=max(120.0, n / 50))
        else:
            await asyncio.wait_for(done.wait(), max(120.0, n / 50))
        end = time.time()
    finally:
        tasks.ON_LAST = None
        tasks.LAST = None
        worker.request_stop()
        await running
    return (n - 1) / (end - tasks.MARKS[FIRST_MARK])


async def _round_trips_in_process(k: int, warmup: int) -> list[float]:
    loop = asyncio.get_running_loop()
    worker = Worker(app, SoloPool())
    running = loop.create_task(worker.run(install_signals=False))
    try:
        for _ in range(warmup + 1):
            await (await tasks.noop_r.adelay(-1)).aget(timeout=30)
        latencies = []
        for _ in range(k):
            start = time.perf_counter()
            await (await tasks.noop_r.adelay(-1)).aget(timeout=30)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        worker.request_stop()
        await running
    return sorted(latencies)


# ---- rows -----------------------------------------------------------------------------------

class CeleriacRow:
    """celeriac on one broker/backend pair.

    ``broker`` / ``backend`` make a URL for one run from that run's temporary directory
    (a fresh SQLite file, a fresh memory store; a server URL given on the command line).
    ``in_process``: the broker lives in this process (memory), so workers run on this
    process's loop instead of in their own process. ``pool``: the worker's pool options
    (``-P solo`` unless given, e.g. ``["-P", "prefork", "-c", "2"]``); ``conf``: settings
    for the worker process (``CELERIAC_BENCH_CONF``, e.g. ``task_acks_late``) and for the
    bench's own app, the producer. With more than one
    task at a time, the last task can end a little before others still running: the drain
    figure then is the rate up to the last task's end, and the queue is still checked empty.
    """

    def __init__(self, name: str, broker: Callable[[Path], str], backend: Callable[[Path], str],
                 *, in_process: bool = False, unavailable: str | None = None,
                 pool: list[str] | None = None, conf: dict[str, Any] | None = None) -> None:
        self.name = name
        self.pool = pool
        self.conf = conf
        self.broker = broker
        self.backend = backend
        self.in_process = in_process
        self.mode = "in-process" if in_process else "worker process"
        self._unavailable = unavailable

    def unavailable(self) -> str | None:
        return self._unavailable

    def run(self, params: Params, workdir: Path, say: Say) -> Samples:
        samples = Samples()
        if self.in_process:
            samples.notes.append("broker in this process: worker on the bench's own loop")
        try:
            for r in range(params.repeat):
                self._one(params, workdir / f"run{r}", samples, say, r)
        finally:
            app.close()
        return samples

    def _urls(self, d: Path) -> tuple[str, str]:
        d.mkdir(parents=True, exist_ok=True)
        return self.broker(d), self.backend(d)

    def _one(self, p: Params, d: Path, samples: Samples, say: Say, r: int) -> None:
        tag = f"{self.name} #{r + 1}"
        say(f"{tag}: enqueue one at a time")
        configure(*self._urls(d / "one"), self.conf)
        samples.add("enqueue_one", enqueue_one(p.n, p.warmup))
        say(f"{tag}: enqueue batched")
        configure(*self._urls(d / "batch"), self.conf)
        samples.add("enqueue_batch", enqueue_batch(p.n, p.batch))
        for results, figure in ((False, "drain_off"), (True, "drain_on")):
            say(f"{tag}: {figure}")
            broker, backend = self._urls(d / figure)
            configure(broker, backend, self.conf)
            if self.in_process:
                app.close()
                rate = asyncio.run(_drain_in_process(p.n, p.batch, results))
            else:
                rate = drain_process(broker, backend, p.n, p.batch, results, d / figure,
                                     self.pool, self.conf)
            samples.add(figure, rate)
        say(f"{tag}: round trips")
        broker, backend = self._urls(d / "rtt")
        configure(broker, backend, self.conf)
        if self.in_process:
            app.close()
            lat = asyncio.run(_round_trips_in_process(p.k, p.warmup))
        else:
            lat = round_trips(broker, backend, p.k, p.warmup, d / "rtt", self.pool, self.conf)
        samples.add("rtt_p50", percentile(lat, 50))
        samples.add("rtt_p99", percentile(lat, 99))


def sqlite_url(d: Path) -> str:
    return f"sqlite:///{d / 'celeriac.sqlite3'}"


def memory_url(d: Path) -> str:
    return f"memory://bench-{uuid.uuid4().hex}"

"""Driver of the ``celery-*`` peer rows: Celery 5 on ``sqla+sqlite`` / ``db+sqlite`` (default),
or on the broker and result backend given (``--broker-url``, ``--backend-url``: Redis).

Measures the figures the way ``bench/celeriac_rows.py`` does for celeriac, with these
Celery equivalents:

- enqueue_one: ``noop.delay(i)`` N times.
- enqueue_batch: Celery has no batched publish; the closest is one producer connection
  reused for ``apply_async(..., producer=p)`` over a batch, which is what this does (one
  ``producer_or_acquire()`` per ``--batch`` tasks; building the calls is counted).
- drain_off / drain_on: N tasks pre-loaded (the same way), then one ``celery worker``
  process (``-P solo`` unless ``--pool``); the clock runs from task 0's mark to task N-1's
  mark (results off) or to the bench seeing the last result: ``AsyncResult.get()`` (the
  Redis backend is pushed by pub/sub; the database backend polls every 5 ms).
- rtt_p50 / rtt_p99: ``noop_r.delay(i).get(interval=0.001)`` K times against a warm worker
  (on SQLite, latency includes the transport's 0.01 s idle polling, see ``celery_app``).

``--acks-late`` sets ``task_acks_late``; ``--prefetch-multiplier`` is the worker's flag.
Each run gets fresh database files (broker and results in separate files, as Celery's two
SQLAlchemy components would be deployed); a server broker is purged instead. Progress on
stderr, samples as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    FIRST_MARK,
    LAST_MARK,
    MARK_POLL,
    ROOT,
    Proc,
    Samples,
    emit,
    percentile,
    read_mark,
    wait_until,
)


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


#: ``--broker-url`` / ``--backend-url``: a server instead of a fresh SQLite file.
BROKER_URL: str | None = None
BACKEND_URL: str | None = None
#: The worker's pool options and settings (``--pool``, ``--prefetch-multiplier``, ``--acks-late``).
POOL: list[str] = ["-P", "solo"]
CONF: dict[str, Any] = {}


def urls(d: Path) -> dict[str, str]:
    d.mkdir(parents=True, exist_ok=True)
    return {"BENCH_CELERY_BROKER": BROKER_URL or f"sqla+sqlite:///{d / 'broker.sqlite3'}",
            "BENCH_CELERY_BACKEND": BACKEND_URL or f"db+sqlite:///{d / 'results.sqlite3'}",
            "BENCH_CELERY_CONF": json.dumps(CONF)}


class Peer:
    """One run's Celery app and its two tasks."""

    def __init__(self, env: dict[str, str]) -> None:
        from bench.peers.celery_app import make_app

        self.app = make_app(env["BENCH_CELERY_BROKER"], env["BENCH_CELERY_BACKEND"])
        self.noop = self.app.tasks["bench.peers.celery_app.noop"]
        self.noop_r = self.app.tasks["bench.peers.celery_app.noop_r"]

    def close(self) -> None:
        self.app.close()


def load_app(env: dict[str, str]) -> Peer:
    peer = Peer(env)
    if BROKER_URL:
        peer.app.control.purge()  # a server broker keeps the previous phase's messages
    return peer


def worker(env: dict[str, str], log: Path) -> Proc:
    cmd = [sys.executable, "-m", "celery", "-A", "bench.peers.celery_app", "worker",
           *POOL, "-l", "warning", "--without-gossip", "--without-mingle",
           "--without-heartbeat"]
    return Proc(cmd, log, env={**env, "PYTHONPATH": str(ROOT)})


def enqueue_one(mod: Peer, n: int, warmup: int) -> float:
    for _ in range(warmup):
        mod.noop.delay(-1)
    start = time.perf_counter()
    for i in range(n):
        mod.noop.delay(i)
    return n / (time.perf_counter() - start)


def send_batch(mod: Peer, task: Any, first: int, last: int) -> Any:
    result = None
    with mod.app.producer_or_acquire() as producer:
        for i in range(first, last):
            result = task.apply_async((i,), producer=producer)
    return result


def enqueue_batch(mod: Peer, n: int, batch: int) -> float:
    send_batch(mod, mod.noop, -10, 0)  # warm-up (arguments < 0 never mark)
    start = time.perf_counter()
    for first in range(0, n, batch):
        send_batch(mod, mod.noop, first, min(n, first + batch))
    return n / (time.perf_counter() - start)


def drain(mod: Peer, env: dict[str, str], d: Path, n: int, batch: int, results: bool) -> float:
    task = mod.noop_r if results else mod.noop
    last = None
    for first in range(0, n, batch):
        last = send_batch(mod, task, first, min(n, first + batch))
    assert last is not None
    marks = d / f"marks-{uuid.uuid4().hex[:8]}"
    marks.mkdir()
    timeout = max(300.0, n / 10)
    proc = worker({**env, "CELERIAC_BENCH_MARKS": str(marks), "CELERIAC_BENCH_LAST": str(n - 1)},
                  d / f"worker-{marks.name}.log")
    try:
        if results:
            wait_result(last, proc, timeout)
            end = time.time()
        else:
            end = wait_until(lambda: read_mark(marks, LAST_MARK), timeout, "the last task",
                             proc=proc, interval=MARK_POLL)
        first_at = read_mark(marks, FIRST_MARK)
        if first_at is None:
            raise RuntimeError("the first task left no mark")
    finally:
        proc.stop()
    return (n - 1) / (end - first_at)


def wait_result(result: Any, proc: Proc, timeout: float) -> None:
    """``result.get()`` (pub/sub on Redis, 5 ms polls on a database), checking the worker."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    deadline = time.monotonic() + timeout
    while True:
        try:
            result.get(timeout=1.0, interval=0.005)
            return
        except CeleryTimeout:
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"no last result:\n{proc.log_tail()}") from None


def round_trips(mod: Peer, env: dict[str, str], d: Path, k: int, warmup: int) -> list[float]:
    proc = worker(env, d / "worker-rtt.log")
    try:
        first = mod.noop_r.delay(-1)
        wait_until(first.ready, 120, "the first round trip", proc=proc, interval=0.01)
        for _ in range(warmup):
            mod.noop_r.delay(-1).get(timeout=30, interval=0.001)
        latencies = []
        for _ in range(k):
            start = time.perf_counter()
            mod.noop_r.delay(-1).get(timeout=30, interval=0.001)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        proc.stop()
    return sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("--n", 5000), ("--batch", 1000), ("--k", 500), ("--repeat", 3),
                          ("--warmup", 50)):
        parser.add_argument(name, type=int, default=default)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--broker-url", default=None)
    parser.add_argument("--backend-url", default=None)
    parser.add_argument("--pool", default="solo")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--prefetch-multiplier", type=int, default=None)
    parser.add_argument("--acks-late", action="store_true")
    args = parser.parse_args()
    global BROKER_URL, BACKEND_URL, POOL
    BROKER_URL = args.broker_url or None
    BACKEND_URL = args.backend_url or None
    POOL = ["-P", args.pool]
    if args.concurrency:
        POOL += ["-c", str(args.concurrency)]
    if args.prefetch_multiplier:
        POOL += ["--prefetch-multiplier", str(args.prefetch_multiplier)]
    if args.acks_late:
        CONF["task_acks_late"] = True
    if BROKER_URL and BROKER_URL.startswith("redis"):
        broker = "redis transport"
    elif BROKER_URL:
        broker = "py-amqp broker (no publisher confirms)"
    else:
        broker = "sqla+sqlite broker (polling_interval 0.01 s)"
    backend = "redis results (pub/sub get)" if BACKEND_URL else "db+sqlite results"
    samples = Samples(notes=[f"Celery 5, {broker}, {backend}, {' '.join(POOL)}"
                             + (", task_acks_late" if args.acks_late else "")])
    for r in range(args.repeat):
        base = args.workdir / f"run{r}"
        tag = f"#{r + 1}"
        say(f"{tag} enqueue one at a time")
        env = urls(base / "one")
        samples.add("enqueue_one", enqueue_one(load_app(env), args.n, args.warmup))
        say(f"{tag} enqueue batched (one producer)")
        env = urls(base / "batch")
        samples.add("enqueue_batch", enqueue_batch(load_app(env), args.n, args.batch))
        for results, figure in ((False, "drain_off"), (True, "drain_on")):
            say(f"{tag} {figure}")
            env = urls(base / figure)
            samples.add(figure, drain(load_app(env), env, base / figure, args.n, args.batch,
                                      results))
        say(f"{tag} round trips")
        env = urls(base / "rtt")
        lat = round_trips(load_app(env), env, base / "rtt", args.k, args.warmup)
        samples.add("rtt_p50", percentile(lat, 50))
        samples.add("rtt_p99", percentile(lat, 99))
    emit(samples)


if __name__ == "__main__":
    main()

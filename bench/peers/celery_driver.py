"""Driver of the ``celery-sqlite`` peer row: Celery 5 on ``sqla+sqlite`` / ``db+sqlite``.

Measures the figures the way ``bench/celeriac_rows.py`` does for celeriac, with these
Celery equivalents:

- enqueue_one: ``noop.delay(i)`` N times.
- enqueue_batch: Celery has no batched publish; the closest is one producer connection
  reused for ``apply_async(..., producer=p)`` over a batch, which is what this does.
- drain_off / drain_on: N tasks pre-loaded, then one ``celery worker -P solo`` process; the
  clock runs from task 0's mark to task N-1's mark (results off) or to the bench seeing the
  last result (``AsyncResult.get(interval=0.005)``: the database backend polls).
- rtt_p50 / rtt_p99: ``noop_r.delay(i).get(interval=0.001)`` K times against a warm worker
  (latency includes the transport's 0.01 s idle polling, see ``celery_app``).

Each run gets fresh database files (broker and results in separate files, as Celery's two
SQLAlchemy components would be deployed). Progress on stderr, samples as JSON on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    FIRST_MARK,
    LAST_MARK,
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


def urls(d: Path) -> dict[str, str]:
    d.mkdir(parents=True, exist_ok=True)
    return {"BENCH_CELERY_BROKER": f"sqla+sqlite:///{d / 'broker.sqlite3'}",
            "BENCH_CELERY_BACKEND": f"db+sqlite:///{d / 'results.sqlite3'}"}


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
    return Peer(env)


def worker(env: dict[str, str], log: Path) -> Proc:
    cmd = [sys.executable, "-m", "celery", "-A", "bench.peers.celery_app", "worker",
           "-P", "solo", "-l", "warning", "--without-gossip", "--without-mingle",
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
            deadline = time.monotonic() + timeout
            while not last.ready():
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"no last result:\n{proc.log_tail()}")
                time.sleep(0.005)
            end = time.time()
        else:
            end = wait_until(lambda: read_mark(marks, LAST_MARK), timeout, "the last task",
                             proc=proc)
        first_at = read_mark(marks, FIRST_MARK)
        if first_at is None:
            raise RuntimeError("the first task left no mark")
    finally:
        proc.stop()
    return (n - 1) / (end - first_at)


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
    args = parser.parse_args()
    samples = Samples(notes=["Celery 5, sqla+sqlite broker (polling_interval 0.01 s), "
                             "db+sqlite results, -P solo"])
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

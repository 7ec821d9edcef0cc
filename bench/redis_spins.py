"""Round trip on Redis for each combination of the client's spins, alternating.

    .venv/bin/python -m bench.redis_spins [--redis-url URL] [--k 1000] [--rounds 6]

One solo worker stays up; each round runs ``--k`` ``delay().get()`` round trips (after 100
unmeasured) with ``reply_spin`` (the broker's wait for a publish's reply) and ``wait_spin``
(the backend's wait for a result) on and off, the four combinations in turn, so that a slow
stretch of the machine falls on all of them. Prints each combination's p50 and p99, as the
median over the rounds. Without ``--redis-url`` it starts a private ``redis-server``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import tasks
from bench.celeriac_rows import _worker_env, configure, timed_round_trips, worker_command
from bench.common import Proc, percentile
from bench.redis_server import PrivateRedis

#: (reply_spin, wait_spin) in seconds: the defaults, and each turned off
VARIANTS = {"both spins": (0.0002, 0.001), "reply_spin only": (0.0002, 0.0),
            "wait_spin only": (0.0, 0.001), "no spin": (0.0, 0.0)}


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with PrivateRedis() as private:
        yield private


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis-url")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    p50: dict[str, list[float]] = {name: [] for name in VARIANTS}
    p99: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with _redis(args.redis_url) as url, tempfile.TemporaryDirectory() as tmp:
        configure(url, url)
        worker = Proc(worker_command(), Path(tmp) / "worker.log",
                      env=_worker_env(url, url, None, None))
        try:
            tasks.noop_r.delay(-1).get(timeout=60)  # the worker is up
            for r in range(args.rounds):
                for name, (reply_spin, wait_spin) in VARIANTS.items():
                    configure(url, url, {
                        "broker_transport_options": {"reply_spin": reply_spin},
                        "result_backend_transport_options": {"wait_spin": wait_spin}})
                    latencies = timed_round_trips(args.k, 100)
                    p50[name].append(percentile(latencies, 50))
                    p99[name].append(percentile(latencies, 99))
                print(f"round {r + 1} of {args.rounds} done", flush=True)
        finally:
            worker.stop()
            configure(url, url)
    print(f"round trip, ms: median over {args.rounds} rounds of {args.k} (min-max of the p50s)")
    for name in VARIANTS:
        print(f"  {name:16} p50 {statistics.median(p50[name]):.3f} "
              f"({min(p50[name]):.3f}-{max(p50[name]):.3f})  "
              f"p99 {statistics.median(p99[name]):.3f}")


if __name__ == "__main__":
    main()

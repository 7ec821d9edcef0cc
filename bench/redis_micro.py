"""Redis broker micro-benchmark: publish one at a time, publish in batches, fetch + ack.

    .venv/bin/python -m bench.redis_micro --redis-url redis://127.0.0.1:6399/0 [--n 20000]

Uses the same message as ``bench/broker_micro.py``. Flushes the given database first.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis

from bench.broker_micro import message
from celeriac.brokers.redis import RedisBroker


async def run(url: str, n: int, batch: int, prefetch: int, compact: bool) -> None:
    redis.Redis.from_url(url).flushdb()
    broker = RedisBroker(url, compact_envelope=compact)
    await broker.connect()
    try:
        one = n // 4
        start = time.perf_counter()
        for _ in range(one):
            await broker.publish([message("one")])
        single = one / (time.perf_counter() - start)

        msgs = [message("many") for _ in range(batch)]
        start = time.perf_counter()
        for _ in range(n // batch):
            await broker.publish(msgs)
        batched = (n // batch * batch) / (time.perf_counter() - start)

        start = time.perf_counter()
        taken = 0
        while taken < n // batch * batch:
            got = await broker.fetch(["many"], prefetch, 0)
            if not got:
                break
            await broker.ack(got)
            taken += len(got)
        drained = taken / (time.perf_counter() - start)
        print(f"redis compact={compact}: publish one {single:,.0f}/s, publish x{batch} "
              f"{batched:,.0f}/s, fetch{prefetch}+ack {drained:,.0f}/s")
    finally:
        await broker.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--prefetch", type=int, default=100)
    args = ap.parse_args()
    for compact in (False, True):
        asyncio.run(run(args.redis_url, args.n, args.batch, args.prefetch, compact))


if __name__ == "__main__":
    main()

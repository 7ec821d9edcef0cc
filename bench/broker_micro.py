"""Broker micro-benchmark: publish one at a time, publish in batches, fetch + ack.

    .venv/bin/python bench/broker_micro.py [--n 20000] [--batch 1000] [--brokers memory,sqlite]

Prints messages per second for each broker. The SQLite file lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from celeriac.brokers.base import Broker
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.message import Envelope, Outgoing

HEADERS = {
    "lang": "py",
    "task": "proj.tasks.add",
    "id": "0f8c8a7e-6a43-4a51-9b0e-5d4d5a0e3c11",
    "root_id": "0f8c8a7e-6a43-4a51-9b0e-5d4d5a0e3c11",
    "parent_id": None,
    "group": None,
    "retries": 0,
    "timelimit": [None, None],
    "argsrepr": "(2, 2)",
    "kwargsrepr": "{}",
    "origin": "gen123@host",
}
PROPERTIES = {
    "correlation_id": "0f8c8a7e-6a43-4a51-9b0e-5d4d5a0e3c11",
    "reply_to": "c1d2",
    "delivery_mode": 2,
    "priority": 0,
    "body_encoding": "base64",
}
BODY = b'[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def message(queue: str) -> Outgoing:
    return Outgoing(queue, Envelope(BODY, headers=HEADERS, properties=PROPERTIES))


async def bench(name: str, make: Callable[[], Broker], n: int, batch: int) -> None:
    broker = make()
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

        taken = 0
        start = time.perf_counter()
        while got := await broker.fetch(["many"], 100, 0):
            await broker.ack(got)
            taken += len(got)
        fetch_ack = taken / (time.perf_counter() - start)

        start = time.perf_counter()
        single_taken = 0
        while got := await broker.fetch(["one"], 1, 0):
            await broker.ack(got)
            single_taken += 1
        fetch_ack_one = single_taken / (time.perf_counter() - start)
        print(
            f"{name:8} publish 1/call {single:>10,.0f}/s"
            f"   publish {batch}/call {batched:>10,.0f}/s"
            f"   fetch+ack 100/call {fetch_ack:>10,.0f}/s"
            f"   fetch+ack 1/call {fetch_ack_one:>9,.0f}/s"
        )
    finally:
        await broker.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--brokers", default="memory,sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="celeriac-bench-") as tmp:
        makers: dict[str, Callable[[], Broker]] = {
            "memory": lambda: MemoryBroker(f"memory://bench-{uuid.uuid4().hex}"),
            "sqlite": lambda: SQLiteBroker(f"sqlite:///{Path(tmp) / 'bench.db'}"),
        }
        for name in args.brokers.split(","):
            await bench(name, makers[name], args.n, args.batch)


if __name__ == "__main__":
    asyncio.run(main())

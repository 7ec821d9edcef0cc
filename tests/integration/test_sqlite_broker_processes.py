"""The SQLite broker shared by real processes: exactly-once hand-out, redelivery after a
SIGKILL, cross-process wakeups, and an idle consumer that costs (almost) no CPU."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.message import Envelope, Outgoing

pytestmark = pytest.mark.slow

# The child: ``python -c CHILD <role> <db> <json args>``; reports JSON lines on stdout.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from celeriac.brokers.sqlite import SQLiteBroker

    def say(**kw):
        print(json.dumps(kw), flush=True)

    async def main(role, db, args):
        broker = SQLiteBroker("sqlite:///" + db, **args.get("options", {}))
        await broker.connect()
        if role == "consume":
            say(ready=True)
            seen, idle = [], 0
            while idle < 4:
                got = await broker.fetch(["q"], args["batch"], 0.25)
                if not got:
                    idle += 1
                    continue
                idle = 0
                seen += [d.envelope.body.decode() for d in got]
                await broker.ack(got)
                await asyncio.sleep(0.001)  # as if working: lets the others take a share
            say(seen=seen)
        elif role == "grab":
            got = await broker.fetch(["q"], args["count"], 5)
            say(took=[d.envelope.body.decode() for d in got])
            await asyncio.sleep(3600)  # holds the leases until killed
        elif role == "wait":
            say(ready=True)
            got = await broker.fetch(["q"], 10, args["timeout"])
            say(at=time.time(), got=[d.envelope.body.decode() for d in got])
        elif role == "idle":
            say(ready=True)
            cpu, wall = time.process_time(), time.monotonic()
            got = await broker.fetch(["q"], 10, args["timeout"])
            say(cpu=time.process_time() - cpu, wall=time.monotonic() - wall, got=len(got))
        await broker.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
    """
)


@contextmanager
def child(role: str, db: Path, **args: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process running ``role``; killed by pid on the way out."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, role, str(db), json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, Any]:
    """The child's next JSON report (its stderr is shown if it died instead)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = proc.stdout.readline()
                if line:
                    result: dict[str, Any] = json.loads(line)
                    return result
                break
    err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
    raise AssertionError(f"no report from child (exit {proc.poll()}): {err}")


async def publish(db: Path, bodies: list[str], **options: Any) -> None:
    broker = SQLiteBroker(f"sqlite:///{db}", **options)
    await broker.connect()
    try:
        await broker.publish([Outgoing("q", Envelope(b.encode())) for b in bodies])
    finally:
        await broker.close()


@pytest.mark.timeout(90)
async def test_many_processes_get_every_message_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    total = 4000  # no schema yet: the four children race to create it
    with (
        child("consume", db, batch=10) as a,
        child("consume", db, batch=25) as b,
        child("consume", db, batch=1) as c,
        child("consume", db, batch=50) as d,
    ):
        for p in (a, b, c, d):
            assert (await asyncio.to_thread(read_line, p))["ready"]
        producer = SQLiteBroker(f"sqlite:///{db}")
        await producer.connect()
        try:
            for i in range(0, total, 100):  # published while the consumers run
                await producer.publish([Outgoing("q", Envelope(str(n).encode())) for n in range(i, i + 100)])
                await asyncio.sleep(0.01)
            reports = [await asyncio.to_thread(read_line, p, 60) for p in (a, b, c, d)]
            assert await producer.queue_size("q") == 0
        finally:
            await producer.close()
    seen = [body for r in reports for body in r["seen"]]
    assert len(seen) == total, (len(seen), len(set(seen)))
    assert sorted(map(int, seen)) == list(range(total))
    assert sum(1 for r in reports if r["seen"]) >= 2  # the work really was shared


@pytest.mark.timeout(60)
async def test_killed_consumer_messages_are_redelivered(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    lease = 1.0
    await publish(db, [f"m{i}" for i in range(5)])
    with child("grab", db, count=3, options={"lease_seconds": lease}) as grabber:
        took = (await asyncio.to_thread(read_line, grabber))["took"]
        assert took == ["m0", "m1", "m2"]
        os.kill(grabber.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(grabber.wait, 10)

    broker = SQLiteBroker(f"sqlite:///{db}", lease_seconds=30)
    await broker.connect()
    try:
        first = await broker.fetch(["q"], 10, 0)
        assert [d.envelope.body for d in first] == [b"m3", b"m4"]  # the others are leased
        redelivered = []
        while len(redelivered) < 3 and time.monotonic() - killed_at < 10:
            redelivered += await broker.fetch(["q"], 10, 5)
        waited = time.monotonic() - killed_at
        assert [d.envelope.body for d in redelivered] == [b"m0", b"m1", b"m2"]
        assert all(d.deliveries == 2 and d.redelivered for d in redelivered)
        assert waited < lease + 2.0, waited
        await broker.ack(first + redelivered)
        assert await broker.queue_size("q") == 0
    finally:
        await broker.close()


@pytest.mark.timeout(60)
async def test_publish_wakes_consumer_in_another_process(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    await publish(db, [])
    producer = SQLiteBroker(f"sqlite:///{db}")
    await producer.connect()
    try:
        with child("wait", db, timeout=20) as waiter:
            await asyncio.to_thread(read_line, waiter)
            await asyncio.sleep(0.5)  # the child is now asleep in its fetch
            sent = time.time()
            await producer.publish([Outgoing("q", Envelope(b"hello"))])
            report = await asyncio.to_thread(read_line, waiter)
        assert report["got"] == ["hello"]
        latency = report["at"] - sent
        print(f"cross-process wakeup latency: {latency * 1000:.2f} ms")
        assert latency < 0.5, latency
    finally:
        await producer.close()


@pytest.mark.timeout(60)
async def test_idle_consumer_costs_almost_no_cpu(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    await publish(db, [])
    broker = SQLiteBroker(f"sqlite:///{db}")
    await broker.connect()
    try:
        # Something pending but not due (a far ETA) must not turn the wait into a spin.
        await broker.publish([Outgoing("q", Envelope(b"eta"), not_before=time.time() + 3600)])
        with child("idle", db, timeout=3.0) as idle:
            await asyncio.to_thread(read_line, idle)
            report = await asyncio.to_thread(read_line, idle)
        assert report["got"] == 0
        assert report["wall"] >= 2.9
        share = report["cpu"] / report["wall"]
        print(f"idle fetch: {report['cpu'] * 1000:.1f} ms CPU in {report['wall']:.2f} s")
        assert share < 0.02, f"idle fetch used {share:.1%} of a core"
    finally:
        await broker.close()

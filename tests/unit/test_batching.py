"""The worker's write batcher: coalesces, writes at once when idle, retries background writes."""

from __future__ import annotations

import asyncio

import pytest

from celeriac.worker.batching import Batcher


async def test_added_items_are_written_together_at_the_next_turn() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)

    batcher: Batcher[int] = Batcher(write, "things")
    for i in range(5):
        batcher.add(i)
    assert writes == []
    await batcher.flush()
    assert writes == [[0, 1, 2, 3, 4]]


async def test_submit_writes_at_once_and_coalesces_while_writing() -> None:
    writes: list[list[int]] = []
    gate = asyncio.Event()

    async def write(items: list[int]) -> None:
        writes.append(items)
        if len(writes) == 1:
            await gate.wait()

    batcher: Batcher[int] = Batcher(write, "acks")
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    others = [asyncio.create_task(batcher.submit(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *others)
    assert writes == [[0], [1, 2, 3]]


async def test_background_writes_are_retried_until_they_succeed() -> None:
    attempts = 0
    written: list[int] = []

    async def flaky(items: list[int]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("backend restarting")
        written.extend(items)

    batcher: Batcher[int] = Batcher(flaky, "results", retry_for=5.0)
    batcher.add(1)
    batcher.add(2)
    await asyncio.wait_for(batcher.flush(), 5)
    assert written == [1, 2] and attempts == 3


async def test_background_writes_are_dropped_after_retry_for() -> None:
    async def broken(items: list[int]) -> None:
        raise ConnectionError("gone")

    batcher: Batcher[int] = Batcher(broken, "results", retry_for=0.2)
    batcher.add(1)
    await asyncio.wait_for(batcher.flush(), 5)
    assert len(batcher) == 0


async def test_submit_failure_reaches_the_caller() -> None:
    async def broken(items: list[int]) -> None:
        raise ConnectionError("gone")

    batcher: Batcher[int] = Batcher(broken, "acks")
    with pytest.raises(ConnectionError):
        await batcher.submit(1)


async def test_items_handed_in_during_a_failed_write_still_go() -> None:
    gate = asyncio.Event()
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)
        if len(writes) == 1:
            await gate.wait()
            raise ConnectionError("lost")

    batcher: Batcher[int] = Batcher(write, "acks", retry_for=5.0)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    second = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(ConnectionError):
        await first
    await asyncio.wait_for(second, 5)  # written by the next write, not left waiting
    assert writes == [[0], [1]]


async def test_a_lone_submit_is_written_alone_and_at_once() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)

    batcher: Batcher[int] = Batcher(write, "acks")
    for i in range(3):
        await batcher.submit(i)
        assert writes[-1] == [i]
    assert len(batcher) == 0

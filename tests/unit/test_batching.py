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


async def test_a_lone_submit_makes_no_task() -> None:
    tasks: list[int] = []

    async def write(items: list[int]) -> None:
        tasks.append(len(asyncio.all_tasks()))

    batcher: Batcher[int] = Batcher(write, "acks")
    before = len(asyncio.all_tasks())
    await batcher.submit(1)
    assert tasks == [before]


async def test_added_items_survive_a_failed_write_that_a_submit_went_with() -> None:
    """An added result and a submitted one go out together; that write fails: the submitter
    sees the error, and the added item is retried rather than dropped."""
    writes: list[list[str]] = []

    async def write(items: list[str]) -> None:
        writes.append(list(items))
        if len(writes) == 1:
            raise ConnectionError("backend blip")

    batcher: Batcher[str] = Batcher(write, "results", retry_for=5.0)

    async def runner() -> None:  # as the worker's: a result added, the next task's STARTED
        batcher.add("SUCCESS-1")
        await batcher.submit("STARTED-2")

    with pytest.raises(ConnectionError):
        await asyncio.wait_for(runner(), 5)
    await asyncio.wait_for(batcher.flush(), 5)
    assert writes == [["SUCCESS-1", "STARTED-2"], ["SUCCESS-1"]]


async def test_dropped_items_are_handed_to_on_drop() -> None:
    dropped: list[list[int]] = []

    async def broken(items: list[int]) -> None:
        raise ConnectionError("gone")

    batcher: Batcher[int] = Batcher(broken, "results", retry_for=0.2, on_drop=dropped.append)
    batcher.add(1)
    batcher.add(2)
    await asyncio.wait_for(batcher.flush(), 5)
    assert dropped == [[1, 2]] and len(batcher) == 0


async def test_a_submitter_is_not_failed_by_the_write_of_others() -> None:
    gate = asyncio.Event()
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(list(items))
        if len(writes) == 1:
            await gate.wait()
        elif len(writes) == 2:
            raise ConnectionError("lost")

    batcher: Batcher[int] = Batcher(write, "acks")
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    second = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(first, 5)  # its own write went through: no error for it
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(second, 5)
    assert writes == [[0], [1]]


async def test_one_write_at_a_time() -> None:
    """A result added, then a STARTED submitted (one runner), while another runner submits:
    the writes never overlap (an overlap lets a retried STARTED land after a SUCCESS)."""
    writes: list[list[str]] = []
    in_flight = peak = 0

    async def write(items: list[str]) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        writes.append(list(items))
        await asyncio.sleep(0.02)
        in_flight -= 1

    batcher: Batcher[str] = Batcher(write, "results")

    async def runner() -> None:
        batcher.add("SUCCESS-1")
        await batcher.submit("STARTED-2")

    first = asyncio.create_task(runner())
    await asyncio.sleep(0.005)
    await asyncio.wait_for(batcher.submit("STARTED-3"), 5)
    batcher.add("SUCCESS-4")
    await asyncio.wait_for(first, 5)
    await asyncio.wait_for(batcher.flush(), 5)
    assert peak == 1
    written = sorted(item for write in writes for item in write)
    assert written == ["STARTED-2", "STARTED-3", "SUCCESS-1", "SUCCESS-4"]


async def test_submitters_waiting_on_a_cancelled_submitter_still_get_written() -> None:
    writes: list[list[str]] = []

    async def slow(items: list[str]) -> None:
        writes.append(list(items))
        await asyncio.sleep(0.05)

    batcher: Batcher[str] = Batcher(slow, "acks")
    first = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0.01)
    other = asyncio.create_task(batcher.submit("b"))
    await asyncio.sleep(0.06)  # "a" written; "b" being written
    first.cancel()
    await asyncio.wait_for(other, 5)
    assert writes == [["a"], ["b"]]


async def test_a_writer_cancelled_mid_write_fails_its_submitters_and_keeps_added_items() -> None:
    gate = asyncio.Event()
    writes: list[list[str]] = []

    async def write(items: list[str]) -> None:
        writes.append(list(items))
        if len(writes) == 1:
            await gate.wait()

    batcher: Batcher[str] = Batcher(write, "results")

    async def runner() -> None:
        batcher.add("added")
        await batcher.submit("submitted")

    submitter = asyncio.create_task(runner())
    await asyncio.sleep(0.01)
    assert writes == [["added", "submitted"]]
    writer = batcher._scheduled  # the background writer, cancelled as a closing loop does
    assert writer is not None
    writer.cancel()
    with pytest.raises(Exception, match="cancelled"):
        await asyncio.wait_for(submitter, 5)  # told, not left waiting
    assert len(batcher) == 1
    await asyncio.wait_for(batcher.flush(), 5)  # the added item goes with a later writer
    assert writes[-1] == ["added"]


async def test_a_timeout_around_flush_does_not_cut_the_write() -> None:
    gate = asyncio.Event()
    written: list[int] = []

    async def write(items: list[int]) -> None:
        await gate.wait()
        written.extend(items)

    batcher: Batcher[int] = Batcher(write, "results")
    batcher.add(1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await batcher.flush()
    gate.set()
    await asyncio.wait_for(batcher.flush(), 5)
    assert written == [1]


async def test_a_cancelled_submitter_still_waiting_withdraws_its_item() -> None:
    gate = asyncio.Event()
    writes: list[list[str]] = []

    async def write(items: list[str]) -> None:
        writes.append(list(items))
        await gate.wait()

    batcher: Batcher[str] = Batcher(write, "acks")
    first = asyncio.create_task(batcher.submit("a"))
    await asyncio.sleep(0)
    late = asyncio.create_task(batcher.submit("b"))
    kept = asyncio.create_task(batcher.submit("c"))
    await asyncio.sleep(0.01)
    late.cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, kept), 5)
    assert writes == [["a"], ["c"]]

"""The conformance kit every result backend passes (``celeriac.backends.base``).

Each check is an async function of a *factory*: ``make(**options)`` returns a new,
unconnected backend on one shared store (the same URL), ``make(expires=0.2)`` one whose metas
expire quickly. Run them all with ``await check_backend(make)``, or get one pytest test per
check with a single line in a test module::

    TestSQLiteBackend = backend_suite("sqlite:///{tmp}/results.db")

``{tmp}`` is the test's temporary directory and ``{uid}`` a fresh id. To build the URL from
a fixture (a Redis server, say), subclass the suite and override its ``backend_url`` fixture.

Time bounds here are generous (a wakeup must come within half a second): they catch a
backend that polls slowly or loses wakeups, not one that is a little slow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from celeriac import states
from celeriac.backends import backend_from_url
from celeriac.backends.base import Meta, ResultBackend

__all__ = ["CHECKS", "BackendFactory", "backend_suite", "celery_meta", "check_backend"]

WAKE_BOUND = 0.5  # seconds within which a waiter must see a stored ready state
CHECK_TIMEOUT = 20.0  # no check may take longer than this


class BackendFactory(Protocol):
    def __call__(self, **options: Any) -> ResultBackend: ...


Check = Callable[[BackendFactory], Awaitable[None]]
CHECKS: dict[str, Check] = {}
# Checks that need two instances of one URL to share their results.
SHARED_CHECKS: set[str] = set()


def _check(*, shared: bool = False) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[fn.__name__.removeprefix("check_")] = fn
        if shared:
            SHARED_CHECKS.add(fn.__name__.removeprefix("check_"))
        return fn

    return register


def _new_id() -> str:
    return str(uuid.uuid4())


def celery_meta(task_id: str, status: str, result: Any = None, **extra: Any) -> Meta:
    """A meta in the shape Celery 5 writes (see the wire fixtures)."""
    ready = status in states.READY_STATES
    meta: Meta = {
        "status": status,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": "2026-11-23T14:27:21.189874+00:00" if ready else None,
        "task_id": task_id,
    }
    meta.update(extra)
    return meta


def _failure(task_id: str, status: str = states.FAILURE) -> Meta:
    return celery_meta(
        task_id,
        status,
        {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"},
        traceback=(
            "Traceback (most recent call last):\n"
            '  File "/srv/app/tasks.py", line 46, in fail\n'
            "    raise ValueError(msg)\n"
            "ValueError: boom\n"
        ),
    )


def _started(task_id: str) -> Meta:
    return celery_meta(task_id, states.STARTED, {"pid": 32109, "hostname": "worker1@vm"})


def _sample(task_id: str, status: str) -> Meta:
    """A meta of ``status`` as a worker would store it."""
    if status in (states.FAILURE, states.RETRY):
        return _failure(task_id, status)
    if status == states.STARTED:
        return _started(task_id)
    if status == states.REVOKED:
        return celery_meta(
            task_id,
            status,
            {"exc_type": "TaskRevokedError", "exc_message": ["revoked"], "exc_module": "celery"},
            children=None,
        )
    return celery_meta(task_id, status, 42 if status == states.SUCCESS else None)


@contextlib.asynccontextmanager
async def _opened(make: BackendFactory, **options: Any) -> AsyncIterator[ResultBackend]:
    backend = make(**options)
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()


async def _within(awaitable: Awaitable[Any], bound: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, bound)
    except TimeoutError:
        raise AssertionError(f"{what}: nothing within {bound} s") from None


async def _status(backend: ResultBackend, task_id: str) -> str | None:
    meta = await backend.get(task_id)
    return None if meta is None else meta["status"]


# -- storing and reading ----------------------------------------------------------------


@_check()
async def check_roundtrip(make: BackendFactory) -> None:
    """Celery-shaped metas come back exactly as stored."""
    async with _opened(make) as backend:
        metas = [
            celery_meta(_new_id(), states.SUCCESS, 5),
            _failure(_new_id()),
            _failure(_new_id(), states.RETRY),
            _started(_new_id()),
            _sample(_new_id(), states.REVOKED),
            celery_meta(_new_id(), states.SUCCESS, 7, parent_id=_new_id()),
        ]
        await backend.store(metas)
        for meta in metas:
            assert await backend.get(meta["task_id"]) == meta


@_check()
async def check_unknown_id(make: BackendFactory) -> None:
    """An id never stored is PENDING: ``get`` gives None, ``get_many`` leaves it out."""
    async with _opened(make) as backend:
        assert await backend.get(_new_id()) is None
        assert await backend.get_many([_new_id(), _new_id()]) == {}
        assert await backend.get_many([]) == {}
        await backend.store([])  # an empty batch is no error


@_check()
async def check_get_many(make: BackendFactory) -> None:
    async with _opened(make) as backend:
        metas = [celery_meta(_new_id(), states.SUCCESS, i) for i in range(5)]
        await backend.store(metas)
        missing = _new_id()
        wanted = [metas[0]["task_id"], missing, metas[3]["task_id"]]
        got = await backend.get_many(wanted)
        assert got == {metas[0]["task_id"]: metas[0], metas[3]["task_id"]: metas[3]}


@_check()
async def check_batch_of_many(make: BackendFactory) -> None:
    """A thousand metas in one ``store`` call are all kept."""
    async with _opened(make) as backend:
        metas = [celery_meta(_new_id(), states.SUCCESS, {"n": i}) for i in range(1000)]
        await backend.store(metas)
        got = await backend.get_many([m["task_id"] for m in metas])
        assert got == {m["task_id"]: m for m in metas}


@_check()
async def check_values_preserved(make: BackendFactory) -> None:
    """Results of every JSON shape come back equal, including big integers and unicode."""
    values: list[Any] = [
        None,
        0,
        -1,
        2**53 + 1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        2**100,
        -(2**100),
        3.25,
        True,
        False,
        "",
        "héllo wörld ✓ 日本語 🎉 \u0000 \\ \" '",
        [1, "two", 3.5, None, [True, {"deep": []}]],
        {"nested": {"list": [1, {"a": None}], "ünïcode-key": "v"}, "empty": {}},
        "x" * 1_000_000,
    ]
    async with _opened(make) as backend:
        metas = [celery_meta(_new_id(), states.SUCCESS, value) for value in values]
        extended = celery_meta(
            _new_id(),
            states.SUCCESS,
            [1, 2],
            name="proj.tasks.add",
            args=[2, 3],
            kwargs={"z": "ж"},
            worker="w1@host",
            retries=2,
            queue="celery",
            children=[[["child-id", None], None]],
        )
        metas.append(extended)
        await backend.store(metas)
        got = await backend.get_many([m["task_id"] for m in metas])
        for meta in metas:
            assert got[meta["task_id"]] == meta, meta["result"]
            assert type(got[meta["task_id"]]["result"]) is type(meta["result"])


# -- states never move backwards --------------------------------------------------------


@_check()
async def check_ready_is_final(make: BackendFactory) -> None:
    """A ready state is never overwritten by STARTED, RECEIVED or RETRY: neither by a later
    batch nor later in the same batch."""
    async with _opened(make) as backend:
        for ready in sorted(states.READY_STATES):
            for late in (states.STARTED, states.RECEIVED, states.RETRY, states.PENDING):
                across, within = _new_id(), _new_id()
                await backend.store([_sample(across, ready)])
                await backend.store([_sample(across, late)])
                await backend.store([_sample(within, ready), _sample(within, late)])
                assert await backend.get(across) == _sample(across, ready), (ready, late)
                assert await backend.get(within) == _sample(within, ready), (ready, late)


@_check()
async def check_received_does_not_replace_started(make: BackendFactory) -> None:
    async with _opened(make) as backend:
        a, b, c = _new_id(), _new_id(), _new_id()
        await backend.store([_started(a)])
        await backend.store([_sample(a, states.RECEIVED)])
        await backend.store([_sample(b, states.RECEIVED), _started(b), _sample(b, states.RECEIVED)])
        await backend.store([_sample(c, states.RECEIVED)])
        await backend.store([_started(c)])
        assert await _status(backend, a) == states.STARTED
        assert await _status(backend, b) == states.STARTED
        assert await _status(backend, c) == states.STARTED  # forward moves are kept
        await backend.store([_sample(c, states.SUCCESS)])
        assert await _status(backend, c) == states.SUCCESS


@_check()
async def check_may_replace_matrix(make: BackendFactory) -> None:
    """For every pair of states, the backend keeps what ``states.may_replace`` says, when
    the two arrive in separate batches and in one batch."""
    pairs = [(old, new) for old in sorted(states.ALL_STATES) for new in sorted(states.ALL_STATES)]
    across = {pair: _new_id() for pair in pairs}
    within = {pair: _new_id() for pair in pairs}
    async with _opened(make) as backend:
        await backend.store([_sample(tid, old) for (old, _), tid in across.items()])
        await backend.store([_sample(tid, new) for (_, new), tid in across.items()])
        batch: list[Meta] = []
        for (old, new), tid in within.items():
            batch += [_sample(tid, old), _sample(tid, new)]
        await backend.store(batch)
        got = await backend.get_many([*across.values(), *within.values()])
        for ids in (across, within):
            for (old, new), tid in ids.items():
                want = new if states.may_replace(new, old) else old
                assert got[tid] == _sample(tid, want), (old, new, got[tid]["status"])


# -- waiting ----------------------------------------------------------------------------


@_check()
async def check_wait_woken_by_store(make: BackendFactory) -> None:
    """A waiter returns soon after a ready state is stored; unready states do not wake it."""
    async with _opened(make) as backend:
        task_id = _new_id()
        waiter = asyncio.create_task(backend.wait(task_id, 10))
        await asyncio.sleep(0.05)
        await backend.store([_sample(task_id, states.RECEIVED)])
        await backend.store([_started(task_id)])
        await backend.store([celery_meta(_new_id(), states.SUCCESS)])  # another task's
        await asyncio.sleep(0.1)
        assert not waiter.done(), "wait() returned for an unready state"
        meta = celery_meta(task_id, states.SUCCESS, {"answer": 42})
        stored_at = time.monotonic()
        await backend.store([meta])
        assert await _within(waiter, WAKE_BOUND * 2, "wait() after a SUCCESS store") == meta
        assert time.monotonic() - stored_at < WAKE_BOUND


@_check()
async def check_wait_failure_and_no_timeout(make: BackendFactory) -> None:
    """FAILURE is ready too; ``timeout=None`` waits as long as needed."""
    async with _opened(make) as backend:
        task_id = _new_id()
        waiter = asyncio.create_task(backend.wait(task_id, None))
        await asyncio.sleep(0.05)
        await backend.store([_failure(task_id)])
        assert await _within(waiter, WAKE_BOUND, "wait() after a FAILURE store") == _failure(task_id)


@_check()
async def check_wait_timeout(make: BackendFactory) -> None:
    async with _opened(make) as backend:
        task_id = _new_id()
        await backend.store([_started(task_id)])
        started = time.monotonic()
        assert await backend.wait(task_id, 0.3) is None
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 0.3 + WAKE_BOUND, elapsed


@_check()
async def check_wait_already_ready(make: BackendFactory) -> None:
    async with _opened(make) as backend:
        meta = celery_meta(_new_id(), states.SUCCESS, "done")
        await backend.store([meta])
        started = time.monotonic()
        assert await backend.wait(meta["task_id"], 10) == meta
        assert time.monotonic() - started < WAKE_BOUND / 2


@_check()
async def check_many_waiters(make: BackendFactory) -> None:
    """Hundreds of concurrent waiters, several on one id, stored in a few batches: all
    woken; a cancelled waiter does not take the others down with it."""
    async with _opened(make) as backend:
        ids = [_new_id() for _ in range(60)]
        shared = ids[0]
        waiters = [asyncio.create_task(backend.wait(tid, 10)) for tid in ids]
        waiters += [asyncio.create_task(backend.wait(shared, 10)) for _ in range(20)]
        doomed = asyncio.create_task(backend.wait(shared, 10))
        await asyncio.sleep(0.05)
        doomed.cancel()
        metas = {tid: celery_meta(tid, states.SUCCESS, n) for n, tid in enumerate(ids)}
        for start in range(0, len(ids), 20):
            await backend.store([metas[tid] for tid in ids[start : start + 20]])
        results = await _within(asyncio.gather(*waiters), WAKE_BOUND * 4, "many waiters")
        assert results == [metas[tid] for tid in ids] + [metas[shared]] * 20
        assert doomed.cancelled()


@_check(shared=True)
async def check_instances_share_results(make: BackendFactory) -> None:
    """Two backends on the same URL (two event loops' instances, two processes' instances)
    see one store: a store through one wakes a waiter on the other."""
    async with _opened(make) as one, _opened(make) as two:
        meta = celery_meta(_new_id(), states.SUCCESS, [1, 2])
        await one.store([meta])
        assert await two.get(meta["task_id"]) == meta
        task_id = _new_id()
        waiter = asyncio.create_task(two.wait(task_id, 10))
        await asyncio.sleep(0.05)
        later = celery_meta(task_id, states.SUCCESS, "from one")
        await one.store([later])
        assert await _within(waiter, WAKE_BOUND, "waiter on the other instance") == later
        await two.store([_started(task_id)])
        assert await one.get(task_id) == later


@_check(shared=True)
async def check_instance_on_another_loop(make: BackendFactory) -> None:
    """The app keeps one backend per event loop: a waiter on a loop in another thread is
    woken by a store made on this one."""
    task_id = _new_id()
    meta = celery_meta(task_id, states.SUCCESS, "across threads")
    listening = threading.Event()

    async def wait_there() -> Meta | None:
        async with _opened(make) as there:
            waiter = asyncio.create_task(there.wait(task_id, 10))
            await asyncio.sleep(0.05)
            listening.set()
            return await waiter

    def run_thread() -> Meta | None:
        return asyncio.run(wait_there())

    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = loop.run_in_executor(pool, run_thread)
        async with _opened(make) as here:
            while not listening.is_set():
                await asyncio.sleep(0.01)
            await here.store([meta])
            assert await _within(result, WAKE_BOUND * 2, "waiter on the other loop") == meta


# -- forget and expiry ------------------------------------------------------------------


@_check()
async def check_forget(make: BackendFactory) -> None:
    async with _opened(make) as backend:
        kept, gone = celery_meta(_new_id(), states.SUCCESS, 1), _failure(_new_id())
        await backend.store([kept, gone])
        await backend.forget([gone["task_id"], _new_id()])  # unknown ids are no error
        await backend.forget([])
        assert await backend.get(gone["task_id"]) is None
        assert await backend.get(kept["task_id"]) == kept
        await backend.store([_started(gone["task_id"])])  # a forgotten id starts afresh
        assert await _status(backend, gone["task_id"]) == states.STARTED


@_check()
async def check_expiry(make: BackendFactory) -> None:
    """After ``expires`` seconds a meta reads as missing (and counts as absent for a new
    state); ``expire()`` deletes the expired metas and says how many (0 for a backend whose
    server expires keys itself and says so with ``expires_itself = True``)."""
    async with _opened(make, expires=0.2) as backend, _opened(make, expires=None) as lasting:
        a, b, c = (celery_meta(_new_id(), states.SUCCESS, n) for n in range(3))
        forever = celery_meta(_new_id(), states.SUCCESS, "kept")
        await backend.store([a, b, c])
        await lasting.store([forever])
        assert await backend.get(a["task_id"]) == a
        await asyncio.sleep(0.35)
        assert await backend.get(a["task_id"]) is None
        assert await backend.get_many([a["task_id"], b["task_id"]]) == {}
        assert await backend.wait(b["task_id"], 0.05) is None
        await backend.store([_started(c["task_id"])])
        assert await _status(backend, c["task_id"]) == states.STARTED
        if getattr(backend, "expires_itself", False):
            assert await backend.expire() == 0  # the server deleted them: nothing left to do
        else:
            assert await backend.expire() >= 2
        assert await backend.expire() == 0
        assert await backend.get(forever["task_id"]) == forever
        assert await lasting.expire() == 0


# -- running ----------------------------------------------------------------------------


async def check_backend(make: BackendFactory, *, shared_between_instances: bool = True) -> None:
    """Run every check against the backends ``make`` builds; raises on the first failure."""
    for name, check in CHECKS.items():
        if name in SHARED_CHECKS and not shared_between_instances:
            continue
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check(make)


def factory_for_url(url: str, **options: Any) -> BackendFactory:
    """A factory of backends for ``url`` (looked up with ``backend_from_url``)."""

    def make(**more: Any) -> ResultBackend:
        backend = backend_from_url(url, **{**options, **more})
        if backend is None:
            raise ValueError(f"{url!r} disables results; the kit needs a backend")
        return backend

    return make


def backend_suite(url: str, *, shared_between_instances: bool = True, **options: Any) -> type:
    """A pytest test class with one test per check, for backends of ``url``.

    ``url`` may hold ``{tmp}`` (the test's ``tmp_path``) and ``{uid}`` (a fresh hex id).
    pytest is imported here, not at module import, so the kit costs nothing elsewhere.
    """
    import pytest

    class BackendSuite:
        @pytest.fixture
        def backend_url(self, tmp_path: Any) -> str:
            return url.format(tmp=tmp_path, uid=uuid.uuid4().hex)

        @pytest.fixture
        def make_backend(self, backend_url: str) -> BackendFactory:
            return factory_for_url(backend_url, **options)

    for name, check in CHECKS.items():
        if name in SHARED_CHECKS and not shared_between_instances:
            continue
        setattr(BackendSuite, f"test_{name}", _as_test(check))
    return BackendSuite


def _as_test(check: Check) -> Callable[[Any, BackendFactory], Awaitable[None]]:
    async def test(self: Any, make_backend: BackendFactory) -> None:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check(make_backend)

    test.__name__ = f"test_{check.__name__.removeprefix('check_')}"
    test.__doc__ = check.__doc__
    return test

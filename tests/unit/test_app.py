"""The app, its tasks and sending, on the in-process memory broker."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import celeriac
from celeriac import Celeriac, Celery, ConfigurationError, NotRegistered, shared_task
from celeriac.protocol import decode_task
from celeriac.task import positional_arity
from celeriac.utils.sync import run_sync


@pytest.fixture
def app(request: pytest.FixtureRequest) -> Any:
    name = f"memory://{request.node.name}"
    app = Celeriac("proj", broker=name, backend=name, set_as_current=False)
    yield app
    app.close()


def fetch_one(app: Celeriac, queue: str = "celery") -> Any:
    async def go() -> Any:
        broker = await app.broker()
        got = await broker.fetch([queue], 1, 1.0)
        assert got, f"nothing in queue {queue!r}"
        await broker.ack(got)
        return got[0]

    return run_sync(go())


def test_celery_is_an_alias() -> None:
    assert Celery is Celeriac


def test_task_names_and_options(app: Celeriac) -> None:
    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(name="custom.name", bind=True, max_retries=7, queue="q1")
    def bound(self: Any, x: int) -> int:
        return x

    assert plain.name == f"{__name__}.test_task_names_and_options.<locals>.plain"
    assert bound.name == "custom.name"
    assert bound.max_retries == 7 and bound.queue == "q1"
    assert app.tasks["custom.name"] is bound
    assert plain(3) == 3 and bound(4) == 4


def test_unknown_task_option_fails_at_decoration(app: Celeriac) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'max_retries'"):
        @app.task(max_retry=3)
        def f() -> None: ...


def test_unknown_send_option_fails(app: Celeriac) -> None:
    @app.task
    def f() -> None: ...

    with pytest.raises(ConfigurationError, match="did you mean 'countdown'"):
        f.apply_async(countdwn=3)


def test_wrong_arguments_fail_on_the_caller_side(app: Celeriac) -> None:
    @app.task
    def f(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="missing a required argument"):
        f.delay()


def _plain(a: Any, b: Any = 1, /, c: Any = 2, *rest: Any, d: Any = 3, **extra: Any) -> None: ...
def _kw_only(a: Any, *, k: Any) -> None: ...
def _optional(a: Any = 1, b: Any = 2) -> None: ...
def _none() -> None: ...
def _bound(self: Any, a: Any, b: Any = 1) -> None: ...
def _bound_var(self: Any, *a: Any) -> None: ...


@pytest.mark.parametrize("fun", [_plain, _kw_only, _optional, _none, _bound, _bound_var])
@pytest.mark.parametrize("bind", [False, True])
def test_the_positional_count_shortcut_agrees_with_signature_bind(fun: Any, bind: bool) -> None:
    sig = inspect.signature(fun)
    arity = positional_arity(sig, bind)
    for n in range(6):
        args = (None,) * n
        try:
            sig.bind(*((None, *args) if bind else args))
            binds = True
        except TypeError:
            binds = False
        if arity is not None:
            assert (arity[0] <= n <= arity[1]) == binds, n


def test_delay_publishes_protocol_v2(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    res = add.delay(2, 3)
    delivery = fetch_one(app)
    msg = decode_task(delivery.envelope, ["json"])
    assert msg.id == res.id and msg.task == add.name
    assert list(msg.args) == [2, 3] and msg.kwargs == {}
    assert msg.root_id == res.id and msg.origin and msg.origin.startswith("gen")
    assert delivery.envelope.properties["correlation_id"] == res.id


def test_countdown_eta_expires_and_priority(app: Celeriac) -> None:
    @app.task
    def f() -> None: ...

    before = datetime.now(UTC)
    f.apply_async(countdown=0.2, expires=60, priority=7)
    delivery = fetch_one(app)
    msg = decode_task(delivery.envelope, ["json"])
    assert msg.eta is not None and msg.eta >= before + timedelta(seconds=0.2)
    assert msg.expires is not None and msg.expires >= before + timedelta(seconds=60)
    assert msg.priority == 7 and delivery.priority == 7


def test_routes_precedence(app: Celeriac) -> None:
    app.conf.task_routes = {"proj.special.*": {"queue": "special"}, "proj.other": "other"}

    @app.task(name="proj.special.one")
    def one() -> None: ...

    @app.task(name="proj.other")
    def other() -> None: ...

    @app.task(name="proj.special.pinned", queue="pinned")
    def pinned() -> None: ...

    one.delay()
    assert fetch_one(app, "special")
    other.delay()
    assert fetch_one(app, "other")
    pinned.delay()
    assert fetch_one(app, "pinned")  # the task's own queue beats task_routes
    one.apply_async(queue="explicit")
    assert fetch_one(app, "explicit")  # apply_async's option beats everything


def test_route_function_and_list(app: Celeriac) -> None:
    def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        return {"queue": "by-function"} if name.endswith("fn") else None

    app.conf.task_routes = [route, {"*": {"queue": "fallback"}}]

    @app.task(name="x.fn")
    def fn() -> None: ...

    @app.task(name="x.other")
    def other() -> None: ...

    fn.delay()
    assert fetch_one(app, "by-function")
    other.delay()
    assert fetch_one(app, "fallback")


def test_send_task_by_name_and_send_many(app: Celeriac) -> None:
    res = app.send_task("remote.only", (1,), {"a": 2})
    msg = decode_task(fetch_one(app).envelope, ["json"])
    assert msg.task == "remote.only" and msg.id == res.id and msg.kwargs == {"a": 2}

    results = app.send_many([app.signature("remote.only", (i,)) for i in range(50)])
    assert len({r.id for r in results}) == 50

    async def size() -> int:
        return await (await app.broker()).queue_size("celery")

    assert run_sync(size()) == 50


def test_eager_mode(app: Celeriac) -> None:
    app.conf.task_always_eager = True

    @app.task(bind=True, max_retries=2, default_retry_delay=100)
    def flaky(self: Any) -> int:
        if self.request.retries < 2:
            raise self.retry()
        return self.request.retries

    @app.task
    def fail() -> None:
        raise ValueError("nope")

    assert flaky.delay().get() == 2
    res = fail.delay()
    assert res.failed()
    with pytest.raises(ValueError):
        res.get()
    app.conf.task_eager_propagates = True
    with pytest.raises(ValueError):
        fail.delay()


def test_apply_runs_async_tasks(app: Celeriac) -> None:
    @app.task
    async def double(x: int) -> int:
        return x * 2

    assert double.apply((21,)).get() == 42


async def test_async_api_round_trip_in_process(app: Celeriac) -> None:
    """adelay / aget with an in-process worker on the memory broker."""
    import asyncio

    from celeriac.pools.aio import AsyncioPool
    from celeriac.worker.loop import Worker

    @app.task
    async def mul(x: int, y: int) -> int:
        return x * y

    worker = Worker(app, AsyncioPool(10))
    running = asyncio.create_task(worker.run(install_signals=False))
    try:
        results = [await mul.adelay(i, 2) for i in range(10)]
        assert [await r.aget(timeout=5) for r in results] == [i * 2 for i in range(10)]
    finally:
        worker.request_stop()
        assert await running == 0
    await app.aclose()


def test_get_task_and_not_registered(app: Celeriac) -> None:
    with pytest.raises(NotRegistered):
        app.get_task("nope")


def test_shared_task_binds_to_every_app() -> None:
    @shared_task(name="shared.ping")
    def ping() -> str:
        return "pong"

    later = Celeriac("later", broker="memory://shared", backend="memory://shared",
                     set_as_current=False)
    assert "shared.ping" in later.tasks
    assert ping() == "pong"


def test_config_from_object_with_namespace(app: Celeriac) -> None:
    class Settings:
        CELERY_TASK_DEFAULT_QUEUE = "django-q"
        CELERY_TASK_ALWAYS_EAGER = False
        DEBUG = True  # not ours: ignored

    app.config_from_object(Settings, namespace="CELERY")
    assert app.conf.task_default_queue == "django-q"
    with pytest.raises(ConfigurationError, match="did you mean"):
        app.conf.update(broker_ulr="sqlite://")


def test_public_names_are_pinned() -> None:
    assert set(celeriac.__all__) == {
        "AsyncResult", "Celeriac", "CeleriacError", "Celery", "ConfigurationError",
        "ContentDisallowed", "DecodeError", "EagerResult", "EncodeError", "GroupResult", "Ignore",
        "ImproperlyConfigured", "MaxRetriesExceededError", "NotRegistered", "Reject",
        "RemoteError", "Retry", "Signature", "SoftTimeLimitExceeded", "Task",
        "TaskRevokedError", "TimeLimitExceeded", "TimeoutError", "WorkerLostError",
        "__version__", "chain", "group", "shared_task", "signature", "states", "subtask",
    }
    for name in celeriac.__all__:
        assert hasattr(celeriac, name)


def test_publish_retries_then_raises_a_clear_error(tmp_path: Any) -> None:
    """A broker that cannot be reached: retried per retry_policy, then one clear error."""
    import time

    from celeriac.errors import BrokerConnectionError

    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the database's directory should be")
    url = f"sqlite:///{blocked}/db.sqlite3"
    app = Celeriac("dead", broker=url, backend="memory://dead", set_as_current=False)

    @app.task
    def f() -> None: ...

    started = time.monotonic()
    with pytest.raises(BrokerConnectionError):
        f.apply_async(retry_policy={"max_retries": 2, "interval_start": 0.05,
                                    "interval_step": 0.05, "interval_max": 0.1})
    assert time.monotonic() - started >= 0.1  # it waited between its attempts
    with pytest.raises(BrokerConnectionError):
        f.apply_async(retry=False)


async def test_worker_stats_count_outcomes() -> None:
    import asyncio

    from celeriac.pools.solo import SoloPool
    from celeriac.worker.loop import Worker

    app = Celeriac("stats", broker="memory://stats", backend="memory://stats",
                   set_as_current=False)

    @app.task
    def ok() -> int:
        return 1

    @app.task
    def bad() -> None:
        raise ValueError("x")

    worker = Worker(app, SoloPool())
    running = asyncio.create_task(worker.run(install_signals=False))
    try:
        await (await ok.adelay()).aget(timeout=5)
        with pytest.raises(ValueError):
            await (await bad.adelay()).aget(timeout=5)
        stats = worker.stats()
        assert stats["processed"] == 2
        assert stats["outcomes"] == {"SUCCESS": 1, "FAILURE": 1}
        assert stats["pool"]["pool"] == "solo"
    finally:
        worker.request_stop()
        await running
    await app.aclose()

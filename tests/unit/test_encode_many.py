"""Batch encoding gives exactly what encoding each call alone gives."""

from __future__ import annotations

from dataclasses import replace

from celeriac import Celeriac
from celeriac.protocol import decode_task, encode_many, encode_task


def test_encode_many_matches_encode_task() -> None:
    app = Celeriac("many", broker="memory://many", backend="memory://many", set_as_current=False)

    @app.task(time_limit=5)
    def f(x: int, y: int = 0) -> int:
        return x + y

    first, _ = app.prepare(f.name, (1,), {"y": 2}, task=f)
    calls = [(f"id-{i}", (i,), {"y": i}) for i in range(5)]
    many = encode_many(replace(first, root_id=None), calls)
    for (task_id, args, kwargs), envelope in zip(calls, many, strict=True):
        alone = encode_task(replace(first, id=task_id, root_id=task_id, correlation_id=task_id,
                                    args=args, kwargs=kwargs))
        assert envelope.headers == alone.headers
        assert list(envelope.headers) == list(alone.headers)
        assert envelope.properties == alone.properties
        assert envelope.body == alone.body
        msg = decode_task(envelope, ["json"])
        assert msg.id == task_id and msg.root_id == task_id and msg.kwargs == kwargs


def test_send_many_mixes_fast_and_optioned_calls() -> None:
    from celeriac.utils.sync import run_sync

    app = Celeriac("mix", broker="memory://mix", backend="memory://mix", set_as_current=False)

    @app.task
    def f(x: int) -> int:
        return x

    sigs = [f.s(0), f.s(1), f.s(2).set(queue="other"), f.s(3), f.s(4)]
    results = app.send_many(sigs)
    assert len({r.id for r in results}) == 5

    async def drain(queue: str) -> list[int]:
        broker = await app.broker()
        got = await broker.fetch([queue], 10, 0.5)
        return [decode_task(d.envelope, ["json"]).args[0] for d in got]

    assert run_sync(drain("celery")) == [0, 1, 3, 4]
    assert run_sync(drain("other")) == [2]
    app.close()


def test_task_s_builds_the_same_signature_as_the_constructor() -> None:
    from celeriac.canvas import Signature

    app = Celeriac("sig", broker="memory://sig", backend="memory://sig", set_as_current=False)

    @app.task
    def f(x: int, y: int = 0) -> int:
        return x + y

    for fast, slow in [
        (f.s(1), Signature(f.name, (1,), None, None, app=app)),
        (f.s(1, y=2), Signature(f.name, [1], {"y": 2}, {}, app=app)),
        (f.s(), Signature(f.name, app=app)),
        (f.signature([1]), Signature(f.name, [1], app=app)),
    ]:
        assert type(fast) is Signature
        assert fast == slow and list(fast.items()) == list(slow.items())
        assert fast._app is slow._app
    args = [1]
    sig = f.signature(args)
    assert sig["args"] is not args  # a copy, as the constructor makes
    assert f.si(1)["immutable"] is True and f.s(1).set(queue="q")["options"] == {"queue": "q"}


def test_every_call_of_a_run_has_celerys_argsrepr() -> None:
    """A tuple's repr, as Celery writes it, for the run's first call and for the others."""
    app = Celeriac("repr", broker="memory://repr", backend="memory://repr", set_as_current=False)

    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    _, outgoing = app._prepare_many([add.s(1), add.s(2), add.s(3, y=4)])
    assert [o.envelope.headers["argsrepr"] for o in outgoing] == ["(1,)", "(2,)", "(3,)"]
    assert [o.envelope.headers["kwargsrepr"] for o in outgoing] == ["{}", "{}", "{'y': 4}"]

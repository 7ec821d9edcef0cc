"""Batch runs on Redis: entries spliced from a run's template parse to exactly what the
general path (``kombu_envelope.dumps`` per message) writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from celeriac import Celeriac
from celeriac.brokers.redis import RedisBroker
from celeriac.message import Outgoing
from celeriac.protocol import kombu_envelope


def _entries(ops: list[tuple[Any, ...]]) -> list[bytes]:
    found: list[bytes] = []
    for op in ops:
        if op[0] == "LPUSH":
            found += op[2:]
        elif op[0] == "ZADD":
            member = op[3]
            size, _, rest = member.partition(b":")
            found.append(rest[int(size):])
    return found


def _by_id(raws: list[bytes]) -> dict[str, dict[str, Any]]:
    parsed = {}
    for raw in raws:
        entry = orjson.loads(raw)
        tag = entry["properties"].pop("delivery_tag")
        assert uuid.UUID(tag).version == 4
        parsed[entry["headers"]["id"]] = entry
    return parsed


def _app(**conf: Any) -> Celeriac:
    app = Celeriac("batch", broker="memory://batch", backend="memory://batch",
                   set_as_current=False)
    for key, value in conf.items():
        setattr(app.conf, key, value)
    return app


def _check(broker: RedisBroker, outgoing: list[Outgoing]) -> None:
    spliced = _entries(broker._publish_ops(outgoing))
    general = [broker._entry(out)[1] for out in outgoing]  # no run cache: the general path
    assert len(spliced) == len(general) == len(outgoing)
    tags = [orjson.loads(raw)["properties"]["delivery_tag"] for raw in spliced]
    assert len(set(tags)) == len(tags)
    assert _by_id(spliced) == _by_id(general)


ODD_ARGS: list[tuple[Any, ...]] = [
    (1,), ("x\"y\\z%s%%",), ("héllo ☃ \u2028",), (uuid.uuid4(),),
    (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),), (Decimal("1.5"),), ([1, {"a": None}],),
    ("a" * 3000,), (),
]


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("conf", [
    {}, {"task_serializer": "msgpack"}, {"task_compression": "zlib"},
])
def test_spliced_entries_parse_as_the_general_path(compact: bool, conf: dict[str, Any]) -> None:
    app = _app(**conf)

    @app.task
    def f(*args: Any, **kwargs: Any) -> None:
        return None

    @app.task(queue="other", priority=5, routing_key="rk", time_limit=3, expires=60)
    def g(*args: Any, **kwargs: Any) -> None:
        return None

    if conf.get("task_serializer") == "msgpack":  # plain values only
        odd: list[tuple[Any, ...]] = [(1,), ("x\"y%",), ("héllo",), ()]
    else:
        odd = ODD_ARGS
    sigs = [f.s(*args) for args in odd]
    msgpack = conf.get("task_serializer") == "msgpack"
    sigs += [f.s(i, key=str(i), when=i if msgpack else Decimal(i)) for i in range(3)]
    sigs += [g.s(i) for i in range(4)]
    sigs += [f.s(1).set(link=g.s(2), priority=9), f.s(2), f.s(3).set(countdown=30), f.s(4)]
    _, outgoing = app._prepare_many(sigs)
    assert sum(out.envelope.run is not None for out in outgoing) > len(sigs) // 2
    broker = RedisBroker("redis://localhost:1/0", compact_envelope=compact)
    _check(broker, outgoing)
    app.close()


def test_exact_envelope_is_byte_for_byte_kombus() -> None:
    app = _app()

    @app.task
    def f(x: Any) -> None:
        return None

    _, outgoing = app._prepare_many([f.s(x) for x in ("a", "é\"%", 3, None)])
    for out in outgoing[1:]:
        splicer = kombu_envelope.EntrySplicer.make(out.envelope, "", "celery")
        assert splicer is not None
        assert splicer.entry(out.envelope, "tag") == kombu_envelope.dumps(
            out.envelope, "", "celery", "tag")
    app.close()


def test_an_envelope_changed_after_encoding_takes_the_general_path() -> None:
    app = _app()

    @app.task
    def f(x: Any) -> None:
        return None

    _, outgoing = app._prepare_many([f.s(i) for i in range(3)])
    outgoing[2].envelope.headers["extra"] = "added"
    del outgoing[1].envelope.properties["correlation_id"]
    outgoing[1].envelope.properties["other"] = 1
    broker = RedisBroker("redis://localhost:1/0")
    _check(broker, outgoing)
    raws = _entries(broker._publish_ops(outgoing))
    assert any(orjson.loads(raw)["headers"].get("extra") == "added" for raw in raws)
    app.close()

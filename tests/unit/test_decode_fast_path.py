"""The decoder's fast paths give exactly what the field-by-field checks give.

``decode_v2`` takes a short path for the usual message and falls back to the full checks for
anything else; TaskMessage, Envelope and Delivery have positional builders. Each is compared
here with the slow path: on every Celery capture, on messages with every optional field set,
and on broken messages (the same error, word for word).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from celeriac.errors import DecodeError
from celeriac.message import (
    Delivery,
    Envelope,
    Outgoing,
    TaskMessage,
    build_delivery,
    build_envelope,
    build_outgoing,
    build_task_message,
    plain_task_message,
)
from celeriac.protocol import decode_task, encode_task
from celeriac.protocol.v2 import _decode_v2_checked, decode_v2
from tests.unit.test_protocol_fixtures import CASES, _ids

ACCEPT = ["json", "msgpack"]


def _checked(envelope: Envelope) -> TaskMessage:
    """decode_task with the full checks of protocol 2 (what the fast path must match)."""
    from celeriac.serializers import decompress, loads

    body = envelope.body
    if envelope.headers.get("compression"):
        body = decompress(body, envelope.headers["compression"])
    payload = loads(body, envelope.content_type, envelope.content_encoding, ACCEPT)
    return _decode_v2_checked(envelope.headers, payload, envelope.properties,
                              envelope.content_type, envelope.content_encoding)


def _full() -> TaskMessage:
    return TaskMessage(
        id="id-1", task="proj.add", args=[1, "x"], kwargs={"k": [1, 2]}, root_id="root",
        parent_id="parent", group="g", group_index=3, shadow="shadow",
        eta=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        expires=datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC), retries=2, timelimit=(10, 5.5),
        argsrepr="(1, 'x')", kwargsrepr="{'k': [1, 2]}", origin="gen1@host",
        ignore_result=True, replaced_task_nesting=1, stamped_headers=["s"], stamps={"s": 1},
        extra_headers={"custom": {"a": 1}}, callbacks=[{"task": "cb"}],
        errbacks=[{"task": "eb"}], chain=[{"task": "next"}], chord={"task": "body"},
        reply_to="reply", correlation_id="id-1", priority=7, delivery_mode=1,
    )


def test_builders_equal_the_constructors() -> None:
    msg = _full()
    fields = [getattr(msg, f.name) for f in dataclasses.fields(TaskMessage)]
    built = build_task_message(*fields)
    assert type(built) is TaskMessage and built == msg
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.id = "other"  # type: ignore[misc]
    env = build_envelope(b"x", "application/json", "utf-8", {"h": 1}, {"p": 2})
    assert env == Envelope(b"x", "application/json", "utf-8", {"h": 1}, {"p": 2})
    assert build_delivery(env, "q", 5, 2, 3) == Delivery(env, "q", 5, 2, 3)
    assert build_outgoing("q", env, 3, 1.5, "ex", "rk") == Outgoing("q", env, 3, 1.5, "ex", "rk")


def test_plain_task_message_is_the_keyword_constructor_with_defaults() -> None:
    built = plain_task_message("id-1", "proj.add", (1,), {"k": 2}, None, (10, None),
                               "gen1@host", True, "reply", 3)
    assert built == TaskMessage(
        id="id-1", task="proj.add", args=(1,), kwargs={"k": 2}, root_id="id-1",
        timelimit=(10, None), origin="gen1@host", ignore_result=True, reply_to="reply",
        correlation_id="id-1", priority=3,
    )
    other = plain_task_message("id-2", "t", (), {}, None, (None, None), "o", False, "r", 0)
    assert built.stamps is not other.stamps and built.extra_headers is not other.extra_headers


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_fast_path_matches_the_checks_on_celery_captures(case: Any) -> None:
    assert decode_task(case.envelope, ACCEPT) == _checked(case.envelope)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_fast_path_matches_the_checks_with_every_field_set(serializer: str) -> None:
    for msg in (_full(), TaskMessage(id="a", task="t"),
                dataclasses.replace(_full(), callbacks=None, errbacks=None, chain=None,
                                    chord=None)):
        env = encode_task(msg, serializer)
        back = decode_task(env, ACCEPT)
        assert back == _checked(env)
        assert (back.id, back.eta, back.expires, back.timelimit, back.callbacks, back.stamps,
                back.extra_headers, back.priority) == (msg.id, msg.eta, msg.expires,
                                                       msg.timelimit, msg.callbacks, msg.stamps,
                                                       msg.extra_headers, msg.priority)


def _variants() -> list[tuple[str, Any]]:
    """(what is changed, how): headers or properties with a wrong or unusual type."""
    return [
        ("id", 5), ("id", ""), ("task", None), ("root_id", 1), ("group", ["g"]),
        ("group_index", "1"), ("group_index", True), ("retries", 1.5), ("retries", None),
        ("timelimit", [1]), ("timelimit", [True, None]), ("timelimit", (1, 2)),
        ("timelimit", ["1", None]), ("timelimit", None), ("eta", "not a time"), ("eta", 5),
        ("expires", "2030-01-01T00:00:00"), ("stamped_headers", "s"), ("stamps", []),
        ("stamps", None), ("ignore_result", 1), ("ignore_result", None),
        ("replaced_task_nesting", "0"), ("compression", None), ("custom", object()),
        ("origin", b"x"), ("argsrepr", 3),
    ]


@pytest.mark.parametrize(("key", "value"), _variants(), ids=lambda v: repr(v)[:30])
def test_unusual_headers_give_what_the_checks_give(key: str, value: Any) -> None:
    env = encode_task(TaskMessage(id="a", task="t", args=[1]))
    headers = {**env.headers, key: value}
    payload = [[1], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    _same(headers, payload, env.properties)


@pytest.mark.parametrize(("key", "value"), [
    ("priority", "1"), ("priority", None), ("delivery_mode", 1.0), ("delivery_mode", 0),
    ("reply_to", 5), ("correlation_id", 7), ("correlation_id", None),
])
def test_unusual_properties_give_what_the_checks_give(key: str, value: Any) -> None:
    env = encode_task(TaskMessage(id="a", task="t"))
    _same(env.headers, [[], {}, None], {**env.properties, key: value})


@pytest.mark.parametrize("payload", [
    [[], {}], [(), {}, None], [[], [], None], ["x", {}, None], [[], {}, []],
    [[], {}, {"callbacks": "x"}], [[], {}, {"chain": [{"task": "x"}]}],
    [[], {}, {"chord": []}], {"args": []}, None,
])
def test_unusual_bodies_give_what_the_checks_give(payload: Any) -> None:
    env = encode_task(TaskMessage(id="a", task="t"))
    _same(env.headers, payload, env.properties)


def _same(headers: dict[str, Any], payload: Any, properties: dict[str, Any]) -> None:
    def run(decode: Any) -> Any:
        try:
            return decode(headers, payload, properties, "application/json", "utf-8")
        except DecodeError as exc:
            return f"DecodeError: {exc}"

    assert run(decode_v2) == run(_decode_v2_checked)

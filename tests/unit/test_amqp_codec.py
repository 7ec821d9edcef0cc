"""The AMQP broker's own frame codec gives exactly what pamqp gives, byte for byte and field by
field, and leaves to pamqp what it does not take (so pamqp's errors stay)."""

from __future__ import annotations

import datetime
import decimal
import random
import struct
from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp import frame as pamqp_frame
from pamqp.body import ContentBody
from pamqp.exceptions import UnmarshalingException
from pamqp.header import ContentHeader

from celeriac.brokers import _amqp_codec as codec
from celeriac.brokers import amqp  # noqa: F401  (applies the float patch the codec mirrors)

CELERY_HEADERS: dict[str, Any] = {
    "lang": "py", "task": "proj.tasks.add", "id": "0f8c8a7e-6a43-4a51-9b0e-5d4d5a0e3c11",
    "root_id": "0f8c8a7e-6a43-4a51-9b0e-5d4d5a0e3c11", "parent_id": None, "group": None,
    "retries": 0, "timelimit": [None, None], "argsrepr": "(2, 2)", "kwargsrepr": "{}",
    "origin": "gen123@host", "ignore_result": False, "stamps": {}, "eta": None,
    "x-celeriac-not-before": 1712345678.125,
}

TABLES: list[dict[str, Any]] = [
    {},
    CELERY_HEADERS,
    {"ints": [0, -1, 127, 128, -128, -129, 32767, 32768, 65535, 65536, -32769, 2**31 - 1, 2**31,
              2**32 - 1, 2**32, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63)]},
    {"nested": {"a": {"b": [1, "two", 3.5, None, True, False, {"c": []}]}}, "empty": {}},
    {"unicode": "ünïcødé ✓", "ключ": "значение", "long": "x" * 70_000},
    {"decimal": decimal.Decimal("3.14"), "bytes": bytearray(b"\x00\x01"),
     "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)},
    {"x-death": [{"count": 1, "reason": "expired", "queue": "q",
                  "time": datetime.datetime(2024, 5, 6, tzinfo=datetime.UTC),
                  "routing-keys": ["a", "b"]}]},
]


def properties(headers: dict[str, Any] | None, **kw: Any) -> spec.Basic.Properties:
    return spec.Basic.Properties(headers=headers, **kw)


PROPERTY_SETS: list[spec.Basic.Properties] = [
    spec.Basic.Properties(),
    spec.Basic.Properties(delivery_mode=1),
    *[properties(t, content_type="application/json", content_encoding="utf-8", delivery_mode=2,
                 priority=0, correlation_id="cid", reply_to="r") for t in TABLES],
    spec.Basic.Properties(content_type="text/plain", headers={}, delivery_mode=2, priority=9,
                          correlation_id="c" * 255, reply_to="amq.rabbitmq.reply-to",
                          expiration="60000", message_id="m1",
                          timestamp=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
                          message_type="t", user_id="guest", app_id="celeriac"),
]


def same_fields(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    for name in getattr(type(a), "__slots__", ()):
        assert getattr(a, name) == getattr(b, name), name
        assert type(getattr(a, name)) is type(getattr(b, name)), name


@pytest.mark.parametrize("props", PROPERTY_SETS)
def test_properties_encode_like_pamqp(props: spec.Basic.Properties) -> None:
    assert codec.encode_properties(props) == props.marshal()


@pytest.mark.parametrize("props", PROPERTY_SETS)
def test_content_header_decodes_like_pamqp(props: spec.Basic.Properties) -> None:
    data = pamqp_frame.marshal(ContentHeader(0, 1234, props), 3)
    mine, theirs = codec.unmarshal(data), pamqp_frame.unmarshal(data)
    assert mine[:2] == theirs[:2] == (len(data), 3)
    header, expected = mine[2], theirs[2]
    assert isinstance(header, ContentHeader) and isinstance(expected, ContentHeader)
    assert (header.class_id, header.weight, header.body_size) == \
        (expected.class_id, expected.weight, expected.body_size)
    same_fields(header.properties, expected.properties)
    assert header.properties.headers == (props.headers if props.headers else expected.properties.headers)


@pytest.mark.parametrize("frame", [
    spec.Basic.Deliver("ctag-1", 1, False, "", "celery"),
    spec.Basic.Deliver("amq.ctag-xyz", 2**40 + 5, True, "celeriac.delay.out", "q" * 255),
    spec.Basic.Ack(7, False), spec.Basic.Ack(2**33, True),
    spec.Basic.Nack(9, True, True), spec.Basic.GetOk(5, True, "", "q", 3),
    spec.Basic.Return(312, "NO_ROUTE", "", "nowhere"), spec.Channel.CloseOk(),
])
def test_method_frames_decode_like_pamqp(frame: Any) -> None:
    data = pamqp_frame.marshal(frame, 1)
    mine, theirs = codec.unmarshal(data), pamqp_frame.unmarshal(data)
    assert mine[:2] == theirs[:2]
    same_fields(mine[2], theirs[2])


@pytest.mark.parametrize("body", [b"", b"x", b"[[2, 2], {}, {}]", bytes(range(256)) * 1000])
def test_body_and_publish_frames_like_aiormq(body: bytes) -> None:
    props = PROPERTY_SETS[3]
    max_content = 4096 - 8
    frames: list[Any] = [spec.Basic.Publish(exchange="ex", routing_key="key", mandatory=True),
                         ContentHeader(properties=props, body_size=len(body))]
    frames += [ContentBody(body[i:i + max_content]) for i in range(0, len(body), max_content)]
    expected = ChannelFrame.marshall(channel_number=2, frames=frames).payload
    assert codec.publish_frames(2, "ex", "key", True, props, body, max_content) == expected
    pos = 0
    while pos < len(expected):  # and every frame of it decodes like pamqp's
        end = pos + 8 + struct.unpack_from(">I", expected, pos + 3)[0]
        mine, theirs = codec.unmarshal(expected[pos:end]), pamqp_frame.unmarshal(expected[pos:end])
        assert mine[:2] == theirs[:2]
        if isinstance(theirs[2], ContentBody):
            assert isinstance(mine[2], ContentBody) and mine[2].value == theirs[2].value
        elif not isinstance(theirs[2], ContentHeader):
            same_fields(mine[2], theirs[2])
        pos = end


def test_ack_and_nack_frames_like_pamqp() -> None:
    for tag in (1, 255, 2**32 + 1):
        for multiple in (False, True):
            assert codec.ack_frame(4, tag, multiple) == \
                pamqp_frame.marshal(spec.Basic.Ack(tag, multiple), 4)
            for requeue in (False, True):
                assert codec.ack_frame(4, tag, multiple, requeue=requeue) == \
                    pamqp_frame.marshal(spec.Basic.Nack(tag, multiple, requeue), 4)


def test_random_tables_round_trip_like_pamqp() -> None:
    rnd = random.Random(5)

    def value(depth: int) -> Any:
        pick = rnd.randrange(9 if depth < 3 else 6)
        if pick == 0:
            return rnd.choice(["", "a", "héllo", "x" * rnd.randrange(300)])
        if pick == 1:
            return rnd.randint(-(2**63), 2**63 - 1) >> rnd.randrange(64)
        if pick == 2:
            return rnd.random() * 10 ** rnd.randrange(-5, 12)
        if pick == 3:
            return rnd.choice([True, False, None])
        if pick == 4:
            return rnd.randrange(-300, 70_000)
        if pick == 5:
            return rnd.choice([decimal.Decimal("1.5"), bytearray(b"ab")])
        if pick in (6, 7):
            return {f"k{i}": value(depth + 1) for i in range(rnd.randrange(5))}
        return [value(depth + 1) for _ in range(rnd.randrange(5))]

    for _ in range(300):
        props = spec.Basic.Properties(headers={f"h{i}": value(0) for i in range(rnd.randrange(8))},
                                      delivery_mode=rnd.choice([None, 1, 2]),
                                      correlation_id=rnd.choice([None, "", "c"]))
        data = codec.encode_properties(props)
        assert data == props.marshal()
        frame = pamqp_frame.marshal(ContentHeader(0, 5, props), 1)
        same_fields(codec.unmarshal(frame)[2].properties, pamqp_frame.unmarshal(frame)[2].properties)


def test_malformed_frames_fail_as_in_pamqp() -> None:
    good = pamqp_frame.marshal(ContentHeader(0, 5, PROPERTY_SETS[3]), 1)
    bad_end = good[:-1] + b"\x00"
    with pytest.raises(UnmarshalingException):
        pamqp_frame.unmarshal(bad_end)
    with pytest.raises(UnmarshalingException):
        codec.unmarshal(bad_end)
    # a table whose length runs past the frame
    cut = bytearray(good)
    start = 7 + 12 + 2 + 1 + len("application/json") + 1 + len("utf-8")
    struct.pack_into(">I", cut, start, 10_000)
    with pytest.raises(UnmarshalingException):
        pamqp_frame.unmarshal(bytes(cut))
    with pytest.raises(UnmarshalingException):
        codec.unmarshal(bytes(cut))


def test_values_pamqp_refuses_are_refused() -> None:
    for headers in ({"big": 2**64}, {"obj": object()}):
        props = spec.Basic.Properties(headers=headers)
        with pytest.raises(TypeError):
            props.marshal()
        with pytest.raises(TypeError):
            codec.encode_properties(props)

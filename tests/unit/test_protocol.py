"""Protocol 2 encode/decode, protocol 1 decode, and decoding hostile input."""

from __future__ import annotations

import json
import pickle
import random
import time
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import pytest

from celeriac.errors import ConfigurationError, ContentDisallowed, DecodeError, ProtocolError
from celeriac.message import Envelope, TaskMessage
from celeriac.protocol import decode_task, encode_task, kombu_envelope, safe_repr
from celeriac.serializers import EncodeError

ACCEPT = ("json", "msgpack")
HEADER_ORDER = [
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps",
]


def make(**kw: Any) -> TaskMessage:
    base: dict[str, Any] = {"id": "id-1", "task": "proj.add", "args": (2, 3), "kwargs": {"z": 4}}
    base.update(kw)
    return TaskMessage(**base)


def v2_envelope(headers: dict[str, Any] | None = None, body: Any = None, **props: Any) -> Envelope:
    h = {"lang": "py", "task": "t", "id": "i"}
    h.update(headers or {})
    payload = [[], {}, {}] if body is None else body
    return Envelope(json.dumps(payload).encode(), headers=h, properties=props)


# -- encode ------------------------------------------------------------------------------


def test_encode_defaults_follow_celery() -> None:
    env = encode_task(make(reply_to="oid"))
    assert list(env.headers) == HEADER_ORDER
    h = env.headers
    assert h["lang"] == "py"
    assert h["root_id"] == "id-1"  # Celery: an empty root_id is the task id
    assert h["argsrepr"] == "(2, 3)"
    assert h["kwargsrepr"] == "{'z': 4}"
    assert h["timelimit"] == [None, None]
    assert h["origin"].startswith("gen") and "@" in h["origin"]
    assert h["stamps"] == {} and h["stamped_headers"] is None
    assert env.properties == {
        "correlation_id": "id-1", "reply_to": "oid", "delivery_mode": 2, "priority": 0,
    }
    assert (env.content_type, env.content_encoding) == ("application/json", "utf-8")
    assert json.loads(env.body) == [
        [2, 3], {"z": 4}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


def test_encode_reply_to_defaults_to_empty_string_like_celery() -> None:
    assert encode_task(make()).properties["reply_to"] == ""


def test_encode_extra_headers_are_flat_after_the_protocol_ones_then_compression() -> None:
    env = encode_task(make(extra_headers={"x-custom": "hello", "b": 1}), compression="zlib")
    assert list(env.headers)[len(HEADER_ORDER):] == ["x-custom", "b", "compression"]
    assert env.headers["compression"] == "application/x-gzip"
    assert json.loads(zlib.decompress(env.body))[0] == [2, 3]
    assert "compression" not in encode_task(make()).headers


def test_encode_times_are_utc_iso8601() -> None:
    plus2 = timezone(timedelta(hours=2))
    env = encode_task(
        make(eta=datetime(2030, 1, 2, 5, 4, 5, tzinfo=plus2), expires=datetime(2030, 1, 3, 1, 2))
    )
    assert env.headers["eta"] == "2030-01-02T03:04:05+00:00"
    assert env.headers["expires"] == "2030-01-03T01:02:00+00:00"  # naive means UTC
    micro = encode_task(make(eta=datetime(2030, 1, 2, 3, 4, 5, 123, tzinfo=UTC)))
    assert micro.headers["eta"] == "2030-01-02T03:04:05.000123+00:00"


def test_encode_expiration_property_is_the_ttl_in_ms() -> None:
    soon = datetime.fromtimestamp(time.time() + 600, UTC)
    props = encode_task(make(expires=soon)).properties
    assert list(props) == ["correlation_id", "reply_to", "delivery_mode", "expiration", "priority"]
    assert 595_000 <= int(props["expiration"]) <= 600_000
    past = datetime(2000, 1, 1, tzinfo=UTC)
    assert encode_task(make(expires=past)).properties["expiration"] == "0"


def test_encode_all_fields() -> None:
    sig = {"task": "x", "args": [], "kwargs": {}, "options": {}, "subtask_type": None,
           "immutable": False}
    msg = make(
        root_id="r", parent_id="p", group="g", group_index=2, shadow="s", retries=4,
        timelimit=(60, 50.5), argsrepr="A", kwargsrepr="K", origin="o@h", ignore_result=True,
        replaced_task_nesting=1, stamped_headers=["a"], stamps={"a": 1}, callbacks=[sig],
        errbacks=[sig], chain=[sig, sig], chord=sig, reply_to="rt", correlation_id="c",
        priority=7, delivery_mode=1,
    )
    env = encode_task(msg, "msgpack")
    h = env.headers
    assert [h[k] for k in HEADER_ORDER] == [
        "py", "proj.add", "id-1", "s", None, None, "g", 2, 4, [60, 50.5], "r", "p", "A", "K",
        "o@h", True, 1, ["a"], {"a": 1},
    ]
    assert env.properties == {"correlation_id": "c", "reply_to": "rt", "delivery_mode": 1,
                              "priority": 7}
    assert env.content_type == "application/x-msgpack"
    assert msgpack.unpackb(env.body) == [[2, 3], {"z": 4}, {
        "callbacks": [sig], "errbacks": [sig], "chain": [sig, sig], "chord": sig}]
    back = decode_task(env, ACCEPT)
    assert back == replace(msg, args=[2, 3], content_type="application/x-msgpack",
                           content_encoding="binary")


def test_encode_rejects_bad_args_and_unknown_options() -> None:
    with pytest.raises(EncodeError, match="args"):
        encode_task(make(args="abc"))
    with pytest.raises(EncodeError, match="kwargs"):
        encode_task(make(kwargs=[1]))
    with pytest.raises(ConfigurationError, match="json"):
        encode_task(make(), "bson")
    with pytest.raises(ConfigurationError, match="zlib"):
        encode_task(make(), compression="snappy")
    with pytest.raises(EncodeError, match="bytes"):
        encode_task(make(args=(b"raw",)))


def test_safe_repr_truncates_like_celery() -> None:
    assert safe_repr((2, 3)) == "(2, 3)"
    long = safe_repr(tuple(range(10_000)))
    assert len(long) == 1024 and long.endswith("...") and long.startswith("(0, 1, 2")
    assert len(safe_repr({i: "x" * 10 for i in range(5000)})) == 1024
    assert safe_repr("y" * 5000) == repr("y" * 1021)[:1021] + "..."

    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert "unrepresentable" in safe_repr(Bad())
    env = encode_task(make(args=tuple(range(10_000))))
    assert len(env.headers["argsrepr"]) == 1024


# -- round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
@pytest.mark.parametrize("compression", [None, "zlib", "bzip2"])
def test_roundtrip(serializer: str, compression: str | None) -> None:
    msg = make(
        args=[1, "two", [3.5, None]], kwargs={"k": {"n": True}}, eta=datetime(2030, 1, 1, tzinfo=UTC),
        expires=datetime(2031, 1, 1, 0, 0, 0, 5, tzinfo=UTC), retries=2, timelimit=(None, 9),
        group="g", group_index=0, extra_headers={"x": [1]}, priority=3, reply_to="r",
        argsrepr="a", kwargsrepr="k", origin="o", root_id="root",
    )
    env = encode_task(msg, serializer, compression)
    back = decode_task(env, [serializer])
    assert back.args == [1, "two", [3.5, None]]
    assert back.kwargs == msg.kwargs
    assert (back.eta, back.expires, back.retries, back.timelimit) == (
        msg.eta, msg.expires, 2, (None, 9))
    assert back.extra_headers == {"x": [1]}
    assert (back.group, back.group_index, back.priority, back.reply_to) == ("g", 0, 3, "r")
    assert back.correlation_id == msg.id
    assert back.compression == (None if compression is None else env.headers["compression"])
    again = encode_task(back, serializer, back.compression)
    assert {k: v for k, v in again.headers.items()} == env.headers
    assert list(again.headers) == list(env.headers)


# -- decode errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, {"x": 1}, "not a task message"),
        ({}, [[], {}, {}], "not a task message"),
        ({"id": None}, None, "missing header 'id'"),
        ({"id": ""}, None, "header 'id' must be a non-empty string"),
        ({"id": 5}, None, "header 'id' must be a non-empty string"),
        ({"task": ""}, None, "header 'task'"),
        ({"task": None}, None, "header 'task'"),
        (None, [[], {}], "2 items"),
        (None, [[], {}, {}, {}], "4 items"),
        (None, {"a": 1}, "must be a list [args, kwargs, embed]"),
        (None, "[[], {}, {}]", "must be a list"),
        (None, [{}, {}, {}], "args must be a list"),
        (None, [[], [], {}], "kwargs must be a dict"),
        (None, [[], {}, []], "embed must be a dict"),
        (None, [[], {}, {"callbacks": {}}], "embed 'callbacks'"),
        (None, [[], {}, {"errbacks": [1]}], "embed 'errbacks'"),
        (None, [[], {}, {"chain": "x"}], "embed 'chain'"),
        (None, [[], {}, {"chord": []}], "embed 'chord'"),
        ({"eta": "tomorrow"}, None, "header 'eta' is not an ISO-8601 time"),
        ({"eta": 12}, None, "header 'eta' must be an ISO-8601 string"),
        ({"expires": "2030-13-01"}, None, "header 'expires'"),
        ({"retries": "3"}, None, "header 'retries' must be an integer"),
        ({"retries": True}, None, "header 'retries'"),
        ({"group_index": 1.5}, None, "header 'group_index'"),
        ({"timelimit": [1]}, None, "header 'timelimit' must be [hard, soft]"),
        ({"timelimit": 5}, None, "header 'timelimit'"),
        ({"timelimit": ["a", None]}, None, "header 'timelimit' must hold numbers"),
        ({"root_id": 1}, None, "header 'root_id' must be a string"),
        ({"stamps": []}, None, "header 'stamps'"),
        ({"stamped_headers": "a"}, None, "header 'stamped_headers'"),
        ({"ignore_result": "yes"}, None, "header 'ignore_result'"),
        ({"compression": "application/x-snappy"}, None, "unknown compression"),
        ({"compression": "application/x-gzip"}, None, "corrupt"),
    ],
)
def test_decode_errors_have_precise_reasons(headers: Any, body: Any, reason: str) -> None:
    env = v2_envelope(headers, body)
    if headers == {}:
        env = Envelope(env.body, headers={})
    with pytest.raises(DecodeError) as info:
        decode_task(env, ACCEPT)
    assert reason in str(info.value)


def test_decode_property_errors() -> None:
    for props, reason in [
        ({"priority": "high"}, "property 'priority'"),
        ({"delivery_mode": 2.0}, "property 'delivery_mode'"),
        ({"reply_to": 1}, "property 'reply_to'"),
        ({"correlation_id": ["x"]}, "property 'correlation_id'"),
    ]:
        with pytest.raises(DecodeError, match=reason):
            decode_task(v2_envelope(**props), ACCEPT)


def test_decode_respects_accept() -> None:
    env = encode_task(make(), "msgpack")
    with pytest.raises(ContentDisallowed):
        decode_task(env, ["json"])
    assert decode_task(env, ["application/x-msgpack"]).args == [2, 3]
    pickled = Envelope(pickle.dumps(([1], {}, {})), "application/x-python-serialize", "binary",
                       {"task": "t", "id": "i"})
    with pytest.raises(ContentDisallowed):
        decode_task(pickled, ACCEPT)
    assert decode_task(pickled, ["pickle"]).args == [1]


def test_decode_keeps_unknown_headers_and_tolerates_nulls() -> None:
    env = v2_envelope({"x-a": 1, "meth": None, "retries": None, "stamps": None,
                       "replaced_task_nesting": None, "ignore_result": None,
                       "eta": "2030-01-02T03:04:05Z", "expires": "2030-01-02T03:04:05"})
    msg = decode_task(env, ACCEPT)
    assert msg.extra_headers == {"x-a": 1, "meth": None}
    assert (msg.retries, msg.stamps, msg.replaced_task_nesting, msg.ignore_result) == (
        0, {}, 0, False)
    assert msg.eta == msg.expires == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (msg.priority, msg.delivery_mode, msg.reply_to) == (0, 2, None)


def test_decode_null_embed_is_empty() -> None:
    msg = decode_task(v2_envelope(body=[[1], {}, None]), ACCEPT)
    assert msg.args == [1] and msg.callbacks is None and msg.chord is None


# -- protocol 1 --------------------------------------------------------------------------


def v1(body: dict[str, Any], headers: dict[str, Any] | None = None) -> Envelope:
    return Envelope(json.dumps(body).encode(), headers=headers or {},
                    properties={"correlation_id": body.get("id"), "reply_to": "r",
                                "delivery_mode": 2, "priority": 4})


def test_decode_protocol_1() -> None:
    sig = {"task": "cb", "args": [], "kwargs": {}, "options": {}}
    body = {
        "task": "proj.add", "id": "v1-id", "args": [1, 2], "kwargs": {"a": 1},
        "eta": "2030-01-02T03:04:05", "expires": None, "retries": 2, "utc": True,
        "callbacks": [sig], "errbacks": None, "taskset": "ts", "chord": sig,
        "timelimit": [10, 5],
    }
    msg = decode_task(v1(body, {"x-h": 1}), ACCEPT)
    assert (msg.task, msg.id, msg.args, msg.kwargs) == ("proj.add", "v1-id", [1, 2], {"a": 1})
    assert msg.eta == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert (msg.retries, msg.group, msg.timelimit) == (2, "ts", (10, 5))
    assert msg.callbacks == [sig] and msg.chord == sig and msg.chain is None
    assert msg.extra_headers == {"x-h": 1}
    assert (msg.priority, msg.reply_to, msg.correlation_id) == (4, "r", "v1-id")
    # and it re-encodes as protocol 2
    env = encode_task(msg)
    assert env.headers["task"] == "proj.add" and env.headers["group"] == "ts"
    assert decode_task(env, ACCEPT).args == [1, 2]


def test_decode_protocol_1_local_time_and_group() -> None:
    body = {"task": "t", "id": "i", "args": [], "kwargs": {}, "eta": "2030-01-02T03:04:05",
            "utc": False, "group": "g"}
    msg = decode_task(v1(body), ACCEPT)
    assert msg.eta is not None and msg.eta.tzinfo is not None
    assert msg.eta.replace(tzinfo=None) == datetime(2030, 1, 2, 3, 4, 5)
    assert msg.group == "g"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"task": "t", "id": "i", "args": {}, "kwargs": {}}, "args must be a list"),
        ({"task": "t", "id": "i", "args": [], "kwargs": []}, "kwargs must be a dict"),
        ({"task": "t", "id": 3, "args": [], "kwargs": {}}, "body 'id'"),
        ({"task": "", "id": "i"}, "body 'task'"),
        ({"task": "t", "id": "i", "eta": "soon"}, "body 'eta'"),
        ({"task": "t", "id": "i", "utc": "yes"}, "body 'utc'"),
        ({"task": "t", "id": "i", "timelimit": [1, 2, 3]}, "body 'timelimit'"),
        ({"task": "t"}, "not a task message"),
    ],
)
def test_decode_protocol_1_errors(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_task(v1(body), ACCEPT)


# -- kombu envelope ----------------------------------------------------------------------


def test_kombu_envelope_roundtrip_and_layout() -> None:
    env = encode_task(make(reply_to="r", expires=datetime(2000, 1, 1, tzinfo=UTC)))
    raw = kombu_envelope.dumps(env, "", "celery", "tag-1")
    entry = json.loads(raw)
    assert list(entry) == ["body", "content-encoding", "content-type", "headers", "properties"]
    assert list(entry["properties"]) == [
        "correlation_id", "reply_to", "delivery_mode", "expiration", "delivery_info",
        "priority", "body_encoding", "delivery_tag",
    ]
    assert entry["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert b'", "' in raw and b'": ' in raw  # kombu's separators
    back, info, tag = kombu_envelope.loads(raw)
    assert (back, info, tag) == (env, {"exchange": "", "routing_key": "celery"}, "tag-1")
    fresh = json.loads(kombu_envelope.dumps(env, "e", "rk"))["properties"]["delivery_tag"]
    assert len(fresh) == 36
    assert kombu_envelope.loads(kombu_envelope.dumps(env, "", "q", "t", compact=True))[0] == env


def test_kombu_envelope_escapes_non_ascii_like_kombu() -> None:
    env = encode_task(make(args=("é",)))
    raw = kombu_envelope.dumps(env, "", "celery", "t")
    assert raw.isascii() and b"\\u00e9" in raw  # argsrepr, as json.dumps writes it


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"body": 5}', "body must be a string"),
        (b'{"body": "!!!", "properties": {"body_encoding": "base64"}}', "not base64"),
        (b'{"body": "", "properties": {"body_encoding": "rot13"}}', "unknown body_encoding"),
        (b'{"headers": []}', "headers must be an object"),
        (b'{"properties": 1}', "properties must be an object"),
        (b'{"content-type": 1}', "content-type"),
        (b'{"properties": {"delivery_info": 1}}', "delivery_info"),
    ],
)
def test_kombu_envelope_errors(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        kombu_envelope.loads(raw)


# -- fuzz --------------------------------------------------------------------------------

_ATOMS: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", "2030-01-01", [], {}, [None, None]]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 2 or roll < 0.5:
        return rng.choice(_ATOMS)
    if roll < 0.75:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["task", "id", "args", "kwargs", "eta", "callbacks", "chord", "timelimit", "x"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_fuzz_decode_raises_only_protocol_errors() -> None:
    rng = random.Random(1234)
    good = encode_task(make(eta=datetime(2030, 1, 1, tzinfo=UTC)), compression="zlib")
    raw_good = kombu_envelope.dumps(good, "", "celery", "t")
    decoded = 0
    for i in range(3000):
        kind = i % 4
        try:
            if kind == 0:  # random bytes in a kombu entry
                kombu_envelope.loads(bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
            elif kind == 1:  # a valid entry with some bytes flipped
                data = bytearray(raw_good)
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                env, _, _ = kombu_envelope.loads(bytes(data))
                decode_task(env, ACCEPT)
            elif kind == 2:  # random shapes for headers and body
                headers = _random_value(rng)
                if isinstance(headers, dict) and rng.random() < 0.7:
                    headers.setdefault("task", "t")
                    headers.setdefault("id", "i")
                body = json.dumps(_random_value(rng)).encode()
                props = _random_value(rng) if rng.random() < 0.3 else {}
                ctype = rng.choice(["application/json", "application/json", "application/x-msgpack",
                                    None, "text/plain"])
                decode_task(Envelope(body, ctype, "utf-8", headers, props), ACCEPT)  # type: ignore[arg-type]
            else:  # random bytes as a body under each content type
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
                ctype = rng.choice(["application/json", "application/x-msgpack"])
                headers = {"task": "t", "id": "i"}
                if rng.random() < 0.3:
                    headers["compression"] = rng.choice(["application/x-gzip", "application/x-bz2"])
                decode_task(Envelope(body, ctype, "binary", headers), ACCEPT)
            decoded += 1
        except ProtocolError:
            pass
    assert decoded > 0  # some random shapes are valid messages


def test_decode_of_non_envelope_values() -> None:
    for bad in (
        Envelope(b"[]", headers=[]),  # type: ignore[arg-type]
        Envelope(b"[]", properties=5, headers={"task": "t", "id": "i"}),  # type: ignore[arg-type]
        Envelope(5, headers={"task": "t", "id": "i"}),  # type: ignore[arg-type]
        Envelope(b"[]", 5, headers={"task": "t", "id": "i"}),  # type: ignore[arg-type]
    ):
        with pytest.raises(DecodeError):
            decode_task(bad, ACCEPT)

"""Serializers and compression: kombu's content types, markers and refusal rules."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
import zlib
from collections import OrderedDict, namedtuple
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest

from celeriac.errors import ConfigurationError, ContentDisallowed, DecodeError, ProtocolError
from celeriac.serializers import (
    EncodeError,
    compress,
    decompress,
    dumps,
    get_serializer,
    loads,
    serializer_names,
)

ACCEPT = ("json", "msgpack")


def roundtrip(obj: Any, name: str = "json", accept: tuple[str, ...] = ACCEPT) -> Any:
    ctype, cenc, data = dumps(obj, name)
    return loads(data, ctype, cenc, accept)


# -- registry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ctype", "cenc"),
    [
        ("json", "application/json", "utf-8"),
        ("msgpack", "application/x-msgpack", "binary"),
        ("pickle", "application/x-python-serialize", "binary"),
    ],
)
def test_names_and_content_types(name: str, ctype: str, cenc: str) -> None:
    got_ctype, got_cenc, data = dumps({"a": [1, 2]}, name)
    assert (got_ctype, got_cenc) == (ctype, cenc)
    assert isinstance(data, bytes)
    assert get_serializer(name).content_type == ctype
    assert get_serializer(ctype).name == name
    assert loads(data, ctype, cenc, [name, "pickle"]) == {"a": [1, 2]}


def test_unknown_serializer_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        dumps([1], "bson")
    text = str(info.value)
    assert "'bson'" in text
    for known in ("json", "msgpack", "pickle"):
        assert known in text
    assert set(serializer_names()) >= {"json", "msgpack", "pickle"}


# -- accept ------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [["json"], ["application/json"], {"json"}, ("msgpack", "json")])
def test_accept_by_short_name_or_content_type(accept: Any) -> None:
    assert loads(b'{"a": 1}', "application/json", "utf-8", accept) == {"a": 1}


def test_content_not_accepted_is_refused() -> None:
    data = msgpack.packb([1, 2])
    with pytest.raises(ContentDisallowed, match=r"msgpack \(application/x-msgpack\)"):
        loads(data, "application/x-msgpack", "binary", ["json"])


def test_pickle_is_never_decoded_unless_accepted() -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (pytest.fail, ("pickle was decoded",))

    data = pickle.dumps(Boom())
    ctype = "application/x-python-serialize"
    for accept in (ACCEPT, ["application/json"], [], ["yaml"]):
        with pytest.raises(ContentDisallowed, match="pickle"):
            loads(data, ctype, "binary", accept)
    assert loads(pickle.dumps((1, "a")), ctype, "binary", ["pickle"]) == (1, "a")
    assert loads(pickle.dumps((1, "a")), ctype, "binary", [ctype]) == (1, "a")


def test_unknown_content_type_refused_or_rejected() -> None:
    with pytest.raises(ContentDisallowed):
        loads(b"x", "application/x-bson", "binary", ACCEPT)
    with pytest.raises(DecodeError, match="no serializer"):
        loads(b"x", "application/x-bson", "binary", ["application/x-bson"])


def test_trusted_raw_content_passes_through() -> None:
    assert loads(b"\x00\x01", "application/data", "binary", []) == b"\x00\x01"
    assert loads(b"abc", "application/text", "utf-8", []) == "abc"
    assert loads(b"\xff", None, "binary", []) == b"\xff"


# -- malformed bytes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "ctype", "cenc"),
    [
        (b'{"a": ', "application/json", "utf-8"),
        (b"\xff\xfe", "application/json", "utf-8"),
        (b"[1, 2] x", "application/json", "utf-8"),
        (b'{"__type__": "nope", "__value__": 1}', "application/json", "utf-8"),
        (b'{"__type__": "uuid", "__value__": {"hex": "zz"}}', "application/json", "utf-8"),
        (b"\xc1", "application/x-msgpack", "binary"),
        (b"\x93\x01", "application/x-msgpack", "binary"),
        (b"\x92\x01\x02\x03", "application/x-msgpack", "binary"),
        (b"not a pickle", "application/x-python-serialize", "binary"),
        (b"[1]", "application/json", "no-such-codec"),
    ],
)
def test_malformed_bytes_raise_decode_error(data: bytes, ctype: str, cenc: str) -> None:
    with pytest.raises(DecodeError) as info:
        loads(data, ctype, cenc, [*ACCEPT, "pickle"])
    assert 0 < len(str(info.value)) <= 260


# -- json, as kombu writes it ------------------------------------------------------------


def test_json_types_use_kombu_markers() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "dt": datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "naive": datetime(2030, 1, 2, 3, 4, 5),
        "d": date(2030, 1, 2),
        "t": time(3, 4, 5),
        "dec": Decimal("1.10"),
        "u": u,
        "tup": (1, (2, 3)),
    }
    _, _, data = dumps(value, "json")
    as_plain = json.loads(data)  # what any JSON reader (and kombu) sees
    assert as_plain == {
        "dt": {"__type__": "datetime", "__value__": "2030-01-02T03:04:05.000006+00:00"},
        "naive": {"__type__": "datetime", "__value__": "2030-01-02T03:04:05"},
        "d": {"__type__": "date", "__value__": "2030-01-02"},
        "t": {"__type__": "time", "__value__": "03:04:05"},
        "dec": {"__type__": "decimal", "__value__": "1.10"},
        "u": {"__type__": "uuid", "__value__": {"hex": u.hex}},
        "tup": [1, [2, 3]],
    }
    back = roundtrip(value)
    assert back == {**value, "tup": [1, [2, 3]]}
    assert isinstance(back["u"], uuid.UUID)
    assert type(back["d"]) is date


def test_json_uuid_anywhere_is_marked() -> None:
    u = uuid.uuid4()
    marker = {"__type__": "uuid", "__value__": {"hex": u.hex}}
    cases = [
        (u, marker),
        ([u], [marker]),
        ((1, [{"a": u}]), [1, [{"a": marker}]]),
        ({"k": {"k": [1, 2, u]}}, {"k": {"k": [1, 2, marker]}}),
    ]
    for obj, plain in cases:
        _, _, data = dumps(obj, "json")
        assert json.loads(data) == plain
        back = roundtrip(obj)
        assert json.dumps(back, default=str) == json.dumps(obj, default=str)


def test_json_reads_what_kombu_writes() -> None:
    # byte strings exactly as kombu.utils.json.dumps produces them
    kombu_bytes = (
        b'[{"__type__": "datetime", "__value__": "2030-01-02T03:04:05+00:00"}, '
        b'{"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}, '
        b'{"__type__": "decimal", "__value__": "3.14"}, '
        b'{"__type__": "bytes", "__value__": "hi"}, '
        b'{"__type__": "base64", "__value__": "/w=="}, NaN]'
    )
    got = loads(kombu_bytes, "application/json", "utf-8", ["json"])
    assert got[:5] == [
        datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("3.14"),
        b"hi",
        b"\xff",
    ]
    assert got[5] != got[5]  # NaN


def test_json_bytes_are_refused_clearly() -> None:
    for obj in (b"x", [1, {"a": b"x"}], bytearray(b"x")):
        with pytest.raises(EncodeError, match="bytes") as info:
            dumps(obj, "json")
        assert isinstance(info.value, TypeError)


def test_json_unserializable_object_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="object"):
        dumps([object()], "json")


def test_json_python_json_extras_fall_back_to_stdlib() -> None:
    big = 2**80
    assert roundtrip({"n": big}) == {"n": big}
    assert roundtrip({1: "a", None: "b", 2.5: "c"}) == {"1": "a", "null": "b", "2.5": "c"}
    point = namedtuple("point", "x y")
    assert roundtrip(point(1, 2)) == [1, 2]
    assert roundtrip(OrderedDict(a=1)) == {"a": 1}


def test_json_non_ascii_and_other_encodings() -> None:
    assert roundtrip(["héllo ☃"]) == ["héllo ☃"]
    data = '["h\u00e9"]'.encode("latin-1")
    assert loads(data, "application/json", "latin-1", ["json"]) == ["h\u00e9"]


def test_json_reducer_hook() -> None:
    class Money:
        def __json__(self) -> Any:
            return {"amount": 3}

    assert roundtrip([Money()]) == [{"amount": 3}]


def test_json_tz_aware_non_utc_datetime_keeps_offset() -> None:
    dt = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert roundtrip(dt) == dt


# -- msgpack -----------------------------------------------------------------------------


def test_msgpack_matches_kombu_bytes() -> None:
    body = ((2, 3), {"z": 4}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    _, _, data = dumps(body, "msgpack")
    # the body Celery put on the wire in redis-send-serializer_msgpack.json
    assert data == base64.b64decode("k5ICA4GhegSEqWNhbGxiYWNrc8CoZXJyYmFja3PApWNoYWluwKVjaG9yZMA=")
    assert roundtrip(["a", b"\x00", 1.5], "msgpack") == ["a", b"\x00", 1.5]


def test_msgpack_unserializable_is_encode_error() -> None:
    with pytest.raises(EncodeError):
        dumps([datetime.now()], "msgpack")


# -- compression -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("zlib", "application/x-gzip"),
        ("gzip", "application/x-gzip"),
        ("bzip2", "application/x-bz2"),
        ("lzma", "application/x-lzma"),
        ("application/x-gzip", "application/x-gzip"),
    ],
)
def test_compression_roundtrip(name: str, header: str) -> None:
    data = b'[[2, 3], {"z": 4}, {}]' * 20
    packed, got_header = compress(data, name)
    assert got_header == header
    assert packed != data
    assert decompress(packed, got_header) == data


def test_zlib_is_a_plain_zlib_stream() -> None:
    packed, _ = compress(b"hello", "zlib")
    assert zlib.decompress(packed) == b"hello"


def test_capture_zlib_body_decompresses() -> None:
    here = Path(__file__).resolve().parent.parent / "fixtures" / "celery-wire"
    capture = json.loads((here / "redis-send-compression_zlib.json").read_text())
    raw = capture["captured"]["keys_after_send"]["celery"]["value"][0]
    entry = json.loads(raw)
    assert entry["headers"]["compression"] == "application/x-gzip"
    body = decompress(base64.b64decode(entry["body"]), "application/x-gzip")
    assert json.loads(body)[0] == [2, 3]


def test_unknown_or_corrupt_compression() -> None:
    with pytest.raises(ConfigurationError, match="zlib"):
        compress(b"x", "snappy")
    with pytest.raises(DecodeError, match="unknown compression"):
        decompress(b"x", "application/x-snappy")
    with pytest.raises(DecodeError, match="corrupt"):
        decompress(b"not zlib", "application/x-gzip")
    with pytest.raises(ProtocolError):
        decompress(b"x", 5)  # type: ignore[arg-type]


def test_uuids_are_found_at_any_depth_and_in_dict_subclasses() -> None:
    import uuid as uuid_module
    from collections import OrderedDict

    from celeriac.serializers._json import _has_uuid

    u = uuid_module.uuid4()
    assert _has_uuid(((1, [u]), {}, {}))
    assert _has_uuid(((), {"a": {"b": (u,)}}, {}))
    assert _has_uuid(([OrderedDict(x=u)],))
    assert not _has_uuid(((1, [2, {"x": "y"}]), {"k": [1.5]}, {"c": None}))

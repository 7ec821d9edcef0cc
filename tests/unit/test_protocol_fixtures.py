"""Every task message in the Celery 5.7 / kombu 5.7 wire captures, decoded and re-encoded.

Where re-encoding cannot give the same bytes, the test says why and compares values:

- JSON bodies: Celery writes them with Python's ``json.dumps`` (``", "`` and ``": "``
  separators, ASCII escapes); we write them with orjson, which has no separator option
  (compact output). Parsed bodies must be equal, and re-rendering our body with
  ``json.dumps`` must give Celery's exact bytes (same key order, same values).
- ``ignore_result``: ``send_task`` without the option writes ``null``; TaskMessage holds a
  bool, so we write ``false`` (Celery's worker reads both as false).
- ``expiration`` (a property): Celery's TTL in ms from the moment of sending; we compute it
  again from ``expires`` at encode time, so only its presence and form are compared.
- ``priority`` absent (AMQP, ``queue=<name>`` without a priority): TaskMessage holds an int,
  so we write ``0``, which is AMQP's default anyway.
- ``origin`` as a *property* (a worker's retry re-publish has it): TaskMessage has no place
  for extra properties, so it is not reproduced.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from celeriac.message import Envelope, TaskMessage
from celeriac.protocol import decode_task, encode_task, kombu_envelope
from celeriac.serializers import decompress, loads

REPO = Path(__file__).resolve().parents[2]
ACCEPT = ["json", "msgpack"]
SERIALIZER_BY_TYPE = {"application/json": "json", "application/x-msgpack": "msgpack"}


def fixtures_dir() -> Path:
    env = os.environ.get("CELERIAC_WIRE_FIXTURES")
    candidates = [Path(env)] if env else []
    candidates += [REPO / "tests" / "fixtures" / "celery-wire", REPO.parent / "shared" / "fixtures"
                   / "celery-wire"]
    for path in candidates:
        if path.is_dir() and any(path.glob("redis-send-*.json")):
            return path
    pytest.skip(f"no celery-wire captures in {candidates}")


@dataclass
class Case:
    name: str
    scenario: str
    envelope: Envelope
    body: Any  # the body as Celery's decoder sees it
    raw_entry: bytes | None = None  # Redis list entry, exactly as stored
    queue: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _redis_case(name: str, scenario: str, raw: str, queue: str | None) -> Case:
    entry = json.loads(raw)
    props = {
        k: v
        for k, v in entry["properties"].items()
        if k not in ("delivery_info", "body_encoding", "delivery_tag")
    }
    body = base64.b64decode(entry["body"])
    envelope = Envelope(body, entry["content-type"], entry["content-encoding"],
                        entry["headers"], props)
    return Case(name, scenario, envelope, _celery_body(envelope), raw.encode(), queue)


def _celery_body(envelope: Envelope) -> Any:
    """The body decoded independently of celeriac's own code paths under test."""
    data = envelope.body
    if envelope.headers.get("compression") == "application/x-gzip":
        import zlib

        data = zlib.decompress(data)
    if envelope.content_type == "application/json":
        return json.loads(data)
    import msgpack

    return msgpack.unpackb(data, raw=False)


def collect(directory: Path) -> Iterator[Case]:
    for path in sorted(directory.glob("redis-send-*.json")):
        capture = json.loads(path.read_text())
        scenario = capture["scenario"]
        n = 0
        for key, value in capture["captured"]["keys_after_send"].items():
            if value["type"] != "list":
                continue
            for raw in value["value"]:
                yield _redis_case(f"{scenario}#{n}", scenario, raw, key)
                n += 1
    for path in sorted(directory.glob("amqp-send-*.json")):
        capture = json.loads(path.read_text())
        scenario = capture["scenario"]
        n = 0
        for queue, messages in capture["captured"]["messages_by_queue"].items():
            for m in messages:
                props = dict(m["properties"])
                headers = props.pop("application_headers")
                ctype = props.pop("content_type")
                cenc = props.pop("content_encoding")
                envelope = Envelope(base64.b64decode(m["body_b64"]), ctype, cenc, headers, props)
                case = Case(f"{scenario}#{n}", scenario, envelope, m["body_decoded"], None, queue)
                case.extra["method"] = m["method"]
                yield case
                n += 1
    for path in sorted(directory.glob("redis-worker-*.json")):
        capture = json.loads(path.read_text())
        scenario = capture["scenario"]
        n = 0
        for cmd in capture["captured"].get("redis_commands") or []:
            args = cmd["args"]
            if args[0].upper() != "LPUSH":
                continue
            for raw in args[2:]:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict) and "task" in entry.get("headers", {}):
                    yield _redis_case(f"{scenario}#{n}", scenario, raw, args[1])
                    n += 1


CASES = list(collect(fixtures_dir()))


def test_the_captures_are_all_there() -> None:
    scenarios = {c.scenario for c in CASES}
    for kind in ("redis-send", "amqp-send"):
        for name in (
            "plain_apply_async", "plain_send_task", "countdown", "eta", "expires", "priority",
            "custom_queue_routing_key", "link_link_error", "retries_header", "chain3", "group3",
            "chord", "serializer_json", "serializer_msgpack", "compression_zlib", "misc_options",
        ):
            assert f"{kind}-{name}" in scenarios
    assert "redis-worker-result-retry" in scenarios
    assert len(CASES) >= 66  # 26 Redis + 26 AMQP at send time, 14 re-sent by the worker runs


def _ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_decode_gives_the_fields(case: Case) -> None:
    msg = decode_task(case.envelope, ACCEPT)
    h = case.envelope.headers
    args, kwargs, embed = case.body
    assert msg.task == h["task"]
    assert msg.id == h["id"]
    assert list(msg.args) == args
    assert msg.kwargs == kwargs
    for attr in ("callbacks", "errbacks", "chain", "chord"):
        assert getattr(msg, attr) == embed[attr]
    for attr in ("eta", "expires"):
        want = None if h[attr] is None else datetime.fromisoformat(h[attr])
        got = getattr(msg, attr)
        assert got == want
        if got is not None:
            assert got.tzinfo is not None
    assert msg.retries == h["retries"]
    assert list(msg.timelimit) == h["timelimit"]
    assert msg.group == h["group"]
    assert msg.group_index == h["group_index"]
    assert msg.root_id == h["root_id"]
    assert msg.parent_id == h["parent_id"]
    assert msg.shadow == h["shadow"]
    assert msg.argsrepr == h["argsrepr"]
    assert msg.kwargsrepr == h["kwargsrepr"]
    assert msg.origin == h["origin"]
    assert msg.ignore_result is bool(h["ignore_result"])
    assert msg.stamps == h["stamps"]
    assert msg.compression == h.get("compression")
    assert msg.priority == (case.envelope.properties.get("priority") or 0)
    assert msg.delivery_mode == case.envelope.properties["delivery_mode"] == 2
    assert msg.reply_to == case.envelope.properties["reply_to"]
    assert msg.correlation_id == case.envelope.properties["correlation_id"] == msg.id
    assert msg.content_type == case.envelope.content_type
    assert msg.content_encoding == case.envelope.content_encoding


# What each scenario's call (see the capture's "call") must decode to.
SCENARIO_CHECKS: dict[str, Any] = {
    "plain_apply_async": lambda m: (m.args, m.kwargs, m.argsrepr) == ([2, 3], {"z": 4}, "(2, 3)"),
    "plain_send_task": lambda m: m.argsrepr == "[2, 3]" and m.ignore_result is False,
    "countdown": lambda m: m.eta is not None and m.eta.utcoffset().total_seconds() == 0,
    "eta": lambda m: m.eta == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
    "expires": lambda m: m.expires is not None and m.eta is None,
    "priority": lambda m: m.priority in (0, 3, 5, 9),
    "custom_queue_routing_key": lambda m: m.args == [1, 2],
    "link_link_error": lambda m: (
        m.callbacks[0]["task"] == "capapp.echo"
        and m.callbacks[0]["args"] == ["linked"]
        and m.errbacks[0]["task"] == "capapp.on_err"
    ),
    "retries_header": lambda m: m.retries == 3,
    "chain3": lambda m: (
        m.args == [1, 2] and [s["args"] for s in m.chain] == [[4], [3]]
        and all(s["options"]["task_id"] for s in m.chain)
    ),
    "group3": lambda m: m.group is not None and m.group_index in (0, 1, 2),
    "chord": lambda m: (
        m.chord["task"] == "capapp.tsum" and m.chord["options"]["group_id"] == m.group
    ),
    "serializer_json": lambda m: m.content_type == "application/json",
    "serializer_msgpack": lambda m: (
        m.content_type == "application/x-msgpack" and m.content_encoding == "binary"
        and m.kwargs == {"z": 4}
    ),
    "compression_zlib": lambda m: m.compression == "application/x-gzip" and m.args == [2, 3],
    "misc_options": lambda m: (
        m.id == "11111111-2222-3333-4444-555555555555"
        and m.timelimit == (60, 50)
        and m.shadow == "shadowed.name"
        and m.extra_headers == {"x-custom": "hello"}
        and m.ignore_result is True
    ),
    "result-retry": lambda m: m.retries in (0, 1) and (m.retries == 0 or m.parent_id == m.id),
    "result-expired": lambda m: m.expires is not None,
    "chord-result": lambda m: m.group is not None,
}


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_scenario_specifics(case: Case) -> None:
    msg = decode_task(case.envelope, ACCEPT)
    key = case.scenario.split("-", 2)[2]
    if key in SCENARIO_CHECKS:
        assert SCENARIO_CHECKS[key](msg), msg
    if case.scenario.endswith("send_task") and case.envelope.headers["ignore_result"] is None:
        assert msg.ignore_result is False
    if key != "misc_options":
        assert msg.extra_headers == {}


def _expected_headers(case: Case) -> dict[str, Any]:
    expected = dict(case.envelope.headers)
    if expected["ignore_result"] is None:  # see the module docstring
        expected["ignore_result"] = False
    return expected


def _reencode(case: Case) -> tuple[TaskMessage, Envelope]:
    msg = decode_task(case.envelope, ACCEPT)
    serializer = SERIALIZER_BY_TYPE[msg.content_type]
    return msg, encode_task(msg, serializer, compression=msg.compression)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_reencode_gives_the_same_headers_in_order(case: Case) -> None:
    _, env = _reencode(case)
    assert list(env.headers.items()) == list(_expected_headers(case).items())
    assert env.content_type == case.envelope.content_type
    assert env.content_encoding == case.envelope.content_encoding


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_reencode_gives_the_same_properties(case: Case) -> None:
    _, env = _reencode(case)
    ours = dict(env.properties)
    theirs = {k: v for k, v in case.envelope.properties.items() if k != "origin"}
    theirs.setdefault("priority", 0)  # see the module docstring
    assert ("expiration" in ours) == ("expiration" in theirs)
    if "expiration" in theirs:
        assert ours.pop("expiration").isdigit()
        theirs.pop("expiration")
    assert ours == theirs
    if case.raw_entry is not None:  # Redis keeps kombu's order too
        assert list(ours) == [k for k in theirs if k in ours]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_reencode_gives_the_same_body(case: Case) -> None:
    _, env = _reencode(case)
    data = env.body
    if env.headers.get("compression"):
        data = decompress(data, env.headers["compression"])
        theirs = decompress(case.envelope.body, case.envelope.headers["compression"])
    else:
        theirs = case.envelope.body
    assert loads(data, env.content_type, env.content_encoding, ACCEPT) == case.body
    if env.content_type == "application/json":
        # not byte-identical (orjson is compact, see the module docstring), but the same
        # document: Python's json renders ours into exactly Celery's bytes
        assert json.dumps(json.loads(data)).encode() == theirs
    else:
        assert data == theirs  # msgpack is deterministic: byte-identical


REDIS_CASES = [c for c in CASES if c.raw_entry is not None]


@pytest.mark.parametrize("case", REDIS_CASES, ids=_ids(REDIS_CASES))
def test_kombu_envelope_loads_then_dumps_is_byte_identical(case: Case) -> None:
    assert case.raw_entry is not None
    envelope, delivery_info, tag = kombu_envelope.loads(case.raw_entry)
    entry = json.loads(case.raw_entry)
    assert envelope.body == case.envelope.body
    assert envelope.headers == entry["headers"]
    assert delivery_info == entry["properties"]["delivery_info"]
    assert tag == entry["properties"]["delivery_tag"]
    again = kombu_envelope.dumps(envelope, delivery_info["exchange"],
                                 delivery_info["routing_key"], tag)
    assert again == case.raw_entry
    compact = kombu_envelope.dumps(envelope, delivery_info["exchange"],
                                   delivery_info["routing_key"], tag, compact=True)
    assert json.loads(compact) == entry
    assert kombu_envelope.loads(compact)[0] == envelope


@pytest.mark.parametrize("case", REDIS_CASES, ids=_ids(REDIS_CASES))
def test_full_path_reproduces_the_list_entry(case: Case) -> None:
    """decode -> encode -> kombu envelope gives Celery's entry, but for the body bytes."""
    assert case.raw_entry is not None
    _, delivery_info, tag = kombu_envelope.loads(case.raw_entry)
    _, env = _reencode(case)
    entry = json.loads(case.raw_entry)
    entry["body"] = base64.b64encode(env.body).decode()  # see the module docstring
    entry["headers"] = _expected_headers(case)
    props = entry["properties"]
    props.pop("origin", None)
    if "expiration" in props:
        props["expiration"] = env.properties["expiration"]
    expected = json.dumps(entry).encode()
    got = kombu_envelope.dumps(env, delivery_info["exchange"], delivery_info["routing_key"], tag)
    assert got == expected


def test_priority_lists_match_kombu_steps() -> None:
    """A sanity check of the capture itself: priority p goes to step max(s <= p)."""
    for case in REDIS_CASES:
        if case.scenario != "redis-send-priority":
            continue
        p = decode_task(case.envelope, ACCEPT).priority
        step = max(s for s in (0, 3, 6, 9) if s <= p)
        assert case.queue == ("celery" if step == 0 else f"celery\x06\x16{step}")

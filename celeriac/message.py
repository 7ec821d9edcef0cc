"""The data that travels: plain frozen dataclasses, no I/O.

- ``TaskMessage``: one task call, decoded (protocol v2 headers, body and properties).
- ``Envelope``: the bytes a broker carries for it (serialized body, headers, properties).
- ``Outgoing``: an envelope addressed to a queue, with its priority and not-before time.
- ``Delivery``: an envelope a broker handed to a consumer, with the handle to ack it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


class EnvelopeRun:
    """Names the envelopes of one batch run (``protocol.encode_many``): they differ only in
    their body, the headers id, root_id, argsrepr and kwargsrepr and the property
    correlation_id. A broker may serialize one of them and splice the others' own values
    into that (``kombu_envelope.EntrySplicer``). Compared by identity."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message as brokers carry it: an opaque body plus AMQP-style headers and properties.

    ``properties`` holds correlation_id, reply_to, delivery_mode and priority, as in Celery.
    ``run`` is set only by ``encode_many``; not compared, and never copied by ``replace``
    (a changed copy no longer matches its run).
    """

    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    run: EnvelopeRun | None = field(default=None, init=False, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An envelope on its way to ``queue``.

    ``not_before`` is a POSIX timestamp before which no consumer may receive the message
    (ETA and countdown are held by the broker, never in worker memory). ``exchange`` and
    ``routing_key`` matter only to brokers that route (AMQP); others use ``queue``.
    """

    queue: str
    envelope: Envelope
    priority: int = 0
    not_before: float | None = None
    exchange: str = ""
    routing_key: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message handed to a consumer.

    ``tag`` is the broker's own handle (a row id, a delivery tag); ``deliveries`` counts how
    many times this message has been handed out, this time included (1 on first delivery).
    """

    envelope: Envelope
    queue: str
    tag: Any
    deliveries: int = 1
    priority: int = 0

    @property
    def redelivered(self) -> bool:
        return self.deliveries > 1

    def as_outgoing(self, not_before: float | None = None) -> Outgoing:
        """This message, to be published again to its queue (not before ``not_before``)."""
        return Outgoing(self.queue, self.envelope, self.priority, not_before=not_before)


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One task call, as protocol v2 describes it (see DESIGN.md §3)."""

    id: str
    task: str
    args: tuple[Any, ...] | list[Any] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    # headers
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    timelimit: tuple[float | None, float | None] = (None, None)
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    origin: str | None = None
    ignore_result: bool = False
    replaced_task_nesting: int = 0
    stamped_headers: list[str] | None = None
    stamps: dict[str, Any] = field(default_factory=dict)
    extra_headers: dict[str, Any] = field(default_factory=dict)
    # body's embed
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    # properties
    reply_to: str | None = None
    correlation_id: str | None = None
    priority: int = 0
    delivery_mode: int = 2
    # encoding
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    compression: str | None = None


def _slot_builder(cls: type[Any]) -> Callable[..., Any]:
    """A constructor for the frozen slots dataclass ``cls`` taking every field positionally,
    in field order, with no defaults and no checks.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (the
    class's own ``__setattr__`` refuses); this one calls each slot's descriptor directly,
    about twice as fast for TaskMessage's 32 fields (the worker builds one per task). The
    result is an ordinary instance: equal to, and as frozen as, one made by ``cls(...)``.
    Fields that ``__init__`` does not take come last and default to None.
    """
    names = [f.name for f in fields(cls)]
    params = [f.name if f.init else f"{f.name}=None" for f in fields(cls)]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def build({', '.join(params)}):", "    self = _new(_cls)"]
    for i, name in enumerate(names):
        namespace[f"_set{i}"] = getattr(cls, name).__set__
        lines.append(f"    _set{i}(self, {name})")
    lines.append("    return self")
    exec("\n".join(lines), namespace)  # code made of the class's own field names
    build: Callable[..., Any] = namespace["build"]
    build.__qualname__ = build.__name__ = f"build_{cls.__name__}"
    return build


#: ``build_task_message(id, task, args, kwargs, root_id, ..., compression)``: a TaskMessage
#: from all its fields, positionally in declaration order (the decoder's fast path).
build_task_message: Callable[..., TaskMessage] = _slot_builder(TaskMessage)
#: ``build_envelope(body, content_type, content_encoding, headers, properties)``
build_envelope: Callable[[bytes, str, str, dict[str, Any], dict[str, Any]], Envelope] = (
    _slot_builder(Envelope))
#: ``build_run_envelope(body, content_type, content_encoding, headers, properties, run)``
build_run_envelope: Callable[
    [bytes, str, str, dict[str, Any], dict[str, Any], EnvelopeRun], Envelope] = (
    _slot_builder(Envelope))
#: ``build_delivery(envelope, queue, tag, deliveries, priority)``
build_delivery: Callable[[Envelope, str, Any, int, int], Delivery] = _slot_builder(Delivery)
#: ``build_outgoing(queue, envelope, priority, not_before, exchange, routing_key)``
build_outgoing: Callable[[str, Envelope, int, float | None, str, str | None], Outgoing] = (
    _slot_builder(Outgoing))


def plain_task_message(
    task_id: str, task: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
    expires: datetime | None, timelimit: tuple[float | None, float | None], origin: str,
    ignore_result: bool, reply_to: str, priority: int,
) -> TaskMessage:
    """``TaskMessage(id=task_id, task=task, ..., root_id=task_id, correlation_id=task_id)``
    with every other field at its default: a call sent without options (``delay(...)``),
    built in a quarter of the time the keyword constructor takes."""
    return build_task_message(
        task_id, task, args, kwargs, task_id, None, None, None, None, None, expires, 0,
        timelimit, None, None, origin, ignore_result, 0, None, {}, {}, None, None, None, None,
        reply_to, task_id, priority, 2, "application/json", "utf-8", None,
    )

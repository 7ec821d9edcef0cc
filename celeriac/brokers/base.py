"""The broker seam: a handful of async methods every broker implements.

A broker moves ``Envelope`` bytes between producers and workers. It knows nothing of tasks.
Every method is batch-first (a sequence in, one round trip out) because the worker batches at
every boundary. Driver errors are translated to ``celeriac.errors.BrokerError`` here, at the
seam. Every implementation passes ``celeriac.testing.check_broker``.

Guarantees a broker gives:
- ``publish`` returns only once the broker holds the messages durably (as durable as the
  broker can be), else raises ``BrokerError``.
- ``fetch`` hands each message to one consumer at a time, under a lease of ``lease_seconds``;
  a message neither acked nor renewed before its lease ends is handed out again.
- Higher ``priority`` (0-9) is served first within a queue; among equals, first in first out.
- A message with ``not_before`` in the future is not handed out before that time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from celeriac.message import Delivery, Outgoing

DEFAULT_LEASE_SECONDS = 30.0


@runtime_checkable
class Broker(Protocol):
    """What the worker and the producers need of a message broker."""

    url: str

    async def connect(self) -> None:
        """Open connections and create what the broker needs (tables, topology)."""

    async def close(self) -> None:
        """Release every resource; give back nothing (the worker requeues first)."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Store ``messages`` durably, in order; return only when they are stored."""

    async def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        """Take up to ``max_count`` due messages from ``queues`` (in the order given).

        Waits up to ``timeout`` seconds for the first message; returns ``[]`` on timeout.
        Waiting is event-driven where the broker allows it: no busy loop.
        """

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """The messages are done with: remove them for good.

        May return once the ack is sent rather than applied (AMQP's ``basic.ack``; Redis's
        pipelined acks): an ack that is lost on the way is like a crash before acking, and
        the message is handed out again after its lease.
        """

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Give the messages back, visible again at once, keeping their place and priority."""

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Extend the leases of messages still being worked on."""

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message that must not be retried to the dead-letter store, with ``reason``."""

    async def purge(self, queues: Sequence[str]) -> int:
        """Delete every waiting message of ``queues``; return how many were deleted."""

    async def queue_size(self, queue: str) -> int:
        """How many messages wait in ``queue`` (in flight and delayed ones included)."""

    async def dead_letters(self, limit: int = 100) -> list[tuple[Delivery, str]]:
        """The newest dead-lettered messages with their reasons (for tools and tests)."""


@runtime_checkable
class BlockingPublisher(Protocol):
    """Optional: a broker that can publish from sync code without an event loop turn.

    ``delay()`` from sync code uses it when the broker has it (``Celeriac.publish_sync``).
    Same guarantee as ``publish``; returns False when this instance cannot (the caller then
    runs ``publish``).
    """

    def publish_blocking(self, messages: Sequence[Outgoing]) -> bool: ...


@runtime_checkable
class ConfirmWindow(Protocol):
    """Optional: a broker whose ``publish_blocking`` may return before the broker confirmed
    what it sent (RabbitMQ's ``confirm_window``)."""

    def flush_blocking(self, timeout: float | None = None) -> None:
        """Wait until every message sent by ``publish_blocking`` is confirmed; raise
        ``BrokerError`` for those the broker did not take."""


@runtime_checkable
class Defers(Protocol):
    """Optional: a broker that can send a held message back to wait until ``not_before``
    and ack it in one atomic step.

    The worker uses it for a message that is not due yet (an ETA from a Celery producer).
    Without it the worker publishes the delayed copy, then acks: a connection lost between
    the two leaves the message both waiting and back in its queue, to run twice.
    """

    async def defer(self, delivery: Delivery, not_before: float) -> None: ...

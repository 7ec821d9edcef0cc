"""The worker: consume -> decode and check -> run in the pool -> store the result -> ack.

One asyncio loop per worker process. A consumer coroutine fetches batches (up to the
prefetch window) into a queue; ``concurrency`` runner coroutines take messages from it and
process them one at a time; acks, results and follow-up messages go through batchers, so one
round trip carries many of them. A renewer extends the leases of every message held.

Bad input never kills the worker and is never dropped in silence: a message that cannot be
decoded, is not accepted, or names an unknown task is logged, recorded as FAILURE when its id
is known, and dead-lettered with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from celeriac import states
from celeriac.app import Celeriac
from celeriac.backends.base import Meta, RepliesTo
from celeriac.brokers.base import Defers
from celeriac.context import Context
from celeriac.errors import (
    BrokerError,
    EncodeError,
    NotRegistered,
    ProtocolError,
    TaskRevokedError,
    WorkerLostError,
)
from celeriac.message import Delivery, Outgoing, TaskMessage
from celeriac.pools.base import Pool
from celeriac.protocol import decode_task
from celeriac.result import encode_exception, make_meta
from celeriac.task import Task
from celeriac.worker import followups
from celeriac.worker.batching import Batcher
from celeriac.worker.execute import Outcome
from celeriac.worker.leases import LeaseKeeper

log = logging.getLogger("celeriac.worker")

#: An ETA this close is run at once rather than sent back to wait in the broker.
ETA_SLACK = 0.05
#: task ids remembered as published again after an internal error (one retry each)
REPUBLISHED_KEPT = 10_000


class ColdShutdown(BaseException):
    """Raised inside a task that holds the loop (solo pool) by a second stop signal."""


def expand_hostname(name: str | None) -> str:
    """``-n`` as Celery reads it: ``%h`` host, ``%n`` host name part, ``%d`` domain part."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    if not name:
        return f"celeriac@{host}"
    name = name.replace("%h", host).replace("%n", short).replace("%d", domain)
    return name if "@" in name else f"{name}@{host}"


class Worker:
    """Consumes tasks from ``queues`` and runs them in ``pool``."""

    def __init__(
        self,
        app: Celeriac,
        pool: Pool,
        *,
        queues: Sequence[str] | None = None,
        prefetch_multiplier: int | None = None,
        hostname: str | None = None,
        shutdown_timeout: float | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.pool = pool
        self.queues = list(queues or [conf.task_default_queue])
        multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None \
            else prefetch_multiplier
        # As Celery: multiplier x the worker's concurrency; for a solo pool that is the
        # concurrency it was given (the CLI's default: the CPU count), though it runs one task
        # at a time
        slots = getattr(pool, "prefetch_concurrency", pool.concurrency)
        self.prefetch = max(1, int(multiplier or 1) * slots)
        self.hostname = expand_hostname(hostname)
        self.shutdown_timeout = float(
            shutdown_timeout if shutdown_timeout is not None
            else conf.get("worker_shutdown_timeout") or 30.0
        )
        self.accept = list(conf.accept_content or ["json"])
        self.fetch_timeout = 2.0
        self.processed = 0
        self.outcomes: dict[str, int] = {}
        self._stopping = False
        self._cold = False
        self._held: dict[int, Delivery] = {}  # fetched, not yet acked or given back
        self._reserved = 0  # in the prefetch window: fetched, not yet acked (see _consume)
        #: the window has room for a fetch once this many slots are free (a batch at a time,
        #: sent while the other half is still to run: see _consume)
        self._refill_at = max(1, self.prefetch // 2)
        self._drained = False  # the last fetch got fewer messages than it asked for
        self._room_waiter: asyncio.Future[None] | None = None  # the consumer's, for room
        self._released_early: set[int] = set()  # acked early: their slot is already free
        #: acked early (or being acked), their task not yet handed to the pool: if processing
        #: stops there, they are published again (the broker no longer holds them)
        self._unstarted: dict[int, Delivery] = {}
        #: ids of tasks published again after an internal error (see _give_back), oldest first
        self._republished: dict[str, None] = {}
        # Fetched messages wait in ``_ready`` (None: a runner's signal to end); runners with
        # nothing to do wait on a future each in ``_idle``. (A deque and plain futures: the
        # hand-off costs less than an asyncio.Queue's, once per message.)
        self._ready: deque[Delivery | None] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._replies: RepliesTo | None = None  # see run()
        self._stopped = asyncio.Event()
        self._started = asyncio.Event()
        self._cold_event = asyncio.Event()

    # ---- lifecycle ----------------------------------------------------------------------
    async def run(self, install_signals: bool = True) -> int:
        """Run until stopped; returns the process exit code."""
        res = await self.app.resources()
        self.broker, self.backend = res.broker, res.backend
        # the backend, if results go to the client that asked (rpc://): told each reply_to
        self._replies = res.backend if isinstance(res.backend, RepliesTo) else None
        self.lease = float(getattr(self.broker, "lease_seconds", 30.0))
        self.acks: Batcher[Delivery] = Batcher(self._write_acks, "acks")
        self.results: Batcher[tuple[Meta | None, Delivery | None]] = Batcher(
            self._write_results, "results", on_drop=self._outcomes_dropped
        )
        await self.pool.start()
        loop = asyncio.get_running_loop()
        previous = self._install_signals(loop) if install_signals else {}
        runners = [loop.create_task(self._runner()) for _ in range(self.pool.concurrency)]
        consumer = loop.create_task(self._consume())
        keeper = LeaseKeeper(self.app, self._held_now, self.lease)
        keeper.start()
        log.info("%s ready: queues %s, pool %s x%d, prefetch %d",
                 self.hostname, ",".join(self.queues), self.pool.name, self.pool.concurrency,
                 self.prefetch)
        self._started.set()
        await self._stopped.wait()
        code = await self._shutdown(consumer, runners, keeper)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return code

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> dict[int, Any]:
        """SIGTERM/SIGINT: the first asks for a warm shutdown, the second for a cold one.

        Plain Python handlers (not the loop's), because on the solo pool a task holds the
        loop: a second signal must still be able to interrupt that task.
        """
        signals = 0

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal signals
            signals += 1
            cold = signals > 1
            loop.call_soon_threadsafe(self.request_stop)
            if cold and self.pool.blocks_loop and self.pool.stats()["running"]:
                raise ColdShutdown(f"signal {signum}")

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request_stop(self) -> None:
        """First call: warm shutdown. Second call: cold shutdown."""
        if self._stopping:
            log.warning("cold shutdown: not waiting for running tasks")
            self._cold = True
            self._stopped.set()
            self._cold_event.set()
            return
        log.warning("warm shutdown: finishing running tasks (again for a cold shutdown)")
        self._stopping = True
        self._stopped.set()

    async def _shutdown(
        self, consumer: asyncio.Task[None], runners: list[asyncio.Task[None]], keeper: LeaseKeeper
    ) -> int:
        self._stopping = True
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await self._give_back_unstarted()
        for _ in runners:
            self._ready.append(None)
        self._wake_runners(len(runners))
        running: asyncio.Future[Any] = asyncio.gather(*runners, return_exceptions=True)
        cold: asyncio.Future[Any] = asyncio.ensure_future(self._cold_event.wait())
        done, _ = await asyncio.wait(
            [running, cold], timeout=self.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        cold.cancel()
        clean = running in done
        if not clean:
            log.warning("%d task(s) still running at shutdown; their messages stay unacked "
                        "(acks_late) and return after their lease", self.pool.stats()["running"])
            for runner in runners:
                runner.cancel()
        await self._give_back_unstarted()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(max(5.0, self.shutdown_timeout)):
                await self.results.flush()
                await self.acks.flush()
        await self._give_back_interrupted()
        await asyncio.to_thread(keeper.stop)
        await self.app.aclose()
        if clean:
            await self.pool.stop()
        log.info("%s stopped: %d task(s) processed; stats: %s", self.hostname, self.processed,
                 self.stats())
        return 0 if clean and not self._cold else 1

    async def _give_back_unstarted(self) -> None:
        unstarted = [d for d in self._ready if d is not None]
        ends = len(self._ready) - len(unstarted)
        self._ready.clear()
        self._ready.extend([None] * ends)  # runners' signals to end stay
        if unstarted:
            for d in unstarted:
                self._held.pop(id(d), None)
            self._reserved -= len(unstarted)
            try:
                await self.broker.requeue(unstarted)
                log.info("gave back %d prefetched message(s)", len(unstarted))
            except BrokerError as exc:
                log.error("could not give back %d message(s) (they return after their "
                          "lease): %s", len(unstarted), exc)

    async def _give_back_interrupted(self) -> None:
        """Messages still held once the writes are flushed belong to tasks that did not
        finish (cold shutdown, grace period over): under acks_late they go back now rather
        than after their lease. Those acked early whose task did not start (a runner
        cancelled between its ack and its task) are published again."""
        held = self._held
        acked = [d for key, d in self._unstarted.items() if key not in held]
        self._unstarted.clear()
        interrupted = self._held_now()
        held.clear()
        if acked:
            await self._republish(acked)
        if not interrupted:
            return
        try:
            await self.broker.requeue(interrupted)
            log.warning("gave back %d message(s) of interrupted task(s)", len(interrupted))
        except BrokerError as exc:
            log.error("could not give back %d message(s) (they return after their lease): %s",
                      len(interrupted), exc)

    async def _republish(self, deliveries: list[Delivery]) -> None:
        """Publish again messages acked early whose task did not run (a requeue would do
        nothing: the broker no longer holds them)."""
        try:
            await self.broker.publish([d.as_outgoing() for d in deliveries])
            log.warning("published again %d message(s) acked early whose task did not start",
                        len(deliveries))
        except Exception as exc:
            log.error("could not publish again %d message(s) acked early whose task did not "
                      "start; they are lost: %s", len(deliveries), exc)

    # ---- consuming ----------------------------------------------------------------------
    async def _consume(self) -> None:
        """Keep the prefetch window full, fetching in batches rather than one at a time.

        The window counts the messages held and not yet acked, as a broker's prefetch count
        does: an early-acked message (acks_late off) leaves it when its task starts, a late
        one when its outcome is written. A fetch goes out once ``_refill_at`` slots are free,
        or as soon as any is once nothing is left queued, so the next batch is on its way
        while the rest of the window runs. Most pools let this coroutine run while their
        tasks do; with a pool that holds the loop (solo), the task whose ack frees the slots
        gives it a turn to send the fetch before it runs (``_ack_early``).

        Except when the last fetch came back short (the queue was empty) and every runner
        is busy: the next fetch then waits for a free runner. An idle worker woken by one
        message thus writes that task's outcome before it asks the broker again, instead of
        making the waiting caller wait behind a fetch that finds nothing.
        """
        backoff = 0.1
        ready = self._ready
        loop = asyncio.get_running_loop()
        while not self._stopping:
            room = self.prefetch - self._reserved
            if not self._refill_due():
                self._room_waiter = waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    self._room_waiter = None
                continue
            try:
                batch = await self.broker.fetch(self.queues, room, self.fetch_timeout)
            except Exception as exc:  # a fault of ours must not stop consuming for good either
                if isinstance(exc, BrokerError):
                    log.error("fetching from the broker failed (retrying in %.1fs): %s",
                              backoff, exc)
                else:
                    log.exception("internal error while fetching (retrying in %.1fs)", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.1
            self._drained = len(batch) < room
            held = self._held
            for delivery in batch:
                held[id(delivery)] = delivery
            ready.extend(batch)
            self._reserved += len(batch)
            if self._idle:
                self._wake_runners(len(batch))

    def _refill_due(self) -> bool:
        """Whether the window has room for the next fetch: ``_refill_at`` free slots, or
        any room at all once nothing is left queued."""
        room = self.prefetch - self._reserved
        if room <= 0 or (self._drained and not self._idle):
            return False
        return room >= self._refill_at or not self._ready

    def _release(self, count: int = 1) -> None:
        self._reserved -= count
        self._poke_consumer()

    def _poke_consumer(self) -> None:
        """Let the consumer fetch, if it waits for room and a fetch is due now."""
        waiter = self._room_waiter
        if waiter is not None and not waiter.done() and self._refill_due():
            waiter.set_result(None)

    def _wake_runners(self, count: int) -> None:
        idle = self._idle
        while count > 0 and idle:
            runner = idle.popleft()
            if not runner.done():
                runner.set_result(None)
                count -= 1

    def stats(self) -> dict[str, Any]:
        """What the worker has done: outcomes by state, and its pool's figures (for prefork,
        per task name: runs, children lost, time-outs, peak memory)."""
        return {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "processed": self.processed,
            "outcomes": dict(self.outcomes),
            "prefetch": self.prefetch,
            "held": len(self._held),
            "pool": self.pool.stats(),
        }

    def _held_now(self) -> list[Delivery]:
        """The messages held right now (called from the lease keeper's thread)."""
        return list(self._held.copy().values())

    # ---- processing ---------------------------------------------------------------------
    async def _runner(self) -> None:
        ready = self._ready
        released = self._released_early
        loop = asyncio.get_running_loop()
        while True:
            if not ready:
                waiter = loop.create_future()
                self._idle.append(waiter)  # (a cancelled one is skipped by _wake_runners)
                self._poke_consumer()  # a free runner: a fetch held for one may go
                await waiter
                continue
            delivery = ready.popleft()
            if delivery is None:
                return
            try:
                await self._process(delivery)
            except (asyncio.CancelledError, ColdShutdown):
                return
            except Exception:
                log.exception("internal error while processing a message; giving it back")
                await self._give_back(delivery)
            finally:
                if released and id(delivery) in released:
                    released.discard(id(delivery))
                else:
                    self._release()

    async def _give_back(self, delivery: Delivery) -> None:
        """After an internal error: a message still held goes back to its queue; one acked
        early whose task has not started is published again; one whose task ran is not run
        again (its ack was its owner's choice: at most once)."""
        key = id(delivery)
        unstarted = self._unstarted.pop(key, None)
        if self._held.pop(key, None) is not None:
            try:
                await self.broker.requeue([delivery])
            except Exception as exc:
                log.error("could not give back a message (it returns after its lease): %s", exc)
        elif unstarted is not None:
            task_id = str(delivery.envelope.headers.get("id"))
            if task_id in self._republished:  # failed the same way before: not in a loop
                log.error("task %s failed to start again after being published again: "
                          "dropped", task_id)
                return
            self._republished[task_id] = None
            if len(self._republished) > REPUBLISHED_KEPT:
                del self._republished[next(iter(self._republished))]
            await self._republish([unstarted])
        else:
            log.warning("the message was acked and its task ran: not given back")

    async def _process(self, delivery: Delivery) -> None:
        try:
            msg = decode_task(delivery.envelope, self.accept)
        except ProtocolError as exc:
            headers = delivery.envelope.headers
            properties = delivery.envelope.properties
            task_id = headers.get("id") or properties.get("correlation_id")
            if self._replies is not None and task_id and properties.get("reply_to"):
                self._replies.reply_to(str(task_id), str(properties["reply_to"]))
            await self._dead_letter(delivery, exc, task_id, headers.get("task"))
            return
        if self._replies is not None and msg.reply_to:
            self._replies.reply_to(msg.id, msg.reply_to)
        task = self.app.tasks.get(msg.task)
        if task is None:
            unknown = NotRegistered(f"task {msg.task!r} is not registered on {self.hostname}")
            await self._dead_letter(delivery, unknown, msg.id, msg.task)
            return
        if msg.expires is not None or msg.eta is not None:
            now = time.time()
            if msg.expires is not None and msg.expires.timestamp() <= now:
                await self._expired(delivery, msg)
                return
            if msg.eta is not None and msg.eta.timestamp() - now > ETA_SLACK:
                await self._hold_in_broker(delivery, msg.eta.timestamp())
                return
        conf = self.app.conf
        acks_late = conf.task_acks_late if task.acks_late is None else task.acks_late
        if not acks_late:
            await self._ack_early(delivery, msg)
        ctx = self._context(msg, delivery)
        track = conf.task_track_started if task.track_started is None else task.track_started
        if track and not msg.ignore_result:
            await self._write_started(msg)
        if not acks_late:
            self._unstarted.pop(id(delivery), None)
        outcome = await self.pool.execute(task, ctx)
        await self._settle(delivery, msg, task, outcome, acks_late)

    async def _write_started(self, msg: TaskMessage) -> None:
        """Written before the task starts (the solo pool holds the loop while it runs), on a
        best-effort basis: a task whose STARTED state cannot be written runs all the same
        (its outcome is written after it, and retried)."""
        meta = make_meta(msg.id, states.STARTED, {"pid": os.getpid(), "hostname": self.hostname})
        try:
            await self.results.submit((meta, None))
        except Exception as exc:
            log.warning("STARTED state of %s[%s] not written (%s); running it anyway",
                        msg.task, msg.id, exc)

    async def _ack_early(self, delivery: Delivery, msg: TaskMessage) -> None:
        """Ack before the task runs (acks_late off); its slot in the prefetch window is then
        free, as a broker's prefetch count counts unacked messages."""
        self._unstarted[id(delivery)] = delivery
        try:
            await self.acks.submit(delivery)
        except Exception as exc:
            # The ack may have landed before the connection broke (Redis killed between
            # applying it and replying): not running the task could lose it. Run it; if the
            # ack did not land, the message returns after its lease (at least once).
            log.warning("ack of %s[%s] not confirmed (%s); running it anyway",
                        msg.task, msg.id, exc)
            self._held.pop(id(delivery), None)
        self._released_early.add(id(delivery))
        self._release()
        if self._room_waiter is not None and self._refill_due():
            # A pool that holds the loop while a task runs (solo) gives the consumer no turn
            # until its queue is empty: let it send its fetch now, to be on its way while
            # this task runs, rather than after.
            await asyncio.sleep(0)

    def _context(self, msg: TaskMessage, delivery: Delivery) -> Context:
        return Context(
            id=msg.id, task=msg.task, args=msg.args, kwargs=msg.kwargs, retries=msg.retries,
            eta=msg.eta, expires=msg.expires, hostname=self.hostname,
            delivery_info={"exchange": "", "routing_key": delivery.queue,
                           "priority": delivery.priority, "redelivered": delivery.redelivered},
            root_id=msg.root_id, parent_id=msg.parent_id, group=msg.group,
            group_index=msg.group_index, correlation_id=msg.correlation_id,
            reply_to=msg.reply_to, origin=msg.origin, timelimit=msg.timelimit,
            callbacks=msg.callbacks, errbacks=msg.errbacks, chain=msg.chain, chord=msg.chord,
            headers=msg.extra_headers, ignore_result=msg.ignore_result, priority=msg.priority,
            shadow=msg.shadow,
        )

    async def _settle(
        self, delivery: Delivery, msg: TaskMessage, task: Task[Any, Any], outcome: Outcome,
        acks_late: bool,
    ) -> None:
        """Record the outcome, send what follows from it, and ack (late) or give back."""
        self.processed += 1
        self.outcomes[outcome.status] = self.outcomes.get(outcome.status, 0) + 1
        status = outcome.status
        meta: Meta | None = None
        follow: list[Outgoing] = []
        if status == states.SUCCESS:
            log.info("Task %s[%s] succeeded in %.6fs: %r", msg.task, msg.id, outcome.runtime,
                     outcome.value)
            if not msg.ignore_result:
                meta = self._meta(msg, states.SUCCESS, outcome.value, None)
            if msg.callbacks or msg.chain:
                follow = followups.success_messages(self.app, msg, outcome.value)
        elif status == states.FAILURE:
            log.error("Task %s[%s] raised unexpected: %r", msg.task, msg.id, outcome.value)
            store = not msg.ignore_result or self.app.conf.task_store_errors_even_if_ignored
            if store:
                meta = self._meta(msg, states.FAILURE, encode_exception(outcome.value),
                                  outcome.traceback)
            follow = followups.failure_messages(self.app, msg)
        elif status == states.RETRY and outcome.retry is not None:
            log.info("Task %s[%s] retry: %s", msg.task, msg.id, outcome.retry)
            follow = [followups.retry_message(self.app, task, msg, outcome.retry, delivery.queue)]
            if not msg.ignore_result:
                meta = self._meta(msg, states.RETRY, encode_exception(outcome.value),
                                  outcome.traceback)
        elif status == states.REJECTED and outcome.reject is not None:
            await self._rejected(delivery, msg, outcome, acks_late)
            return
        if follow:  # retried per task_publish_retry_policy, as the caller's sends are
            try:
                await self.app.publish(follow)
            except Exception:
                # acked late, the message goes back and all of this happens again; acked
                # early, the task has run all the same: its outcome is kept
                if meta is not None and not acks_late:
                    self.results.add((meta, None))
                raise
        if len(self.results) > self.prefetch * 4:
            await self.results.flush()
        if meta is not None or acks_late:
            self.results.add((meta, delivery if acks_late else None))

    def _meta(self, msg: TaskMessage, status: str, result: Any, tb: str | None) -> Meta:
        if self.app.conf.result_extended:
            return make_meta(msg.id, status, result, tb, name=msg.task, args=list(msg.args),
                             kwargs=msg.kwargs, worker=self.hostname, retries=msg.retries)
        return make_meta(msg.id, status, result, tb)

    async def _rejected(
        self, delivery: Delivery, msg: TaskMessage, outcome: Outcome, acks_late: bool
    ) -> None:
        reject = outcome.reject
        assert reject is not None
        if not acks_late:
            log.warning("Task %s[%s] rejected (already acked): %s", msg.task, msg.id, reject.reason)
            return
        self._held.pop(id(delivery), None)
        limit = int(self.app.conf.get("worker_max_deliveries") or 0)
        if reject.requeue and limit and delivery.deliveries >= limit:
            log.warning("Task %s[%s] rejected for the %d-th time: dead-lettered instead of "
                        "requeued", msg.task, msg.id, delivery.deliveries)
            await self.broker.dead_letter(
                delivery, f"rejected and requeued {delivery.deliveries} times: {reject.reason}")
            if isinstance(outcome.value, WorkerLostError) and not msg.ignore_result:
                # its process died each time: the caller sees why instead of waiting forever
                self.results.add((self._meta(msg, states.FAILURE, encode_exception(outcome.value),
                                             outcome.traceback), None))
        elif reject.requeue:
            log.info("Task %s[%s] rejected and requeued: %s", msg.task, msg.id, reject.reason)
            await self.broker.requeue([delivery])
        else:
            log.warning("Task %s[%s] rejected: %s", msg.task, msg.id, reject.reason)
            await self.broker.dead_letter(delivery, f"rejected by the task: {reject.reason}")

    # ---- poison, expiry, eta ----------------------------------------------------------------
    async def _dead_letter(
        self, delivery: Delivery, exc: Exception, task_id: str | None, task_name: str | None
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        log.error("dead-lettering message %s (task %s) from %s: %s",
                  task_id or "<no id>", task_name or "<unknown>", delivery.queue, reason)
        if task_id and self.backend is not None:
            meta = make_meta(str(task_id), states.FAILURE, encode_exception(exc), None)
            with contextlib.suppress(Exception):
                await self.backend.store([meta])
        self._held.pop(id(delivery), None)
        await self.broker.dead_letter(delivery, reason)

    async def _expired(self, delivery: Delivery, msg: TaskMessage) -> None:
        log.info("Task %s[%s] expired, not run", msg.task, msg.id)
        exc = TaskRevokedError("expired")
        self.results.add((make_meta(msg.id, states.REVOKED, encode_exception(exc), None),
                          delivery))

    async def _hold_in_broker(self, delivery: Delivery, eta: float) -> None:
        """A message that is not due yet goes back to wait in the broker, not in memory."""
        if isinstance(self.broker, Defers):  # the copy and the ack in one step
            await self.broker.defer(delivery, eta)
            self._held.pop(id(delivery), None)
            return
        await self.broker.publish([delivery.as_outgoing(eta)])
        await self.acks.submit(delivery)

    # ---- writing ------------------------------------------------------------------------
    async def _write_acks(self, deliveries: list[Delivery]) -> None:
        await self.broker.ack(deliveries)
        for d in deliveries:
            self._held.pop(id(d), None)

    def _outcomes_dropped(self, items: list[tuple[Meta | None, Delivery | None]]) -> None:
        """Outcomes not written for ``results.retry_for``: the messages of those acked late
        are let go (no longer held, their lease lapses), so the broker hands them out again
        (at least once), rather than being kept alive unacked for as long as this runs."""
        deliveries = [d for _, d in items if d is not None]
        for d in deliveries:
            self._held.pop(id(d), None)
        if deliveries:
            log.error("%d message(s) whose outcome was not written return after their lease",
                      len(deliveries))

    async def _write_results(self, items: list[tuple[Meta | None, Delivery | None]]) -> None:
        metas = [meta for meta, _ in items if meta is not None]
        if metas and self.backend is not None:
            await self._store_metas(metas)
        to_ack = [d for _, d in items if d is not None]
        if to_ack:
            await self._write_acks(to_ack)

    async def _store_metas(self, metas: list[Meta]) -> None:
        assert self.backend is not None
        try:
            await self.backend.store(metas)
            return
        except Exception as exc:
            if len(metas) == 1 and not _is_encoding_error(exc):
                raise
        for meta in metas:  # find the one that cannot be stored; store the others
            try:
                await self.backend.store([meta])
            except Exception as exc:
                if not _is_encoding_error(exc):
                    raise
                log.error("result of %s cannot be stored: %s", meta["task_id"], exc)
                await self.backend.store([make_meta(
                    meta["task_id"], states.FAILURE,
                    encode_exception(EncodeError(str(exc))), None)])


def _is_encoding_error(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc
    return isinstance(cause, TypeError | ValueError | OverflowError)

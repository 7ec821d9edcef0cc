"""The app: configuration, the task registry, and the way out to the broker.

``Celeriac`` (alias ``Celery``) holds the settings (``app.conf``), the registered tasks
(``app.tasks``), and one broker and one result backend per event loop (``app.resources()``).
Sending a task is ``send_task``: route it, build the protocol v2 message, publish it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from celeriac.backends.base import BlockingWaiter, ResultBackend
from celeriac.brokers.base import BlockingPublisher, Broker, ConfirmWindow
from celeriac.config import Config
from celeriac.errors import BrokerConnectionError, ConfigurationError, NotRegistered
from celeriac.message import Outgoing, TaskMessage, build_outgoing, plain_task_message
from celeriac.protocol import encode_many, encode_task
from celeriac.result import AsyncResult
from celeriac.routing import ROUTE_KEYS, compile_routes, is_static_router, resolve_route
from celeriac.task import SEND_OPTIONS, TASK_OPTIONS, check_options, make_task
from celeriac.task import Task as BaseTask
from celeriac.utils.ids import new_id
from celeriac.utils.sync import on_thread_end, run_sync, thread_loop

if TYPE_CHECKING:
    from celeriac.canvas import Signature

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_URL = "sqlite://"

_default_app: Celeriac | None = None
_all_apps: weakref.WeakSet[Celeriac] = weakref.WeakSet()
_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []
_registry_lock = threading.Lock()


def default_app() -> Celeriac:
    """The app used by tasks not bound to one (``shared_task``): the last one created."""
    global _default_app
    if _default_app is None:
        _default_app = Celeriac("default")
    return _default_app


@dataclass
class LoopResources:
    """One event loop's connections."""

    broker: Broker
    backend: ResultBackend | None
    connected: bool = False  # the broker
    backend_connected: bool = False
    connecting: asyncio.Lock | None = None  # held while connecting (see Celeriac._connect)
    #: the broker, if it can publish from sync code without a loop turn
    blocking: BlockingPublisher | None = None
    #: the backend, if it can wait for a result from sync code without a loop turn
    waiter: BlockingWaiter | None = None

    def __post_init__(self) -> None:
        if isinstance(self.broker, BlockingPublisher):
            self.blocking = self.broker
        if isinstance(self.backend, BlockingWaiter):
            self.waiter = self.backend


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_datetime(value: Any, now: datetime, what: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, timedelta):
        return now + value
    if isinstance(value, int | float):
        return now + timedelta(seconds=value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigurationError(f"{what}: not an ISO-8601 time: {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise ConfigurationError(f"{what} must be a datetime or a number of seconds, not {value!r}")


class Celeriac:
    """A celeriac application."""

    Task: type[BaseTask[Any, Any]] = BaseTask

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] = (),
        *,
        task_cls: type[BaseTask[Any, Any]] | None = None,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        global _default_app
        self.main = main
        self.conf = Config()
        if settings:
            self.conf.update(settings)
        if broker is not None:
            self.conf.broker_url = broker
        if backend is not None:
            self.conf.result_backend = backend
        self.include = list(include)
        if task_cls is not None:
            self.Task = task_cls
        self.tasks: dict[str, BaseTask[Any, Any]] = {}
        self.oid = str(uuid.uuid4())
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self._resources: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopResources] = (
            weakref.WeakKeyDictionary()
        )
        self._resources_lock = threading.Lock()
        on_thread_end(self._close_thread_loop)
        self._routers: list[Callable[..., Any]] | None = None
        self._routes_source: Any = None
        self._static_routes: dict[tuple[Any, ...], tuple[Any, tuple[str, int, str, str]]] = {}
        with _registry_lock:
            _all_apps.add(self)
            shared = list(_shared_tasks)
        for fun, options in shared:
            self._register(fun, options)
        if set_as_current:
            _default_app = self

    def __repr__(self) -> str:
        return f"<Celeriac {self.main or '__main__'} at {id(self):#x}>"

    # ---- configuration ------------------------------------------------------------------
    def config_from_object(
        self, obj: Any, namespace: str | None = None, *, silent: bool = False, force: bool = True
    ) -> None:
        """Read settings from an object, a module, a dict or ``"module[:attr]"``."""
        self.conf.from_object(obj, namespace=namespace, silent=silent)

    def config_from_envvar(self, variable_name: str, silent: bool = False) -> None:
        module = os.environ.get(variable_name)
        if not module:
            if silent:
                return
            raise ConfigurationError(f"environment variable {variable_name} is not set")
        self.config_from_object(module, silent=silent)

    # ---- tasks --------------------------------------------------------------------------
    @overload
    def task(self, fun: Callable[P, R], /) -> BaseTask[P, R]: ...

    @overload
    def task(self, /, **options: Any) -> Callable[[Callable[P, R]], BaseTask[P, R]]: ...

    def task(self, fun: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., bind=True)``."""
        check_options(list(options), TASK_OPTIONS, "task")
        if fun is not None:
            if not callable(fun):
                raise ConfigurationError(f"@app.task needs a function, got {fun!r}")
            return self._register(fun, options)

        def decorate(f: Callable[..., Any]) -> BaseTask[Any, Any]:
            return self._register(f, options)

        return decorate

    def _register(self, fun: Callable[..., Any], options: dict[str, Any]) -> BaseTask[Any, Any]:
        if isinstance(fun, BaseTask):
            fun = fun.__wrapped__
        if not options.get("name") and fun.__module__ == "__main__" and self.main:
            options = {**options, "name": f"{self.main}.{fun.__qualname__}"}
        task = make_task(self, fun, options)
        self.tasks[task.name] = task
        return task

    def register_task(self, task: BaseTask[Any, Any]) -> BaseTask[Any, Any]:
        task.app = self
        self.tasks[task.name] = task
        return task

    def autodiscover_tasks(
        self, packages: Iterable[str] | Callable[[], Iterable[str]] = (), related_name: str = "tasks"
    ) -> None:
        """Import ``<package>.<related_name>`` for each package that has one."""
        names = packages() if callable(packages) else packages
        for package in names:
            try:
                importlib.import_module(f"{package}.{related_name}")
            except ModuleNotFoundError as exc:
                if exc.name not in (f"{package}.{related_name}", package):
                    raise

    def import_modules(self) -> None:
        """Import the modules named by ``include``, ``imports`` and ``include`` settings."""
        for module in [*self.include, *(self.conf.imports or ()), *(self.conf.include or ())]:
            importlib.import_module(module)

    def loader_import_default_modules(self) -> None:
        self.import_modules()

    def get_task(self, name: str) -> BaseTask[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(f"task {name!r} is not registered") from None

    # ---- connections --------------------------------------------------------------------
    def _new_resources(self) -> LoopResources:
        from celeriac.backends import backend_from_url
        from celeriac.brokers import broker_from_url

        conf = self.conf
        broker = broker_from_url(
            conf.broker_url or DEFAULT_URL, **dict(conf.broker_transport_options or {})
        )
        adopt = getattr(broker, "adopt_settings", None)
        if adopt is not None:  # brokers that declare topology (AMQP) read task_queues
            adopt(conf)
        backend_url = conf.result_backend
        if backend_url is None:
            backend_url = DEFAULT_URL
        backend = backend_from_url(
            backend_url,
            expires=_seconds(conf.result_expires),
            serializer=conf.result_serializer,
            **dict(conf.result_backend_transport_options or {}),
        )
        adopt_app = getattr(backend, "adopt_app", None)
        if adopt_app is not None:  # rpc:// needs the broker URL and the app's reply queue (oid)
            adopt_app(self)
        return LoopResources(broker, backend)

    async def resources(self, *, broker: bool = True, backend: bool = True) -> LoopResources:
        """The running loop's broker and backend, each connected on first use (only those
        asked for: sending needs no result backend up, reading a result no broker)."""
        loop = asyncio.get_running_loop()
        res = self._resources.get(loop)
        if res is None:
            with self._resources_lock:
                res = self._resources.get(loop)
                if res is None:
                    res = self._new_resources()
                    self._resources[loop] = res
        # rpc://: the reply queue must exist before a task goes out, or its result is lost
        backend = backend or getattr(res.backend, "needed_to_send", False)
        if (broker and not res.connected) or (
            backend and not res.backend_connected and res.backend is not None
        ):
            await self._connect(res, broker, backend)
        return res

    @staticmethod
    async def _connect(res: LoopResources, broker: bool, backend: bool) -> None:
        """Connect what is asked for, once: coroutines arriving together (an async web app's
        first requests) wait for the first one's connect instead of each opening its own."""
        if res.connecting is None:
            res.connecting = asyncio.Lock()
        async with res.connecting:
            if broker and not res.connected:
                await res.broker.connect()
                res.connected = True
            if backend and not res.backend_connected and res.backend is not None:
                await res.backend.connect()
                res.backend_connected = True

    async def broker(self) -> Broker:
        return (await self.resources(backend=False)).broker

    async def backend(self) -> ResultBackend | None:
        return (await self.resources(broker=False)).backend

    async def aclose(self) -> None:
        """Close this loop's connections."""
        res = self._resources.pop(asyncio.get_running_loop(), None)
        if res is not None:
            await self._close_resources(res)

    @staticmethod
    async def _close_resources(res: LoopResources) -> None:
        if res.connected:
            await res.broker.close()
        if res.backend_connected and res.backend is not None:
            await res.backend.close()

    def _close_thread_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """A thread that ended had connections on its private loop: close them."""
        res = self._resources.pop(loop, None)
        if res is not None and not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(asyncio.wait_for(self._close_resources(res), 10))

    def close(self) -> None:
        run_sync(self.aclose())

    # ---- sending ------------------------------------------------------------------------
    @property
    def routers(self) -> list[Callable[..., Any]]:
        """``task_routes`` compiled; compiled again whenever the setting is replaced."""
        source = self.conf.task_routes
        if self._routers is None or self._routes_source is not source:
            self._routers = compile_routes(source)
            self._routes_source = source
            self._static_routes.clear()
        return self._routers

    def _route(
        self, name: str, task: BaseTask[Any, Any] | None, args: Any, kwargs: Any,
        options: dict[str, Any],
    ) -> tuple[str, int, str, str]:
        """(queue, priority, exchange, routing_key) by Celery's precedence (see routing.py)."""
        routers = self.routers
        explicit = bool(options) and any(options.get(k) is not None for k in ROUTE_KEYS)
        cacheable = not explicit and all(is_static_router(r) for r in routers)
        conf = self.conf
        if cacheable:
            key = (name, conf.task_default_queue, conf.task_default_priority)
            hit = self._static_routes.get(key)
            if hit is not None and hit[0] is task:
                return hit[1]
        route: dict[str, Any] = {}
        if task is not None:
            for k in ROUTE_KEYS:
                value = getattr(task, k, None)
                if value is not None:
                    route[k] = value
        if "queue" not in route and not options.get("queue") and routers:
            route = {**resolve_route(routers, name, args or (), kwargs or {}, options, task),
                     **route}
        for k in ROUTE_KEYS:
            if options.get(k) is not None:
                route[k] = options[k]
        queue = route.get("queue") or conf.task_default_queue
        priority = route.get("priority")
        if priority is None:
            priority = conf.task_default_priority or 0
        result = (queue, int(priority), route.get("exchange") or "", route.get("routing_key") or queue)
        if cacheable:
            self._static_routes[key] = (task, result)
        return result

    def prepare(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        task: BaseTask[Any, Any] | None = None,
        **options: Any,
    ) -> tuple[TaskMessage, Outgoing]:
        """Build the message for one call and address it: no I/O."""
        if task is None:
            task = self.tasks.get(name)
        conf = self.conf
        get = options.get
        eta = expires_at = None
        if options:
            check_options(options, SEND_OPTIONS, "apply_async")
            countdown = get("countdown")
            if countdown is not None or get("eta") is not None:
                now = _utcnow()
                eta = (now + timedelta(seconds=float(countdown)) if countdown is not None
                       else _as_datetime(get("eta"), now, "eta"))
        expires = get("expires")
        if expires is None and task is not None:
            expires = task.expires
        if expires is not None:
            expires_at = _as_datetime(expires, _utcnow(), "expires")
        queue, priority, exchange, routing_key = self._route(name, task, args, kwargs, options)

        if task is not None:
            time_limit = get("time_limit", task.time_limit)
            soft_time_limit = get("soft_time_limit", task.soft_time_limit)
            serializer = get("serializer") or task.serializer or conf.task_serializer
            compression = get("compression") or task.compression or conf.task_compression
            ignore_result = get("ignore_result")
            if ignore_result is None:
                ignore_result = (conf.task_ignore_result if task.ignore_result is None
                                 else task.ignore_result)
        else:
            time_limit = get("time_limit")
            soft_time_limit = get("soft_time_limit")
            serializer = get("serializer") or conf.task_serializer
            compression = get("compression") or conf.task_compression
            ignore_result = get("ignore_result")
            if ignore_result is None:
                ignore_result = conf.task_ignore_result
        task_id = get("task_id") or new_id()
        if options:
            message = TaskMessage(
                id=task_id,
                task=name,
                args=tuple(args or ()),
                kwargs=dict(kwargs or {}),
                root_id=get("root_id") or task_id,
                parent_id=get("parent_id"),
                group=get("group_id"),
                group_index=get("group_index"),
                shadow=get("shadow"),
                eta=eta,
                expires=expires_at,
                retries=int(get("retries") or 0),
                timelimit=(time_limit, soft_time_limit),
                origin=self.origin,
                ignore_result=bool(ignore_result),
                replaced_task_nesting=int(get("replaced_task_nesting") or 0),
                stamps=dict(get("stamps") or {}),
                extra_headers=dict(get("headers") or {}),
                callbacks=_signatures(get("link")),
                errbacks=_signatures(get("link_error")),
                chain=get("chain"),
                chord=get("chord"),
                reply_to=get("reply_to") or self.oid,
                correlation_id=task_id,
                priority=priority,
                delivery_mode=int(get("delivery_mode") or 2),
            )
        else:  # the common case, kept short: delay(*args)
            message = plain_task_message(
                task_id, name, tuple(args or ()), dict(kwargs or {}), expires_at,
                (time_limit, soft_time_limit), self.origin, bool(ignore_result), self.oid,
                priority,
            )
        envelope = encode_task(message, serializer=serializer, compression=compression)
        outgoing = build_outgoing(queue, envelope, priority,
                                  None if eta is None else eta.timestamp(), exchange, routing_key)
        return message, outgoing

    async def asend_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name; returns once the broker holds the message."""
        task = options.pop("task", None)
        message, outgoing = self.prepare(name, args, kwargs, task=task, **options)
        await self.publish([outgoing], options.get("retry"), options.get("retry_policy"))
        return AsyncResult(message.id, app=self, task_name=name)

    def _publish_pauses(self, retry: bool | None,
                        retry_policy: dict[str, Any] | None) -> Iterator[float]:
        """The pauses between publish attempts, per ``task_publish_retry_policy``."""
        conf = self.conf
        if retry is None:
            retry = conf.task_publish_retry
        if not retry:
            return
        policy = {**(conf.task_publish_retry_policy or {}), **(retry_policy or {})}
        max_retries = policy.get("max_retries", 3)
        start = float(policy.get("interval_start", 0))
        step = float(policy.get("interval_step", 0.2))
        most = float(policy.get("interval_max", 0.2))
        attempt = 0
        while max_retries is None or attempt < max_retries:
            yield min(most, start + attempt * step)
            attempt += 1

    async def publish(
        self, messages: list[Outgoing], retry: bool | None = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> None:
        """Publish, retrying connection failures per ``task_publish_retry_policy``; then
        raise ``BrokerConnectionError`` naming the attempts made."""
        pauses = self._publish_pauses(retry, retry_policy)
        attempts = 1
        while True:
            try:
                broker = await self.broker()
                await broker.publish(messages)
                return
            except BrokerConnectionError as exc:
                pause = next(pauses, None)
                if pause is None:
                    raise _publish_failed(exc, attempts) from exc
                await asyncio.sleep(pause)
                attempts += 1

    def publish_sync(
        self, messages: list[Outgoing], retry: bool | None = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> None:
        """``publish`` for sync code: on the broker's blocking connection when it has one
        (``BlockingPublisher``: no event loop turn per call), else through ``run_sync``."""
        try:
            broker = self._blocking_broker()
        except BrokerConnectionError:
            broker = None  # cannot connect: ``publish`` retries that per the policy
        if broker is None:
            run_sync(self.publish(messages, retry, retry_policy))
            return
        pauses: Iterator[float] | None = None  # made on the first failure: most calls have none
        attempts = 1
        while True:
            try:
                if not broker.publish_blocking(messages):
                    run_sync(self.publish(messages, retry, retry_policy))
                return
            except BrokerConnectionError as exc:
                if pauses is None:
                    pauses = self._publish_pauses(retry, retry_policy)
                pause = next(pauses, None)
                if pause is None:
                    raise _publish_failed(exc, attempts) from exc
                time.sleep(pause)
                attempts += 1

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker confirmed every message this thread sent from sync code.

        Only RabbitMQ's ``confirm_window`` lets a send return before its confirm; elsewhere a
        send is confirmed when it returns, and this returns at once. Raises ``BrokerError``
        for messages the broker did not take (each was logged when it was given up)."""
        res = self._resources.get(asyncio._get_running_loop() or thread_loop())
        if res is not None and res.connected and isinstance(res.broker, ConfirmWindow):
            res.broker.flush_blocking(timeout)

    def _blocking_broker(self) -> BlockingPublisher | None:
        """This thread's broker (the running loop's, else this thread's loop's, connected on
        first use) if it can publish without an event loop turn."""
        loop = asyncio._get_running_loop() or thread_loop()  # None, not an exception, if none
        res = self._resources.get(loop)
        if res is None or not res.connected:
            if loop.is_running():
                return None  # not connected here yet, and this loop cannot be run from here
            res = run_sync(self.resources(backend=False))
        return res.blocking

    def _blocking_waiter(self) -> BlockingWaiter | None:
        """This thread's result backend if it can wait for a result from sync code without
        an event loop turn (none runs in this thread)."""
        if asyncio._get_running_loop() is not None:
            return None
        res = self._resources.get(thread_loop())
        if res is None or not res.backend_connected:
            res = run_sync(self.resources(broker=False))
        waiter = res.waiter
        return waiter if waiter is not None and waiter.waits_blocking else None

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send a task by name (it need not be registered here)."""
        task = options.pop("task", None)
        message, outgoing = self.prepare(name, args, kwargs, task=task, **options)
        self.publish_sync([outgoing], options.get("retry"), options.get("retry_policy"))
        return AsyncResult(message.id, app=self, task_name=name)

    async def asend_many(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        """Send many calls in one broker round trip (batched publish).

        Consecutive calls of one task without options of their own share their headers
        (``protocol.encode_many``): the fast path of ``[task.s(i) for i in ...]``.
        """
        ids, outgoing = self._prepare_many(signatures)
        await self.publish(outgoing)
        return self._results(ids)

    def send_many(self, signatures: Iterable[Signature]) -> list[AsyncResult[Any]]:
        ids, outgoing = self._prepare_many(signatures)
        self.publish_sync(outgoing)
        return self._results(ids)

    def _results(self, ids: list[tuple[str, str]]) -> list[AsyncResult[Any]]:
        return [AsyncResult(task_id, app=self, task_name=name) for task_id, name in ids]

    def _prepare_many(self, signatures: Iterable[Signature]
                      ) -> tuple[list[tuple[str, str]], list[Outgoing]]:
        """(task id, name) and the message of each call, runs of one task from one template."""
        sigs = list(signatures)
        ids: list[tuple[str, str]] = []
        outgoing: list[Outgoing] = []
        i = 0
        while i < len(sigs):
            sig = sigs[i]
            j = i + 1
            if not sig["options"]:
                while j < len(sigs) and not sigs[j]["options"] and sigs[j]["task"] == sig.task:
                    j += 1
            if j - i == 1:
                message, out = self.prepare(sig.task, sig["args"], sig["kwargs"],
                                            task=self.tasks.get(sig.task),
                                            **_send_options(sig["options"]))
                ids.append((message.id, sig.task))
                outgoing.append(out)
            else:
                self._prepare_run(sig.task, sigs[i:j], ids, outgoing)
            i = j
        return ids, outgoing

    def _prepare_run(self, name: str, run: list[Signature], ids: list[tuple[str, str]],
                     outgoing: list[Outgoing]) -> None:
        """Calls of one task with the same (default) options, encoded from one template."""
        task = self.tasks.get(name)
        first, template = self.prepare(name, run[0]["args"], run[0]["kwargs"], task=task)
        calls = [(new_id(), sig["args"], sig["kwargs"]) for sig in run[1:]]
        envelopes = encode_many(
            replace(first, root_id=None), calls,
            serializer=(task.serializer if task else None) or self.conf.task_serializer,
            compression=(task.compression if task else None) or self.conf.task_compression,
        )
        ids.append((first.id, name))
        outgoing.append(template)
        queue, priority, not_before = template.queue, template.priority, template.not_before
        exchange, routing_key = template.exchange, template.routing_key
        ids += [(task_id, name) for task_id, _, _ in calls]
        outgoing += [build_outgoing(queue, envelope, priority, not_before, exchange, routing_key)
                     for envelope in envelopes]

    # ---- results ------------------------------------------------------------------------
    def AsyncResult(self, task_id: str, task_name: str | None = None) -> AsyncResult[Any]:
        return AsyncResult(task_id, app=self, task_name=task_name)

    def signature(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Signature:
        from celeriac.canvas import Signature

        return Signature(name, args, kwargs, options, app=self)

    async def apurge(self, queues: Sequence[str] | None = None) -> int:
        broker = await self.broker()
        return await broker.purge(list(queues or [self.conf.task_default_queue]))

    def purge(self, queues: Sequence[str] | None = None) -> int:
        return run_sync(self.apurge(queues))


Celery = Celeriac


def _publish_failed(exc: BrokerConnectionError, attempts: int) -> BrokerConnectionError:
    return BrokerConnectionError(f"publishing failed after {attempts} attempt(s): {exc}")


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _signatures(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    return [dict(item) for item in items]


def _send_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in SEND_OPTIONS}


def shared_task(fun: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """A task registered with every app, present and future (for reusable modules)."""
    check_options(list(options), TASK_OPTIONS, "task")

    def decorate(f: Callable[..., Any]) -> BaseTask[Any, Any]:
        with _registry_lock:
            _shared_tasks.append((f, options))
            apps = list(_all_apps)
        task: BaseTask[Any, Any] | None = None
        for app in apps:
            registered = app._register(f, options)
            if app is _default_app:
                task = registered
        if task is None:
            # Not bound to an app: resolves the default app when used.
            task = make_task(None, f, options)
        return task

    if fun is not None:
        return decorate(fun)
    return decorate

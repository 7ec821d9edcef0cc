"""Tasks: ``@app.task`` turns a function into a ``Task``; its options are checked right away.

A ``Task`` is called like its function (runs it here and now), sent with ``delay`` /
``apply_async`` (sync) or ``adelay`` / ``aapply_async`` (async), and run eagerly with
``apply``. Inside a run, ``self.request`` describes the call and ``self.retry`` asks for
another try through the broker.
"""

from __future__ import annotations

import difflib
import inspect
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from celeriac.canvas import Signature
from celeriac.context import Context, current_request
from celeriac.errors import ConfigurationError, MaxRetriesExceededError, Retry

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.result import AsyncResult, EagerResult

P = ParamSpec("P")
R = TypeVar("R")

#: Options ``@app.task(...)`` accepts; anything else fails at decoration.
TASK_OPTIONS = frozenset(
    {
        "name", "bind", "base", "serializer", "compression", "acks_late", "acks_on_failure_or_timeout",
        "reject_on_worker_lost", "ignore_result", "store_errors_even_if_ignored", "max_retries",
        "default_retry_delay", "autoretry_for", "dont_autoretry_for", "retry_backoff",
        "retry_backoff_max", "retry_jitter", "retry_kwargs", "queue", "routing_key", "exchange",
        "priority", "track_started", "time_limit", "soft_time_limit", "rate_limit", "expires",
        "throws", "typing", "shared", "trail", "send_events", "pydantic", "lazy",
    }
)

#: Options ``apply_async`` accepts (besides ``args`` and ``kwargs``).
SEND_OPTIONS = frozenset(
    {
        "countdown", "eta", "expires", "queue", "routing_key", "exchange", "priority",
        "serializer", "compression", "headers", "task_id", "link", "link_error", "ignore_result",
        "retry", "retry_policy", "time_limit", "soft_time_limit", "shadow", "root_id",
        "parent_id", "group_id", "group_index", "chain", "chord", "retries", "reply_to",
        "add_to_parent", "exchange_type", "delivery_mode", "stamped_headers", "stamps",
        "replaced_task_nesting", "not_before",
    }
)


def check_options(given: Iterable[str], known: frozenset[str], what: str) -> None:
    """Fail on the first unknown option, suggesting the nearest known one."""
    if known.issuperset(given):
        return
    for name in given:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigurationError(f"unknown {what} option {name!r}{hint}")


def positional_arity(sig: inspect.Signature, bound: bool) -> tuple[int, int] | None:
    """(fewest, most) positional arguments for which a call with no keyword arguments binds
    to ``sig`` (``bound``: the task itself is passed first); None when the count alone does
    not decide it (a keyword-only parameter without a default)."""
    fewest = most = 0
    for param in sig.parameters.values():
        kind = param.kind
        if kind is param.POSITIONAL_ONLY or kind is param.POSITIONAL_OR_KEYWORD:
            most += 1
            if param.default is param.empty:
                fewest = most
        elif kind is param.VAR_POSITIONAL:
            most = sys.maxsize
        elif kind is param.KEYWORD_ONLY and param.default is param.empty:
            return None
    if bound:
        if most == 0:
            return None
        fewest, most = max(fewest - 1, 0), most - 1
    return fewest, most


class Task(Generic[P, R]):
    """A registered task. Subclass it and pass ``base=`` to share behaviour between tasks."""

    name: str = ""
    app: Celeriac | None = None
    bind: bool = False
    typing: bool = True
    serializer: str | None = None
    compression: str | None = None
    acks_late: bool | None = None
    acks_on_failure_or_timeout: bool | None = None
    reject_on_worker_lost: bool | None = None
    ignore_result: bool | None = None
    store_errors_even_if_ignored: bool | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    retry_kwargs: dict[str, Any] = {}
    queue: str | None = None
    routing_key: str | None = None
    exchange: str | None = None
    priority: int | None = None
    track_started: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | None = None
    expires: float | datetime | None = None
    throws: tuple[type[BaseException], ...] = ()
    send_events: bool = True
    trail: bool = True
    #: (fewest, most) positional arguments that bind to the function when no keyword
    #: argument is given, if that is all it takes (see ``positional_arity``)
    _arity: tuple[int, int] | None = None

    def __init__(self) -> None:
        self._fun: Callable[..., Any] | None = None
        self.is_async = False

    # ---- set-up -------------------------------------------------------------------------
    def _setup(self, app: Celeriac | None, fun: Callable[..., Any], options: dict[str, Any]) -> None:
        for key, value in options.items():
            if key in ("base", "shared", "lazy", "pydantic"):
                continue
            setattr(self, key, value)
        self.app = app
        self._fun = fun
        self.is_async = inspect.iscoroutinefunction(fun)
        self.__doc__ = fun.__doc__
        self.__name__ = getattr(fun, "__name__", self.name)
        self.__module__ = getattr(fun, "__module__", __name__)
        self.__wrapped__: Callable[..., Any] = fun
        if self.typing:
            try:
                self._signature: inspect.Signature | None = inspect.signature(fun)
            except (TypeError, ValueError):
                self._signature = None
        else:
            self._signature = None
        if self._signature is not None:
            self._arity = positional_arity(self._signature, self.bind)

    def _app(self) -> Celeriac:
        if self.app is not None:
            return self.app
        from celeriac.app import default_app

        return default_app()

    # ---- running here -------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        assert self._fun is not None, "task has no function"
        if self.bind:
            return self._fun(self, *args, **kwargs)
        return self._fun(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.run(*args, **kwargs)  # type: ignore[no-any-return]

    @property
    def request(self) -> Context:
        req = current_request.get()
        return req if req is not None else Context()

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Fail early, on the caller's side, when the arguments cannot bind to the task."""
        sig = self._signature
        if sig is None:
            return
        arity = self._arity
        if arity is not None and not kwargs and arity[0] <= len(args) <= arity[1]:
            return
        try:
            if self.bind:
                sig.bind(None, *args, **kwargs)
            else:
                sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}: {exc}") from None

    # ---- sending ------------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; returns at once with an ``AsyncResult``."""
        return self.apply_async(args, kwargs)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return await self.aapply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task. Options as Celery's (countdown, eta, expires, queue, priority, ...)."""
        app = self._app()
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        self.check_arguments(args, kwargs)
        return app.send_task(self.name, args, kwargs, task=self, **options)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        app = self._app()
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        self.check_arguments(args, kwargs)
        return await app.asend_task(self.name, args, kwargs, task=self, **options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task here and now, retries included; returns an ``EagerResult``."""
        from celeriac.worker.execute import run_eagerly

        return run_eagerly(self, tuple(args or ()), dict(kwargs or {}), options)

    # ---- signatures ---------------------------------------------------------------------
    def signature(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        if options:
            return Signature(self.name, args, kwargs, options, app=self.app)
        return Signature.of_call(self.name, args or (), kwargs or {}, self.app)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return self.signature(args, kwargs, immutable=True)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        from celeriac.result import AsyncResult

        return AsyncResult(task_id, app=self._app(), task_name=self.name)

    # ---- retries ------------------------------------------------------------------------
    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Ask for this task to run again later, through the broker.

        Raises ``Retry`` (the worker then sends the new try); once ``max_retries`` is
        reached, raises ``exc`` if given, else ``MaxRetriesExceededError``.
        """
        request = self.request
        retries = request.retries
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} "
                f"kwargs:{request.kwargs}"
            )
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        when: float | None = countdown
        if eta is not None:
            options["eta"] = eta
            when = None
        else:
            options["countdown"] = countdown
        retry = Retry(exc=exc, when=when)
        retry.retry_args = tuple(request.args if args is None else args)  # type: ignore[attr-defined]
        retry.retry_kwargs = dict(request.kwargs if kwargs is None else kwargs)  # type: ignore[attr-defined]
        retry.retry_options = options  # type: ignore[attr-defined]
        if throw:
            raise retry
        return retry

    def backoff_countdown(self, retries: int) -> float:
        """Exponential backoff for ``autoretry_for``: factor * 2**retries, capped, jittered."""
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = min(self.retry_backoff_max, factor * (2**retries))
        if self.retry_jitter:
            countdown = random.uniform(0, countdown)
        return float(countdown)

    # ---- hooks a base class may override --------------------------------------------------
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Runs just before the task body."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Runs after the task succeeded."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Runs after the task failed."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Runs when the task asked to be retried."""

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Runs after the task returned, whatever its outcome."""

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"


def make_task(
    app: Celeriac | None, fun: Callable[..., Any], options: dict[str, Any]
) -> Task[Any, Any]:
    """Build the Task object for ``fun`` with ``options`` (already checked)."""
    base: type[Task[Any, Any]] = options.get("base") or (app.Task if app is not None else Task)
    if not (isinstance(base, type) and issubclass(base, Task)):
        raise ConfigurationError(f"base must be a subclass of celeriac.Task, not {base!r}")
    name = options.get("name") or f"{fun.__module__}.{fun.__qualname__}"
    options = {**options, "name": name}
    # One class per task, as Celery does, so a base's class attributes are per task.
    cls = type(getattr(fun, "__name__", "task"), (base,), {"__module__": fun.__module__})
    task: Task[Any, Any] = cls()
    task._setup(app, fun, options)
    return task

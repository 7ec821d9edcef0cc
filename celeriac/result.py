"""Results: ``AsyncResult`` reads what a backend holds for a task id.

Exceptions travel as ``{"exc_type", "exc_message", "exc_module"}`` (Celery's shape). On the
way back they are rebuilt with their own type only when that type is safe: a builtin
exception, one of celeriac's, one defined in a module the app's tasks live in and that is
already imported, or one named in ``result_exception_allowlist``. Nothing is imported or called
just because a result names it; anything else comes back as ``RemoteError``.
"""

from __future__ import annotations

import builtins
import sys
import traceback as tb_module
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celeriac import errors, states
from celeriac.backends.base import Meta
from celeriac.utils.sync import run_sync

if TYPE_CHECKING:
    from celeriac.app import Celeriac

R = TypeVar("R")


# ---- exceptions over the wire -------------------------------------------------------------
#: celeriac's errors that Celery has under the same name in ``celery.exceptions``: stored with
#: that module, so a Celery client rebuilds its own class (``except TaskRevokedError`` works
#: there); celeriac rebuilds ``celery.exceptions`` names as its own (``_safe_exception_class``).
CELERY_EXCEPTION_NAMES = frozenset({
    "BackendError", "Ignore", "ImproperlyConfigured", "MaxRetriesExceededError", "NotRegistered",
    "OperationalError", "Reject", "Retry", "RetryTaskError", "SoftTimeLimitExceeded",
    "TaskError", "TaskRevokedError", "TimeLimitExceeded", "TimeoutError", "WorkerLostError",
})


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """An exception as Celery stores it; arguments that cannot be serialized become text."""
    cls = type(exc)
    args: list[Any] = []
    for arg in exc.args:
        args.append(arg if isinstance(arg, str | int | float | bool | type(None)) else repr(arg))
    module = cls.__module__
    if module == "celeriac.errors" and cls.__name__ in CELERY_EXCEPTION_NAMES:
        module = "celery.exceptions"
    return {"exc_type": cls.__name__, "exc_message": args, "exc_module": module}


def format_traceback(exc: BaseException) -> str:
    return "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))


def _safe_exception_class(app: Celeriac | None, module: str, name: str) -> type[BaseException] | None:
    if module in ("builtins", "exceptions", ""):
        cls = getattr(builtins, name, None)
    elif module == "celeriac.errors" or module == "celery.exceptions":
        cls = getattr(errors, name, None)
    else:
        allowed = False
        if app is not None:
            allowlist = app.conf.get("result_exception_allowlist") or ()
            task_modules = {t.__module__ for t in app.tasks.values()}
            allowed = f"{module}.{name}" in allowlist or module in allowlist or module in task_modules
        mod = sys.modules.get(module) if allowed else None
        cls = getattr(mod, name, None) if mod is not None else None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        return cls
    return None


def rebuild_exception(
    app: Celeriac | None, value: Any, traceback: str | None = None
) -> BaseException:
    """Turn a stored exception back into an exception object, safely."""
    if isinstance(value, BaseException):
        return value
    if not isinstance(value, dict) or "exc_type" not in value:
        return errors.RemoteError("Exception", repr(value), "", traceback)
    name = str(value.get("exc_type"))
    module = str(value.get("exc_module") or "builtins")
    message = value.get("exc_message", [])
    args = tuple(message) if isinstance(message, list | tuple) else (message,)
    cls = _safe_exception_class(app, module, name)
    if cls is not None:
        try:
            return cls(*args)
        except Exception:  # a constructor with other arguments
            pass
    text = ", ".join(str(a) for a in args)
    return errors.RemoteError(name, text, module, traceback)


# ---- AsyncResult --------------------------------------------------------------------------
class AsyncResult(Generic[R]):
    """The outcome of a task, by id. Each property reads the backend (until ready)."""

    def __init__(self, id: str, app: Celeriac | None = None, task_name: str | None = None) -> None:
        self.id = id
        self.task_id = id
        self.name = task_name
        if app is None:
            from celeriac.app import default_app

            app = default_app()
        self.app = app
        self._cache: Meta | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __str__(self) -> str:
        return self.id

    # -- reading --
    async def _ameta(self) -> Meta:
        if self._cache is not None:
            return self._cache
        backend = await self.app.backend()
        if backend is None:
            raise errors.ConfigurationError(
                "no result backend is configured: set result_backend to read results"
            )
        meta = await backend.get(self.id)
        if meta is None:
            return {"task_id": self.id, "status": states.PENDING, "result": None,
                    "traceback": None, "date_done": None, "children": []}
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
        return meta

    def _meta(self) -> Meta:
        if self._cache is not None:
            return self._cache
        return run_sync(self._ameta())

    @property
    def state(self) -> str:
        return str(self._meta()["status"])

    status = state

    async def astate(self) -> str:
        return str((await self._ameta())["status"])

    @property
    def result(self) -> Any:
        """The return value, or the exception (rebuilt) for a failed task."""
        return self._value(self._meta())

    info = result

    @property
    def traceback(self) -> str | None:
        return self._meta().get("traceback")

    @property
    def date_done(self) -> datetime | None:
        value = self._meta().get("date_done")
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        return value

    @property
    def retries(self) -> int | None:
        return self._meta().get("retries")

    @property
    def children(self) -> list[Any]:
        return list(self._meta().get("children") or [])

    def _value(self, meta: Meta) -> Any:
        if meta["status"] in states.EXCEPTION_STATES:
            return rebuild_exception(self.app, meta.get("result"), meta.get("traceback"))
        return meta.get("result")

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # -- waiting --
    async def aget(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
        **_ignored: Any,
    ) -> R:
        """Wait for the task to finish and return its value (or raise its exception)."""
        meta = self._cache
        if meta is None:
            backend = await self.app.backend()
            if backend is None:
                raise errors.ConfigurationError(
                    "no result backend is configured: set result_backend to wait for results"
                )
            meta = self._cache = self._ready_or_timeout(await backend.wait(self.id, timeout),
                                                        timeout)
        value: R = self._outcome(meta, propagate)
        return value

    def _ready_or_timeout(self, meta: Meta | None, timeout: float | None) -> Meta:
        if meta is None:
            raise errors.TimeoutError(f"the task {self.id} did not finish within {timeout}s")
        return meta

    def get(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
        **kwargs: Any,
    ) -> R:
        """Wait for the task to finish and return its value (or raise its exception)."""
        meta = self._cache
        if meta is None:
            waiter = self.app._blocking_waiter()
            if waiter is None:
                return run_sync(self.aget(timeout, propagate, interval, **kwargs))
            # no event loop turn: the backend waits on a blocking socket
            meta = self._cache = self._ready_or_timeout(waiter.wait_blocking(self.id, timeout),
                                                        timeout)
        value: R = self._outcome(meta, propagate)
        return value

    wait = get

    def _outcome(self, meta: Meta, propagate: bool) -> Any:
        status = meta["status"]
        if status in states.PROPAGATE_STATES:
            exc = self._value(meta)
            if propagate:
                raise exc
            return exc
        return meta.get("result")

    def forget(self) -> None:
        run_sync(self.aforget())

    async def aforget(self) -> None:
        self._cache = None
        backend = await self.app.backend()
        if backend is not None:
            await backend.forget([self.id])


class EagerResult(AsyncResult[R]):
    """The outcome of a task run here by ``apply()``; nothing is read from a backend."""

    def __init__(
        self, id: str, value: Any, state: str, traceback: str | None = None,
        app: Celeriac | None = None, task_name: str | None = None,
    ) -> None:
        super().__init__(id, app=app, task_name=task_name)
        self._value_here = value
        self._state = state
        self._cache = {
            "task_id": id, "status": state, "result": value, "traceback": traceback,
            "date_done": None, "children": [],
        }

    def _value(self, meta: Meta) -> Any:
        return self._value_here

    async def aget(self, timeout: float | None = None, propagate: bool = True,
                   interval: float = 0.5, **_ignored: Any) -> R:
        value: R = self._outcome(self._cache or {}, propagate)
        return value

    def get(self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5,
            **kwargs: Any) -> R:
        value: R = self._outcome(self._cache or {}, propagate)
        return value

    def _outcome(self, meta: Meta, propagate: bool) -> Any:
        if self._state in states.PROPAGATE_STATES:
            if propagate:
                raise self._value_here
            return self._value_here
        return self._value_here

    def forget(self) -> None:
        pass


def make_meta(
    task_id: str, status: str, result: Any = None, traceback: str | None = None,
    **extra: Any,
) -> Meta:
    """A meta in Celery's shape, with ``date_done`` for ready states."""
    meta: Meta = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": (
            datetime.now(UTC).isoformat()
            if status in states.READY_STATES else None
        ),
        "task_id": task_id,
    }
    if extra:
        meta.update(extra)
    return meta

"""Signatures: a task call as data (name, args, kwargs, options), as Celery's dict shape.

A ``Signature`` is a dict with the keys Celery puts on the wire (``task``, ``args``,
``kwargs``, ``options``, ``subtask_type``, ``immutable``), so it can be embedded in a
message as a callback (``link``) or an errback (``link_error``) and read back by either side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.result import AsyncResult


_new_dict = dict.__new__
_fill = dict.update


class Signature(dict[str, Any]):
    """One task call, not yet sent."""

    def __init__(
        self,
        task: str | dict[str, Any],
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        app: Celeriac | None = None,
        immutable: bool = False,
        subtask_type: str | None = None,
        **extra_options: Any,
    ) -> None:
        if isinstance(task, dict):
            data = task
            super().__init__(
                task=data["task"],
                args=list(data.get("args") or ()),
                kwargs=dict(data.get("kwargs") or {}),
                options=dict(data.get("options") or {}),
                subtask_type=data.get("subtask_type"),
                immutable=bool(data.get("immutable", False)),
            )
        else:
            opts = dict(options or {})
            opts.update(extra_options)
            immutable = bool(opts.pop("immutable", immutable))
            super().__init__(
                task=task,
                args=list(args or ()),
                kwargs=dict(kwargs or {}),
                options=opts,
                subtask_type=subtask_type,
                immutable=immutable,
            )
        self._app = app

    @classmethod
    def of_call(cls, task: str, args: Sequence[Any], kwargs: dict[str, Any],
                app: Celeriac | None = None) -> Signature:
        """``Signature(task, args, kwargs, app=app)``: a call without options, filled in
        directly (a third of the keyword constructor's cost; ``task.s(i)`` makes one per
        call of a batch)."""
        sig = _new_dict(cls)
        _fill(sig, {"task": task, "args": list(args), "kwargs": dict(kwargs), "options": {},
                    "subtask_type": None, "immutable": False})
        sig._app = app
        return sig

    @property
    def task(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> list[Any]:
        return list(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self["immutable"])

    def set(self, **options: Any) -> Signature:
        self["options"].update(options)
        return self

    def clone(self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
              **options: Any) -> Signature:
        """A copy; unless immutable, ``args`` are prepended and ``kwargs`` merged."""
        new_args = list(self["args"])
        new_kwargs = dict(self["kwargs"])
        if not self.immutable:
            new_args = [*(args or ()), *new_args]
            new_kwargs.update(kwargs or {})
        return Signature(
            self.task, new_args, new_kwargs, {**self["options"], **options},
            app=self._app, immutable=self.immutable, subtask_type=self["subtask_type"],
        )

    def _get_app(self) -> Celeriac:
        if self._app is not None:
            return self._app
        from celeriac.app import default_app

        return default_app()

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    **options: Any) -> AsyncResult[Any]:
        sig = self.clone(args, kwargs, **options)
        app = self._get_app()
        task = app.tasks.get(sig.task)
        if task is not None:
            return task.apply_async(sig.args, sig.kwargs, **sig.options)
        return app.send_task(sig.task, sig.args, sig.kwargs, **sig.options)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sig = self.clone(args, kwargs)
        return self._get_app().get_task(sig.task)(*sig.args, **sig.kwargs)

    def __or__(self, other: Any) -> chain:  # type: ignore[override]
        return chain(self, *(other.tasks if isinstance(other, chain) else [other]))

    def __repr__(self) -> str:
        args = ", ".join([*(repr(a) for a in self["args"]),
                          *(f"{k}={v!r}" for k, v in self["kwargs"].items())])
        return f"{self.task}({args})"


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """Build a Signature from a task name, a dict, or a Signature."""
    if isinstance(varies, Signature):
        return varies.clone()
    return Signature(varies, *args, **kwargs)


subtask = signature


def _ensure_signature(task: Any) -> Signature:
    if isinstance(task, Signature):
        return task
    if isinstance(task, dict):
        return Signature(task)
    raise TypeError(f"expected a signature (task.s(...)), not {task!r}")


class chain:
    """Tasks run one after another, each getting the previous one's result first.

    Sent as Celery sends it: the first task carries the others in ``embed.chain``, last
    first, each with its task id fixed in advance; the worker moves the chain along.
    """

    def __init__(self, *tasks: Any, app: Celeriac | None = None) -> None:
        if len(tasks) == 1 and isinstance(tasks[0], list | tuple):
            tasks = tuple(tasks[0])
        if not tasks:
            raise ValueError("a chain needs at least one task")
        self.tasks = [_ensure_signature(t) for t in tasks]
        self._app = app or self.tasks[0]._app

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    **options: Any) -> AsyncResult[Any]:
        import uuid

        from celeriac.result import AsyncResult

        app = self._app
        if app is None:
            from celeriac.app import default_app

            app = default_app()
        steps = [sig.clone() for sig in self.tasks]
        ids = [str(uuid.uuid4()) for _ in steps]
        root_id = ids[0]
        for sig, task_id in zip(steps[1:], ids[1:], strict=True):
            sig["options"].update(task_id=task_id, root_id=root_id, reply_to=app.oid)
        rest = [dict(sig) for sig in reversed(steps[1:])]
        first = steps[0].clone(args, kwargs, **options)
        first_options = {**first.options, "task_id": root_id, "root_id": root_id}
        if rest:
            first_options["chain"] = rest
        app.send_task(first.task, first.args, first.kwargs, **first_options)
        return AsyncResult(ids[-1], app=app, task_name=steps[-1].task)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> chain:
        return chain(*self.tasks, *(other.tasks if isinstance(other, chain) else [other]),
                     app=self._app)


class group:
    """Tasks run side by side; sent in one broker round trip; results collected in order."""

    def __init__(self, *tasks: Any, app: Celeriac | None = None) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Signature | dict):
            tasks = tuple(tasks[0])
        self.tasks = [_ensure_signature(t) for t in tasks]
        self._app = app or (self.tasks[0]._app if self.tasks else None)

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None,
                    **options: Any) -> GroupResult:
        import uuid

        app = self._app
        if app is None:
            from celeriac.app import default_app

            app = default_app()
        group_id = options.pop("group_id", None) or str(uuid.uuid4())
        sigs = [
            sig.clone(args, kwargs, **options, group_id=group_id, group_index=index)
            for index, sig in enumerate(self.tasks)
        ]
        results = app.send_many(sigs)
        return GroupResult(group_id, results)

    def delay(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)


class GroupResult:
    """The results of a group, in the group's order."""

    def __init__(self, id: str, results: list[AsyncResult[Any]]) -> None:
        self.id = id
        self.results = results

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Every result in order; ``timeout`` bounds the whole wait."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for res in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(res.get(timeout=left, propagate=propagate))
        return values

    join = get

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Any:
        return iter(self.results)

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

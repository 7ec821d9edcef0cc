"""Where a task message goes: ``task_routes`` and the precedence of routing options.

Precedence, as in Celery: options given to ``apply_async`` first, then the task's own
``queue`` / ``routing_key`` / ``exchange`` / ``priority``, then ``task_routes``, then
``task_default_queue``.

``task_routes`` may be a dict (task name or glob pattern -> route), a function
``(name, args, kwargs, options, task=None, **kw) -> route | None``, or a list of either,
tried in order. A route is a dict (``queue``, ``routing_key``, ``exchange``, ``priority``)
or a plain queue name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celeriac.errors import ConfigurationError

Route = dict[str, Any]
RouteFunction = Callable[..., Any]
ROUTE_KEYS = ("queue", "routing_key", "exchange", "priority")


def _as_route(value: Any) -> Route | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {"queue": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigurationError(f"a task route must be a dict or a queue name, not {value!r}")


class _MapRouter:
    """Exact names first, then glob patterns (or compiled regexes) in the order given."""

    def __init__(self, routes: Mapping[Any, Any]) -> None:
        self.exact: dict[str, Any] = {}
        self.patterns: list[tuple[re.Pattern[str], Any]] = []
        for key, value in routes.items():
            if isinstance(key, re.Pattern):
                self.patterns.append((key, value))
            elif any(ch in key for ch in "*?["):
                self.patterns.append((re.compile(fnmatch.translate(key)), value))
            else:
                self.exact[key] = value

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self.exact:
            return self.exact[name]
        for pattern, value in self.patterns:
            if pattern.match(name):
                return value
        return None


def is_static_router(router: RouteFunction) -> bool:
    """Whether a router's answer depends on the task name only (so it can be cached)."""
    return isinstance(router, _MapRouter)


def compile_routes(setting: Any) -> list[RouteFunction]:
    """Turn the ``task_routes`` setting into a list of route functions."""
    if setting is None:
        return []
    items: Sequence[Any] = (
        setting if isinstance(setting, list | tuple) else [setting]
    )
    routers: list[RouteFunction] = []
    for item in items:
        if isinstance(item, Mapping):
            routers.append(_MapRouter(item))
        elif callable(item):
            routers.append(item)
        else:
            raise ConfigurationError(
                f"task_routes entries must be dicts or functions, not {type(item).__name__}"
            )
    return routers


def resolve_route(
    routers: list[RouteFunction],
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    task: Any = None,
) -> Route:
    """The first route any router gives for this call, or ``{}``."""
    for router in routers:
        try:
            found = router(name, args, kwargs, options, task=task)
        except TypeError:
            found = router(name, args, kwargs, options)
        route = _as_route(found)
        if route:
            return route
    return {}

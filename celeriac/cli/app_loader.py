"""Finding the app named by ``-A``, as Celery finds it.

``module.path:attribute`` names it exactly. For a bare ``name``: try ``name.app``, then
``name.celery``, then any attribute of the module that is a Celeriac app, then the module
``name.celery`` (and the same search in it).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from celeriac.app import Celeriac
from celeriac.errors import ConfigurationError


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigurationError(
                f"cannot import module {name!r} (is it on the path? try --workdir)"
            ) from None
        raise


def _app_in(module: ModuleType) -> Celeriac | None:
    for attr in ("app", "celery"):
        candidate = getattr(module, attr, None)
        if isinstance(candidate, Celeriac):
            return candidate
    for value in vars(module).values():
        if isinstance(value, Celeriac):
            return value
    return None


def find_app(spec: str) -> Celeriac:
    """The app named by ``spec`` (``pkg.mod:attr``, ``pkg.mod.attr`` or ``pkg``)."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        module = _import(module_name)
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None
        if callable(obj) and not isinstance(obj, Celeriac):
            obj = obj()
        if not isinstance(obj, Celeriac):
            raise ConfigurationError(f"{spec!r} is not a Celeriac app but {type(obj).__name__}")
        return obj
    try:
        module = _import(spec)
    except ConfigurationError:
        head, _, attr = spec.rpartition(".")
        if not head:
            raise
        module = _import(head)
        obj = getattr(module, attr, None)
        if isinstance(obj, Celeriac):
            return obj
        raise
    app = _app_in(module)
    if app is not None:
        return app
    try:
        sub = importlib.import_module(f"{spec}.celery")
    except ModuleNotFoundError:
        sub = None
    if sub is not None:
        app = _app_in(sub)
        if app is not None:
            return app
    raise ConfigurationError(f"no Celeriac app found in module {spec!r}")

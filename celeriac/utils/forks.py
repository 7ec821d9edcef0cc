"""Telling a forked child from its parent, cheaply.

A client made before a fork must not use its socket in the child (the parent still does).
Comparing ``os.getpid()`` on every call is a system call each time; this counter changes only
in a child, right after the fork.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

_forks = 0
#: objects to reset in a forked child, each with its reset (see ``reset_in_child``)
_resets: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


def _forked() -> None:
    global _forks
    _forks += 1
    for obj, reset in list(_resets.items()):
        reset(obj)


os.register_at_fork(after_in_child=_forked)


def reset_in_child(obj: Any, reset: Callable[[Any], None]) -> None:
    """Call ``reset(obj)`` in every forked child of this process, right after the fork, while
    the child has one thread (so no thread of it can see the parent's locks first); ``obj``
    is held weakly."""
    _resets[obj] = reset


def generation() -> int:
    """How many forks this process descends from: a value kept by a client and compared
    later says whether the process has forked since."""
    return _forks

"""Telling a forked child from its parent, cheaply.

A client made before a fork must not use its socket in the child (the parent still does).
Comparing ``os.getpid()`` on every call is a system call each time; this counter changes only
in a child, right after the fork.
"""

from __future__ import annotations

import os

_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def generation() -> int:
    """How many forks this process descends from: a value kept by a client and compared
    later says whether the process has forked since."""
    return _forks

"""Receiving a reply expected within microseconds: a short spin before sleeping.

A thread that sleeps in ``recv`` until a local server's reply comes is woken by the kernel
through the scheduler: on a small VM that wake alone can cost as much as the server's work,
and the thread's next microseconds run on cold caches. A blocking ``delay()`` to a Redis on
the same host spends most of its time there. ``SpinReceiver`` asks the socket without
blocking for up to ``budget`` seconds first, then sleeps as before.

It spins only where it pays: when the data keeps taking longer than the budget (a distant
server, a long task's result), it stops spinning for a while; it never spins on a machine
with one CPU (the spinning thread would hold the CPU the server needs), nor on a socket that is
not a plain ``socket.socket`` (TLS takes no ``recv`` flags), nor without ``MSG_DONTWAIT``
(Windows).
"""

from __future__ import annotations

import os
import socket
from time import perf_counter
from typing import Any

from celeriac.errors import ConfigurationError

__all__ = ["SpinReceiver", "spin_budget"]

#: spins in a row that ran out before the data came; then spinning pauses
MISSES_BEFORE_PAUSE = 8
#: receives without a spin after such a run of misses
PAUSE = 512


def spin_budget(value: Any, name: str, where: str) -> float:
    """A spin budget given as an option: seconds, >= 0 (0: no spin)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{where}: {name} must be a number of seconds, not {value!r}"
                                 ) from None
    if not seconds >= 0:
        raise ConfigurationError(f"{where}: {name} must be >= 0, not {value!r}")
    return seconds


class SpinReceiver:
    """``recv(sock, size)``: as ``sock.recv(size)`` (its timeout included), after a
    bounded spin. One per thread: its counts are not locked."""

    __slots__ = ("_misses", "_paused", "budget")

    def __init__(self, budget: float) -> None:
        can = (os.cpu_count() or 1) > 1 and hasattr(socket, "MSG_DONTWAIT")  # (not Windows)
        self.budget = budget if budget > 0 and can else 0.0
        self._misses = 0
        self._paused = 0

    def recv(self, sock: socket.socket, size: int) -> bytes:
        if not self.budget or type(sock) is not socket.socket:
            return sock.recv(size)
        if self._paused:
            self._paused -= 1
            return sock.recv(size)
        timeout = sock.gettimeout()
        if timeout is None:
            data = _spin(sock, size, self.budget)
        else:  # with a timeout of its own, CPython would poll before each recv: not now
            sock.settimeout(0.0)
            try:
                data = _spin(sock, size, min(self.budget, timeout))
            finally:
                sock.settimeout(timeout)
        if data is not None:
            self._misses = 0
            return data
        self._misses += 1
        if self._misses >= MISSES_BEFORE_PAUSE:
            self._misses = 0
            self._paused = PAUSE
        return sock.recv(size)


def _spin(sock: socket.socket, size: int, budget: float) -> bytes | None:
    """What ``sock`` brings within ``budget`` seconds, asked without blocking; None if
    nothing came."""
    end = perf_counter() + budget
    while True:
        try:
            return sock.recv(size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if perf_counter() >= end:
                return None

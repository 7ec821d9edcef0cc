"""Receiving a reply expected within microseconds: a short spin before sleeping.

A thread that sleeps in ``recv`` until a local server's reply comes is woken by the kernel
through the scheduler: on a small VM that wake alone can cost as much as the server's work,
and the thread's next microseconds run on cold caches. A blocking ``delay()`` to a Redis on
the same host or the next rack spends most of its time there. ``SpinReceiver`` asks the
socket without blocking (``MSG_DONTWAIT``) for up to ``budget`` seconds first, then sleeps
as before.

It spins only where it pays: when the replies keep taking longer than the budget (a distant
server, a busy one), it stops spinning for a while; it never spins on a machine with one CPU
(the spinning thread would hold the CPU the server needs), nor on a socket that is not a plain
``socket.socket`` in blocking mode (TLS takes no ``recv`` flags; with a Python timeout,
CPython polls before each ``recv``).
"""

from __future__ import annotations

import os
import socket
from time import perf_counter

__all__ = ["SpinReceiver"]

#: spins in a row that ran out before the reply came; then spinning pauses
MISSES_BEFORE_PAUSE = 8
#: receives without a spin after such a run of misses
PAUSE = 512


class SpinReceiver:
    """``recv(sock, size)``: as ``sock.recv(size)``, after a bounded spin."""

    __slots__ = ("_misses", "_paused", "budget")

    def __init__(self, budget: float) -> None:
        self.budget = budget if budget > 0 and (os.cpu_count() or 1) > 1 else 0.0
        self._misses = 0
        self._paused = 0

    def recv(self, sock: socket.socket, size: int) -> bytes:
        if not self.budget or type(sock) is not socket.socket or sock.gettimeout() is not None:
            return sock.recv(size)  # (with a timeout of its own, CPython would poll first)
        if self._paused:
            self._paused -= 1
            return sock.recv(size)
        end = perf_counter() + self.budget
        while True:
            try:
                data = sock.recv(size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if perf_counter() < end:
                    continue
                break
            self._misses = 0
            return data
        self._misses += 1
        if self._misses >= MISSES_BEFORE_PAUSE:
            self._misses = 0
            self._paused = PAUSE
        return sock.recv(size)

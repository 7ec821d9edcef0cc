"""Receiving a reply expected within microseconds: a short spin before sleeping.

A thread that sleeps in ``recv`` until a local server's reply comes is woken by the kernel
through the scheduler: on a small VM (one whose idle vCPUs halt at once) that wake alone can
cost as much as the server's work, and the thread's next microseconds run on cold caches. A
blocking ``delay()`` to a Redis on the same host spends most of its time there.
``SpinReceiver`` asks the socket without blocking for up to ``budget`` seconds first, then
sleeps as before.

It spins only where it pays:

* when the data keeps taking longer than the budget (a distant server, a long task's
  result), it stops spinning for a while; a read that continues a reply already begun
  (``scored=False``) counts neither way;
* never with fewer than two CPUs usable by this process (affinity and cpusets included; a
  CPU quota is not seen): the spinning thread would hold the CPU the server needs;
* never on a socket other than the standard library's own (TLS takes no ``recv`` flags, and
  a gevent or eventlet socket must yield to its hub rather than spin), nor without
  ``MSG_DONTWAIT`` (Windows).
"""

from __future__ import annotations

import math
import os
import socket
from time import perf_counter
from typing import Any

from celeriac.errors import ConfigurationError

__all__ = ["MAX_BUDGET", "SpinReceiver", "spin_budget"]

#: spins in a row that ran out before the data came; then spinning pauses
MISSES_BEFORE_PAUSE = 8
#: receives without a spin after such a run of misses
PAUSE = 512
#: the longest spin an option may ask for, in seconds
MAX_BUDGET = 0.01


def spin_budget(value: Any, name: str, where: str) -> float:
    """A spin budget given as an option: seconds, from 0 (no spin) to ``MAX_BUDGET``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{where}: {name} must be a number of seconds, not {value!r}"
                                 ) from None
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_BUDGET):
        raise ConfigurationError(
            f"{where}: {name} must be between 0 and {MAX_BUDGET} seconds, not {value!r}")
    return seconds


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the platform tells it)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return len(affinity(0))
    return os.cpu_count() or 1


class SpinReceiver:
    """``recv(sock, size)``: as ``sock.recv(size)``, its timeout included, after a bounded
    spin. One per thread: its counts are not locked.

    For a socket whose timeout is the kernel's (``SO_RCVTIMEO``, Python's own set to None),
    the caller keeps ``budget`` within that timeout."""

    __slots__ = ("_misses", "_paused", "budget")

    def __init__(self, budget: float) -> None:
        can = usable_cpus() > 1 and hasattr(socket, "MSG_DONTWAIT")
        self.budget = budget if budget > 0 and can else 0.0
        self._misses = 0
        self._paused = 0

    def recv(self, sock: socket.socket, size: int, scored: bool = True) -> bytes:
        """``scored``: whether this read's hit or miss counts towards a pause (not for a
        read that continues a reply already begun: its rest is on its way)."""
        if (not self.budget or type(sock) is not socket.socket
                or type(sock).__module__ != "socket"):
            return sock.recv(size)
        if self._paused:
            self._paused -= 1
            return sock.recv(size)
        timeout = sock.gettimeout()
        start = perf_counter()
        if timeout is not None:  # CPython would poll before each recv: not while spinning
            sock.settimeout(0.0)
        try:
            data = _spin(sock, size, self.budget if timeout is None
                         else min(self.budget, timeout))
            if data is not None:
                if scored:
                    self._misses = 0
                return data
            self._missed(scored)
            if timeout is not None:  # what is left of the socket's own timeout
                left = timeout - (perf_counter() - start)
                if left <= 0:
                    raise TimeoutError("timed out")
                sock.settimeout(left)
            return sock.recv(size)
        finally:
            if timeout is not None:
                sock.settimeout(timeout)

    def _missed(self, scored: bool) -> None:
        if not scored:
            return
        self._misses += 1
        if self._misses >= MISSES_BEFORE_PAUSE:
            self._misses = 0
            self._paused = PAUSE


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

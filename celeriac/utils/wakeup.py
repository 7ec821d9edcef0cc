"""Cross-process wakeups for stores that live in a file (the SQLite broker and backend).

A waiter binds a datagram Unix socket in a directory shared by every process using the same
file; a writer, after its commit, sends one byte to each socket there. The waiter's event loop
watches its socket, so an idle process sleeps in ``epoll`` (no polling, no CPU) and wakes
within microseconds of a commit. Dead waiters' sockets refuse the datagram and are removed; the
directory goes with its last socket (a waiter that finds it gone makes it again).

Usage (the order prevents lost wakeups)::

    listener.arm()                 # 1. forget older wakeups
    rows = query()                 # 2. look for work
    if not rows:
        await listener.wait(timeout)   # 3. a commit after step 2 has already woken us
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import socket
import tempfile
import time
from pathlib import Path

_counter = itertools.count()
#: An mtime older than this is trusted to have seen every change made in its tick.
_MTIME_TRUST_NS = 100_000_000


def channel_directory(store_path: str, channel: str) -> Path:
    """The socket directory for ``channel`` of the store at ``store_path``.

    Kept under the temp directory (Unix socket paths are limited to about 100 bytes) and
    named after a hash of the store's absolute path, so every process finds the same one.
    """
    digest = hashlib.sha1(os.path.abspath(store_path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"celeriac-{digest}-{channel}"


class Notifier:
    """Sends wakeups to every listener of one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._targets: list[str] = []
        self._seen_mtime: int | None = None

    def _refresh(self) -> None:
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            self._targets, self._seen_mtime = [], None
            return
        # A directory's mtime may tick coarsely (a jiffy on older kernels): a listener bound
        # in the same tick as our last listing leaves it unchanged, so a fresh mtime is no proof.
        if mtime != self._seen_mtime or time.time_ns() - mtime < _MTIME_TRUST_NS:
            self._seen_mtime = mtime
            try:
                names = os.listdir(self.directory)
            except FileNotFoundError:
                names = []
            self._targets = [str(self.directory / n) for n in names if n.endswith(".sock")]

    def notify(self) -> None:
        """Wake every listener; never blocks, never raises."""
        self._refresh()
        for target in self._targets:
            try:
                self._sock.sendto(b"!", target)
            except BlockingIOError:
                pass  # its buffer is full: it has wakeups pending already
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    with contextlib.suppress(OSError):
                        os.unlink(target)
                    _remove_if_empty(self.directory)
                    self._seen_mtime = None

    def close(self) -> None:
        self._sock.close()


class Listener:
    """Receives wakeups on one event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = str(directory / f"{os.getpid()}-{next(_counter)}-{id(self):x}.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        for attempt in itertools.count():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                self._sock.bind(self.path)
                break
            except FileNotFoundError:
                # the last listener left and removed the directory between the two steps
                if attempt >= 10:
                    self._sock.close()
                    raise
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        while True:
            try:
                self._sock.recv(512)
            except (BlockingIOError, OSError):
                break
        self._event.set()

    def arm(self) -> None:
        """Forget wakeups received so far (call before looking for work)."""
        self._event.clear()

    async def wait(self, timeout: float | None) -> bool:
        """Wait for a wakeup; ``False`` if ``timeout`` passed first."""
        if self._event.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        _remove_if_empty(self.directory)


def _remove_if_empty(directory: Path) -> None:
    """Remove ``directory`` if no socket is left in it (else leave it: ``ENOTEMPTY``)."""
    with contextlib.suppress(OSError):
        os.rmdir(directory)

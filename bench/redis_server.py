"""A private ``redis-server`` for the Redis rows when ``--redis-url`` is not given.

It listens on a free loopback port, keeps its files in a temporary directory, persists nothing
(``--save ''``, no AOF), and is stopped by its pid. Standard library only (no redis-py), so
the bench can start it before anything else is imported.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType

from bench.common import Proc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """Send one command (RESP array of bulk strings); the first line of the reply."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0]


class PrivateRedis:
    """``with PrivateRedis() as url:`` a fresh, empty Redis at ``url`` (db 0)."""

    def __init__(self, executable: str | None = None) -> None:
        found = executable or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise FileNotFoundError("redis-server not found: install it or pass --redis-url")
        self.executable = found
        self.port = 0
        self.dir: Path | None = None
        self.proc: Proc | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.dir = Path(tempfile.mkdtemp(prefix="celeriac-bench-redis-"))
        for _attempt in range(5):  # the free port can be taken between probe and bind
            self.port = free_port()
            self.proc = Proc([self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                              "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                              "--daemonize", "no", "--logfile", ""],
                             self.dir / "redis.log", cwd=self.dir)
            deadline = time.monotonic() + 10
            while self.proc.alive() and time.monotonic() < deadline:
                try:
                    if command(self.port, "PING") == b"+PONG":
                        return self.url
                except OSError:
                    pass
                time.sleep(0.02)
            tail = self.proc.log_tail()
            self.proc.stop(grace=5)
            self.proc = None
            if "Address already in use" not in tail:
                raise RuntimeError(f"redis-server did not start:\n{tail}")
        raise RuntimeError("redis-server: no free port after 5 tries")

    def flush(self) -> None:
        """Empty every database (between rows: a row starts on an empty server)."""
        command(self.port, "FLUSHALL")

    def stop(self) -> None:
        try:
            if self.proc is not None:
                self.proc.stop(grace=10)
        finally:
            self.proc = None
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

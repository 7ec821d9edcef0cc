"""A private RabbitMQ node for the tests (``SERVICES.md``): started once per session, stopped
by its pid file.

Everything is private under one directory: ``HOME`` (its own Erlang cookie), the node name
``t<port>@localhost``, the ports, mnesia and logs; ``/etc/rabbitmq`` is not read. The scripts in
``/usr/lib/rabbitmq/bin`` are run directly (the ``/usr/sbin`` wrappers switch user).

Vhosts isolate tests. A ``rabbitmqctl`` call costs about half a second, so vhosts are made in
batches by one ``rabbitmqctl eval`` and handed out from a pool (``vhost()``); a test that wants
its own vhost created and deleted uses ``add_vhost``/``delete_vhost``. ``CELERIAC_TEST_AMQP_URL``
may name a running broker instead (vhost ``/`` only, then).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from tests.services import free_port, missing, port_open

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _free_pair() -> int:
    """A port whose +20000 (the Erlang distribution port) is free too."""
    for _ in range(50):
        port = free_port()
        if port + 20000 < 65536 and not port_open(port + 20000):
            return port
    raise RuntimeError("no free port pair for RabbitMQ")


class RabbitMQNode:
    """One private ``rabbitmq-server``; ``start()``, ``url(vhost)``, ``stop()``/``crash()``."""

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            missing("rabbitmq-server")
        self.port = port or _free_pair()
        self.dir = directory or Path(tempfile.mkdtemp(prefix="celeriac-rabbit-"))
        self.node = f"t{self.port}@localhost"
        self.pidfile = self.dir / "rabbit.pid"
        self._pool: list[str] = []
        self._pool_lock = threading.Lock()
        self._prepare()

    def _prepare(self) -> None:
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text("")
        (self.dir / "advanced.config").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")

    @property
    def env(self) -> dict[str, str]:
        b = str(self.dir)
        return {
            **os.environ,
            "HOME": b,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": f"{b}/mnesia",
            "RABBITMQ_LOG_BASE": f"{b}/log",
            "RABBITMQ_PID_FILE": str(self.pidfile),
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{b}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{b}/rabbitmq",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{b}/advanced.config",
            "RABBITMQ_CONF_ENV_FILE": f"{b}/rabbitmq-env.conf",
            # no busy-waiting schedulers: on a small shared machine they burn the CPU the
            # clients need (RabbitMQ's advice for shared and virtualised hosts)
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        }

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        cmd = [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}")
        return done.stdout

    def start(self, timeout: float = 60.0) -> RabbitMQNode:
        subprocess.run([str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=self.env,
                       check=True, timeout=30, capture_output=True)
        try:
            self.ctl("wait", "--timeout", str(int(timeout)), str(self.pidfile), timeout=timeout + 10)
        except Exception:
            self.crash()
            raise
        return self

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def url(self, vhost: str = "/") -> str:
        quoted = "%2F" if vhost == "/" else vhost
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quoted}"

    def add_vhosts(self, names: list[str]) -> None:
        """Create vhosts (guest gets every permission) in one ``rabbitmqctl`` call."""
        erl = ", ".join(f'<<"{n}">>' for n in names)
        self.ctl("eval", (
            f"[begin rabbit_vhost:add(V, <<\"tests\">>), "
            f"rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, V, <<\".*\">>, "
            f"<<\".*\">>, <<\".*\">>, <<\"tests\">>) end || V <- [{erl}]]."))

    def add_vhost(self, name: str) -> str:
        self.add_vhosts([name])
        return name

    def delete_vhost(self, name: str) -> None:
        self.ctl("delete_vhost", name)

    def vhost(self) -> str:
        """A fresh vhost from the pool (made 32 at a time)."""
        with self._pool_lock:
            if not self._pool:
                batch = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(32)]
                self.add_vhosts(batch)
                self._pool.extend(batch)
            return self._pool.pop()

    def set_memory_watermark(self, fraction: float) -> None:
        self.ctl("set_vm_memory_high_watermark", repr(fraction))

    def memory_alarm(self) -> bool:
        """Whether the node's memory alarm is raised now (the watermark is checked
        periodically, so it takes effect a moment after ``set_memory_watermark``)."""
        return "memory" in self.ctl("eval", "rabbit_alarm:get_alarms().")

    def wait_memory_alarm(self, raised: bool, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.memory_alarm() != raised:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the memory alarm was not {'raised' if raised else 'cleared'} "
                                   f"within {timeout} s")
            time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> None:
        if self.pid is None:
            return
        try:
            self.ctl("stop", str(self.pidfile), timeout=timeout)
        except Exception:
            self.crash()
        self._wait_closed()

    def crash(self) -> None:
        """SIGKILL beam.smp (the pid in the pid file)."""
        pid = self.pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._wait_closed()

    def _wait_closed(self) -> None:
        deadline = time.monotonic() + 15
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def memory_alarm(node: RabbitMQNode) -> AsyncIterator[None]:
    """RabbitMQ's memory alarm raised on ``node`` for the block (it blocks publishers), then
    cleared, each awaited."""
    await asyncio.to_thread(node.set_memory_watermark, 0.0000001)
    try:
        await asyncio.to_thread(node.wait_memory_alarm, True)
        yield
    finally:
        await asyncio.to_thread(node.set_memory_watermark, 0.4)
        await asyncio.to_thread(node.wait_memory_alarm, False)

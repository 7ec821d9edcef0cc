"""A private Redis Sentinel setup for the tests: a primary, one replica and three sentinels,
each on a free port in one temp dir, stopped by pid at the end (as ``tests.services``).

Sentinels decide quickly (``down-after-milliseconds`` 500) so that a failover after a SIGKILL
of the primary takes a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from tests.services import REDIS_SERVER, RedisServer, free_port, port_open

MASTER_NAME = "mymaster"


class RedisSentinelCluster:
    """Primary + replica (``--replicaof``) + three ``redis-server <conf> --sentinel``."""

    def __init__(self, *, sentinels: int = 3, quorum: int = 2, down_after_ms: int = 500,
                 failover_timeout_ms: int = 3000) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="celeriac-sentinel-"))
        (self.dir / "primary").mkdir()
        (self.dir / "replica").mkdir()
        self.primary = RedisServer(directory=self.dir / "primary")
        self.replica = RedisServer(directory=self.dir / "replica",
                                   extra=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    # -- URLs --------------------------------------------------------------------------------

    def url(self, db: int = 0, password: str | None = None) -> str:
        """Celery's form: ``sentinel://h:p;sentinel://h:p;sentinel://h:p/db``."""
        auth = f":{password}@" if password else ""
        parts = [f"sentinel://{auth}127.0.0.1:{p}" for p in self.sentinel_ports]
        return ";".join(parts) + f"/{db}"

    # -- starting and stopping -----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RedisSentinelCluster:
        self.primary.start()
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.dir}\n"
                f"logfile {self.dir / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary.port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.sentinel_procs.append(subprocess.Popen(
                [REDIS_SERVER, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        for port, proc in zip(self.sentinel_ports, self.sentinel_procs, strict=True):
            while not port_open(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis sentinel did not start on {port}:\n{self.logs()}")
                time.sleep(0.02)
        self.wait_ready(deadline - time.monotonic())
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until the replica is in sync and every sentinel knows the replica and its peers
        (the quorum needs the peers; they find each other by hello messages, every 2 s)."""
        deadline = time.monotonic() + timeout
        others = len(self.sentinel_ports) - 1
        while True:
            try:
                ready = self.replica_synced() and all(
                    int(state["num-other-sentinels"]) >= others and int(state["num-slaves"]) >= 1
                    for state in (self.master_state(p) for p in self.sentinel_ports)
                )
            except redis.RedisError:
                ready = False
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinels not ready in time:\n{self.logs()}")
            time.sleep(0.1)

    def replica_synced(self) -> bool:
        with redis.Redis(port=self.replica.port, socket_timeout=2) as r:
            info = r.info("replication")
        return bool(info.get("master_link_status") == "up")

    def master_state(self, sentinel_port: int) -> dict[str, Any]:
        with redis.Redis(port=sentinel_port, socket_timeout=2) as s:
            state: dict[str, Any] = s.sentinel_master(MASTER_NAME)
        return state

    def master_port(self, sentinel_port: int | None = None) -> int | None:
        """The master's port as one sentinel (the first by default) reports it now."""
        with redis.Redis(port=sentinel_port or self.sentinel_ports[0], socket_timeout=2) as s:
            addr = s.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(addr[1]) if addr else None

    def wait_replicated(self, timeout_ms: int = 5000) -> int:
        """``WAIT 1`` on the primary: every write made on it so far is on the replica."""
        with redis.Redis(port=self.primary.port, socket_timeout=timeout_ms / 1000 + 2) as r:
            return int(r.execute_command("WAIT", 1, timeout_ms))

    def kill_primary(self) -> None:
        """SIGKILL the primary: a machine failure, as the clients and the sentinels see it."""
        self.primary.crash()

    def wait_failover(self, timeout: float = 45.0) -> None:
        """Until every sentinel names the replica as master and it answers as one."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                moved = all(self.master_port(p) == self.replica.port for p in self.sentinel_ports)
                if moved:
                    with redis.Redis(port=self.replica.port, socket_timeout=2) as r:
                        moved = r.info("replication").get("role") == "master"
            except redis.RedisError:
                moved = False
            if moved:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no failover within {timeout}s:\n{self.logs()}")
            time.sleep(0.05)

    def logs(self, tail: int = 3000) -> str:
        out = []
        for path in sorted(self.dir.glob("sentinel-*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.sentinel_procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.sentinel_procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.replica.stop()
        self.primary.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

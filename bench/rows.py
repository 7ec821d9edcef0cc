"""The rows of the table, one entry each, and the peer plumbing (``.venv-bench``).

A row is anything with ``name``, ``mode``, ``unavailable()`` (a reason it cannot run, or
``None``) and ``run(params, workdir, say) -> Samples``. To add one, add an entry to
``make_rows``: a ``CeleriacRow`` with URL makers for a celeriac broker/backend, or a
``PeerRow`` naming a driver module and the packages its virtualenv needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.common import ROOT, Params, Samples

Say = Callable[[str], None]
BENCH_VENV = ROOT / ".venv-bench"


class Row(Protocol):
    name: str
    mode: str

    def unavailable(self) -> str | None: ...

    def run(self, params: Params, workdir: Path, say: Say) -> Samples: ...


def ensure_bench_venv(packages: list[str], say: Say) -> Path:
    """``.venv-bench`` with ``packages`` installed (created on first use); its python."""
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        say(f"creating {BENCH_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    stamp = BENCH_VENV / f".installed-{'-'.join(sorted(packages))}"
    if not stamp.exists():
        say(f"installing {', '.join(packages)} into {BENCH_VENV}")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
        stamp.touch()
    return python


@dataclass
class PeerRow:
    """Another task queue, measured by ``bench.peers.<driver>`` in ``.venv-bench``."""

    name: str
    driver: str
    packages: list[str]
    mode: str = "worker process"
    args: list[str] = field(default_factory=list)
    needs: str | None = None  # a reason it cannot run (e.g. a missing server URL)
    timeout: float = 1800.0

    def unavailable(self) -> str | None:
        return self.needs

    def run(self, params: Params, workdir: Path, say: Say) -> Samples:
        python = ensure_bench_venv(self.packages, say)
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [str(python), "-m", f"bench.peers.{self.driver}", *params.as_args(),
               "--workdir", str(workdir), *self.args]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None and proc.stdout is not None
            errors: list[str] = []
            for line in proc.stderr:
                line = line.rstrip()
                errors.append(line)
                if line.startswith("bench: "):
                    say(f"{self.name}: {line.removeprefix('bench: ')}")
            out = proc.stdout.read()
            code = proc.wait(self.timeout)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if code != 0 or not out.strip():
            tail = "\n".join(errors[-30:])
            raise RuntimeError(f"driver {self.driver} failed ({code}):\n{tail}")
        data = json.loads(out.strip().splitlines()[-1])
        return Samples(values=data["values"], notes=data.get("notes", []))


#: Celery peer packages: the SQLAlchemy transport/backend and the Redis ones.
CELERY_PACKAGES = ["celery[redis]>=5.3,<6", "sqlalchemy>=2"]
#: celeriac on Redis with the sync callers' waits in the kernel only: ``delay()`` and ``get()``
#: do not spin before they sleep (``celeriac.utils.spin``), to show what the spins bring
NO_SPIN: dict[str, object] = {"broker_transport_options": {"reply_spin": 0},
                              "result_backend_transport_options": {"wait_spin": 0}}

#: celeriac on RabbitMQ with sync sends that return before their confirm, up to 256 owed
#: (``confirm_window``); the enqueue figures still wait for the last confirm (``app.flush``)
WINDOW: dict[str, object] = {"broker_transport_options": {"confirm_window": 256}}

#: celeriac on Redis and RabbitMQ with late acks and a large prefetch window (a row of its own: these
#: settings change the figures a lot); the Celery rows use the same two.
LATE_PREFETCH = 64


def make_rows(redis_url: str | None, amqp_url: str | None) -> dict[str, Row]:
    """Every row by its key (``--rows``), in table order."""
    from bench.celeriac_rows import CeleriacRow, memory_url, sqlite_url

    def fixed(url: str | None) -> Callable[[Path], str]:
        return lambda _d: url or ""

    no_redis = None if redis_url else "needs --redis-url"

    def celeriac_redis(mode: str, pool: list[str] | None = None,
                       conf: dict[str, object] | None = None) -> CeleriacRow:
        row = CeleriacRow("celeriac redis", fixed(redis_url), fixed(redis_url),
                          unavailable=no_redis, pool=pool, conf=conf)
        row.mode = mode
        return row

    def celery_redis(mode: str, *args: str) -> PeerRow:
        return PeerRow("celery 5 redis", "celery_driver", CELERY_PACKAGES, mode=mode,
                       args=["--broker-url", redis_url or "", "--backend-url", redis_url or "",
                             *args], needs=no_redis)

    late = [f"--prefetch-multiplier={LATE_PREFETCH}"]
    late_name = f"solo, acks_late,\nprefetch x{LATE_PREFETCH}"
    rabbitmq_late = CeleriacRow("celeriac rabbitmq (+sqlite results)", fixed(amqp_url),
                                sqlite_url, pool=["-P", "solo", *late],
                                conf={"task_acks_late": True},
                                unavailable=None if amqp_url else "needs --amqp-url")
    rabbitmq_late.mode = late_name
    rows: dict[str, Row] = {
        "celeriac-memory": CeleriacRow("celeriac memory", memory_url, memory_url,
                                       in_process=True),
        "celeriac-sqlite": CeleriacRow("celeriac sqlite", sqlite_url, sqlite_url),
        "celeriac-sqlite-prefork1": CeleriacRow("celeriac sqlite prefork -c 1", sqlite_url,
                                                sqlite_url, pool=["-P", "prefork", "-c", "1"]),
        "celeriac-sqlite-prefork2": CeleriacRow("celeriac sqlite prefork -c 2", sqlite_url,
                                                sqlite_url, pool=["-P", "prefork", "-c", "2"]),
        "celeriac-redis": celeriac_redis("solo"),
        "celeriac-redis-late": celeriac_redis(late_name, ["-P", "solo", *late],
                                              {"task_acks_late": True}),
        "celeriac-redis-nospin": celeriac_redis("solo, no spin", conf=NO_SPIN),
        "celeriac-redis-prefork1": celeriac_redis("prefork -c 1", ["-P", "prefork", "-c", "1"]),
        "celeriac-redis-prefork2": celeriac_redis("prefork -c 2", ["-P", "prefork", "-c", "2"]),
        "celeriac-rabbitmq": CeleriacRow(
            "celeriac rabbitmq (+sqlite results)", fixed(amqp_url), sqlite_url,
            unavailable=None if amqp_url else "needs --amqp-url"),
        "celeriac-rabbitmq-window": CeleriacRow(
            "celeriac rabbitmq, confirm window 256 (+sqlite results)", fixed(amqp_url),
            sqlite_url, conf=WINDOW, unavailable=None if amqp_url else "needs --amqp-url"),
        "celeriac-rabbitmq-late": rabbitmq_late,
        "celery-sqlite": PeerRow("celery 5 sqla+sqlite", "celery_driver", CELERY_PACKAGES),
        "celery-redis": celery_redis("solo"),
        "celery-redis-late": celery_redis(late_name, "--acks-late", *late),
        "celery-redis-prefork1": celery_redis("prefork -c 1", "--pool=prefork",
                                              "--concurrency=1"),
        "celery-redis-prefork2": celery_redis("prefork -c 2", "--pool=prefork",
                                              "--concurrency=2"),
        "celery-rabbitmq": PeerRow("celery 5 rabbitmq (+sqlite results)", "celery_driver",
                                   CELERY_PACKAGES,
                                   args=["--broker-url", amqp_url or ""],
                                   needs=None if amqp_url else "needs --amqp-url"),
        "celery-rabbitmq-late": PeerRow("celery 5 rabbitmq (+sqlite results)", "celery_driver",
                                        CELERY_PACKAGES, mode=late_name,
                                        args=["--broker-url", amqp_url or "", "--acks-late",
                                              *late],
                                        needs=None if amqp_url else "needs --amqp-url"),
    }
    return rows


#: Rows that need a Redis server: without ``--redis-url`` the bench starts a private one.
REDIS_ROWS = frozenset(k for k in make_rows("redis://", None) if "redis" in k)

#: ``--peers NAME``: for each selected celeriac row, the peer rows on the same broker (shown
#: next to it); ``default`` when none of the selected rows has one.
PEERS: dict[str, dict[str, list[str]]] = {
    "celery": {
        "celeriac-memory": [],
        "celeriac-sqlite": ["celery-sqlite"],
        "celeriac-redis": ["celery-redis"],
        "celeriac-redis-late": ["celery-redis-late"],
        "celeriac-redis-nospin": [],
        "celeriac-redis-prefork1": ["celery-redis-prefork1"],
        "celeriac-redis-prefork2": ["celery-redis-prefork2"],
        "celeriac-rabbitmq": ["celery-rabbitmq"],
        "celeriac-rabbitmq-window": [],
        "celeriac-rabbitmq-late": ["celery-rabbitmq-late"],
        "default": ["celery-sqlite"],
    },
}
DEFAULT_ROWS = ["celeriac-memory", "celeriac-sqlite"]

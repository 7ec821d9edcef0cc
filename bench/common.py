"""Helpers shared by the bench process and the peer drivers: standard library only.

Peer drivers (``bench/peers/*_driver.py``) run in the bench-only virtualenv ``.venv-bench``
where celeriac is not installed, so nothing here may import celeriac or a third-party package.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent

#: The figures every row may report, in table order. Rates are tasks/s, latencies ms.
FIGURES: tuple[str, ...] = (
    "enqueue_one", "enqueue_batch", "drain_off", "drain_on", "rtt_p50", "rtt_p99",
)
RATE_FIGURES = frozenset({"enqueue_one", "enqueue_batch", "drain_off", "drain_on"})

#: The marker files a bench task writes when it runs with i == 0 and with i == last.
FIRST_MARK = "first"
LAST_MARK = "last"


@dataclass
class Params:
    """What one row is asked to measure."""

    n: int = 5000  # tasks per enqueue / drain run
    batch: int = 1000  # signatures per send_many
    k: int = 500  # round trips per run
    repeat: int = 3
    warmup: int = 50  # sends / round trips before timing starts (connection set-up excluded)

    def as_args(self) -> list[str]:
        return ["--n", str(self.n), "--batch", str(self.batch), "--k", str(self.k),
                "--repeat", str(self.repeat), "--warmup", str(self.warmup)]


@dataclass
class Samples:
    """One row's results: for each figure, one value per repeat."""

    values: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: str, value: float) -> None:
        self.values.setdefault(figure, []).append(value)

    def to_json(self) -> dict[str, Any]:
        return {"values": self.values, "notes": self.notes}


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def write_mark(directory: str, name: str) -> None:
    """Record ``time.time()`` in ``directory/name`` (written whole, then renamed)."""
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(repr(time.time()))
    os.replace(tmp, os.path.join(directory, name))


#: How often the bench looks for the last task's mark: the mark holds the time the task ran,
#: so looking more often makes the figure no sharper, and on 2 cores a bench process waking
#: every few ms takes CPU from the worker it times.
MARK_POLL = 0.05


def read_mark(directory: Path, name: str) -> float | None:
    try:
        return float((directory / name).read_text())
    except (FileNotFoundError, ValueError):
        return None


class Proc:
    """A subprocess with its output in a log file; ``stop()`` ends it by pid."""

    def __init__(self, cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.cmd = list(cmd)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env={**os.environ, **(env or {})},
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        try:
            if self.proc.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    self.proc.wait(10)
            return self.proc.returncode
        finally:
            self._log.close()


def wait_until(check: Callable[[], Any], timeout: float, what: str, proc: Proc | None = None,
               interval: float = 0.002) -> Any:
    """Poll ``check`` until it returns something truthy; fail if ``proc`` dies or on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what}: the process exited ({proc.proc.returncode}):\n"
                               f"{proc.log_tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{proc.log_tail()}" if proc is not None else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f}s{tail}")
        time.sleep(interval)


def emit(samples: Samples) -> None:
    """A driver's last stdout line: its samples as JSON."""
    print(json.dumps(samples.to_json()), flush=True)

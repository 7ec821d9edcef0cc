"""A subprocess the tests own: its output in a log file, ready when a marker appears in it,
stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class LoggedProcess:
    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, ready: str) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.ready = ready
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 40.0) -> LoggedProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready in self.log():
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.cmd[2:5]} exited {self.proc.returncode}:\n"
                                     f"{self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"{self.cmd[2:5]} not ready in {timeout}s:\n{self.log()}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (at once when ``grace`` is 0)."""
        if self.proc.poll() is None:
            if grace > 0:
                os.kill(self.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc.poll() is None:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()

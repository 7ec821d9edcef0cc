"""`make demo`: a worker on the embedded SQLite broker, a few hundred tasks, a summary.

Starts a real worker process for ``examples/quickstart/tasks.py``, sends tasks that succeed,
fail, retry and wait for a countdown, shows progress while they run, prints what happened
and how long it took, and stops the worker with a warm shutdown.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

HERE = Path(__file__).resolve().parent / "quickstart"
console = Console()


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DEMO_URL": url, "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "celeriac.cli.main", "-A", "tasks", "worker",
           "-P", "threads", "-c", "4", "-l", "info", "-n", "demo@%h"]
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while " ready: " not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return proc


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-demo-"))
    url = f"sqlite:///{workdir / 'celeriac.sqlite3'}"
    os.environ["DEMO_URL"] = url
    sys.path.insert(0, str(HERE))
    import tasks  # the demo project, pointed at this run's SQLite file

    console.print(f"[bold]celeriac demo[/] — embedded SQLite broker and results at {workdir}")
    log = workdir / "worker.log"
    worker = start_worker(url, log)
    console.print(f"worker started (pid {worker.pid}, pool threads x4); log at {log}")

    try:
        started = time.perf_counter()
        sent: list[tuple[str, object]] = []
        sent_at: dict[str, float] = {}

        def send(name: str, result: object) -> None:
            sent.append((name, result))
            sent_at[result.id] = time.time()  # type: ignore[attr-defined]

        for i in range(300):
            send("add", tasks.add.delay(i, i))
        for i in range(100):
            send("resize_image", tasks.resize_image.delay(64 + i))
        for i in range(20):
            send("divide", tasks.divide.delay(i, i % 4))  # a quarter divide by zero
        for i in range(20):
            send("fetch_page", tasks.fetch_page.delay(f"https://example.com/{i}"))
        for i in range(20):
            send("add (countdown 1s)", tasks.add.apply_async((i, 1), countdown=1.0))
        send_time = time.perf_counter() - started
        console.print(f"sent {len(sent)} tasks in {send_time * 1000:.0f} ms "
                      f"({len(sent) / send_time:,.0f} tasks/s)")

        outcomes: Counter[tuple[str, str]] = Counter()
        latencies: dict[str, list[float]] = {}
        with Progress(TextColumn("waiting for results"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("results", total=len(sent))
            for name, res in sent:
                res.get(timeout=60, propagate=False)  # type: ignore[attr-defined]
                outcomes[(name, res.state)] += 1  # type: ignore[attr-defined]
                done = res.date_done  # type: ignore[attr-defined]
                if done is not None:
                    latency = done.timestamp() - sent_at[res.id]  # type: ignore[attr-defined]
                    latencies.setdefault(name, []).append(latency * 1000)
                progress.advance(bar)
        total = time.perf_counter() - started

        table = Table(title="Outcomes (latency: from send to result stored)")
        for column in ("task", "state", "count", "p50 ms", "p99 ms"):
            table.add_column(column, justify="right" if "ms" in column or column == "count" else "left")
        for (name, state), count in sorted(outcomes.items()):
            colour = {"SUCCESS": "green", "FAILURE": "red"}.get(state, "yellow")
            values = sorted(latencies.get(name, [0.0]))
            p50 = statistics.median(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            table.add_row(name, f"[{colour}]{state}[/]", str(count), f"{p50:.1f}", f"{p99:.1f}")
        console.print(table)
        retried = sum(1 for name, _ in sent if name == "fetch_page")
        console.print(f"{retried} fetch_page tasks each failed once and succeeded on retry; "
                      "the divide-by-zero failures came back as ZeroDivisionError.")
        example = next(res for name, res in sent if name == "divide" and res.failed())  # type: ignore[attr-defined]
        try:
            example.get()  # type: ignore[attr-defined]
        except ZeroDivisionError as exc:
            console.print(f"example failure re-raised on the client: {type(exc).__name__}: {exc}")
        console.print(f"all {len(sent)} tasks done in {total:.2f} s; the countdown tasks waited "
                      "their second in the broker, not in the worker's memory; fetch_page's "
                      "latency includes its 0.2 s retry delay")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
        console.print(f"worker stopped with a warm shutdown (exit code {code})")
        tasks.app.close()


if __name__ == "__main__":
    main()

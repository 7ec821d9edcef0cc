"""Profile celeriac's hot paths with py-spy (a dev tool: ``pip install py-spy``).

    python -m bench.hotspots drain   [--n 20000] [--results/--no-results] [--broker redis]
    python -m bench.hotspots enqueue [--n 20000] [--batched] [--broker redis]
    python -m bench.hotspots rtt     [--k 2000] [--broker redis]

``drain`` pre-loads N tasks into a fresh store and records a ``celeriac worker -P solo``
process under py-spy while it drains them; ``enqueue`` records a producer process; ``rtt``
records both the producer and the worker. Prints the top functions by self time and the
celeriac functions by inclusive time, as % of samples (py-spy without ``--idle``: a thread
waiting in epoll or on a lock is not sampled).

``--broker sqlite`` (the default) uses a new SQLite file as broker and backend;
``--broker redis`` a private ``redis-server`` (``bench.redis_server``; or the server of
``--redis-url``) for both; ``--broker amqp`` the RabbitMQ of ``--amqp-url``, with results
in a new SQLite file (as the bench's RabbitMQ row). ``--rate`` is py-spy's sampling rate
(samples/s); ``--save`` keeps the raw stacks, which ``python -m bench.hotspots report FILE...``
prints again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import tasks
from bench.celeriac_rows import _worker_env, configure, preload, queue_size, sqlite_url, worker_command
from bench.common import wait_until
from bench.redis_server import PrivateRedis

#: py-spy's samples per second (``--rate``)
RATE = 500
#: ``--nonblocking``: py-spy reads the stacks without pausing the process (less distortion
#: of a fast loop, at the price of the odd torn stack)
NONBLOCKING = False
#: the thread whose stacks are counted (None: all; ``--all-threads``)
THREAD: str | None = "MainThread"


def pyspy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return exe


def report(raw: Path, title: str, top: int = 25) -> None:
    """Self and inclusive % per function from py-spy's collapsed (raw) output.

    Only the stacks of the thread named ``THREAD`` are counted (py-spy's ``--threads`` puts
    ``thread (tid): name`` first in each stack), unless it is None.
    """
    thread = THREAD
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            name = frames[0].partition("): ")[2] or "?"
            threads[name] += count
            frames = frames[1:]
            if thread is not None and name != thread:
                continue
        if not frames:
            continue
        frames = [_short(f) for f in frames]
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if threads:
        print(f"\n(samples per thread: {', '.join(f'{k} {v}' for k, v in threads.most_common())})")
    print(f"\n== {title}: {total} samples{f' of {thread}' if threads and thread else ''} ==")
    if not total:
        return
    print("-- self --")
    for name, c in own.most_common(top):
        print(f"{100 * c / total:6.1f}%  {name}")
    print("-- inclusive (celeriac frames) --")
    shown = 0
    for name, c in incl.most_common():
        if name.startswith(("celeriac/", "bench/")):
            print(f"{100 * c / total:6.1f}%  {name}")
            shown += 1
            if shown >= top:
                break


def _short(frame: str) -> str:
    # py-spy frames: "function (path/to/file.py:line)"; drop the line, shorten the path
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{name}"


def record_worker(env: dict[str, str], out: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [pyspy(), "record", "-r", str(RATE), "-f", "raw", "-o", str(out), "--threads",
           *(["--nonblocking"] if NONBLOCKING else []), "--", *worker_command()]
    spy = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log.open("wb"),
                           stderr=subprocess.STDOUT)
    child: int = wait_until(lambda: _child_of(spy.pid), 30, "the worker under py-spy")
    return spy, child


def _child_of(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    return int(children[0]) if children else None


def stop_recording(spy: subprocess.Popen[bytes], worker_pid: int) -> None:
    """SIGTERM the worker (py-spy then writes its file and exits); SIGINT py-spy if not."""
    try:
        os.kill(worker_pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(10)


def drain(url: str, backend: str, d: Path, n: int, results: bool) -> None:
    configure(url, backend)
    last_id = preload(n, 1000, results)
    out = d / "drain.txt"
    spy, worker_pid = record_worker(_worker_env(url, backend, None, None), out, d / "spy.log")
    try:
        started = time.perf_counter()
        if results:
            tasks.app.AsyncResult(last_id).get(timeout=600)
        else:
            wait_until(lambda: queue_size() == 0, 600, "the queue to empty", interval=0.01)
        print(f"drained {n} in {time.perf_counter() - started:.2f}s (under py-spy, "
              "start-up included)")
    finally:
        stop_recording(spy, worker_pid)
    report(out, f"worker, drain {n} tasks, results {'on' if results else 'off'}")


def enqueue(url: str, backend: str, d: Path, n: int, batched: bool) -> None:
    out = d / "enqueue.txt"
    code = (
        "from bench.celeriac_rows import configure, enqueue_one, enqueue_batch\n"
        f"configure({url!r}, {backend!r})\n"
        f"rate = enqueue_batch({n}, 1000) if {batched} else enqueue_one({n}, 50)\n"
        "print(f'{rate:,.0f} tasks/s under py-spy')\n"
    )
    subprocess.run([pyspy(), "record", "-r", str(RATE), "-f", "raw", "-o", str(out), "--",
                    sys.executable, "-c", code], check=True)
    report(out, f"producer, enqueue {'batched' if batched else 'one at a time'}")


def rtt(url: str, backend: str, d: Path, k: int) -> None:
    wout = d / "rtt-worker.txt"
    pout = d / "rtt-producer.txt"
    spy, worker_pid = record_worker(_worker_env(url, backend, None, None), wout, d / "spy.log")
    try:
        code = (
            "import time\n"
            "from bench import tasks\n"
            "from bench.celeriac_rows import configure\n"
            f"configure({url!r}, {backend!r})\n"
            "tasks.noop_r.delay(-1).get(timeout=60)\n"
            "lat = []\n"
            f"for _ in range({k}):\n"
            "    t = time.perf_counter(); tasks.noop_r.delay(-1).get(timeout=30)\n"
            "    lat.append(time.perf_counter() - t)\n"
            "lat.sort(); print(f'p50 {lat[len(lat)//2]*1000:.2f} ms under py-spy')\n"
        )
        subprocess.run([pyspy(), "record", "-r", str(RATE), "-f", "raw", "-o", str(pout), "--",
                        sys.executable, "-c", code], check=True)
    finally:
        stop_recording(spy, worker_pid)
    report(pout, f"producer side of {k} round trips")
    report(wout, f"worker side of {k} round trips")


def main() -> None:
    global RATE, NONBLOCKING, THREAD
    parser = argparse.ArgumentParser(prog="python -m bench.hotspots")
    parser.add_argument("what", choices=["drain", "enqueue", "rtt", "report"])
    parser.add_argument("files", nargs="*", type=Path, help="report: raw py-spy files")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--k", type=int, default=2000)
    parser.add_argument("--results", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batched", action="store_true")
    parser.add_argument("--broker", choices=["sqlite", "redis", "amqp"], default="sqlite")
    parser.add_argument("--redis-url", default=os.environ.get("CELERIAC_BENCH_REDIS_URL"))
    parser.add_argument("--amqp-url", help="--broker amqp: the RabbitMQ to use")
    parser.add_argument("--rate", type=int, default=RATE, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25, help="functions shown per list")
    parser.add_argument("--nonblocking", action="store_true", help="py-spy --nonblocking")
    parser.add_argument("--all-threads", action="store_true",
                        help="count every thread (default: the main thread only)")
    parser.add_argument("--save", type=Path, help="copy py-spy's raw stacks into this directory")
    args = parser.parse_args()
    RATE, NONBLOCKING = args.rate, args.nonblocking
    if args.all_threads:
        THREAD = None
    if args.what == "report":
        for raw in args.files:
            report(raw, str(raw), args.top)
        return
    d = Path(tempfile.mkdtemp(prefix="celeriac-hotspots-"))
    private: PrivateRedis | None = None
    try:
        backend = None
        if args.broker == "sqlite":
            url = sqlite_url(d)
        elif args.broker == "amqp":
            if not args.amqp_url:
                parser.error("--broker amqp needs --amqp-url")
            url, backend = args.amqp_url, sqlite_url(d)
        elif args.redis_url:
            url = args.redis_url
        else:
            private = PrivateRedis()
            url = private.start()
        backend = backend or url
        if args.what == "drain":
            drain(url, backend, d, args.n, args.results)
        elif args.what == "enqueue":
            enqueue(url, backend, d, args.n, args.batched)
        else:
            rtt(url, backend, d, args.k)
    finally:
        tasks.app.close()
        if private is not None:
            private.stop()
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for raw in d.glob("*.txt"):
                shutil.copy(raw, args.save / raw.name)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

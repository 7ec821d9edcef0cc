"""``python -m bench`` (``make bench BENCH_ARGS=...``): celeriac's throughput and latency.

For each row (a system on a broker) and no-op tasks, on this machine:

- enqueue one at a time (``delay()`` in a loop), tasks/s
- enqueue batched (``send_many`` of 1,000 signatures), tasks/s
- drain, results off: one solo worker over N pre-loaded tasks, tasks/s
- drain, results on: the same with every result stored, tasks/s
- round trip: ``delay().get()`` against a warm worker, p50 and p99 in ms

How each is measured (and what is left out of the clock) is in ``bench/celeriac_rows.py``;
peers follow the same method in their drivers (``bench/peers/``). Every figure is measured
``--repeat`` times and shown as the median with the spread (min-max). The repeats run in
rounds (every row once per round, in turn), so that a slow stretch of a shared machine falls
on all rows alike.

    python -m bench                                 # celeriac memory + sqlite, 3 repeats
    python -m bench --peers celery --json out.json  # + Celery 5 on sqla+sqlite (.venv-bench)
    python -m bench --rows celeriac-sqlite --n 20000 --repeat 5
    python -m bench --rows celeriac-redis --redis-url redis://localhost:6379/0
    python -m bench --rows celeriac-redis,celery-redis  # starts a private redis-server

``--peers celery`` adds, next to each selected celeriac row, Celery 5 on the same broker with
the same worker settings (``celery-sqlite``, ``celery-redis``, ``celery-redis-prefork1``, ...).
Redis rows without ``--redis-url`` run on a private ``redis-server`` the bench starts (free
loopback port, temporary directory, ``--save ''``), empties before each row and stops by pid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import FIGURES, RATE_FIGURES, Params, Samples, summary
from bench.redis_server import PrivateRedis
from bench.rows import DEFAULT_ROWS, PEERS, REDIS_ROWS, PeerRow, Row, make_rows

console = Console(stderr=True)

HEADINGS = {
    "enqueue_one": "enqueue\n1 at a time\ntasks/s",
    "enqueue_batch": "enqueue\nbatched\ntasks/s",
    "drain_off": "drain\nresults off\ntasks/s",
    "drain_on": "drain\nresults on\ntasks/s",
    "rtt_p50": "round trip\np50\nms",
    "rtt_p99": "round trip\np99\nms",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    rows = make_rows(None, None)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated rows of: {', '.join(rows)} (default: %(default)s)")
    parser.add_argument("--peers", default="",
                        help=f"add peer rows: {', '.join(PEERS)} (creates .venv-bench on first use)")
    parser.add_argument("--n", type=int, default=5000, help="tasks per enqueue/drain run")
    parser.add_argument("--batch", type=int, default=1000, help="signatures per send_many")
    parser.add_argument("--peer-n", type=int, help="--n for peer rows (default: --n)")
    parser.add_argument("--k", type=int, default=500, help="round trips per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure")
    parser.add_argument("--warmup", type=int, default=50, help="untimed sends/round trips first")
    parser.add_argument("--json", type=Path, help="save the samples and summaries here")
    parser.add_argument("--redis-url", default=os.environ.get("CELERIAC_BENCH_REDIS_URL"))
    parser.add_argument("--amqp-url", default=os.environ.get("CELERIAC_BENCH_AMQP_URL"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if min(args.n, args.batch, args.k, args.repeat) < 1 or args.n < 2:
        parser.error("--n (>= 2), --batch, --k and --repeat must be positive")
    return args


def selected(args: argparse.Namespace, rows: dict[str, Row]) -> list[str]:
    """The rows to run, in order: each asked-for row followed by its peers on the same broker."""
    asked = [k.strip() for k in args.rows.split(",") if k.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for peer in peers:
        if peer not in PEERS:
            raise SystemExit(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
    keys: list[str] = []
    for key in asked:
        for k in [key, *(r for p in peers for r in PEERS[p].get(key, []))]:
            if k not in keys:
                keys.append(k)
    for peer in peers:
        if not any(r in keys for rs in PEERS[peer].values() for r in rs):
            keys += [k for k in PEERS[peer]["default"] if k not in keys]
    unknown = [k for k in keys if k not in rows]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(rows)}")
    return keys


def cell(figure: str, values: list[float] | None) -> str:
    if not values:
        return "[dim]-[/]"
    s = summary(values)
    if figure in RATE_FIGURES:
        return f"{s['median']:,.0f}\n[dim]{s['min']:,.0f}-{s['max']:,.0f}[/]"
    return f"{s['median']:.2f}\n[dim]{s['min']:.2f}-{s['max']:.2f}[/]"


def render(results: dict[str, dict[str, Any]], params: Params) -> Table:
    table = Table(title=f"celeriac bench: no-op tasks, N={params.n:,}, K={params.k}, "
                        f"{params.repeat} run(s) each: median and (min-max)",
                  show_lines=True)
    table.add_column("system / broker")
    table.add_column("worker")
    for figure in FIGURES:
        table.add_column(HEADINGS[figure], justify="right")
    for result in results.values():
        if result.get("error"):
            table.add_row(result["name"], result["mode"],
                          f"[red]{result['error'].splitlines()[0][:60]}[/]",
                          *[""] * (len(FIGURES) - 1))
            continue
        values = result.get("values", {})
        name = result["name"]
        if result.get("n") != params.n:
            name += f"\n[dim](N={result.get('n'):,})[/]"
        table.add_row(name, result["mode"], *[cell(f, values.get(f)) for f in FIGURES])
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = selected(args, make_rows(None, None))
    private: PrivateRedis | None = None
    if args.redis_url is None and REDIS_ROWS.intersection(keys):
        private = PrivateRedis()
        args.redis_url = private.start()
        console.print(f"started a private redis-server (pid {private.pid}) at {args.redis_url}")
    try:
        return run(args, keys, private)
    finally:
        if private is not None:
            private.stop()
            console.print("stopped the private redis-server")


def redis_floor(url: str, n: int = 5000, repeat: int = 3) -> tuple[float, float]:
    """The machine's floor for one Redis round trip right now, in microseconds: the median
    time of a ``PING`` in a loop through redis-py (blocking, hiredis), and on a bare socket
    (the network and Redis alone: what one-at-a-time ``delay()`` can approach, as celeriac's
    blocking publisher sends and reads on the socket itself). Loopback latency on a shared VM
    drifts over minutes; printed before and after the rows to read them against."""
    import socket

    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
        sock = client.connection_pool.get_connection()._sock  # type: ignore[no-untyped-call]
        assert isinstance(sock, socket.socket)
        lib, bare = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(n):
                client.ping()
            lib.append((time.perf_counter() - start) / n * 1e6)
            start = time.perf_counter()
            for _ in range(n):
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if sock.recv(64) != b"+PONG\r\n":
                    raise RuntimeError("unexpected reply to PING")
            bare.append((time.perf_counter() - start) / n * 1e6)
    finally:
        client.close()
    return statistics.median(lib), statistics.median(bare)


def run(args: argparse.Namespace, keys: list[str], private: PrivateRedis | None) -> int:
    rows = make_rows(args.redis_url, args.amqp_url)
    floors: list[tuple[float, float]] = []
    if args.redis_url and REDIS_ROWS.intersection(keys):
        floors.append(redis_floor(args.redis_url))
        console.print("Redis round-trip floor (PING: redis-py / bare socket): "
                      f"{floors[-1][0]:.1f} / {floors[-1][1]:.1f} µs")
    logging.getLogger("celeriac").setLevel(logging.ERROR)  # in-process workers: quiet
    params = Params(n=args.n, batch=args.batch, k=args.k, repeat=args.repeat,
                    warmup=args.warmup)
    top = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    results: dict[str, dict[str, Any]] = {}
    merged: dict[str, Samples] = {}
    failed = False
    once = dataclasses.replace(params, repeat=1)
    try:
        # Rounds: each row runs once per round, in turn, so that the VM's drift over the run
        # falls on every row alike rather than on whichever row ran in a slow stretch.
        for r in range(params.repeat):
            for key in keys:
                row = rows[key]
                entry = results.setdefault(key, {"name": row.name, "mode": row.mode})
                if "error" in entry:
                    continue
                reason = row.unavailable()
                if reason:
                    entry["error"] = f"skipped: {reason}"
                    console.print(f"[yellow]{row.name}: skipped ({reason})[/]")
                    continue
                if private is not None and key in REDIS_ROWS:
                    private.flush()  # each row starts on an empty server
                started = time.monotonic()
                try:
                    with console.status(f"{row.name}") as status:
                        row_params = once
                        if args.peer_n and isinstance(row, PeerRow):
                            row_params = dataclasses.replace(once, n=args.peer_n)
                        entry["n"] = row_params.n
                        samples: Samples = row.run(row_params, top / key / f"round{r}",
                                                   lambda text: status.update(text))
                except Exception as exc:
                    failed = True
                    entry["error"] = f"failed: {type(exc).__name__}: {exc}"
                    console.print(f"[red]{row.name} failed[/]\n{traceback.format_exc()}")
                    continue
                total = merged.setdefault(key, Samples())
                for figure, values in samples.values.items():
                    total.values.setdefault(figure, []).extend(values)
                total.notes.extend(n for n in samples.notes if n not in total.notes)
                entry.update(total.to_json())
                entry["summary"] = {f: summary(v) for f, v in total.values.items() if v}
                console.print(f"{row.name} ({row.mode.replace(chr(10), ' ')}): round {r + 1} "
                              f"of {params.repeat} done in {time.monotonic() - started:.0f}s")
    finally:
        if args.keep:
            console.print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    if floors and args.redis_url:
        floors.append(redis_floor(args.redis_url))
    out = Console()
    if not out.is_terminal:
        out = Console(width=150)
    out.print(render(results, params))
    if floors:
        out.print("Redis round-trip floor (PING one at a time, redis-py / bare socket), "
                  "before and after: " + ", ".join(
                      f"{lib:.1f} / {bare:.1f} µs ({1e6 / lib:,.0f} / {1e6 / bare:,.0f} per s)"
                      for lib, bare in floors))
    if args.json:
        args.json.write_text(json.dumps({
            "when": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "platform": platform.platform()},
            "params": vars(params),
            "redis": "private redis-server" if private is not None else args.redis_url,
            "redis_floor_us": floors,
            "rows": results,
        }, indent=2))
        console.print(f"saved {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

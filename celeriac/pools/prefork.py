"""``-P prefork -c N``: plain-function tasks run in N child processes.

How it is built, and why:

- **Fork, after the app is loaded.** ``start()`` forks N children from the worker process
  itself, so each child has the app, its tasks and their imports already in memory: no
  re-import: a replacement child takes its first task about 4 ms after the old one died
  (measured here), where a fresh interpreter importing even the tiny test app by its ``-A``
  spec takes 110 ms (seconds for a large project), paid again at every hard time limit,
  lost child and ``--max-tasks-per-child`` turn. A forked child never touches
  what it inherited from the parent's event loop, broker or backend: it clears the running
  loop and the sync facade's per-thread loop, freezes the inherited heap out of the garbage
  collector (fewer copy-on-write pages), and leaves with ``os._exit`` so that no inherited
  connection is ever closed (or checkpointed) from the child. Per-child set-up goes in
  ``celeriac.signals.worker_process_init`` receivers (database connections and the like).
- **One socket pair per child, length-prefixed pickles.** The parent sends ``(task, request,
  soft limit)`` and reads ``(outcome, resident KiB)`` back, from its event loop (no thread,
  no ``multiprocessing`` machinery). A child holds at most one task: the worker already
  keeps one runner per slot and the prefetched messages in its own queue, so there is nothing
  to batch per child, and a child killed at its hard limit takes no other task down with it.
  ``async def`` tasks run on the worker's loop, as in every pool.
- **Time limits.** The soft limit is a timer in the child (``setitimer``/``SIGALRM``) whose
  handler raises ``SoftTimeLimitExceeded`` inside the task, so the task may catch it and clean
  up. The hard limit is a timer in the parent: it kills the child (SIGKILL), the task ends
  FAILURE with ``TimeLimitExceeded``, and a new child is forked at once. Limits come from the
  message's ``timelimit`` header, else the task's options, else the settings.
- **Lost children.** A child that dies (SIGKILL, ``os._exit``, a segfault) shows up as EOF on
  its socket; its task ends FAILURE with ``WorkerLostError``, or, under acks_late with
  ``task_reject_on_worker_lost``, is rejected with requeue, so the worker puts it back and
  dead-letters it once it has been delivered ``worker_max_deliveries`` times. A new child
  takes the slot. ``stats()["tasks"]`` counts, per task name, runs, children lost, hard
  time-outs and the peak resident memory seen after a run.
- **No orphans.** Each child asks the kernel for SIGKILL when its parent dies
  (``PR_SET_PDEATHSIG``, Linux) and also leaves when its socket reaches EOF. Children never
  ack or store anything themselves, so a child killed with its parent writes nothing.
- **Recycling and autoscale.** ``max_tasks_per_child`` and ``max_memory_per_child`` (KiB of
  resident memory, read after each task) replace a child after its current task.
  ``autoscale=(max, min)`` starts ``min`` children, grows as soon as runners wait for a child,
  and retires a child idle for ``autoscale_keepalive`` seconds. ``grow``, ``shrink`` and
  ``restart`` are for remote control; the worker sizes its runners and prefetch window by
  ``concurrency`` (the maximum), so the pool grows up to that and no further.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import io
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.errors import (
    ConfigurationError,
    EncodeError,
    NotRegistered,
    Reject,
    RemoteError,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    WorkerLostError,
)
from celeriac.result import format_traceback
from celeriac.worker.execute import Outcome, run_async_task, run_sync_task, time_limits

if TYPE_CHECKING:
    from celeriac.context import Context
    from celeriac.task import Task

log = logging.getLogger("celeriac.worker")

_HEADER = struct.Struct("!I")
_PICKLE = pickle.HIGHEST_PROTOCOL
_READY = b"R"
PR_SET_PDEATHSIG = 1

# child states, as the parent sees them
STARTING, IDLE, BUSY, GONE = "starting", "idle", "busy", "gone"


@dataclass(eq=False)
class _Job:
    task: Task[Any, Any]
    ctx: Context
    future: asyncio.Future[Outcome]
    started: float
    hard: float | None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False


@dataclass(eq=False)
class _Child:
    pid: int
    sock: socket.socket
    generation: int
    ready: asyncio.Future[bool]
    state: str = STARTING
    job: _Job | None = None
    tasks_done: int = 0
    idle_since: float = 0.0
    rss_kib: int = 0
    buf: bytearray = field(default_factory=bytearray)


class PreforkPool:
    name = "prefork"
    blocks_loop = False

    def __init__(
        self,
        concurrency: int,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        autoscale: tuple[int, int] | None = None,
        autoscale_keepalive: float = 30.0,
        proc_alive_timeout: float = 4.0,
    ) -> None:
        if autoscale is not None:
            most, least = (int(n) for n in autoscale)
            if most < 1 or least < 0 or least > most:
                raise ConfigurationError(f"autoscale wants max,min with max >= min >= 0: {autoscale}")
            self.concurrency = most
            self._min = least
            self._target = max(1, least)
        else:
            self.concurrency = max(1, int(concurrency))
            self._min = self._target = self.concurrency
        self.autoscale = autoscale
        self.autoscale_keepalive = float(autoscale_keepalive)
        self.max_tasks_per_child = max_tasks_per_child or None
        self.max_memory_per_child = max_memory_per_child or None
        self.proc_alive_timeout = float(proc_alive_timeout)
        self.running = 0
        self._children: dict[int, _Child] = {}
        self._idle: collections.deque[_Child] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Child]] = collections.deque()
        self._generation = 0
        self._stopping = False
        self._start_failures = 0
        self._fill_handle: asyncio.TimerHandle | None = None
        self._reapers: set[asyncio.Task[Any]] = set()
        self._scaler: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.replaced: dict[str, int] = {}
        self.task_stats: dict[str, dict[str, int]] = {}

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._fill()
        first = [c.ready for c in self._children.values()]
        ready = await asyncio.gather(*first)
        if first and not any(ready):
            await self.stop()
            raise ConfigurationError(
                "no pool process could start (a worker_process_init receiver failed?); see the log")
        if self.autoscale is not None:
            self._scaler = self._loop.create_task(self._autoscaler())

    async def stop(self) -> None:
        """Let every child finish its task and leave; kill what is left after 10 s."""
        self._stopping = True
        if self._scaler is not None:
            self._scaler.cancel()
            self._scaler = None
        if self._fill_handle is not None:
            self._fill_handle.cancel()
        for waiter in self._waiters:
            waiter.cancel()
        self._waiters.clear()
        for child in list(self._children.values()):
            self._retire(child, None, kill_after=10.0)
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)

    # ---- running tasks ---------------------------------------------------------------------
    async def execute(self, task: Task[Any, Any], ctx: Context) -> Outcome:
        hard, soft = time_limits(task, ctx)
        self.running += 1
        try:
            if task.is_async:
                return await run_async_task(task, ctx, hard)
            payload = pickle.dumps((id(task), task.name, ctx, soft), _PICKLE)
            frame = _HEADER.pack(len(payload)) + payload
            while True:
                child = await self._acquire()
                loop = asyncio.get_running_loop()
                job = _Job(task, ctx, loop.create_future(), time.perf_counter(), hard)
                child.job = job
                child.state = BUSY
                if await self._send(child, frame):
                    break
                child.job = None  # it died idle: the task never started, try another child
                self._lost(child)
            if hard:
                job.timer = loop.call_later(hard, self._hard_limit, child, job)
            return await job.future
        finally:
            self.running -= 1

    async def _acquire(self) -> _Child:
        while self._idle:
            child = self._idle.popleft()
            if child.state == IDLE:
                return child
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Child] = loop.create_future()
        self._waiters.append(waiter)
        if self.autoscale is not None and self._target < self.concurrency:
            self.grow(min(len(self._waiters), self.concurrency - self._target))
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())
            raise

    def _release(self, child: _Child) -> None:
        """A ready child: to the first runner waiting, else to the idle list."""
        child.state = IDLE
        child.idle_since = time.monotonic()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                child.state = BUSY
                waiter.set_result(child)
                return
        self._idle.append(child)

    async def _send(self, child: _Child, frame: bytes) -> bool:
        try:
            sent = child.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return False
        if sent < len(frame):
            try:
                await asyncio.get_running_loop().sock_sendall(child.sock, frame[sent:])
            except OSError:
                return False
        return True

    def _hard_limit(self, child: _Child, job: _Job) -> None:
        if child.job is not job or child.state != BUSY:
            return
        job.timed_out = True
        log.error("Hard time limit (%ss) exceeded for %s[%s]: killing process %d",
                  job.hard, job.task.name, job.ctx.id, child.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)

    # ---- reading from children --------------------------------------------------------------
    def _on_readable(self, child: _Child) -> None:
        try:
            data = child.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost(child)
            return
        buf = child.buf
        buf += data
        while len(buf) >= 4:
            (size,) = _HEADER.unpack_from(buf)
            if len(buf) < 4 + size:
                return
            payload = bytes(buf[4:4 + size])
            del buf[:4 + size]
            self._on_message(child, payload)
            if child.state == GONE:
                return

    def _on_message(self, child: _Child, payload: bytes) -> None:
        if payload == _READY:
            if child.state == STARTING:
                self._start_failures = 0
                child.ready.set_result(True)
                if child.generation < self._generation or self._live() > self._target:
                    self._retire(child, "restart" if child.generation < self._generation else "shrink")
                    self._fill()
                else:
                    self._release(child)
            return
        job = child.job
        child.job = None
        if job is None:
            return
        if job.timer is not None:
            job.timer.cancel()
        try:
            status, value, tb, retry, reject, runtime, rss = pickle.loads(payload)
            outcome = Outcome(status, value, tb, retry, reject, runtime)
        except Exception as exc:
            error = EncodeError(f"the outcome of the task could not be read from its process: {exc!r}")
            outcome, rss = Outcome(states.FAILURE, error, format_traceback(error)), 0
        child.tasks_done += 1
        child.rss_kib = rss
        stats = self._stats_for(job.task.name)
        stats["runs"] += 1
        stats["peak-rss-kib"] = max(stats["peak-rss-kib"], rss)
        if not job.future.done():
            job.future.set_result(outcome)
        self._after_task(child)

    def _after_task(self, child: _Child) -> None:
        reason = None
        if self.max_tasks_per_child and child.tasks_done >= self.max_tasks_per_child:
            reason = "max-tasks-per-child"
        elif self.max_memory_per_child and child.rss_kib > self.max_memory_per_child:
            reason = "max-memory-per-child"
            log.warning("Process %d uses %d KiB (more than %d): replacing it", child.pid,
                        child.rss_kib, self.max_memory_per_child)
        elif child.generation < self._generation:
            reason = "restart"
        elif self._stopping or self._live() > self._target:
            reason = "shrink"
        if reason is None:
            self._release(child)
            return
        self._retire(child, reason)
        self._fill()

    # ---- children coming and going --------------------------------------------------------
    def _live(self) -> int:
        return len(self._children)

    def _fill(self) -> None:
        """Fork children until the pool has its target size (slower after failed starts)."""
        if self._stopping or self._loop is None:
            return
        if self._start_failures and self._fill_handle is None and self._live() < self._target:
            delay = min(10.0, 0.25 * 2 ** self._start_failures)
            self._fill_handle = self._loop.call_later(delay, self._fill_later)
            return
        if self._fill_handle is not None:
            return
        while self._live() < self._target:
            self._fork()

    def _fill_later(self) -> None:
        self._fill_handle = None
        if not self._stopping and self._live() < self._target:
            self._fork()
            self._fill()

    def _fork(self) -> None:
        assert self._loop is not None
        loop = self._loop
        parent_end, child_end = socket.socketpair()
        others = [c.sock.fileno() for c in self._children.values()]
        parent_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                parent_end.close()
                for fd in others:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                code = _child_main(child_end, parent_pid)
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                os._exit(code)
        child_end.close()
        parent_end.setblocking(False)
        child = _Child(pid, parent_end, self._generation, loop.create_future())
        self._children[pid] = child
        loop.add_reader(parent_end.fileno(), self._on_readable, child)
        loop.call_later(self.proc_alive_timeout, self._check_alive, child)

    def _check_alive(self, child: _Child) -> None:
        if child.state == STARTING:
            log.error("Process %d did not start within %.1fs: killing it", child.pid,
                      self.proc_alive_timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)

    def _detach(self, child: _Child) -> None:
        assert self._loop is not None
        previous = child.state
        child.state = GONE
        self._children.pop(child.pid, None)
        with contextlib.suppress(Exception):
            self._loop.remove_reader(child.sock.fileno())
        child.sock.close()
        if previous == STARTING and not child.ready.done():
            child.ready.set_result(False)

    def _retire(self, child: _Child, reason: str | None, kill_after: float = 10.0) -> None:
        """Close the child's socket: it leaves when it reads EOF (after its task, if any)."""
        if child.state == GONE:
            return
        if reason is not None:
            self.replaced[reason] = self.replaced.get(reason, 0) + 1
            log.info("Process %d retired (%s) after %d task(s)", child.pid, reason,
                     child.tasks_done)
        self._detach(child)
        self._reap(child, kill_after, None)

    def _lost(self, child: _Child) -> None:
        """EOF from a child we did not retire: it died."""
        if child.state == GONE:
            return
        was_starting = child.state == STARTING
        self._detach(child)
        job = child.job
        child.job = None
        if job is not None and job.timer is not None:
            job.timer.cancel()
        if was_starting:
            self._start_failures += 1
        elif not self._stopping:
            reason = "hard-time-limit" if job is not None and job.timed_out else "lost"
            self.replaced[reason] = self.replaced.get(reason, 0) + 1
        self._reap(child, 2.0, job)
        self._fill()

    def _reap(self, child: _Child, kill_after: float, job: _Job | None) -> None:
        assert self._loop is not None
        reaper = self._loop.create_task(self._wait_exit(child, kill_after, job))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    async def _wait_exit(self, child: _Child, kill_after: float, job: _Job | None) -> None:
        status = await _waitpid(child.pid, kill_after)
        how = _describe_exit(status)
        if job is None:
            if child.tasks_done == 0 and status is not None and status != 0 and not self._stopping:
                log.error("Process %d exited before its first task: %s", child.pid, how)
            return
        stats = self._stats_for(job.task.name)
        if job.timed_out:
            stats["hard-timeouts"] += 1
            exc: Exception = TimeLimitExceeded(
                f"task exceeded its hard time limit of {job.hard}s")
            outcome = Outcome(states.FAILURE, exc, format_traceback(exc))
        else:
            stats["killed-child"] += 1
            log.error("Process %d running %s[%s] exited prematurely: %s", child.pid,
                      job.task.name, job.ctx.id, how)
            outcome = _worker_lost(job.task, f"Worker exited prematurely: {how}.")
        outcome.runtime = time.perf_counter() - job.started
        if not job.future.done():
            job.future.set_result(outcome)

    # ---- sizing ----------------------------------------------------------------------------
    def grow(self, n: int = 1) -> int:
        """Add up to ``n`` children (no more than ``concurrency``); the new target size."""
        self._target = min(self.concurrency, self._target + max(0, int(n)))
        self._fill()
        return self._target

    def shrink(self, n: int = 1) -> int:
        """Retire ``n`` children (idle ones now, busy ones after their task); the target."""
        self._target = max(1, self._target - max(0, int(n)))
        while self._live() > self._target and self._idle:
            child = self._idle.pop()
            if child.state == IDLE:
                self._retire(child, "shrink")
        return self._target

    def restart(self) -> None:
        """Replace every child (idle ones now, busy ones after their task): new imports of
        code changed since cannot be seen, but per-child state is fresh."""
        self._generation += 1
        while self._idle:
            child = self._idle.popleft()
            if child.state == IDLE:
                self._retire(child, "restart")
        self._fill()

    async def _autoscaler(self) -> None:
        while not self._stopping:
            await asyncio.sleep(min(1.0, self.autoscale_keepalive / 2))
            if self._waiters and self._target < self.concurrency:
                self.grow(len(self._waiters))
                continue
            now = time.monotonic()
            floor = max(1, self._min)
            idle_long = [c for c in self._idle if c.state == IDLE
                         and now - c.idle_since >= self.autoscale_keepalive]
            if idle_long and self._target > floor:
                self.shrink(1)

    # ---- figures ---------------------------------------------------------------------------
    def _stats_for(self, name: str) -> dict[str, int]:
        stats = self.task_stats.get(name)
        if stats is None:
            stats = self.task_stats[name] = {"runs": 0, "killed-child": 0, "hard-timeouts": 0,
                                             "peak-rss-kib": 0}
        return stats

    def stats(self) -> dict[str, Any]:
        return {
            "pool": self.name,
            "max-concurrency": self.concurrency,
            "running": self.running,
            "processes": sorted(self._children),
            "target": self._target,
            "autoscale": list(self.autoscale) if self.autoscale else None,
            "max-tasks-per-child": self.max_tasks_per_child,
            "max-memory-per-child": self.max_memory_per_child,
            "rss-kib": {pid: c.rss_kib for pid, c in self._children.items()},
            "replaced": dict(self.replaced),
            "tasks": {name: dict(s) for name, s in self.task_stats.items()},
        }


def _worker_lost(task: Task[Any, Any], message: str) -> Outcome:
    """FAILURE with WorkerLostError, or (acks_late + reject_on_worker_lost) a requeue."""
    exc = WorkerLostError(message)
    conf = task._app().conf
    acks_late = conf.task_acks_late if task.acks_late is None else task.acks_late
    requeue = (conf.task_reject_on_worker_lost if task.reject_on_worker_lost is None
               else task.reject_on_worker_lost)
    if acks_late and requeue:
        return Outcome(states.REJECTED, exc, reject=Reject(f"WorkerLostError: {message}", requeue=True))
    return Outcome(states.FAILURE, exc, format_traceback(exc))


async def _waitpid(pid: int, kill_after: float) -> int | None:
    """The wait status of child ``pid`` (SIGKILL once ``kill_after`` seconds pass)."""
    deadline = time.monotonic() + kill_after
    delay = 0.0005
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got:
            return status
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"signal {sig} ({name})"
    return f"exitcode {os.waitstatus_to_exitcode(status)}"


# ---- passing outcomes between processes ----------------------------------------------------

def _rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                       state: dict[str, Any]) -> BaseException:
    """Unpickle an exception without calling its ``__init__`` (whose signature may differ
    from its ``args``, which would make plain unpickling fail)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


class _ExceptionPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException):
            return _rebuild_exception, (type(obj), obj.args, dict(getattr(obj, "__dict__", {})))
        return NotImplemented


def _dump_exceptions(obj: Any) -> bytes:
    out = io.BytesIO()
    _ExceptionPickler(out, _PICKLE).dump(obj)
    return out.getvalue()


def _portable(exc: Any) -> Any:
    if not isinstance(exc, BaseException):
        return exc
    return RemoteError(type(exc).__name__, str(exc), type(exc).__module__)


def _dump_outcome(outcome: Outcome, rss: int) -> bytes:
    msg = (outcome.status, outcome.value, outcome.traceback, outcome.retry, outcome.reject,
           outcome.runtime, rss)
    if outcome.status == states.SUCCESS:
        try:
            return pickle.dumps(msg, _PICKLE)
        except Exception as exc:
            error = EncodeError(f"the result cannot be passed to the worker: {exc!r}")
            return pickle.dumps((states.FAILURE, error, format_traceback(error), None, None,
                                 outcome.runtime, rss), _PICKLE)
    try:
        return _dump_exceptions(msg)
    except Exception:
        return _dump_exceptions((outcome.status, _portable(outcome.value), outcome.traceback,
                                 None, None, outcome.runtime, rss))


# ---- the child -------------------------------------------------------------------------------

class _ChildState:
    armed = False
    soft: float = 0.0


def _on_soft_limit(signum: int, frame: Any) -> None:
    if _ChildState.armed:
        _ChildState.armed = False
        raise SoftTimeLimitExceeded(f"soft time limit ({_ChildState.soft}s) exceeded")


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _watch_parent(parent_pid: int) -> None:
    """Where the kernel cannot kill us with our parent: look for a new parent every second."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="celeriac-parent-watch", daemon=True).start()


def _forget_parent_state() -> None:
    """Drop the parent's event loop state that fork copied (never to be used here)."""
    asyncio.events._set_running_loop(None)  # this thread's loops: see utils.sync (at fork)
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is for the worker, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, _on_soft_limit)
    signal.signal(signal.SIGUSR1, _on_soft_limit)  # as Celery: SIGUSR1 = soft limit now


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buf)


def _rss_reader() -> Any:
    """A function returning this process's resident memory in KiB, as cheaply as we can."""
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        page_kib = os.sysconf("SC_PAGE_SIZE") // 1024

        def statm() -> int:
            return int(os.pread(fd, 64, 0).split()[1]) * page_kib

        statm()
        return statm
    except (OSError, ValueError, IndexError):
        import resource

        def maxrss() -> int:  # the peak, not the current size: the best we have here
            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

        return maxrss


def _find_task(key: int, name: str) -> Task[Any, Any] | None:
    from celeriac.app import _all_apps

    by_name = None
    for app in list(_all_apps):
        for task in app.tasks.values():
            if id(task) == key:
                return task
        by_name = by_name or app.tasks.get(name)
    return by_name


def _child_main(sock: socket.socket, parent_pid: int) -> int:
    """Take tasks from the parent until EOF; the process's exit code."""
    _set_parent_death_signal()
    if os.getppid() != parent_pid:
        return 0  # the parent died before we asked to go with it
    if not sys.platform.startswith("linux"):
        _watch_parent(parent_pid)
    _forget_parent_state()
    gc.freeze()
    from celeriac.signals import worker_process_init, worker_process_shutdown

    try:
        worker_process_init.send(sender=None, pid=os.getpid())
    except Exception:
        log.exception("a worker_process_init receiver failed: process %d exits", os.getpid())
        return 1
    sock.setblocking(True)
    rss_kib = _rss_reader()
    tasks: dict[int, Task[Any, Any] | None] = {}
    try:
        sock.sendall(_HEADER.pack(len(_READY)) + _READY)
        while True:
            header = _recv_exact(sock, 4)
            if header is None:
                break
            payload = _recv_exact(sock, _HEADER.unpack(header)[0])
            if payload is None:
                break
            key, name, ctx, soft = pickle.loads(payload)
            task = tasks.get(key)
            if task is None:
                task = tasks[key] = _find_task(key, name)
            try:
                outcome = _run(task, name, ctx, soft)
            except BaseException as exc:  # the soft limit striking just as the task ended
                outcome = Outcome(states.FAILURE, exc, format_traceback(exc))
            data = _dump_outcome(outcome, rss_kib())
            sock.sendall(_HEADER.pack(len(data)) + data)
    except OSError:  # the parent is gone: leave without a word
        return 0
    with contextlib.suppress(Exception):
        worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    return 0


def _run(task: Task[Any, Any] | None, name: str, ctx: Context, soft: float | None) -> Outcome:
    if task is None:
        error = NotRegistered(f"task {name!r} was registered after the pool's processes started")
        return Outcome(states.FAILURE, error, format_traceback(error))
    if soft:
        _ChildState.soft = soft
        _ChildState.armed = True
        signal.setitimer(signal.ITIMER_REAL, soft)
    try:
        if task.is_async:
            return Outcome(states.FAILURE, TypeError("async task sent to a pool process"))
        return run_sync_task(task, ctx)
    except BaseException as exc:  # SystemExit, a soft limit striking in a hook, ...
        return Outcome(states.FAILURE, exc, format_traceback(exc))
    finally:
        if soft:
            _ChildState.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)

"""The ``celeriac`` command line. Strings become objects here (DESIGN.md §2)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import orjson

from celeriac import __version__
from celeriac.app import Celeriac
from celeriac.cli.app_loader import find_app
from celeriac.config import redact_url
from celeriac.errors import CeleriacError, ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _fail_cleanly(fn: F) -> F:
    """Turn celeriac's errors into one line on stderr and exit code 2, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CeleriacError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
        except (OSError, ValueError, TypeError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


class State:
    def __init__(self, app_spec: str | None, broker: str | None, backend: str | None) -> None:
        self.app_spec = app_spec
        self.broker = broker
        self.backend = backend
        self._app: Celeriac | None = None

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            app = find_app(self.app_spec) if self.app_spec else Celeriac()
            if self.broker:
                app.conf.broker_url = self.broker
            if self.backend:
                app.conf.result_backend = self.backend
            self._app = app
        return self._app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-A", "--app", "app_spec", envvar="CELERIAC_APP", help="The app: module.path:attr or module.")
@click.option("-b", "--broker", envvar="CELERIAC_BROKER_URL", help="Broker URL (overrides the app's).")
@click.option("--result-backend", envvar="CELERIAC_RESULT_BACKEND", help="Result backend URL.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Change to this directory first.")
@click.version_option(__version__, "--version", prog_name="celeriac")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, broker: str | None,
        result_backend: str | None, workdir: str | None) -> None:
    """celeriac: a fast task queue that speaks Celery."""
    if workdir:
        try:
            os.chdir(workdir)
        except OSError as exc:
            raise click.ClickException(f"cannot change to {workdir!r}: {exc.strerror}") from None
    if "" not in sys.path:
        sys.path.insert(0, "")
    ctx.obj = State(app_spec, broker, result_backend)


@cli.command()
@click.option("-P", "--pool", default=None,
              type=click.Choice(["solo", "threads", "asyncio", "prefork", "gevent", "eventlet"]),
              help="Where tasks run [default: worker_pool, i.e. prefork].")
@click.option("-c", "--concurrency", type=click.IntRange(min=1),
              help="Tasks at once (solo: one; -c then sizes only the prefetch window, as in "
                   "Celery). Default: the CPU count (asyncio: 100).")
@click.option("-Q", "--queues", help="Comma-separated queues to consume.")
@click.option("-n", "--hostname", help="Node name, e.g. worker1@%h.")
@click.option("-l", "--loglevel", default="warning", show_default=True,
              type=click.Choice(LOG_LEVELS, case_sensitive=False))
@click.option("--prefetch-multiplier", type=click.IntRange(min=1))
@click.option("--shutdown-timeout", type=float, help="Grace period of a warm shutdown, seconds.")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1),
              help="prefork: replace a pool process after this many tasks.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1),
              help="prefork: replace a pool process after a task leaves it above this many KiB resident.")
@click.option("--autoscale", metavar="MAX,MIN",
              help="prefork: grow up to MAX processes with the load, shrink to MIN when idle.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True),
              help="Hard time limit of every task, seconds (task_time_limit).")
@click.option("--soft-time-limit", type=click.FloatRange(min=0, min_open=True),
              help="Soft time limit of every task, seconds (task_soft_time_limit).")
@click.option("--loop", "event_loop", type=click.Choice(["auto", "uvloop", "asyncio"]),
              help="The worker's event loop [default: worker_event_loop, i.e. auto: uvloop "
                   "when installed].")
@click.pass_obj
@_fail_cleanly
def worker(state: State, pool: str | None, concurrency: int | None, queues: str | None,
           hostname: str | None, loglevel: str, prefetch_multiplier: int | None,
           shutdown_timeout: float | None, max_tasks_per_child: int | None,
           max_memory_per_child: int | None, autoscale: str | None, time_limit: float | None,
           soft_time_limit: float | None, event_loop: str | None) -> None:
    """Start a worker."""
    if pool == "gevent":  # before the app and its imports: patched sockets, sleeps, selectors
        from celeriac.pools.gevent import patch

        patch()
    from celeriac.pools import pool_from_name
    from celeriac.worker import eventloop
    from celeriac.worker.loop import Worker

    logging.basicConfig(
        level=loglevel.upper(),
        format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
    )
    app = state.app
    app.import_modules()
    if pool is None:
        pool = app.conf.worker_pool or "prefork"
        if not isinstance(pool, str):
            raise ConfigurationError("worker_pool must name a pool (prefork, threads, ...)")
        if pool == "gevent":
            raise ConfigurationError(
                "worker_pool = 'gevent' needs -P gevent on the command line: gevent must patch "
                "the standard library before the app is imported"
            )
    if time_limit is not None:
        app.conf.task_time_limit = time_limit
    if soft_time_limit is not None:
        app.conf.task_soft_time_limit = soft_time_limit
    if concurrency is None:  # Celery's default, the CPU count, solo included (its prefetch)
        concurrency = app.conf.worker_concurrency or (
            100 if pool == "asyncio" else os.cpu_count() or 1
        )
    options: dict[str, Any] = {}
    if pool in ("prefork", "processes"):
        options = {
            "max_tasks_per_child": max_tasks_per_child or app.conf.worker_max_tasks_per_child,
            "max_memory_per_child": max_memory_per_child or app.conf.worker_max_memory_per_child,
            "proc_alive_timeout": app.conf.worker_proc_alive_timeout,
        }
        if autoscale:
            options["autoscale"] = _autoscale_arg(autoscale)
    elif autoscale or max_tasks_per_child or max_memory_per_child:
        raise click.UsageError("--autoscale, --max-tasks-per-child and --max-memory-per-child "
                               "apply to the prefork pool (-P prefork)")
    loop_name, loop_factory = eventloop.loop_factory(
        event_loop or app.conf.worker_event_loop, pool)
    the_pool = pool_from_name(pool, concurrency, **options)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    w = Worker(app, the_pool, queues=queue_list, prefetch_multiplier=prefetch_multiplier,
               hostname=hostname, shutdown_timeout=shutdown_timeout)
    user_tasks = sorted(name for name in app.tasks if not name.startswith("celeriac."))
    click.echo(
        f"celeriac {__version__} worker {w.hostname}\n"
        f"  broker:  {redact_url(app.conf.broker_url or 'sqlite://')}\n"
        f"  results: {redact_url(app.conf.result_backend or 'sqlite://')}\n"
        f"  pool:    {the_pool.name} x{the_pool.concurrency}, prefetch {w.prefetch}, "
        f"loop {loop_name}\n"
        f"  queues:  {', '.join(w.queues)}\n"
        f"  tasks:   {', '.join(user_tasks) or '(none registered)'}",
        err=True,
    )
    code = eventloop.run(w.run(), loop_factory)
    if code != 0:
        # Tasks may still hold pool threads; do not wait for them at interpreter exit.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _autoscale_arg(value: str) -> tuple[int, int]:
    """``--autoscale=10,3`` (max,min), or ``--autoscale=10`` (min 0 -> 1), as Celery reads it."""
    try:
        parts = [int(p) for p in value.split(",")]
    except ValueError:
        raise click.BadParameter("expected MAX,MIN (two integers)", param_hint="--autoscale") from None
    if len(parts) == 1:
        parts.append(0)
    most, least = sorted(parts[:2], reverse=True)
    if most < 1:
        raise click.BadParameter("MAX must be at least 1", param_hint="--autoscale")
    return most, least


def _json_arg(value: str | None, kind: type, name: str) -> Any:
    if value is None:
        return kind()
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"must be a JSON {kind.__name__}", param_hint=name)
    return parsed


@cli.command()
@click.argument("name")
@click.option("-a", "--args", "args_json", help='Positional arguments as a JSON list: \'[2, 2]\'.')
@click.option("-k", "--kwargs", "kwargs_json", help='Keyword arguments as a JSON object.')
@click.option("--countdown", type=float, help="Run no sooner than this many seconds from now.")
@click.option("--eta", help="Run no sooner than this ISO-8601 time.")
@click.option("--expires", type=float, help="Seconds after which the task is not run.")
@click.option("-Q", "--queue", help="Queue to send to.")
@click.option("--priority", type=click.IntRange(0, 9))
@click.pass_obj
@_fail_cleanly
def call(state: State, name: str, args_json: str | None, kwargs_json: str | None,
         countdown: float | None, eta: str | None, expires: float | None, queue: str | None,
         priority: int | None) -> None:
    """Send task NAME; prints its id."""
    args = _json_arg(args_json, list, "--args")
    kwargs = _json_arg(kwargs_json, dict, "--kwargs")
    options = {k: v for k, v in {"countdown": countdown, "eta": eta, "expires": expires,
                                 "queue": queue, "priority": priority}.items() if v is not None}
    result = state.app.send_task(name, args, kwargs, **options)
    click.echo(result.id)


@cli.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task has finished.")
@click.option("--timeout", type=float, help="With --wait: give up after this many seconds.")
@click.option("--traceback", "show_tb", is_flag=True, help="Show the traceback of a failure.")
@click.pass_obj
@_fail_cleanly
def result(state: State, task_id: str, wait: bool, timeout: float | None, show_tb: bool) -> None:
    """Print the state and result of a task."""
    res = state.app.AsyncResult(task_id)
    if wait:
        res.get(timeout=timeout, propagate=False)
    status = res.state
    value = res.result
    if status == "FAILURE" or isinstance(value, BaseException):
        click.echo(f"{status}: {type(value).__name__}: {value}")
        if show_tb and res.traceback:
            click.echo(res.traceback)
    elif status == "SUCCESS":
        click.echo(repr(value))
    else:
        click.echo(status)


@cli.command()
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask.")
@click.pass_obj
@_fail_cleanly
def purge(state: State, queues: str | None, force: bool) -> None:
    """Delete every waiting message of the queues."""
    app = state.app
    names = [q.strip() for q in queues.split(",")] if queues else [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)
    count = app.purge(names)
    click.echo(f"Purged {count} message(s) from {', '.join(names)}.")


def main() -> None:
    cli(prog_name="celeriac")


if __name__ == "__main__":
    main()

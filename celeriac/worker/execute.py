"""Run one task and say how it went: the body of a task's run, apart from any I/O.

``run_sync_task`` / ``run_async_task`` call the task with its request set, classify the
outcome (success, failure, retry, ignore, reject), and call the task's hooks. They never
raise for anything the task does. ``run_eagerly`` is ``Task.apply``: the same run, here and
now, retries included.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.context import Context, current_request
from celeriac.errors import Ignore, Reject, Retry
from celeriac.result import EagerResult, format_traceback

if TYPE_CHECKING:
    from celeriac.task import Task


@dataclass(slots=True)
class Outcome:
    """How one run ended."""

    status: str  # SUCCESS, FAILURE, RETRY, IGNORED, REJECTED
    value: Any = None  # the return value or the exception
    traceback: str | None = None
    retry: Retry | None = None
    reject: Reject | None = None
    runtime: float = 0.0


def _autoretry(task: Task[Any, Any], exc: Exception) -> BaseException:
    """Turn an exception listed in ``autoretry_for`` into a retry (or the final error)."""
    options = dict(task.retry_kwargs or {})
    if task.retry_backoff and "countdown" not in options:
        options["countdown"] = task.backoff_countdown(task.request.retries)
    try:
        return task.retry(exc=exc, throw=False, **options)
    except BaseException as final:
        return final


def classify(task: Task[Any, Any], exc: BaseException, ctx: Context) -> Outcome:
    """The outcome for an exception the task raised."""
    if isinstance(exc, Retry):
        task.on_retry(exc.exc or exc, ctx.id or "", ctx.args, ctx.kwargs, None)
        return Outcome(states.RETRY, exc.exc or exc, format_traceback(exc), retry=exc)
    if isinstance(exc, Ignore):
        return Outcome(states.IGNORED, exc)
    if isinstance(exc, Reject):
        return Outcome(states.REJECTED, exc, reject=exc)
    if (
        task.autoretry_for
        and isinstance(exc, task.autoretry_for)
        and not (task.dont_autoretry_for and isinstance(exc, task.dont_autoretry_for))
        and isinstance(exc, Exception)
    ):
        turned = _autoretry(task, exc)
        if isinstance(turned, Retry):
            task.on_retry(exc, ctx.id or "", ctx.args, ctx.kwargs, None)
            return Outcome(states.RETRY, exc, format_traceback(exc), retry=turned)
        exc = turned
    tb = format_traceback(exc)
    try:
        task.on_failure(exc, ctx.id or "", ctx.args, ctx.kwargs, tb)
    except Exception:
        pass
    return Outcome(states.FAILURE, exc, tb)


def _finish(task: Task[Any, Any], outcome: Outcome, ctx: Context, started: float) -> Outcome:
    outcome.runtime = time.perf_counter() - started
    try:
        if outcome.status == states.SUCCESS:
            task.on_success(outcome.value, ctx.id or "", ctx.args, ctx.kwargs)
        task.after_return(outcome.status, outcome.value, ctx.id or "", ctx.args, ctx.kwargs, None)
    except Exception as exc:  # a failing hook fails the task, as in Celery
        outcome = Outcome(states.FAILURE, exc, format_traceback(exc), runtime=outcome.runtime)
    return outcome


def run_sync_task(task: Task[Any, Any], ctx: Context) -> Outcome:
    """Run a plain function task in the calling thread."""
    token = current_request.set(ctx)
    started = time.perf_counter()
    try:
        task.before_start(ctx.id or "", ctx.args, ctx.kwargs)
        value = task.run(*ctx.args, **ctx.kwargs)
        outcome = Outcome(states.SUCCESS, value)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit, cold shutdown
            raise
        outcome = classify(task, exc, ctx)
    finally:
        current_request.reset(token)
    return _finish(task, outcome, ctx, started)


async def run_async_task(task: Task[Any, Any], ctx: Context, hard_limit: float | None = None) -> Outcome:
    """Run an ``async def`` task on the running loop, cancelled at its hard time limit."""
    from celeriac.errors import TimeLimitExceeded

    token = current_request.set(ctx)
    started = time.perf_counter()
    try:
        task.before_start(ctx.id or "", ctx.args, ctx.kwargs)
        coro: Awaitable[Any] = task.run(*ctx.args, **ctx.kwargs)
        try:
            async with _timeout(hard_limit):
                value = await coro
        except TimeoutError as exc:
            if hard_limit is not None and time.perf_counter() - started >= hard_limit:
                raise TimeLimitExceeded(f"task exceeded its hard time limit of {hard_limit}s") from exc
            raise
        outcome = Outcome(states.SUCCESS, value)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit, cold shutdown
            raise
        outcome = classify(task, exc, ctx)
    finally:
        current_request.reset(token)
    return _finish(task, outcome, ctx, started)


def time_limits(task: Task[Any, Any], ctx: Context) -> tuple[float | None, float | None]:
    """(hard, soft) in seconds for this run: the message's ``timelimit`` header, else the
    task's options, else the ``task_time_limit`` / ``task_soft_time_limit`` settings."""
    limits = list(ctx.timelimit or ())
    hard = limits[0] if limits else None
    soft = limits[1] if len(limits) > 1 else None
    if hard is None:
        hard = task.time_limit
    if soft is None:
        soft = task.soft_time_limit
    if hard is None or soft is None:
        conf = task._app().conf
        if hard is None:
            hard = conf.task_time_limit
        if soft is None:
            soft = conf.task_soft_time_limit
    return (float(hard) if hard else None), (float(soft) if soft else None)


def _timeout(seconds: float | None) -> Any:
    import asyncio

    return asyncio.timeout(seconds)


def run_eagerly(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> EagerResult[Any]:
    """``Task.apply``: run here, retrying at once (countdowns are not waited for)."""
    from celeriac.utils.sync import run_sync

    task_id = options.get("task_id") or str(uuid.uuid4())
    retries = int(options.get("retries") or 0)
    app = task._app()
    while True:
        ctx = Context(
            id=task_id, task=task.name, args=args, kwargs=kwargs, retries=retries,
            is_eager=True, root_id=task_id, correlation_id=task_id,
            delivery_info={"is_eager": True},
        )
        outcome = run_sync(run_async_task(task, ctx)) if task.is_async else run_sync_task(task, ctx)
        if outcome.status == states.RETRY and outcome.retry is not None:
            retry = outcome.retry
            args = getattr(retry, "retry_args", args)
            kwargs = getattr(retry, "retry_kwargs", kwargs)
            retries += 1
            continue
        break
    if outcome.status == states.FAILURE:
        if app.conf.task_eager_propagates:
            raise outcome.value
        return EagerResult(task_id, outcome.value, states.FAILURE, outcome.traceback, app=app,
                           task_name=task.name)
    status = states.SUCCESS if outcome.status in (states.SUCCESS, states.IGNORED) else outcome.status
    return EagerResult(task_id, outcome.value, status, app=app, task_name=task.name)

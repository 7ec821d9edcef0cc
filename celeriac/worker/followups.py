"""Messages a finished task sends on: its retry, its callbacks (link), the rest of its chain,
its errbacks (link_error). Pure functions over the app's ``prepare``: no I/O."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.canvas import Signature
from celeriac.errors import Retry
from celeriac.message import Outgoing, TaskMessage

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.task import Task


def _lineage(msg: TaskMessage) -> dict[str, Any]:
    return {"parent_id": msg.id, "root_id": msg.root_id or msg.id}


def _send(app: Celeriac, sig: Signature, **options: Any) -> Outgoing:
    opts = {k: v for k, v in sig.options.items() if v is not None}
    opts.update(options)
    _, out = app.prepare(sig.task, sig.args, sig.kwargs, **_known(opts))
    return out


def _known(options: dict[str, Any]) -> dict[str, Any]:
    from celeriac.task import SEND_OPTIONS

    return {k: v for k, v in options.items() if k in SEND_OPTIONS}


def retry_message(
    app: Celeriac, task: Task[Any, Any], msg: TaskMessage, retry: Retry, queue: str
) -> Outgoing:
    """The next try of ``msg``: same id, one more retry, due after its countdown or eta."""
    args = getattr(retry, "retry_args", msg.args)
    kwargs = getattr(retry, "retry_kwargs", msg.kwargs)
    options = dict(getattr(retry, "retry_options", {}) or {})
    options.setdefault("queue", queue)
    _, out = app.prepare(
        msg.task, args, kwargs, task=task,
        task_id=msg.id, retries=msg.retries + 1, root_id=msg.root_id, parent_id=msg.parent_id,
        group_id=msg.group, group_index=msg.group_index, shadow=msg.shadow,
        expires=msg.expires, time_limit=msg.timelimit[0], soft_time_limit=msg.timelimit[1],
        link=msg.callbacks, link_error=msg.errbacks, chain=msg.chain, chord=msg.chord,
        reply_to=msg.reply_to, priority=msg.priority, headers=dict(msg.extra_headers),
        **_known(options),
    )
    return out


def success_messages(app: Celeriac, msg: TaskMessage, value: Any) -> list[Outgoing]:
    """Callbacks get the return value as first argument; then the chain moves one step."""
    out: list[Outgoing] = []
    for cb in msg.callbacks or ():
        out.append(_send(app, Signature(cb).clone((value,)), **_lineage(msg)))
    if msg.chain:
        remaining = list(msg.chain)
        nxt = Signature(remaining.pop())  # the chain is stored last-first
        extra: dict[str, Any] = _lineage(msg)
        if remaining:
            extra["chain"] = remaining
        out.append(_send(app, nxt.clone((value,)), **extra))
    return out


def failure_messages(app: Celeriac, msg: TaskMessage) -> list[Outgoing]:
    """Errbacks get the failed task's id as first argument (Celery's portable form)."""
    return [
        _send(app, Signature(eb).clone((msg.id,)), **_lineage(msg)) for eb in msg.errbacks or ()
    ]

"""Which client waits for which task's result (for the ``rpc://`` backend), per process.

The worker hands a backend metas only; Celery's rpc backend sends each result to the task
message's ``reply_to``. The AMQP broker notes ``reply_to`` of every task it hands out here while
an rpc backend is active in the process, and the backend reads it when it stores the result.
Bounded: the oldest entries go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

LIMIT = 200_000

_lock = threading.Lock()
_reply_to: OrderedDict[str, str] = OrderedDict()
#: How many rpc backends are connected in this process (the broker records only when > 0).
active = 0


def enable() -> None:
    global active
    with _lock:
        active += 1


def disable() -> None:
    global active
    with _lock:
        active = max(0, active - 1)


def remember(task_id: str, reply_to: str) -> None:
    with _lock:
        _reply_to[task_id] = reply_to
        if len(_reply_to) > LIMIT:
            _reply_to.popitem(last=False)


def lookup(task_id: str, forget: bool = False) -> str | None:
    with _lock:
        return _reply_to.pop(task_id, None) if forget else _reply_to.get(task_id)

"""celeriac: a distributed task queue with Celery's API and wire protocol."""

from celeriac import states
from celeriac.app import Celeriac, Celery, shared_task
from celeriac.canvas import GroupResult, Signature, chain, group, signature, subtask
from celeriac.errors import (
    CeleriacError,
    ConfigurationError,
    ContentDisallowed,
    DecodeError,
    EncodeError,
    Ignore,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    RemoteError,
    Retry,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
    WorkerLostError,
)
from celeriac.result import AsyncResult, EagerResult
from celeriac.task import Task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Celeriac",
    "CeleriacError",
    "Celery",
    "ConfigurationError",
    "ContentDisallowed",
    "DecodeError",
    "EagerResult",
    "EncodeError",
    "GroupResult",
    "Ignore",
    "ImproperlyConfigured",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Reject",
    "RemoteError",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
    "__version__",
    "chain",
    "group",
    "shared_task",
    "signature",
    "states",
    "subtask",
]

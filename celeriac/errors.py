"""celeriac's exceptions, one tree, with Celery's names where Celery has one.

    CeleriacError
    ├── ConfigurationError           a wrong setting name, type or value (also ImproperlyConfigured)
    │   └── MissingExtra             a broker/backend whose pip extra is not installed
    ├── NotRegistered                a task name the app does not know (also a KeyError)
    ├── TaskError
    │   ├── Retry                    raised by Task.retry(): the task will run again
    │   ├── Ignore                   the task asks that its outcome not be recorded
    │   ├── Reject                   the task rejects its message (requeue or drop)
    │   ├── MaxRetriesExceededError
    │   ├── TimeLimitExceeded        the hard time limit struck
    │   ├── SoftTimeLimitExceeded    raised inside the task at its soft limit
    │   ├── WorkerLostError          the process running the task died
    │   ├── TaskRevokedError
    │   └── RemoteError              a task failed with an exception that cannot be rebuilt here
    ├── ProtocolError                a message that cannot be decoded
    │   ├── ContentDisallowed        a content type not in accept_content
    │   ├── DecodeError              a malformed body or envelope
    │   └── EncodeError              a value that cannot be serialized
    ├── BrokerError                  a broker failed (driver errors are translated to this)
    │   └── BrokerConnectionError
    ├── BackendError                 a result backend failed
    └── TimeoutError                 AsyncResult.get() waited too long (also builtins.TimeoutError)
"""

from __future__ import annotations

import builtins
from typing import Any


class CeleriacError(Exception):
    """Base of every error celeriac raises on purpose."""


class ConfigurationError(CeleriacError, ValueError):
    """A setting has an unknown name, a wrong type or a wrong value."""


ImproperlyConfigured = ConfigurationError


class MissingExtra(ConfigurationError, ImportError):
    """A URL names a broker or backend whose optional dependencies are not installed."""


class NotRegistered(CeleriacError, KeyError):
    """The task name is not registered with the app."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class TaskError(CeleriacError):
    """Base of the errors that concern one task run."""


class Retry(TaskError):
    """The task is to be retried; raised by ``Task.retry``."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        super().__init__(message or (f"Retry in {when}s" if when is not None else "Retry"), exc)

    def humanize(self) -> str:
        return f"in {self.when}s" if self.when is not None else "now"

    def __str__(self) -> str:
        if self.message:
            return self.message
        return f"Retry {self.humanize()}: {self.exc!r}" if self.exc else f"Retry {self.humanize()}"


RetryTaskError = Retry


class Ignore(TaskError):
    """The task asks the worker not to record its outcome."""


class Reject(TaskError):
    """The task rejects its message; with ``requeue=True`` it goes back to the queue."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class MaxRetriesExceededError(TaskError):
    """The task asked to retry once more than ``max_retries`` allows."""


class TimeLimitExceeded(TaskError):
    """The task ran past its hard time limit."""


class SoftTimeLimitExceeded(TaskError):
    """Raised inside a task when its soft time limit strikes."""


class WorkerLostError(TaskError):
    """The process running the task exited before the task finished."""


class TaskRevokedError(TaskError):
    """The task was revoked and did not run."""


class RemoteError(TaskError):
    """A task failed with an exception type that is not rebuilt on this side.

    Carries the remote type's name, module, message and traceback text.
    """

    def __init__(
        self, exc_type: str, exc_message: str, exc_module: str = "", traceback: str | None = None
    ) -> None:
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.exc_message = exc_message
        self.traceback = traceback
        super().__init__(exc_type, exc_message)

    def __str__(self) -> str:
        qual = f"{self.exc_module}.{self.exc_type}" if self.exc_module else self.exc_type
        return f"{qual}: {self.exc_message}"


class ProtocolError(CeleriacError):
    """A message could not be decoded."""


class ContentDisallowed(ProtocolError):
    """The message's content type is not in ``accept_content``."""


class DecodeError(ProtocolError):
    """The message body or envelope is malformed."""


class EncodeError(ProtocolError, TypeError):
    """A value (a result, an argument) cannot be serialized."""


class BrokerError(CeleriacError):
    """A broker operation failed."""


class BrokerConnectionError(BrokerError, ConnectionError):
    """The broker cannot be reached."""


OperationalError = BrokerConnectionError


class BackendError(CeleriacError):
    """A result backend operation failed."""


class TimeoutError(CeleriacError, builtins.TimeoutError):
    """``AsyncResult.get`` waited longer than its timeout."""

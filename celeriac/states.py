"""Task states, as Celery names them, and the order in which one may replace another."""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
RETRY = "RETRY"
IGNORED = "IGNORED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
ALL_STATES = frozenset(
    {PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, REVOKED, REJECTED, RETRY, IGNORED}
)


def may_replace(new: str, old: str | None) -> bool:
    """Whether a stored state ``old`` may be overwritten by ``new``.

    A ready state (SUCCESS, FAILURE, REVOKED) is final: nothing overwrites it, so a late
    STARTED or RECEIVED write can never move a finished task backwards. Among unready
    states RECEIVED never replaces STARTED or RETRY (writes can arrive out of order).
    """
    if old is None or old == PENDING:
        return True
    if old in READY_STATES:
        return False
    return not (new == RECEIVED and old in (STARTED, RETRY))

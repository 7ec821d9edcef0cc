"""What the brokers that keep their own leases (memory, sqlite) share.

- priorities are clamped to 0-9 (higher first), as Celery clamps them;
- the options every such broker accepts, with Celery's ``visibility_timeout`` as an alias of
  ``lease_seconds``, and one "did you mean" error for the rest;
- how long an idle ``fetch`` may sleep before it must look again.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celeriac.errors import ConfigurationError

MIN_PRIORITY = 0
MAX_PRIORITY = 9

#: Celery's names for celeriac's options: alias -> celeriac name.
OPTION_ALIASES = {"visibility_timeout": "lease_seconds"}


def clamp_priority(priority: int | None) -> int:
    """Priorities outside 0-9 are brought inside (``None`` is 0)."""
    if priority is None:
        return MIN_PRIORITY
    return MAX_PRIORITY if priority > MAX_PRIORITY else max(MIN_PRIORITY, int(priority))


def unknown_option_error(name: str, known: Iterable[str], where: str) -> ConfigurationError:
    choices = sorted(set(known) | set(OPTION_ALIASES))
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigurationError(
        f"{where} has no option {name!r}.{hint} Known options: {', '.join(choices)}."
    )


def resolve_options(
    given: Mapping[str, Any], defaults: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """``defaults`` overridden by ``given`` (aliases resolved); unknown names raise."""
    resolved = dict(defaults)
    for name, value in given.items():
        target = OPTION_ALIASES.get(name, name)
        if target not in defaults:
            raise unknown_option_error(name, defaults, where)
        resolved[target] = value
    return resolved


def positive_seconds(value: Any, name: str, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{where}: {name} must be a number, not {value!r}") from None
    if not seconds > 0:
        raise ConfigurationError(f"{where}: {name} must be > 0, not {value!r}")
    return seconds


def check_fetch_args(queues: Sequence[str], max_count: int) -> None:
    if isinstance(queues, str):
        raise TypeError("fetch() takes a sequence of queue names, not one string")
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, not {max_count}")


def idle_wait(remaining: float, next_due_in: float | None, poll_interval: float) -> float:
    """Seconds an empty ``fetch`` may sleep: until its deadline, the next message that falls
    due (``next_due_in``, from now) or one ``poll_interval``, whichever comes first.

    A floor of one millisecond keeps a due time that is a hair away from becoming a spin.
    """
    wait = min(remaining, poll_interval)
    if next_due_in is not None:
        wait = min(wait, next_due_in + 0.001)
    return max(wait, 0.001)

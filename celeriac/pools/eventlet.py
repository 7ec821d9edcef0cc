"""``-P eventlet``: not supported; use ``-P gevent`` (or ``-P asyncio`` for ``async def`` tasks).

Checked on Python 3.11 with eventlet 0.41: it imports and monkey-patches, but

- eventlet is deprecated by its maintainers ("maintained in bugfix mode ... we strongly
  recommend against using it for new projects"; they point users to asyncio), and
- its monkey-patching turns threads into green threads on one OS thread. celeriac's worker
  is an asyncio loop, and its lease keeper and sync facade run loops of their own on other
  threads; as green threads they would share the worker thread's running-loop slot, and
  ``run_sync`` from the lease keeper would fail with "Cannot run the event loop while
  another loop is running". gevent can patch everything but threads, so it has no such
  conflict.

So ``-P eventlet`` stops with a ConfigurationError that says this, rather than a worker that
half works.
"""

from __future__ import annotations

from celeriac.errors import ConfigurationError

MESSAGE = ("the eventlet pool is not supported: eventlet is deprecated upstream and its "
           "green threads clash with the worker's asyncio loop. Use -P gevent for many "
           "I/O-bound plain functions, or -P asyncio for async def tasks")


class EventletPool:
    name = "eventlet"

    def __init__(self, concurrency: int) -> None:
        raise ConfigurationError(MESSAGE)

"""An exception type of the interop apps' own, imported only inside the worker processes (by
``interop.fail_app``, at call time), never by the test process: so a client cannot find the
class, and falls back (celeriac: ``RemoteError``; Celery: a class of the same name that it
makes up in ``celery.exceptions``)."""


class AppError(Exception):
    """Raised by ``interop.fail_app``."""

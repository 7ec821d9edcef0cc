"""Results: exceptions cross the wire safely; states never move backwards."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from celeriac import Celeriac, RemoteError, states
from celeriac.result import encode_exception, rebuild_exception


@pytest.fixture
def app() -> Any:
    app = Celeriac("r", broker="memory://r", backend="memory://r", set_as_current=False)
    yield app
    app.close()


def test_builtin_exception_round_trip(app: Celeriac) -> None:
    stored = encode_exception(KeyError("k"))
    assert stored == {"exc_type": "KeyError", "exc_message": ["k"], "exc_module": "builtins"}
    exc = rebuild_exception(app, stored)
    assert type(exc) is KeyError and exc.args == ("k",)


def test_celery_shaped_failure_rebuilds() -> None:
    celery_meta = {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}
    exc = rebuild_exception(None, celery_meta)
    assert isinstance(exc, ValueError) and str(exc) == "boom"


def test_unknown_module_is_never_imported(app: Celeriac) -> None:
    stored = {"exc_type": "Evil", "exc_message": ["x"], "exc_module": "os.path_evil_module"}
    exc = rebuild_exception(app, stored, "Traceback text")
    assert isinstance(exc, RemoteError)
    assert "os.path_evil_module" not in sys.modules
    assert exc.traceback == "Traceback text" and exc.exc_type == "Evil"


def test_non_exception_attribute_is_not_called(app: Celeriac) -> None:
    stored = {"exc_type": "system", "exc_message": ["echo hi"], "exc_module": "os"}
    assert isinstance(rebuild_exception(app, stored), RemoteError)
    stored = {"exc_type": "print", "exc_message": ["x"], "exc_module": "builtins"}
    assert isinstance(rebuild_exception(app, stored), RemoteError)


def test_allowlisted_module(app: Celeriac) -> None:
    mod = types.ModuleType("thirdparty_errors")

    class Oops(Exception):
        pass

    Oops.__module__ = "thirdparty_errors"
    mod.Oops = Oops  # type: ignore[attr-defined]
    sys.modules["thirdparty_errors"] = mod
    try:
        stored = encode_exception(Oops("bad"))
        assert isinstance(rebuild_exception(app, stored), RemoteError)
        app.conf.result_exception_allowlist = ["thirdparty_errors.Oops"]
        assert isinstance(rebuild_exception(app, stored), Oops)
    finally:
        del sys.modules["thirdparty_errors"]


def test_constructor_mismatch_falls_back_to_remote_error(app: Celeriac) -> None:
    stored = {"exc_type": "UnicodeDecodeError", "exc_message": ["x"], "exc_module": "builtins"}
    assert isinstance(rebuild_exception(app, stored), RemoteError)


def test_unserializable_exception_arguments_become_text() -> None:
    stored = encode_exception(ValueError(object()))
    assert isinstance(stored["exc_message"][0], str)


@pytest.mark.parametrize(
    ("new", "old", "allowed"),
    [
        (states.STARTED, states.SUCCESS, False),
        (states.RETRY, states.FAILURE, False),
        (states.SUCCESS, states.STARTED, True),
        (states.STARTED, states.RETRY, True),
        (states.RECEIVED, states.STARTED, False),
        (states.STARTED, None, True),
        (states.REVOKED, states.PENDING, True),
    ],
)
def test_state_order(new: str, old: str | None, allowed: bool) -> None:
    assert states.may_replace(new, old) is allowed


def test_pending_for_unknown_id(app: Celeriac) -> None:
    res = app.AsyncResult("never-sent")
    assert res.state == states.PENDING and res.result is None and not res.ready()


def test_get_times_out(app: Celeriac) -> None:
    from celeriac import TimeoutError as CeleriacTimeout

    with pytest.raises(CeleriacTimeout):
        app.AsyncResult("never-sent").get(timeout=0.1)
    with pytest.raises(TimeoutError):  # also the builtin
        app.AsyncResult("never-sent").get(timeout=0.05)


def test_errors_celery_also_has_are_stored_under_celerys_module(app: Celeriac) -> None:
    from celeriac.errors import TaskRevokedError, TimeLimitExceeded

    for exc in (TaskRevokedError("expired"), TimeLimitExceeded("too slow")):
        stored = encode_exception(exc)
        assert stored["exc_module"] == "celery.exceptions"  # a Celery client can catch it
        rebuilt = rebuild_exception(app, stored)
        assert type(rebuilt) is type(exc) and rebuilt.args == exc.args

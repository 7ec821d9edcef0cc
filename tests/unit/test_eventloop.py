"""The worker's choice of event loop (``worker_event_loop``, ``celeriac worker --loop``)."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest

from celeriac.errors import ConfigurationError
from celeriac.worker import eventloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_takes_uvloop_when_it_is_installed() -> None:
    name, factory = eventloop.loop_factory("auto", "solo")
    assert name == "uvloop"
    assert eventloop.run(_loop_module(), factory) == "uvloop"


def test_asyncio_is_asyncios_own_loop() -> None:
    name, factory = eventloop.loop_factory("asyncio", "prefork")
    assert (name, factory) == ("asyncio", None)
    assert eventloop.run(_loop_module(), factory).startswith("asyncio.")


def test_gevent_keeps_asyncios_loop() -> None:
    assert eventloop.loop_factory("auto", "gevent") == ("asyncio", None)
    with pytest.raises(ConfigurationError, match="gevent pool runs on asyncio's own loop"):
        eventloop.loop_factory("uvloop", "gevent")


@pytest.mark.parametrize("bad", ["uv", "", None, 1, "UVLOOP"])
def test_an_unknown_choice_is_a_clear_error(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="worker_event_loop must be one of auto, uvloop, asyncio"):
        eventloop.loop_factory(bad, "solo")


def test_without_uvloop_auto_falls_back_and_uvloop_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.import_module

    def no_uvloop(name: str, package: str | None = None) -> Any:
        if name == "uvloop":
            raise ImportError("No module named 'uvloop'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_uvloop)
    assert eventloop.loop_factory("auto", "solo") == ("asyncio", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'celeriac\[uvloop\]'"):
        eventloop.loop_factory("uvloop", "solo")

"""Every broker passes the conformance kit: a new broker is one more line in ``SPECS``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from celeriac.brokers import broker_class, broker_from_url
from celeriac.brokers.amqp import AMQPBroker
from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.redis import RedisBroker
from celeriac.brokers.sqlite import SQLiteBroker, path_from_url
from celeriac.errors import ConfigurationError
from celeriac.testing.broker_kit import CHECKS, BrokerSpec, Check, run_check

#: The Redis URL of the running test (a session-scoped server, flushed per test): the spec
#: below is built at import time, the server only when a Redis check runs.
_redis: dict[str, str] = {}
#: Likewise the AMQP URL (a fresh vhost of the session's RabbitMQ node per test).
_amqp: dict[str, str] = {}

SPECS = [
    BrokerSpec(
        "memory",
        lambda ctx: MemoryBroker(f"memory://{ctx.name}", lease_seconds=ctx.lease_seconds),
    ),
    BrokerSpec(
        "sqlite",
        lambda ctx: SQLiteBroker(
            f"sqlite:///{ctx.workdir}/broker.db", lease_seconds=ctx.lease_seconds
        ),
    ),
    # Ten priority levels (Celery's documented Redis setting): the kit wants exact order among
    # ten priorities; kombu's default four steps are checked in the Redis integration tests.
    BrokerSpec(
        "redis",
        lambda ctx: RedisBroker(
            _redis["url"], lease_seconds=ctx.lease_seconds, global_keyprefix=f"{ctx.name}.",
            priority_steps=list(range(10)),
        ),
    ),
    # Queues with x-max-priority (Celery declares none by default; the kit wants priorities);
    # fetch_mode="get": exact queue order across requeues (workers stream with consumers).
    # survives_reconnect=False: RabbitMQ gives a closed consumer's messages back at once, where
    # that check expects the lease to hold on.
    BrokerSpec(
        "amqp",
        lambda ctx: AMQPBroker(
            _amqp["url"], lease_seconds=ctx.lease_seconds,
            queue_arguments={"x-max-priority": 9}, fetch_mode="get",
        ),
        survives_reconnect=False,
    ),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_broker(
    spec: BrokerSpec, check: Check, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if spec.name == "redis":
        _redis["url"] = request.getfixturevalue("redis_url")
    if spec.name == "amqp":
        _amqp["url"] = request.getfixturevalue("amqp_url")
    await run_check(spec, check, tmp_path)


# -- the URL seam ---------------------------------------------------------------------------


def test_broker_from_url_picks_the_class_and_options() -> None:
    broker = broker_from_url("memory://urls", visibility_timeout=7)
    assert isinstance(broker, MemoryBroker) and broker.lease_seconds == 7.0
    sqlite = broker_from_url("sqlite:////tmp/x/celeriac.db", poll_interval=0.5)
    assert isinstance(sqlite, SQLiteBroker)
    assert sqlite.path == "/tmp/x/celeriac.db" and sqlite.poll_interval == 0.5


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite://", "celeriac.sqlite3"),
        ("sqlite:///rel/dir/b.db", "rel/dir/b.db"),
        ("sqlite:////abs/b.db", "/abs/b.db"),
    ],
)
def test_sqlite_url_paths(url: str, path: str) -> None:
    assert path_from_url(url) == path


def test_sqlite_in_memory_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        path_from_url("sqlite:///:memory:")


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"Did you mean 'sqlite'.*Known schemes: memory"):
        broker_from_url("sqlit:///x.db")


def test_unknown_option_suggests_the_closest() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'lease_seconds'"):
        broker_from_url("memory://", lease_second=3)
    with pytest.raises(ConfigurationError, match="Did you mean 'poll_interval'"):
        SQLiteBroker("sqlite:///x.db", pol_interval=3)


def test_missing_extra_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        broker_class("redis://localhost:6379/0")
    except ImportError as exc:
        assert "pip install 'celeriac[redis]'" in str(exc)
    monkeypatch.setitem(sys.modules, "aiormq", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "celeriac.brokers.amqp", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'celeriac\[amqp\]'"):
        broker_class("amqp://guest:secret@localhost//")

"""Sentinel URLs (Celery's form), read by one helper for the Redis broker and backend."""

from __future__ import annotations

import pytest

from celeriac.backends import backend_from_url
from celeriac.brokers import broker_from_url
from celeriac.errors import ConfigurationError
from celeriac.utils.redis_urls import parse_sentinel_url, redis_py_url

pytest.importorskip("redis")

URL = "sentinel://:s3cret@10.0.0.1:26379;sentinel://10.0.0.2;sentinel://10.0.0.3:26381/2"


def test_parts_sentinels_database_and_password() -> None:
    addr = parse_sentinel_url(URL)
    assert addr.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26381))
    assert (addr.db, addr.password, addr.username) == (2, "s3cret", None)
    assert "s3cret" not in repr(addr)
    assert "s3cret" not in addr.describe("mymaster")


def test_parts_that_disagree_or_are_not_sentinels_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="two different database"):
        parse_sentinel_url("sentinel://a:1/1;sentinel://b:2/2")
    with pytest.raises(ConfigurationError, match="sentinel://host:port") as info:
        parse_sentinel_url("sentinel://:pw@a:1;redis://b:2")
    assert "pw" not in str(info.value).replace("sentinel://host:port", "")


def test_redis_py_url_spellings() -> None:
    assert redis_py_url("redis+socket:///tmp/r.sock?virtual_host=3") == "unix:///tmp/r.sock?db=3"
    assert redis_py_url("REDIS://h:1/0") == "redis://h:1/0"
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        redis_py_url("amqp://u:pw@h//")


def test_broker_and_backend_take_sentinel_urls_with_a_master_name() -> None:
    broker = broker_from_url(URL, master_name="mymaster")
    assert "s3cret" not in repr(broker)
    backend = backend_from_url(URL, master_name="mymaster")
    assert backend is not None and "s3cret" not in repr(backend)
    with pytest.raises(ConfigurationError, match="master_name"):
        broker_from_url(URL)
    with pytest.raises(ConfigurationError, match="master_name"):
        backend_from_url(URL)

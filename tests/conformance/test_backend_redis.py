"""The Redis result backend passes the backend conformance kit, against a private Redis."""

from __future__ import annotations

import pytest

from celeriac.testing.backend_kit import backend_suite

_Suite = backend_suite("redis://unused")


class TestRedisBackend(_Suite):  # type: ignore[misc,valid-type]
    @pytest.fixture
    def backend_url(self, redis_url: str) -> str:
        return redis_url

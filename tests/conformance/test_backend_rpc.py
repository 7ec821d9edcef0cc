"""The rpc:// backend passes the backend conformance kit (on the session's RabbitMQ node).

Every instance of one test shares one reply queue (one oid), as the app's per-loop instances
do; results whose client is unknown land in the process's own cache.
"""

from __future__ import annotations

import uuid

import pytest

from celeriac.testing.backend_kit import BackendFactory, backend_suite, factory_for_url


class TestRPCBackend(backend_suite("rpc://")):  # type: ignore[misc]
    @pytest.fixture
    def make_backend(self, amqp_url: str) -> BackendFactory:
        return factory_for_url("rpc://", broker_url=amqp_url, oid=str(uuid.uuid4()))

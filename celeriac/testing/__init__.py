"""Conformance kits and helpers for testing celeriac and code built on it."""

from celeriac.testing.backend_kit import backend_suite as backend_suite
from celeriac.testing.backend_kit import check_backend as check_backend
from celeriac.testing.broker_kit import BrokerSpec as BrokerSpec
from celeriac.testing.broker_kit import check_broker as check_broker
from celeriac.testing.pool_kit import POOL_CHECKS as POOL_CHECKS
from celeriac.testing.pool_kit import check_pool as check_pool
from celeriac.testing.pool_kit import run_pool_check as run_pool_check

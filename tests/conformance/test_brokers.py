"""Every broker passes the conformance kit: a new broker is one more line in ``SPECS``."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac.brokers.memory import MemoryBroker
from celeriac.brokers.sqlite import SQLiteBroker
from celeriac.testing.broker_kit import CHECKS, BrokerSpec, Check, run_check

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
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_broker(spec: BrokerSpec, check: Check, tmp_path: Path) -> None:
    await run_check(spec, check, tmp_path)

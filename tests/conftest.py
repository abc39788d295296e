"""Test-wide settings.

Hypothesis: the machines that run `make test` are shared and noisy (2 cores, other jobs), so
wall-clock health checks and per-example deadlines would make tests fail for reasons that have
nothing to do with the engine. They are off; the number of examples stays as each test sets it.
`make soak` sets JETSTORE_SOAK=1 and gets more examples where a test asks for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from instance_store import Store

settings.register_profile(
    "jetstore",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("jetstore")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An instance with database "main" in a fresh directory, closed after the test."""
    s = Store(tmp_path)
    yield s
    s.close()

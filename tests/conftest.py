"""Test-wide settings.

Hypothesis: the machines that run `make test` are shared and noisy (2 cores, other jobs), so
wall-clock health checks and per-example deadlines would make tests fail for reasons that have
nothing to do with the engine. They are off; the number of examples stays as each test sets it.
`make soak` sets JETSTORE_SOAK=1 and gets more examples where a test asks for them.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "jetstore",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("jetstore")

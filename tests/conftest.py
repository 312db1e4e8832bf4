"""Shared test set-up: hypothesis profiles and the bounded multi-rank launcher."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# ci: a few thousand examples across the property tests, fits the CI budget;
# dev: quick local runs; thorough: long soak runs (HYPOTHESIS_PROFILE=thorough).
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=1500, derandomize=True, **_common)
settings.register_profile("dev", max_examples=200, **_common)
settings.register_profile("thorough", max_examples=20000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def mpirun():
    """Run a command under ``mpiexec -n N`` with a hard timeout (see commlib.mpirun)."""
    from commlib.mpirun import run

    return run

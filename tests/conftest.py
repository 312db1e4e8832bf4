"""Shared test set-up: the default hypothesis profile and the bounded multi-rank launcher."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

import datatypes.pytest_plugin  # noqa: F401  (registers the commlib-* hypothesis profiles)
from commlib.config import config

# the suite must not depend on a calibration the user's machine may hold (nor warn about its absence);
# the subprocesses the tests launch inherit the setting
os.environ.setdefault("COMMLIB_MODEL", "analytic")
config.reload()

# commlib's own suite runs the CI profile unless told otherwise; the plugin's
# --commlib-hypothesis-profile (and hypothesis' --hypothesis-profile) override it.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "commlib-ci"))


def pytest_report_header(config: pytest.Config) -> str:
    """Which MPI the suite runs on (some tests say in their skip reason that they need the other)."""
    from collectives.reduction_check import mpi_library
    from commlib.mpirun import mpiexec_family

    return f"MPI: {mpi_library()}; mpiexec family: {mpiexec_family()}"


@pytest.fixture
def mpirun():
    """Run a command under ``mpiexec -n N`` with a hard timeout (see commlib.mpirun)."""
    from commlib.mpirun import run

    return run

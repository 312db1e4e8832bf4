"""Shared test set-up: the default hypothesis profile and the bounded multi-rank launcher."""

from __future__ import annotations

import os
import socket

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


class _Loop:
    """A rendezvous channel to oneself: sends go out on one end of a socket pair, receives come in on the other."""

    rendezvous = True
    name = "loop"

    def __init__(self) -> None:
        from transport.sockets import SocketChannel

        a, b = socket.socketpair()
        self.out, self.into = SocketChannel(a, 0, "out", timeout=20), SocketChannel(b, 0, "in", timeout=20)

    def isend(self, view, peer, tag):
        return self.out.isend(view, peer, tag)

    def irecv(self, view, peer, tag):
        return self.into.irecv(view, peer, tag)

    def close(self) -> None:
        self.out.close()
        self.into.close()


@pytest.fixture
def socket_loops():
    """Two loopback socket channels for a flow splitter on ``COMM_SELF``, closed after the test."""
    loops = [_Loop(), _Loop()]
    yield loops
    for loop in loops:
        loop.close()

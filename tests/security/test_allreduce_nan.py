"""Silent wrong answers from allreduce: MAX/MIN with NaN or signed zeros must give the same bits whatever
algorithm runs (a NaN anywhere wins, as in numpy; zeros as MPI's own algorithm orders them), and overlapping
buffers must be refused as MPI refuses them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from collectives.allreduce import allreduce
from commlib.mpirun import App, run_apps

SCRIPT = Path(__file__).parent.parent / "mpi" / "security_allreduce.py"


def _launch(segments: list[tuple[int, str | None]]) -> str:
    """One mpiexec with ``n`` ranks per segment, each segment on its own node when named."""
    command = [sys.executable, "-m", "mpi4py", str(SCRIPT)]
    apps = [App(n, command, {"COMMLIB_NODE_ID": node} if node is not None else {}) for n, node in segments]
    return run_apps(apps, timeout=240).stdout


@pytest.mark.mpi
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_every_algorithm_gives_the_same_bits_with_nan_and_signed_zeros(nprocs):
    assert f"OK extrema on {nprocs} ranks" in _launch([(nprocs, None)])


@pytest.mark.mpi
@pytest.mark.parametrize("nodes", [(2, 2), (1, 2)])
def test_hierarchical_algorithms_give_the_same_bits_across_nodes(nodes):
    assert f"OK extrema on {sum(nodes)} ranks" in _launch([(n, str(k)) for k, n in enumerate(nodes)])


@pytest.mark.parametrize(
    ("values", "flags"),
    [
        ([1.0, 2.0], set()),
        ([np.nan, 1.0], {"NAN"}),
        ([-0.0, 1.0], {"NEGATIVE_ZERO"}),
        ([0.0, -0.0], {"NEGATIVE_ZERO", "POSITIVE_ZERO"}),
    ],
)
def test_what_makes_a_contribution_order_sensitive(values, flags):
    from collectives import extrema

    expected = sum(getattr(extrema, name) for name in flags)
    assert extrema.local_flags(np.array(values)) == expected


def test_overlapping_buffers_are_refused_before_anything_is_touched():
    x = np.arange(8.0)
    for send, recv in ((x, x), (x[:6], x[2:])):
        with pytest.raises(MPI.Exception, match="overlap") as info:
            allreduce(MPI.COMM_SELF, send, recv, MPI.SUM, "ring")
        assert info.value.Get_error_class() == MPI.ERR_BUFFER and isinstance(info.value, ValueError)
    assert np.array_equal(x, np.arange(8.0))

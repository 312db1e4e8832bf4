"""mpi4py's own test suite, run through ``python -m commlib`` with the interposer installed.

The suite ships in mpi4py's source distribution, not in its wheel: the test
fetches it (:mod:`commlib.bench.mpi4py_suite`), and skips with the reason
when the index cannot be reached. The point-to-point, packing, datatype, status/request and
collective modules must pass at 2 and 3 ranks, as they do without commlib.
"""

from __future__ import annotations

import re

import pytest

from commlib.bench import mpi4py_suite

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The ``test/`` folder of the installed mpi4py's sdist."""
    try:
        return mpi4py_suite.fetch(tmp_path_factory.mktemp("mpi4py-sdist"))
    except mpi4py_suite.SuiteUnavailable as err:
        pytest.skip(str(err))


@pytest.mark.timeout(960)
@pytest.mark.parametrize("nprocs", [2, 3])
def test_mpi4py_suite_passes_interposed(mpirun, suite, nprocs):
    result = mpirun(nprocs, mpi4py_suite.command("commlib"), python=False, cwd=str(suite), timeout=900)
    # ranks write to one stream: a rank's summary may follow another's line of dashes on the same line
    runs = re.findall(r"Ran (\d+) tests? in ", result.stderr + result.stdout)
    assert len(runs) == nprocs and all(int(n) > 500 for n in runs), result.stderr[-2000:]
    assert "FAILED" not in result.stderr, result.stderr[-4000:]

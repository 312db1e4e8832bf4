"""mpi4py's own test suite, run through ``python -m commlib`` with the interposer installed.

The suite ships in mpi4py's source distribution, not in its wheel: the test
fetches the sdist of the installed mpi4py version from the package index
(checking its sha256), and skips with the reason when the index cannot be
reached. The point-to-point, packing, datatype, status/request and
collective modules must pass at 2 and 3 ranks, as they do without commlib.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

import mpi4py
import pytest

pytestmark = pytest.mark.mpi

INDEX = "https://pypi.org/simple/mpi4py/"
MODULES = [
    "test_p2p_buf",
    "test_p2p_obj",
    "test_pack",
    "test_datatype",
    "test_status",
    "test_request",
    "test_msgspec",
    "test_msgzero",
    "test_cco_buf",
    "test_cco_vec",
    "test_cco_nb_buf",
    "test_cco_nb_vec",
    "test_cco_ngh_buf",
    "test_cco_obj",
    "test_util_pkl5",
]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """The ``test/`` folder of the installed mpi4py's sdist."""
    version = mpi4py.__version__
    name = f"mpi4py-{version}.tar.gz"
    try:
        index = urllib.request.urlopen(INDEX, timeout=30).read().decode()
        link = re.search(rf'href="([^"]*/{re.escape(name)}#sha256=([0-9a-f]+))"', index)
        if link is None:
            pytest.skip(f"{name} is not on {INDEX}")
        data = urllib.request.urlopen(link.group(1), timeout=120).read()
    except OSError as err:
        pytest.skip(f"cannot fetch mpi4py's test suite from {INDEX}: {err}")
    assert hashlib.sha256(data).hexdigest() == link.group(2), f"{name}: sha256 mismatch"
    where = tmp_path_factory.mktemp("mpi4py-sdist")
    archive = where / name
    archive.write_bytes(data)
    prefix = f"mpi4py-{version}/test/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        tar.extractall(where, members=members, filter="data")
    return where / prefix


@pytest.mark.timeout(960)
@pytest.mark.parametrize("nprocs", [2, 3])
def test_mpi4py_suite_passes_interposed(mpirun, suite, nprocs):
    selection = [arg for module in MODULES for arg in ("-i", module)]
    command = [sys.executable, "-m", "commlib", "main.py", "-q", *selection]
    result = mpirun(nprocs, command, python=False, cwd=str(suite), timeout=900)
    runs = re.findall(r"^Ran (\d+) tests?", result.stderr + result.stdout, re.M)
    assert len(runs) == nprocs and all(int(n) > 500 for n in runs), result.stderr[-2000:]
    assert "FAILED" not in result.stderr, result.stderr[-4000:]

"""mpi4py's own test suite, as a program to run through commlib: where to get it and what to run.

The suite ships in mpi4py's source distribution, not in its wheel:
:func:`fetch` downloads the sdist of the installed mpi4py version from the
package index (checking its sha256) and unpacks its ``test/`` folder.
:data:`MODULES` are the modules commlib must pass interposed (point to point,
packing, datatypes, statuses and requests, collectives), :func:`command` the
command line that runs them.
"""

from __future__ import annotations

import hashlib
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

import mpi4py

__all__ = ["INDEX", "MODULES", "SuiteUnavailable", "command", "fetch"]

INDEX = "https://pypi.org/simple/mpi4py/"
MODULES = (
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
)


class SuiteUnavailable(RuntimeError):
    """The suite cannot be fetched (offline, or not on the index)."""


def fetch(where: Path) -> Path:
    """The ``test/`` folder of the installed mpi4py's sdist, unpacked below ``where``."""
    version = mpi4py.__version__
    name = f"mpi4py-{version}.tar.gz"
    try:
        index = urllib.request.urlopen(INDEX, timeout=30).read().decode()
        link = re.search(rf'href="([^"]*/{re.escape(name)}#sha256=([0-9a-f]+))"', index)
        if link is None:
            raise SuiteUnavailable(f"{name} is not on {INDEX}")
        data = urllib.request.urlopen(link.group(1), timeout=120).read()
    except OSError as err:
        raise SuiteUnavailable(f"cannot fetch mpi4py's test suite from {INDEX}: {err}") from None
    if hashlib.sha256(data).hexdigest() != link.group(2):
        raise SuiteUnavailable(f"{name}: sha256 mismatch")
    archive = where / name
    archive.write_bytes(data)
    prefix = f"mpi4py-{version}/test/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        tar.extractall(where, members=members, filter="data")
    return where / prefix


# Tests that assert what commlib changes on purpose, left out under either runner so that both run the same
# tests: testNotContiguous expects mpi4py's BufferError for a strided numpy view, which a wrapped
# communicator moves instead (commlib.interposer.views)
EXCLUDED = ("testNotContiguous",)


def command(runner: str = "commlib") -> list[str]:
    """``python -m <runner> main.py -q -i <module> ...``: run it with the suite folder as the working directory."""
    excluded = [arg for name in EXCLUDED for arg in ("-x", name)]
    return [sys.executable, "-m", runner, "main.py", "-q", *[arg for m in MODULES for arg in ("-i", m)], *excluded]

"""Test your own packer against MPI with commlib's hypothesis strategies.

Run: python -m pytest examples/test_my_packer.py --commlib-hypothesis-profile=commlib-dev
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from datatypes import canonicalize
from datatypes.testing import assert_pack_matches_mpi, buffers_for, mpi_datatypes


def my_pack(buf, count, datatype):
    """A user's packer: gather the bytes the canonical form names (vectors and subarrays only)."""
    offsets = canonicalize(datatype).repeated(count).byte_offsets()
    return np.asarray(buf, dtype=np.uint8)[offsets]


@given(st.data())
def test_my_packer(data):
    dt = data.draw(mpi_datatypes(max_depth=2, named=["DOUBLE", "INT"], constructors=["vector", "subarray"]))
    count = data.draw(st.integers(0, 3))
    assert_pack_matches_mpi(my_pack, dt, count, data.draw(buffers_for(dt, count)))

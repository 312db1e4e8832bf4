"""Typed local copy (:func:`datatypes.copy`): the bytes MPI_Pack then MPI_Unpack would leave, and no other."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

import datatypes
from datatypes.local_copy import common_shape
from datatypes.testing import buffers_for, mpi_datatypes, mpi_pack_reference, mpi_unpack_reference


@settings(max_examples=200)  # two random types per example: the pack suite covers each type alone
@given(st.data())
def test_copy_matches_mpi_pack_then_unpack(data):
    stype = data.draw(mpi_datatypes(), label="source type")
    rtype = data.draw(mpi_datatypes(), label="destination type")
    ssize, rsize = stype.Get_size(), rtype.Get_size()
    assume(ssize and rsize)
    common = math.lcm(ssize, rsize)
    assume(common <= 4 * max(ssize, rsize))
    scount, rcount = common // ssize, common // rsize
    src = data.draw(buffers_for(stype, scount), label="source")
    dst = data.draw(buffers_for(rtype, rcount), label="destination")
    expected = dst.copy()
    mpi_unpack_reference(mpi_pack_reference(src, scount, stype), expected, rcount, rtype)
    before = src.copy()
    datatypes.copy(src, scount, stype, dst, rcount, rtype)
    event("one pass" if datatypes.canonicalize(stype) and datatypes.canonicalize(rtype) else "through a packed buffer")
    assert np.array_equal(src, before), "copy modified its source"
    assert np.array_equal(dst, expected), "copy left other bytes than MPI_Pack + MPI_Unpack"


def test_subarray_transpose_in_one_pass():
    """The own piece of a pencil transpose: a column block of one array into a row block of another."""
    a = np.arange(8 * 12 * 6, dtype=np.complex128).reshape(8, 12, 6)
    b = np.zeros((8, 6, 12), np.complex128)
    send = MPI.C_DOUBLE_COMPLEX.Create_subarray([8, 12, 6], [8, 4, 6], [0, 4, 0]).Commit()
    recv = MPI.C_DOUBLE_COMPLEX.Create_subarray([8, 6, 12], [8, 6, 4], [0, 0, 8]).Commit()
    try:
        datatypes.copy(a, 1, send, b, 1, recv)
    finally:
        send.Free(), recv.Free()
    assert np.array_equal(b[:, :, 8:].reshape(-1), a[:, 4:8, :].reshape(-1))
    assert not b[:, :, :8].any()


def test_common_shape_splits_levels():
    # 4 rows of 6 bytes at a stride of 100 against 2 rows of 12 at 50: rows of 6 at (200, 100) and (50, 6)
    assert common_shape(((4, 100), (6, 1)), ((2, 50), (12, 1))) == ((2, 2, 6), (200, 100, 1), (50, 6, 1))
    assert common_shape(((3, 10), (4, 1)), ((2, 10), (6, 1))) is None


def test_copy_refuses_mismatched_sizes_and_short_buffers():
    t = MPI.DOUBLE.Create_vector(4, 1, 2).Commit()
    try:
        with pytest.raises(ValueError, match=r"copy: 1 object\(s\) of .* pack 32 bytes"):
            datatypes.copy(np.zeros(8), 1, t, np.zeros(8), 3, MPI.DOUBLE)
        dst = np.zeros(6)
        with pytest.raises(ValueError, match="destination buffer, which has 48 bytes"):
            datatypes.copy(np.zeros(4), 4, MPI.DOUBLE, dst, 1, t)
        assert not dst.any()
    finally:
        t.Free()

"""Property tests: commlib's bytes equal MPI's for every generated datatype.

They use the public strategies and assertions of ``datatypes.testing``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

import datatypes
from datatypes.canonical import named_datatype
from datatypes.rebuild import rebuilt
from datatypes.testing import (
    assert_pack_matches_mpi,
    assert_unpack_matches_mpi,
    buffers_for,
    mpi_datatypes,
    mpi_pack_reference,
    strided_views,
    touched_range,
)

ENGINES = ("strided", "auto", "mpi")


def _packer(engine):
    return lambda buf, count, dt: datatypes.pack(buf, count, dt, engine=engine)


def _unpacker(engine):
    return lambda packed, buf, count, dt: datatypes.unpack(packed, buf, count, dt, engine=engine)


@given(st.data())
def test_pack_matches_mpi(data):
    dt = data.draw(mpi_datatypes(), label="datatype")
    count = data.draw(st.integers(0, 4), label="count")
    buf = data.draw(buffers_for(dt, count), label="buffer")
    event("canonical" if datatypes.canonicalize(dt) is not None else "not strided")
    before = buf.copy()
    for engine in ENGINES:
        assert_pack_matches_mpi(_packer(engine), dt, count, buf)
    size = datatypes.packed_size(count, dt)
    out = np.zeros(size + 3, np.uint8)
    out[size:] = 0xAB
    datatypes.pack(buf, count, dt, out=out, engine="strided")
    assert (out[size:] == 0xAB).all(), "pack wrote past the packed size"
    assert np.array_equal(buf, before), "pack modified its input"


def _hvectors_differ_in_mpi(sb):
    """Whether MPI's own extent of ``sb`` built as nested hvectors disagrees with the form's."""
    base = named_datatype(sb.base)
    t = base.Create_contiguous(sb.block // base.Get_size())
    for count, stride in zip(sb.counts[1:], sb.strides[1:]):
        t, old = t.Create_hvector(count, 1, stride), t
        old.Free()
    true_lb, true_extent = t.Get_true_extent()
    t.Free()
    origin = sb.start  # the hvectors start at 0, the form at sb.start
    return (true_lb, true_extent) != (sb.true_lb - origin, sb.true_ub - sb.true_lb)


@given(st.data())
def test_rebuilt_types_keep_the_type_map(data):
    dt = data.draw(mpi_datatypes(), label="datatype")
    twin = rebuilt(dt)
    event("rebuilt" if twin is not None else "not rebuilt")
    sb = datatypes.canonicalize(dt)
    if twin is None:  # types without a strided canonical form over one named base type, or where MPI
        # builds the nested hvectors with another type map (Open MPI 5 turns a stride of -1 byte into +1)
        plain = sb is None or sb.ndim == 1 or sb.size == 0 or named_datatype(sb.base) is None
        assert plain or _hvectors_differ_in_mpi(sb), sb
        return
    assert rebuilt(dt) is twin, "made once per datatype"
    assert (twin.Get_size(), twin.Get_extent()) == (dt.Get_size(), dt.Get_extent())
    base = datatypes.canonicalize(dt).base
    assert twin.Get_envelope()[-1] != 0 and datatypes.canonicalize(twin).base == base
    count = data.draw(st.integers(0, 3), label="count")
    buf = data.draw(buffers_for(dt, count), label="buffer")
    assert_pack_matches_mpi(lambda b, c, _: mpi_pack_reference(b, c, twin), dt, count, buf)


@given(st.data())
def test_unpack_matches_mpi(data):
    dt = data.draw(mpi_datatypes(), label="datatype")
    count = data.draw(st.integers(0, 4), label="count")
    buf = data.draw(buffers_for(dt, count), label="buffer")
    packed = np.random.default_rng(count).integers(0, 256, datatypes.packed_size(count, dt), dtype=np.uint8)
    for engine in ENGINES:
        assert_unpack_matches_mpi(_unpacker(engine), dt, count, packed, buf)


@given(mpi_datatypes(), st.integers(1, 4), st.integers(1, 16))
def test_types_reaching_below_the_origin_are_refused(dt, count, shift):
    assume(dt.Get_size() > 0)
    sb = datatypes.canonicalize(dt)
    lowest = sb.true_lb if sb is not None else dt.Get_true_extent()[0]  # the lowest byte really touched
    below = dt.Create_hindexed_block(1, [-lowest - shift]).Commit()
    try:
        lo, hi = touched_range(below, count)
        with pytest.raises(ValueError, match="touch bytes"):
            datatypes.pack(np.zeros(hi - lo, np.uint8), count, below)
        with pytest.raises(ValueError, match="touch bytes"):
            packed = np.zeros(datatypes.packed_size(count, below), np.uint8)
            datatypes.unpack(packed, np.zeros(hi - lo, np.uint8), count, below)
    finally:
        below.Free()


@given(mpi_datatypes(at_origin=False))
def test_canonical_form_round_trips(dt):
    sb = datatypes.canonicalize(dt)
    assume(sb is not None)
    assert sb.size == dt.Get_size()
    assert (sb.lb, sb.extent) == tuple(dt.Get_extent())
    if sb.size:
        # the bytes actually touched; MPI's true extent also counts empty members
        true_lb, true_extent = dt.Get_true_extent()
        assert true_lb <= sb.true_lb < sb.true_ub <= true_lb + true_extent
    again = sb.to_datatype()
    try:
        rt = datatypes.canonicalize(again)
        assert (rt.start, rt.counts, rt.strides, rt.extent, rt.lb) == (
            sb.start,
            sb.counts,
            sb.strides,
            sb.extent,
            sb.lb,
        )
        assert again.Get_size() == dt.Get_size()
    finally:
        again.Free()


@given(st.data())
def test_byte_offsets_are_the_type_map(data):
    """The canonical form's byte offsets, read from an address-labelled buffer, give MPI's bytes."""
    dt = data.draw(mpi_datatypes(), label="datatype")
    count = data.draw(st.integers(1, 3), label="count")
    sb = datatypes.canonicalize(dt)
    assume(sb is not None and sb.size > 0)
    hi = touched_range(dt, count)[1]
    labels = (np.arange(hi, dtype=np.int64) % 251).astype(np.uint8)
    offsets = sb.repeated(count).byte_offsets()
    assert_pack_matches_mpi(lambda buf, n, t: buf[offsets], dt, count, labels)


@given(strided_views())
def test_from_array_packs_like_numpy(view):
    sb = datatypes.from_array(view)
    assert sb.size == view.nbytes
    # the bytes [lowest address touched, +extent) of the view's memory
    byte_base = view.base.view(np.uint8).reshape(-1)
    low = view.__array_interface__["data"][0] - sb.start - byte_base.__array_interface__["data"][0]
    span = byte_base[low : low + sb.extent]
    assert datatypes.pack(span, 1, sb).tobytes() == np.ascontiguousarray(view).tobytes()
    target = np.zeros_like(span)
    datatypes.unpack(np.ascontiguousarray(view).tobytes(), target, 1, sb)
    assert datatypes.pack(target, 1, sb).tobytes() == np.ascontiguousarray(view).tobytes()

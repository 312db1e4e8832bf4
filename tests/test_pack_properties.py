"""Property tests: commlib's bytes equal MPI's for every generated datatype."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

import datatypes
from datatypes.testing import TypeSpec, built, mpi_pack_reference, mpi_unpack_reference, touched_range, type_specs

MAX_SPAN = 1 << 20


def _shifted(spec: TypeSpec, shift: int) -> TypeSpec:
    """The same type map moved ``shift`` bytes up (extent unchanged)."""
    return TypeSpec("Create_hindexed_block", (1, (shift,)), (spec,))


@st.composite
def cases(draw):
    """(spec, count, slack, seed) with the touched range starting at byte >= 0."""
    spec = draw(type_specs())
    count = draw(st.integers(0, 4))
    slack = draw(st.integers(0, 16))
    seed = draw(st.integers(0, 2**32 - 1))
    return spec, count, slack, seed


def _buffer(nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


def _prepare(spec: TypeSpec, count: int):
    """Build ``spec``; when it reaches below its origin, check commlib refuses, then shift it up."""
    with built(spec) as dt:
        lo, hi = touched_range(dt, count)
        assume(hi - lo <= MAX_SPAN)
        if lo < 0:
            with pytest.raises(ValueError, match="touch bytes"):
                datatypes.pack(np.zeros(max(hi, 1), np.uint8), count, dt)
            return _shifted(spec, -lo)
    return spec


@contextmanager
def _case(case):
    """(spec, datatype, count, buffer bytes, seed) of a drawn case, the datatype freed afterwards."""
    spec, count, slack, seed = case
    spec = _prepare(spec, count)
    with built(spec) as dt:
        yield spec, dt, count, touched_range(dt, count)[1] + slack, seed


@given(cases())
def test_pack_matches_mpi(case):
    with _case(case) as (spec, dt, count, nbytes, seed):
        buf = _buffer(nbytes, seed)
        before = buf.copy()
        expected = mpi_pack_reference(buf, count, dt)
        sb = datatypes.canonicalize(dt)
        event("canonical" if sb is not None else "not strided")
        for engine in ("strided", "auto", "mpi"):
            got = datatypes.pack(buf, count, dt, engine=engine)
            assert got.tobytes() == expected, f"{engine}: {spec!r} x {count}, canonical {sb!r}"
        out = np.zeros(len(expected) + 3, np.uint8)
        out[len(expected) :] = 0xAB
        datatypes.pack(buf, count, dt, out=out, engine="strided")
        assert out[: len(expected)].tobytes() == expected
        assert (out[len(expected) :] == 0xAB).all(), "pack wrote past the packed size"
        assert np.array_equal(buf, before), "pack modified its input"


@given(cases())
def test_unpack_matches_mpi(case):
    with _case(case) as (spec, dt, count, nbytes, seed):
        packed = _buffer(count * dt.Get_size(), seed).tobytes()
        poison = _buffer(nbytes, seed + 1)
        expected = poison.copy()
        mpi_unpack_reference(packed, expected, count, dt)
        for engine in ("strided", "auto", "mpi"):
            got = poison.copy()
            datatypes.unpack(packed, got, count, dt, engine=engine)
            diff = np.flatnonzero(got != expected)
            assert diff.size == 0, f"{engine}: {spec!r} x {count}: first differing byte {diff[:1]}"


@given(type_specs())
def test_canonical_form_round_trips(spec):
    with built(spec) as dt:
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


@given(type_specs(), st.integers(1, 3))
def test_byte_offsets_are_the_type_map(spec, count):
    """The canonical form's byte offsets, packed from an address-labelled buffer, equal MPI's bytes."""
    spec = _prepare(spec, count)
    with built(spec) as dt:
        sb = datatypes.canonicalize(dt)
        assume(sb is not None and sb.size > 0)
        lo, hi = touched_range(dt, count)
        labels = np.arange(hi, dtype=np.int64)
        offsets = sb.repeated(count).byte_offsets()
        idx = labels[offsets]
        expected = np.frombuffer(mpi_pack_reference((labels % 251).astype(np.uint8), count, dt), np.uint8)
        assert np.array_equal((idx % 251).astype(np.uint8), expected)


@st.composite
def views(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.complex128]))
    full = tuple(2 * s for s in shape)
    base = np.arange(int(np.prod(full)), dtype=dtype).reshape(full)
    index = tuple(slice(None, None, draw(st.sampled_from([1, 2, -1, -2]))) for _ in shape)
    return base[index]


@given(views())
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

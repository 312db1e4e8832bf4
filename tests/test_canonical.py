"""Unit tests: every simplification rule and every rejection of the canonical form."""

import numpy as np
import pytest
from mpi4py import MPI

import datatypes
from datatypes import StridedBlock, canonicalize


@pytest.fixture
def make():
    """Build datatypes and free them at the end of the test."""
    made = []

    def _make(dt):
        made.append(dt)
        return dt

    yield _make
    for dt in made:
        dt.Free()


def levels(sb):
    return list(zip(sb.counts, sb.strides))[1:]


def test_named_type_is_one_block():
    sb = canonicalize(MPI.DOUBLE)
    assert (sb.start, sb.counts, sb.strides, sb.extent, sb.size, sb.base) == (0, (8,), (1,), 8, 8, "MPI_DOUBLE")
    for name in ("BYTE", "INT", "INT64_T", "FLOAT", "C_DOUBLE_COMPLEX", "UINT16_T"):
        assert canonicalize(getattr(MPI, name)).is_contiguous


def test_every_named_type_is_canonical_or_rejected_never_wrong():
    for name in dir(MPI):
        dt = getattr(MPI, name)
        if isinstance(dt, MPI.Datatype) and dt != MPI.DATATYPE_NULL:
            sb = canonicalize(dt)
            assert sb is None or (sb.is_contiguous and sb.size == dt.Get_size()), name


def test_drop_count_one_levels(make):
    # vector(1, 3, 10) is three contiguous elements: the count-1 level disappears
    sb = canonicalize(make(MPI.INT.Create_vector(1, 3, 10)))
    assert sb.counts == (12,) and levels(sb) == []


def test_fold_dense_level_into_block(make):
    # stride == blocklength: the vector is dense and folds into one block
    sb = canonicalize(make(MPI.INT.Create_vector(5, 2, 2)))
    assert sb.counts == (40,) and sb.is_contiguous


def test_merge_levels_when_parent_stride_spans_child(make):
    inner = make(MPI.DOUBLE.Create_vector(3, 1, 4))  # blocks every 32 B, extent 72
    outer = make(inner.Create_hvector(2, 1, 96))  # 96 == 3 * 32: one level of 6
    assert levels(canonicalize(outer)) == [(6, 32)]


def test_levels_keep_type_map_order_not_stride_order(make):
    # the outer level has the smaller stride: reordering would change the packed bytes
    inner = make(MPI.BYTE.Create_hvector(3, 1, 100))
    resized = make(inner.Create_resized(0, 1))
    outer = make(resized.Create_contiguous(4))
    outer.Commit()
    sb = canonicalize(outer)
    assert levels(sb) == [(3, 100), (4, 1)]
    buf = np.arange(256, dtype=np.uint8)
    assert datatypes.pack(buf, 1, outer, engine="strided").tolist() == [
        0,
        100,
        200,
        1,
        101,
        201,
        2,
        102,
        202,
        3,
        103,
        203,
    ]


def test_subarray_c_and_fortran_order(make):
    c = canonicalize(make(MPI.INT.Create_subarray([4, 5], [2, 3], [1, 1])))
    assert (c.start, c.block, levels(c), c.extent) == (24, 12, [(2, 20)], 80)
    f = canonicalize(make(MPI.INT.Create_subarray([4, 5], [2, 3], [1, 1], order=MPI.ORDER_FORTRAN)))
    assert (f.start, f.block, levels(f), f.extent) == (20, 8, [(3, 16)], 80)


def test_n_levels_beyond_three(make):
    cur = MPI.BYTE
    for i in range(5):
        cur = make(cur.Create_hvector(2, 1, 10**i * 3))
    assert canonicalize(cur).ndim == 6


def test_resized_and_dup_keep_the_type_map(make):
    base = make(MPI.INT.Create_vector(3, 1, 2))
    r = canonicalize(make(base.Create_resized(-8, 64)))
    assert (r.lb, r.extent, levels(r)) == (-8, 64, [(3, 8)])
    assert canonicalize(make(base.Dup())) == canonicalize(base)


def test_negative_strides(make):
    sb = canonicalize(make(MPI.INT.Create_hvector(3, 1, -8)))
    assert (sb.start, levels(sb), sb.true_lb, sb.true_ub) == (0, [(3, -8)], -16, 4)


def test_uniform_indexed_family_is_strided(make):
    cases = [
        MPI.INT.Create_indexed([2, 2, 2], [0, 5, 10]),
        MPI.INT.Create_hindexed([2, 2, 2], [0, 20, 40]),
        MPI.INT.Create_indexed_block(2, [1, 6, 11]),
        MPI.INT.Create_hindexed_block(2, [4, 24, 44]),
        MPI.Datatype.Create_struct([2, 2, 2], [0, 20, 40], [MPI.INT] * 3),
    ]
    for dt in cases:
        sb = canonicalize(make(dt))
        assert sb is not None and sb.counts[0] == 8 and levels(sb) == [(3, 20)], dt


def test_indexed_pieces_that_join_into_one_block(make):
    # blocks of 2 and 3 ints that abut: one block of 20 bytes
    assert canonicalize(make(MPI.INT.Create_indexed([2, 3], [0, 2]))).counts == (20,)


def test_empty_types(make):
    for dt in (MPI.INT.Create_contiguous(0), MPI.INT.Create_vector(3, 0, 2), MPI.INT.Create_indexed([], [])):
        sb = canonicalize(make(dt))
        assert sb.is_empty and sb.size == 0


@pytest.mark.parametrize(
    "build",
    [
        lambda: MPI.INT.Create_indexed([1, 2], [0, 4]),  # unequal blocks
        lambda: MPI.INT.Create_indexed([1, 1, 1], [0, 3, 7]),  # uneven spacing
        lambda: MPI.Datatype.Create_struct([1, 1], [0, 8], [MPI.INT, MPI.DOUBLE]),  # mixed base types
        lambda: MPI.INT.Create_darray(4, 1, [16], [MPI.DISTRIBUTE_BLOCK], [MPI.DISTRIBUTE_DFLT_DARG], [4]),
    ],
    ids=["unequal-blocks", "uneven-spacing", "mixed-base", "darray"],
)
def test_rejections_return_none(make, build):
    assert canonicalize(make(build())) is None


def test_named_types_with_holes_are_rejected():
    assert canonicalize(MPI.SHORT_INT) is None  # short at 0, int at 4: a hole


def test_bad_arguments():
    with pytest.raises(ValueError, match="DATATYPE_NULL"):
        canonicalize(MPI.DATATYPE_NULL)
    with pytest.raises(TypeError, match="mpi4py.MPI.Datatype"):
        canonicalize("double")


def test_cache_follows_the_handle():
    # MPICH reuses freed handles: a new type on the same handle must not see the old form
    seen = []
    for stride in (2, 3, 4):
        dt = MPI.INT.Create_vector(3, 1, stride)
        seen.append(levels(canonicalize(dt)))
        dt.Free()
    assert seen == [[(3, 8)], [(3, 12)], [(3, 16)]]


def test_strided_block_value_semantics():
    sb = StridedBlock(8, (4, 3), (1, 16), 64, 0, "MPI_INT")
    assert sb == StridedBlock(8, (4, 3), (1, 16), 64, 0, "MPI_INT") and hash(sb)
    assert sb.size == 12 and sb.touched(2) == (8, 8 + 36 + 64)
    assert "block=4B" in repr(sb) and "3 x +16" in repr(sb)
    with pytest.raises(ValueError):
        StridedBlock(0, (4,), (2,), 4)
    with pytest.raises(ValueError):
        StridedBlock(0, (4, 2), (1,), 4)


def test_from_array_of_views():
    a = np.zeros((6, 8), np.float64)
    sb = datatypes.from_array(a[1::2, ::4])
    assert (sb.start, sb.block, levels(sb), sb.base) == (0, 8, [(2, 32), (3, 128)], "MPI_DOUBLE")
    assert datatypes.from_array(a).is_contiguous
    rev = datatypes.from_array(a[::-1])
    assert rev.start == 5 * 64 and levels(rev) == [(6, -64)]


# -- where an MPI's type map departs from the standard's, MPI packs the type itself ---------------------------


def _mpi_pack(dt, src):
    one = dt.Create_resized(0, len(src)).Commit()  # one object from the whole buffer
    try:
        out = bytearray(dt.Get_size())
        one.Pack(src, out, 0, MPI.COMM_SELF)
        return bytes(out)
    finally:
        one.Free()


@pytest.mark.parametrize(
    "build",
    [
        lambda: MPI.BYTE.Create_vector(3, 1, -1),  # Open MPI 5: three bytes going up
        lambda: MPI.C_DOUBLE_COMPLEX.Create_hindexed_block(1, [0, 24]),  # Open MPI 5: the first element twice
        lambda: MPI.C_FLOAT_COMPLEX.Create_hindexed_block(1, [0, 4]),  # overlapping, the same
        lambda: MPI.LONG_DOUBLE.Create_vector(2, 1, 2),  # 10 significant bytes of 16, padding unwritten or zeroed
    ],
    ids=["byte-stride-minus-one", "complex-half-offset", "complex-overlap", "long-double-padding"],
)
def test_a_form_is_given_only_where_mpi_packs_the_type_map(make, build):
    dt = make(build()).Commit()
    sb = canonicalize(dt)
    true_lb, true_extent = dt.Get_true_extent()
    src = bytes((i % 251) + 1 for i in range(true_extent + 64))
    shifted = make(dt.Create_hindexed_block(1, [32 - true_lb])).Commit()  # room below the origin
    if sb is not None:
        expected = bytes(src[32 - true_lb + o] for o in sb.byte_offsets())
        assert _mpi_pack(shifted, src) == expected, sb


def test_a_struct_whose_empty_member_sets_the_bounds(make):
    """lb 0 from the empty member, one byte at 1, extent 2: objects 2 bytes apart, where MPI agrees."""
    empty = make(MPI.BYTE.Create_contiguous(0))
    dt = make(MPI.Datatype.Create_struct([1, 1], [1, 0], [MPI.BYTE, empty])).Commit()
    sb = canonicalize(dt)
    out = bytearray(2)
    dt.Pack(bytes(range(1, 5)), out, 0, MPI.COMM_SELF)  # two objects
    assert (sb is not None) == (bytes(out) == bytes([2, 4]))
    if sb is not None:
        assert (sb.start, sb.extent, sb.lb) == (1, 2, 0)


def test_to_datatype_keeps_a_negative_byte_stride(make):
    sb = StridedBlock(2, (1, 3), (1, -1), 3, 0, "MPI_BYTE")  # bytes 2, 1, 0 in that order
    dt = make(sb.to_datatype())
    again = canonicalize(dt)
    assert (again.start, again.counts, again.strides) == (2, (1, 3), (1, -1))
    assert _mpi_pack(dt, bytes([10, 11, 12, 13])) == bytes([12, 11, 10])

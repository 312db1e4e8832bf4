"""Unit tests of the pack/unpack API: engines, errors, bounds, buffers."""

import numpy as np
import pytest
from mpi4py import MPI

import datatypes
from commlib.config import Config


@pytest.fixture
def vec():
    dt = MPI.DOUBLE.Create_vector(4, 1, 3).Commit()  # extent 80 bytes, 32 packed
    yield dt
    dt.Free()


def test_packed_size(vec):
    assert datatypes.packed_size(5, vec) == 160
    assert datatypes.packed_size(0, MPI.INT) == 0


def test_input_too_small_is_refused_before_reading(vec):
    with pytest.raises(ValueError) as err:
        datatypes.pack(np.zeros(19), 2, vec)
    msg = str(err.value)
    assert "pack" in msg and "2 object(s)" in msg and "[0, 160)" in msg and "152 bytes" in msg


def test_output_too_small_is_refused_before_writing(vec):
    out = np.full(40, 7, np.uint8)
    with pytest.raises(ValueError, match="output buffer, which has 40 bytes"):
        datatypes.pack(np.zeros(40), 2, vec, out=out)
    assert (out == 7).all()


def test_unpack_out_of_bounds_writes_nothing(vec):
    buf = np.full(100, 3, np.uint8)
    with pytest.raises(ValueError, match="unpack.*output buffer, which has 100 bytes"):
        datatypes.unpack(np.zeros(64, np.uint8), buf, 2, vec)
    assert (buf == 3).all()
    with pytest.raises(ValueError, match="packed buffer, which has 10 bytes"):
        datatypes.unpack(np.zeros(10, np.uint8), np.zeros(200, np.uint8), 2, vec)


def test_non_strided_types_are_bounds_checked_too():
    dt = MPI.INT.Create_indexed([1, 3], [0, 10]).Commit()  # not strided: MPI packs it
    try:
        assert datatypes.canonicalize(dt) is None
        with pytest.raises(ValueError, match="touch bytes"):
            datatypes.pack(np.zeros(40, np.uint8), 1, dt)
        buf = np.arange(13, dtype=np.int32)
        assert datatypes.pack(buf, 1, dt).view(np.int32).tolist() == [0, 10, 11, 12]
    finally:
        dt.Free()


def test_negative_lower_bound_reaching_before_the_buffer_is_refused():
    dt = MPI.INT.Create_hvector(3, 1, -8).Commit()  # touches bytes -16..4
    try:
        with pytest.raises(ValueError, match=r"\[-16, 4\)"):
            datatypes.pack(np.zeros(64, np.uint8), 1, dt)
    finally:
        dt.Free()


def test_bad_count_and_type(vec):
    with pytest.raises(ValueError, match="count must be >= 0"):
        datatypes.pack(np.zeros(100), -1, vec)
    with pytest.raises(TypeError, match="count must be an integer"):
        datatypes.pack(np.zeros(100), 1.5, vec)
    with pytest.raises(TypeError, match="Datatype or StridedBlock"):
        datatypes.pack(np.zeros(100), 1, "double")
    assert datatypes.pack(np.zeros(100), np.int64(1), vec).nbytes == 32


def test_bad_buffers(vec):
    with pytest.raises(ValueError, match="contiguous"):
        datatypes.pack(np.zeros((10, 10))[:, ::2], 1, vec)
    with pytest.raises(TypeError, match="buffer protocol"):
        datatypes.pack([1.0] * 20, 1, vec)
    ro = np.zeros(20)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        datatypes.unpack(np.zeros(32, np.uint8), ro, 1, vec)


def test_buffer_kinds(vec):
    data = np.arange(10, dtype=np.float64)
    expected = data[::3][:4].tobytes()
    for buf in (data, data.tobytes(), bytearray(data.tobytes()), memoryview(data), data.reshape(2, 5)):
        assert datatypes.pack(buf, 1, vec).tobytes() == expected
    fortran = np.asfortranarray(data.reshape(5, 2))
    assert datatypes.pack(fortran, 1, vec).tobytes() == np.ravel(fortran, order="K")[::3][:4].tobytes()


def test_out_returns_a_view_of_out(vec):
    out = np.zeros(64, np.uint8)
    got = datatypes.pack(np.arange(10.0), 1, vec, out=out)
    assert got.nbytes == 32 and np.shares_memory(got, out)


def test_engine_choice(vec, monkeypatch):
    big = MPI.DOUBLE.Create_vector(4096, 4, 8).Commit()
    try:
        assert datatypes.choose_engine(1, vec) == "mpi"  # 32 bytes: MPI's fixed cost is lower
        assert datatypes.choose_engine(1, big) == "strided"
        assert datatypes.choose_engine(1, big, "mpi") == "mpi"
        assert datatypes.choose_engine(1, vec, "strided") == "strided"
        assert datatypes.choose_engine(1, MPI.DOUBLE) == "mpi"  # small, even if contiguous
        assert datatypes.choose_engine(1 << 16, MPI.DOUBLE) == "strided"  # large contiguous: one copy
        irregular = MPI.INT.Create_indexed([1, 3], [0, 10])
        assert datatypes.choose_engine(1, irregular, "strided") == "mpi"  # no canonical form
        irregular.Free()
        short_blocks = MPI.BYTE.Create_vector(1 << 16, 1, 4)
        assert datatypes.choose_engine(1, short_blocks) == "mpi"
        short_blocks.Free()
    finally:
        big.Free()


def test_overlapping_types_unpack_through_mpi():
    dt = MPI.INT.Create_hvector(3, 2, 4).Commit()  # blocks of 8 bytes every 4: overlap
    try:
        sb = datatypes.canonicalize(dt)
        assert sb is not None and not sb.is_injective()
        packed = np.arange(6, dtype=np.int32)
        ours, theirs = np.zeros(4, np.int32), np.zeros(4, np.int32)
        datatypes.unpack(packed, ours, 1, dt, engine="strided")
        datatypes.unpack(packed, theirs, 1, dt, engine="mpi")
        assert ours.tolist() == theirs.tolist()
    finally:
        dt.Free()


def test_strided_block_as_datatype():
    a = np.arange(24, dtype=np.int16).reshape(4, 6)
    sb = datatypes.from_array(a[:, 1:4])
    span = a.reshape(-1)[1:].view(np.uint8)[: sb.extent]
    assert datatypes.pack(span, 1, sb, engine="mpi").view(np.int16).tolist() == a[:, 1:4].ravel().tolist()


def test_config_from_environment(monkeypatch):
    monkeypatch.setenv("COMMLIB_PACK", "MPI")
    monkeypatch.setenv("COMMLIB_PACK_MIN_BYTES", "0x100")
    cfg = Config.from_env()
    assert cfg.pack_engine == "mpi" and cfg.pack_min_bytes == 256
    monkeypatch.setenv("COMMLIB_PACK", "fast")
    with pytest.raises(ValueError, match="COMMLIB_PACK='fast'"):
        Config.from_env()
    monkeypatch.setenv("COMMLIB_PACK", "auto")
    monkeypatch.setenv("COMMLIB_PACK_MIN_BLOCK", "-1")
    with pytest.raises(ValueError, match="COMMLIB_PACK_MIN_BLOCK"):
        Config.from_env()


def test_config_reload_changes_the_default_engine(vec, monkeypatch):
    from commlib.config import config

    monkeypatch.setenv("COMMLIB_PACK", "strided")
    config.reload()
    try:
        assert datatypes.choose_engine(1, vec) == "strided"
    finally:
        monkeypatch.delenv("COMMLIB_PACK")
        config.reload()
    assert datatypes.choose_engine(1, vec) == "mpi"

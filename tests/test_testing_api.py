"""The public property-testing API: strategies, assertions, plugin."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from mpi4py import MPI

import datatypes
from datatypes.testing import (
    CONSTRUCTORS,
    GeneratedDatatype,
    assert_pack_matches_mpi,
    assert_unpack_matches_mpi,
    buffers_for,
    live_datatypes,
    mpi_datatypes,
    strided_views,
    type_specs,
)

ROOT = Path(__file__).resolve().parent.parent
SEARCH = settings(max_examples=3000, database=None, deadline=None, suppress_health_check=list(HealthCheck))


# -- strategies ---------------------------------------------------------------


@pytest.mark.parametrize(
    "used",
    [f"Create_{c}" for c in CONSTRUCTORS if c != "dup"] + ["Dup", "order=MPI.ORDER_C", "order=MPI.ORDER_FORTRAN"],
)
def test_every_constructor_and_order_is_drawn(used):
    spec = find(type_specs(), lambda s: used in s.constructors(), settings=SEARCH)
    with datatypes.testing.built(spec) as dt:
        assert dt.Get_size() >= 0


def test_constructors_can_be_restricted():
    @given(mpi_datatypes(constructors=["vector", "resized"], named=[MPI.DOUBLE]))
    @settings(max_examples=100, database=None)
    def check(dt):
        # the at-origin shift may add one hindexed_block on top
        assert dt.spec.constructors() <= {"Create_vector", "Create_resized", "Create_hindexed_block"}
        assert "DOUBLE" in repr(dt)

    check()


def test_bad_strategy_arguments():
    with pytest.raises(ValueError, match="unknown"):
        type_specs(constructors=["vectors"])
    with pytest.raises(ValueError, match="not a predefined"):
        type_specs(named=["DOUBLES"])


def test_generated_datatypes_print_as_their_constructor_call():
    spec = find(type_specs(max_depth=1), lambda s: s.ctor == "Create_vector", settings=SEARCH)
    assert re.fullmatch(r"MPI\.\w+\.Create_vector\(-?\d+, -?\d+, -?\d+\)", repr(spec))


def test_datatypes_are_freed_after_each_example():
    handles = []

    @given(mpi_datatypes())
    @settings(max_examples=150, database=None)
    def check(dt):
        assert isinstance(dt, GeneratedDatatype)
        handles.append(dt.handle)

    before = live_datatypes()
    check()
    assert live_datatypes() == before == 0
    if MPI.Get_library_version().startswith("MPICH"):
        # MPICH hands out the lowest free handle: with nothing leaked it is one seen before
        probe = MPI.INT.Create_contiguous(2)
        try:
            assert probe.handle in handles
        finally:
            probe.Free()


@given(st.data())
@settings(max_examples=100, database=None)
def test_buffers_hold_count_objects_plus_slack(data):
    dt = data.draw(mpi_datatypes())
    count = data.draw(st.integers(0, 3))
    buf = data.draw(buffers_for(dt, count, slack=8))
    hi = datatypes.testing.touched_range(dt, count)[1]
    assert buf.dtype == np.uint8 and hi <= buf.size <= hi + 8


def test_buffers_for_refuses_types_below_the_origin():
    dt = MPI.INT.Create_hvector(2, 1, -8)
    try:
        with pytest.raises(ValueError, match="reach 8 bytes below the buffer origin"):
            buffers_for(dt, 1)
    finally:
        dt.Free()


@given(strided_views())
@settings(max_examples=100, database=None)
def test_strided_views_are_views(view):
    assert view.base is not None and view.size >= 1


# -- assertions and their messages --------------------------------------------


@pytest.fixture
def vec():
    dt = MPI.INT.Create_vector(3, 1, 2).Commit()  # ints at bytes 0, 8, 16 of a 20-byte extent
    yield dt
    dt.Free()


def test_pack_diff_names_object_block_level_and_offset(vec):
    buf = np.arange(40, dtype=np.uint8)

    def off_by_one(b, count, dt):
        out = datatypes.pack(b, count, dt).copy()
        out[13] ^= 0xFF
        return out

    with pytest.raises(AssertionError) as err:
        assert_pack_matches_mpi(off_by_one, vec, 2, buf)
    msg = str(err.value)
    assert "first is byte 13" in msg and "object 1 of 2, byte 1 of its 12" in msg
    assert "block 0 at (level 1: 0 of 3), byte 1 of the 4-byte block, buffer offset 21" in msg
    with pytest.raises(AssertionError, match="6 packed bytes, MPI_Pack gives 24"):
        assert_pack_matches_mpi(lambda b, c, d: b[:6], vec, 2, buf)
    assert_pack_matches_mpi(datatypes.pack, vec, 2, buf)


def test_unpack_diff_names_the_packed_byte_or_the_stray_write(vec):
    buf = np.full(40, 0x55, np.uint8)
    packed = np.arange(24, dtype=np.uint8)

    def stray(p, b, count, dt):
        datatypes.unpack(p, b, count, dt)
        b[4] = 0  # inside the gap between the first two ints

    with pytest.raises(AssertionError, match="byte 4 .*does not cover this byte, so unpack must not write it"):
        assert_unpack_matches_mpi(stray, vec, 2, packed, buf)

    def wrong_value(p, b, count, dt):
        datatypes.unpack(p, b, count, dt)
        b[9] ^= 1

    with pytest.raises(AssertionError, match=r"byte 9 .*packed byte 5, object 0 of 2.*level 1: 1 of 3"):
        assert_unpack_matches_mpi(wrong_value, vec, 2, packed, buf)
    assert (buf == 0x55).all(), "the assertion must not modify the caller's buffer"
    assert_unpack_matches_mpi(datatypes.unpack, vec, 2, packed, buf)


def _failing_example(pack_fn, **strategy_kw) -> str:
    """Run a property test of ``pack_fn`` and return hypothesis' report of the shrunk failure."""

    @given(st.data())
    @settings(max_examples=400, database=None, deadline=None, derandomize=True)
    def check(data):
        dt = data.draw(mpi_datatypes(**strategy_kw), label="datatype")
        count = data.draw(st.integers(0, 4), label="count")
        assert_pack_matches_mpi(pack_fn, dt, count, data.draw(buffers_for(dt, count), label="buffer"))

    with pytest.raises(AssertionError) as err:
        check()
    return "\n".join(getattr(err.value, "__notes__", []))


def test_a_planted_count_bug_shrinks_to_the_smallest_case():
    report = _failing_example(lambda buf, count, dt: datatypes.pack(buf, min(count, 1), dt))
    assert "Draw 1 (datatype): MPI.BYTE\n" in report + "\n"
    assert "Draw 2 (count): 2" in report


def test_a_planted_offset_bug_shrinks_to_one_constructor():
    def ignores_start(buf, count, dt):
        sb = datatypes.canonicalize(dt)
        if sb is None:  # a type MPI itself builds differently from the standard (Open MPI: vector stride -1)
            return datatypes.pack(buf, count, dt)
        offsets = sb.repeated(count).byte_offsets() - sb.start
        return buf[offsets]

    ctors = ["vector", "indexed_block", "subarray"]
    report = _failing_example(ignores_start, named=["BYTE", "INT"], constructors=ctors)
    shrunk = re.search(r"Draw 1 \(datatype\): (.*)", report).group(1)
    # one drawn constructor on a named type, perhaps moved up to the origin by mpi_datatypes
    one_call = r"MPI\.\w+\.Create_\w+\([^()]*\)(\.Create_hindexed_block\(1, \[\d+\]\))?"
    assert re.fullmatch(one_call, shrunk), report


# -- the pytest plugin ----------------------------------------------------------


def test_plugin_is_registered_by_the_entry_point(request):
    assert request.config.pluginmanager.hasplugin("commlib")


def test_plugin_fixtures(mpi_reference, free_datatypes):
    dt = MPI.SHORT.Create_vector(2, 1, 3).Commit()
    free_datatypes.append(dt)
    buf = np.arange(8, dtype=np.int16)
    assert np.frombuffer(mpi_reference.pack(buf, 1, dt), np.int16).tolist() == [0, 3]


def _pytest(tmp_path, *args):
    test = tmp_path / "test_profile.py"
    test.write_text("from hypothesis import settings\ndef test_p():\n    print('EXAMPLES', settings().max_examples)\n")
    cmd = [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", str(test), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_profile_option(tmp_path):
    result = _pytest(tmp_path, "--commlib-hypothesis-profile=commlib-thorough")
    assert result.returncode == 0 and "EXAMPLES 20000" in result.stdout, result.stdout + result.stderr
    bad = _pytest(tmp_path, "--commlib-hypothesis-profile=nope")
    assert bad.returncode == 4 and "--commlib-hypothesis-profile" in bad.stderr


def test_example_user_packer_passes():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--commlib-hypothesis-profile=commlib-dev"]
        + [str(ROOT / "examples" / "test_my_packer.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_subarrays_are_drawn_as_this_mpi_accepts_them():
    from datatypes.typegen import empty_subarrays_accepted

    try:
        MPI.BYTE.Create_subarray([3], [0], [1]).Free()
        accepted = True
    except MPI.Exception:
        accepted = False
    assert empty_subarrays_accepted() == accepted
    seen = []

    @given(type_specs(max_depth=1, constructors=["subarray"]))
    @settings(max_examples=300, database=None, derandomize=True)
    def check(spec):
        if spec.ctor == "Create_subarray":
            seen.append(min(spec.args[1]))
            with datatypes.testing.built(spec) as dt:  # built without an error
                assert dt.Get_size() >= 0

    check()
    assert seen and (min(seen) == 0) == accepted

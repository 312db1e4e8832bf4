"""What the interposer knows of a datatype, and when it analyses one (interposer.decision, datatypes.signature)."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

import datatypes
from commlib.config import config
from commlib.interposer import decision
from commlib.interposer.messages import derived
from commlib.interposer.pieces import typed_pieces
from datatypes import model as cost_model
from datatypes.signature import MAX_ARGUMENTS, signature


@pytest.fixture
def fresh(monkeypatch):
    """Empty caches, and a model whose payback is known."""
    monkeypatch.setattr(decision, "_OBJECTS", {})
    monkeypatch.setattr(decision, "_SIGNATURES", {})
    monkeypatch.setattr(config, "analyse_bytes", 4096)
    monkeypatch.setattr(decision, "SHARE_MIN_BYTES", 0)  # these small types are shared by signature too


def subarray(start: int = 2) -> MPI.Datatype:
    return MPI.DOUBLE.Create_subarray([8, 8], [4, 4], [start, 1]).Commit()


def test_signatures_name_the_constructor_calls():
    a, b, c = subarray(), subarray(), subarray(3)
    nested = MPI.DOUBLE.Create_vector(2, 1, 3).Create_resized(0, 64).Commit()
    try:
        assert signature(a) == signature(b) != signature(c)
        assert signature(MPI.DOUBLE) != signature(MPI.FLOAT)
        assert signature(nested) == signature(MPI.DOUBLE.Create_vector(2, 1, 3).Create_resized(0, 64))
        long = MPI.BYTE.Create_indexed([1] * MAX_ARGUMENTS, list(range(0, 2 * MAX_ARGUMENTS, 2))).Commit()
        assert signature(long) is None  # too long to be worth hashing: analysed per handle
        long.Free()
    finally:
        for t in (a, b, c, nested):
            t.Free()


def test_rebuilt_types_share_what_is_known(fresh):
    first, second, other = subarray(), subarray(), subarray(3)
    try:
        assert decision.type_info(first) is decision.type_info(second) is not decision.type_info(other)
        assert decision.type_info(MPI.DOUBLE) is None
        assert datatypes.canonicalize(first) == datatypes.canonicalize(second)  # translated once
    finally:
        for t in (first, second, other):
            t.Free()


def test_small_types_are_known_per_object(fresh, monkeypatch):
    monkeypatch.setattr(decision, "SHARE_MIN_BYTES", 129)
    first, second = subarray(), subarray()  # 128 bytes: below the threshold
    try:
        assert decision.type_info(first) is not decision.type_info(second)
        assert decision.type_info(first) is decision.type_info(first) and decision.type_info(first).signature is None
    finally:
        first.Free()
        second.Free()


def test_a_type_is_analysed_once_its_messages_could_pay(fresh):
    dt = subarray()  # 16 doubles, 128 bytes per object
    buf = np.zeros((8, 8))
    try:
        routes = [derived([buf, 1, dt]).route for _ in range(40)]
        cold = routes.index(next(r for r in routes if r is not None))
        assert cold == 4096 // 128 - 1  # analysed at the use that brings the bytes moved to 4096
        assert all(r is routes[cold] for r in routes[cold:])
        assert derived([buf, 1, subarray()], eager=True).route is routes[cold]  # shared by the rebuilt type
        config.analyse_bytes = 0
        assert derived([np.zeros((16, 8)), 2, dt]).route is not None  # a new count, analysed at once
    finally:
        dt.Free()


def test_cold_bounds_come_from_mpi_and_are_checked_exactly_when_they_fail(fresh):
    dt = subarray()
    try:
        message = derived([np.zeros((8, 8)), 1, dt])
        assert message.route is None and message.info.touched(1) == datatypes.touched(1, dt)
        message.check("Send", writable=False)
        small = derived([np.zeros(40), 1, dt])
        with pytest.raises(ValueError, match="Send: 1 object"):
            small.check("Send", writable=False)
    finally:
        dt.Free()


def test_the_model_counts_what_analysis_costs():
    model = cost_model.Model()
    assert 0 < model.saving_per_byte() < 1e-8
    assert model.analysis_payback_bytes() == pytest.approx(model.constant("analysis") / model.saving_per_byte())
    slow_analysis = cost_model.Model(constants={"analysis": 1.0})  # a calibration measured it: the model uses it
    assert slow_analysis.analysis_payback_bytes() == pytest.approx(1.0 / model.saving_per_byte())


def _pieces(shape, axis, parts, count=1):
    types = []
    for i in range(parts):
        sizes, starts = list(shape), [0] * len(shape)
        sizes[axis] //= parts
        starts[axis] = i * sizes[axis]
        types.append(MPI.DOUBLE.Create_subarray(list(shape), sizes, starts).Commit())
    return types


def test_pieces_of_one_shape_at_even_steps_are_staged_in_one_pass(fresh):
    config.analyse_bytes = 0
    a = np.random.default_rng(0).random((4, 6, 12))
    types = _pieces(a.shape, 2, 3)  # a pencil split along its last axis
    try:
        pieces = typed_pieces([a, ([1] * 3, [0] * 3), types], 3)
        layout = decision.Layout(pieces)
        assert layout.whole is not None and layout.nbytes == a.nbytes
        packed = datatypes.pack(a, 1, layout.whole)
        expected = np.concatenate([a[:, :, 4 * i : 4 * i + 4].ravel() for i in range(3)])
        assert np.array_equal(packed.view(np.float64), expected)
        uneven = _pieces((4, 6, 12), 1, 4)  # 6 rows in 4 parts of 1: not the same shapes as the first
        mixed = typed_pieces([a, ([1] * 4, [0] * 4), [types[0], *uneven[1:]]], 4)
        assert decision.Layout(mixed).whole is None
        for t in uneven:
            t.Free()
    finally:
        for t in types:
            t.Free()


def test_contiguous_pieces_are_never_packed(fresh):
    config.analyse_bytes = 0
    a = np.zeros((4, 6, 12))
    types = _pieces(a.shape, 0, 2)  # whole planes: each piece is one contiguous run
    try:
        pieces = typed_pieces([a, ([1] * 2, [0] * 2), types], 2)
        layout = decision.Layout(pieces)
        assert all(r.contiguous for r in pieces.routes)
        assert not decision.pack_pays(cost_model.Model(), pieces, layout, send=True)
    finally:
        for t in types:
            t.Free()


class _Predicting:
    """A model stand-in predicting fixed times for the two strategies."""

    def __init__(self, native: float, pack: float) -> None:
        self.times = {"native": native, "pack": pack}

    def choose(self, op, f):
        return min(self.times, key=self.times.get)

    def predict(self, op, f, level, strategies):
        return {s: self.times[s] for s in strategies}


@pytest.mark.parametrize(
    ("native", "pack", "choice"),
    [(100e-6, 95e-6, "native"), (100e-6, 81e-6, "native"), (100e-6, 80e-6, "pack"), (100e-6, 30e-6, "pack"),
     (50e-6, 60e-6, "native")],
)  # fmt: skip
def test_a_message_is_packed_only_where_clearly_faster(monkeypatch, native, pack, choice):
    from datatypes.model import Features

    monkeypatch.setattr(decision.datatypes_settings, "pack_engine", "auto")
    f = Features(1 << 16, 192, 3)
    assert decision.message_choice(_Predicting(native, pack), "Isend", f) == choice

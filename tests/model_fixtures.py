"""What the cost-model tests share: an isolated process model, and a model on synthetic tables."""

import pytest

from commlib.config import config
from datatypes import model as cm
from datatypes.cost_table import Table


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No test reads or writes the user's cache; the process model is reloaded before and after."""
    monkeypatch.setenv("COMMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COMMLIB_MODEL", "analytic")
    for name in ("COMMLIB_PACK", "COMMLIB_PACK_MIN_BYTES", "COMMLIB_PACK_MIN_BLOCK", "COMMLIB_RECORD"):
        monkeypatch.delenv(name, raising=False)
    config.reload()
    cm.set_current(None)
    yield
    monkeypatch.undo()
    config.reload()
    cm.set_current(None)


def synthetic_model(native_fixed=5e-6, native_per_byte=2e-9, engine_winner="strided") -> cm.Model:
    """native: fixed + n * per_byte; pack: fast engine + a 20 us link; MPI's engine 3x slower than strided."""
    nbytes, blocks = (1 << 8, 1 << 12, 1 << 16, 1 << 20, 1 << 24), (1, 16, 256, 4096)
    fast = Table(nbytes, blocks, [[1e-6 + n * 0.1e-9 for _ in blocks] for n in nbytes])
    slow = Table(nbytes, blocks, [[3e-6 + n * 0.3e-9 for _ in blocks] for n in nbytes])
    strided, mpi = (fast, slow) if engine_winner == "strided" else (slow, fast)
    tables = {
        "pack.strided.2": strided,
        "unpack.strided.2": strided,
        "pack.mpi.2": mpi,
        "unpack.mpi.2": mpi,
        "p2p.intra": Table(nbytes, [1], [[20e-6 + n * 0.5e-9] for n in nbytes]),
        "send.native.intra.2": Table(
            nbytes, blocks, [[native_fixed + n * native_per_byte for _ in blocks] for n in nbytes]
        ),
    }
    return cm.Model(tables, constants={"pack_overhead": 0.0, "pack_overhead_byte": 0.0})

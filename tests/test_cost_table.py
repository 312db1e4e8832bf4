"""Cost tables (datatypes.cost_table): exact on the grid, interpolated between, clamped and bounded outside."""

import json

import pytest

from datatypes.cost_table import Table

NBYTES, BLOCKS = (1 << 10, 1 << 15, 1 << 20), (1, 8, 64, 512)


def copy_cost(n: float, b: float) -> float:
    """Fixed + per byte + per block: the cost structure of a strided copy."""
    return 2e-6 + 0.1e-9 * n + 10e-9 * n / b


def power_law(n: float, b: float) -> float:
    return 1e-9 * n**0.9 / b**0.5


def grid(cost, interpolation: str) -> Table:
    return Table(NBYTES, BLOCKS, [[cost(n, b) for b in BLOCKS] for n in NBYTES], interpolation=interpolation)


@pytest.mark.parametrize("interpolation, cost", [("affine", copy_cost), ("log", power_law)])
def test_tables_are_exact_on_the_grid_and_for_their_cost_shape_between(interpolation, cost):
    table = grid(cost, interpolation)
    for n, b, t in table.points():
        assert table(n, b) == pytest.approx(t, rel=1e-12)
    for n, b in [(3000, 20), (100_000, 300), (1 << 12, 8), (5793, 3)]:
        assert table(n, b) == pytest.approx(cost(n, b), rel=1e-9)


def test_log_interpolation_errs_on_copy_costs_between_distant_grid_points():
    errors = [abs(grid(copy_cost, "log")(n, 64) / copy_cost(n, 64) - 1) for n in (5793, 185_364)]
    assert max(errors) > 0.15  # why affine is the default


def test_table_clamps_blocks_and_bounds_the_extrapolation():
    for interpolation in ("affine", "log"):
        table = grid(copy_cost, interpolation)
        assert table(1 << 14, 1) == table(1 << 14, 0)  # below the smallest block: clamped
        assert table(1 << 14, 1 << 20) == table(1 << 14, 512)
    affine = grid(copy_cost, "affine")
    assert affine(1 << 24, 64) == pytest.approx(copy_cost(1 << 24, 64))  # the last segment's slope continues
    assert affine(100, 64) == pytest.approx(copy_cost(100, 64))  # and the first one's below
    steep = Table([1000, 2000], [1], [[1e-6], [1e-4]])  # extrapolated toward 0: never below proportional
    assert steep(10, 1) == pytest.approx(1e-8) and steep(0, 1) > 0
    down = Table([1, 2], [1], [[2e-6], [1e-6]], interpolation="log")  # negative slope: clamped to 0
    assert down(1 << 20, 1) == pytest.approx(1e-6) and down(0, 1) == pytest.approx(2e-6)
    assert Table([1, 2], [1], [[2e-6], [1e-6]])(1 << 20, 1) == pytest.approx(1e-6)
    steep_log = Table([1, 2], [1], [[1e-6], [1e-4]], interpolation="log")  # log-log slope clamped to 1
    assert steep_log(8, 1) == pytest.approx(4e-4)


def test_table_fills_unmeasured_cells_from_the_nearest_block_and_drops_empty_rows():
    table = Table([1024, 4096, 8192], [8, 64, 512], [[1e-6, 2e-6, None], [None, None, None], [4e-6, None, 8e-6]])
    assert table.nbytes == [1024, 8192]
    assert table(1024, 512) == pytest.approx(2e-6)
    assert table(8192, 64) in (pytest.approx(4e-6), pytest.approx(8e-6))
    assert len(table.points()) == 4
    assert Table.from_json(json.loads(json.dumps(table.to_json()))).points() == table.points()


@pytest.mark.parametrize(
    "nbytes, blocks, seconds, message",
    [
        ([], [1], [], "non-empty"),
        ([2, 1], [1], [[1.0], [1.0]], "increasing"),
        ([1], [0], [[1.0]], "positive integers"),
        ([1], [True], [[1.0]], "positive integers"),
        ([1, 2], [1], [[1.0]], "one row per"),
        ([1], [1, 2], [[1.0]], "must have 2 values"),
        ([1], [1], [[-1.0]], "positive finite"),
        ([1], [1], [[float("nan")]], "positive finite"),
        ([1], [1], [["1"]], "positive finite"),
        ([1], [1], [[None]], "no measured value"),
    ],
)
def test_bad_tables_are_refused(nbytes, blocks, seconds, message):
    with pytest.raises(ValueError, match=message):
        Table(nbytes, blocks, seconds)
    with pytest.raises(ValueError, match="interpolation must be one of affine, log"):
        Table([1], [1], [[1.0]], interpolation="cubic")

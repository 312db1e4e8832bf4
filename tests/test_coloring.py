"""Equitable bipartite edge colouring (transport.coloring), the exact core of minimal splitting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.coloring import equitable_bound, equitable_coloring


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 7).flatmap(
        lambda n: st.tuples(
            st.lists(st.lists(st.integers(0, 12), min_size=n, max_size=n), min_size=1, max_size=7),
            st.integers(1, 9),
        )
    )
)
def test_equitable_coloring_meets_the_per_vertex_bound(case):
    units, colors = np.array(case[0]), case[1]
    y = equitable_coloring(units, colors)
    assert y.shape == units.shape + (colors,)
    assert (y >= 0).all() and np.array_equal(y.sum(axis=2), units)
    row_bound, col_bound = equitable_bound(units, colors)
    assert (y.sum(axis=1) <= row_bound[:, None]).all()
    assert (y.sum(axis=0) <= col_bound[:, None]).all()


def test_equitable_coloring_needs_alternating_paths():
    # a 3-regular bipartite multigraph coloured with 3 colours must be a proper colouring
    units = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1]]) + np.eye(3, dtype=int) * 0
    y = equitable_coloring(units, 3)
    assert (y.sum(axis=1) == 1).all() and (y.sum(axis=0) == 1).all()
    units = np.array([[2, 1, 0], [0, 2, 1], [1, 0, 2]])
    y = equitable_coloring(units, 3)
    assert (y.sum(axis=1) == 1).all() and (y.sum(axis=0) == 1).all()


def test_equitable_coloring_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D integer"):
        equitable_coloring(np.ones((2, 2)), 2)
    with pytest.raises(ValueError, match="colors must be >= 1"):
        equitable_coloring(np.ones((2, 2), int), 0)
    with pytest.raises(ValueError, match="non-negative"):
        equitable_coloring(-np.ones((2, 2), int), 2)

"""Equitable edge colouring of bipartite multigraphs: the planner's exact core.

Cross-leaf traffic of a collective step in a leaf-spine fabric is a bipartite
multigraph: source leaves on one side, destination leaves on the other, one
edge per equal-sized subflow. Colouring an edge with a spine pins the subflow
to the path through that spine; the load of the uplink (leaf ``i``, spine
``s``) is the number of ``s``-edges at ``i``, and the load of the downlink
(spine ``s``, leaf ``j``) the number of ``s``-edges at ``j``.

A colouring in which every vertex ``v`` has at most ``ceil(deg(v) / S)``
edges of each of the ``S`` colours always exists for bipartite multigraphs
(de Werra's equitable colouring theorem, which follows from Konig's edge
colouring theorem by splitting every vertex into copies of degree at most
``S``). :func:`equitable_coloring` constructs one: it gives every leaf pair
``floor(U_ij / S)`` units on each spine at once (perfectly balanced), splits
each vertex of the remaining multigraph (multiplicities below ``S``) into
copies of degree at most ``S``, and colours that graph properly with ``S``
colours by Kempe-chain (alternating path) recolouring.
"""

from __future__ import annotations

import numpy as np

__all__ = ["equitable_coloring", "equitable_bound"]


def equitable_bound(units: np.ndarray, colors: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex bounds ``ceil(row_sum / colors)`` and ``ceil(col_sum / colors)`` of an equitable colouring."""
    units = np.asarray(units)
    return -(-units.sum(axis=1) // colors), -(-units.sum(axis=0) // colors)


def _split_copies(vertex: np.ndarray, colors: int) -> np.ndarray:
    """Copy index of each edge end: the ``t``-th edge at a vertex goes to copy ``vertex * big + t // colors``."""
    order = np.argsort(vertex, kind="stable")
    sorted_v = vertex[order]
    starts = np.searchsorted(sorted_v, sorted_v, side="left")
    rank = np.empty_like(vertex)
    rank[order] = np.arange(len(vertex)) - starts
    return rank // colors


def _proper_coloring(left: list[int], right: list[int], n_left: int, n_right: int, colors: int) -> list[int]:
    """A proper ``colors``-colouring of a bipartite multigraph whose degrees are all at most ``colors``.

    ``at_left[u][c]`` is the right end of the ``c``-edge at left vertex ``u`` (or -1); ``at_right`` mirrors it.
    An edge whose ends have no common free colour flips an alternating ``a``/``b`` path first (Konig).
    """
    at_left = [[-1] * colors for _ in range(n_left)]
    at_right = [[-1] * colors for _ in range(n_right)]
    for u, v in zip(left, right):
        row_u, row_v = at_left[u], at_right[v]
        a = row_u.index(-1)
        if row_v[a] != -1:
            b = row_v.index(-1)
            if row_u[b] == -1:
                a = b
            else:
                # Path from v along a, b, a, ... ; it cannot reach u (bipartite parity), so after
                # swapping a and b on it, a is free at both u and v.
                path = []  # (left vertex, right vertex, colour)
                x, on_right, c = v, True, a
                while True:
                    nxt = (at_right if on_right else at_left)[x][c]
                    if nxt == -1:
                        break
                    path.append((nxt, x, c) if on_right else (x, nxt, c))
                    x, on_right, c = nxt, not on_right, (b if c == a else a)
                for pl, pr, pc in path:
                    at_left[pl][pc] = -1
                    at_right[pr][pc] = -1
                for pl, pr, pc in path:
                    other = b if pc == a else a
                    at_left[pl][other] = pr
                    at_right[pr][other] = pl
        row_u[a] = v
        row_v[a] = u
    out = []
    for u in range(n_left):
        for c, v in enumerate(at_left[u]):
            if v != -1:
                out.append((u, v, c))
    return out


def equitable_coloring(units: np.ndarray, colors: int) -> np.ndarray:
    """Spread ``units[i, j]`` equal edges over ``colors`` colours as evenly as bipartite structure allows.

    Returns ``Y`` of shape ``(n, m, colors)`` with ``Y.sum(axis=2) == units`` and, for every
    vertex, at most ``ceil(degree / colors)`` edges of each colour (:func:`equitable_bound`).
    """
    units = np.asarray(units)
    if units.ndim != 2 or not np.issubdtype(units.dtype, np.integer):
        raise ValueError(f"equitable_coloring: units must be a 2-D integer matrix, got {units.dtype} {units.shape}")
    if colors < 1:
        raise ValueError(f"equitable_coloring: colors must be >= 1, got {colors}")
    if (units < 0).any():
        raise ValueError("equitable_coloring: units must be non-negative")
    units = units.astype(np.int64)
    n, m = units.shape
    y = np.repeat((units // colors)[:, :, None], colors, axis=2)
    rest = units % colors
    if not rest.any():
        return y
    i, j = np.nonzero(rest)
    reps = rest[i, j]
    ei, ej = np.repeat(i, reps), np.repeat(j, reps)
    # vertex splitting: copies of degree <= colors on both sides
    cu = _split_copies(ei, colors)
    cv = _split_copies(ej, colors)
    lkeys, left = np.unique(np.stack([ei, cu], axis=1), axis=0, return_inverse=True)
    rkeys, right = np.unique(np.stack([ej, cv], axis=1), axis=0, return_inverse=True)
    colored = _proper_coloring(left.ravel().tolist(), right.ravel().tolist(), len(lkeys), len(rkeys), colors)
    if colored:
        arr = np.asarray(colored, dtype=np.int64)
        np.add.at(y, (lkeys[arr[:, 0], 0], rkeys[arr[:, 1], 0], arr[:, 2]), 1)
    return y

"""The ``emulated_cluster`` fixture: a factory of :class:`commlib.cluster.EmulatedCluster` closed after the test.

Use it from a test module with ``from cluster_fixtures import emulated_cluster`` (pytest puts
``tests/`` on ``sys.path``). It skips the test with :func:`commlib.cluster.cluster_available`'s
reason where emulated nodes cannot be built (not root, no ``ip``/``tc``).
"""

from __future__ import annotations

import pytest

from commlib.cluster import EmulatedCluster, cluster_available


@pytest.fixture
def emulated_cluster():
    """``make(nodes=2, rate="1gbit", paths=1)`` builds a cluster; every one made is closed at teardown."""
    ok, why = cluster_available()
    if not ok:
        pytest.skip(why)
    made: list[EmulatedCluster] = []

    def make(nodes: int = 2, rate: str | None = "1gbit", paths: int = 1) -> EmulatedCluster:
        cl = EmulatedCluster(nodes=nodes, rate=rate, paths=paths)
        made.append(cl)
        return cl

    yield make
    for cl in made:
        cl.close()

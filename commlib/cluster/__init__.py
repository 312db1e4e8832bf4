"""Emulated nodes on one machine: network namespaces joined by rate-limited links.

Multi-node effects (hierarchical collectives, slow links, path collisions) do
not show when all ranks share memory. :class:`EmulatedCluster` gives each
emulated node its own network namespace and host name, joins the nodes with
veth links through a switch (a bridge in a hub namespace), shapes each link
with ``tc``, and starts one ``mpiexec`` whose ranks are placed per node and
forced onto TCP over those links. Whatever happens (exception, failed or
timed-out job, SIGTERM/SIGINT, interpreter exit) the namespaces it made are
deleted, and with them every link.

Topology (``paths=1``): node ``i`` is namespace ``commlib-<pid>-<k>-n<i>``
with device :data:`DEVICE` (the same name on every node) at
``198.18.0.<i+1>/24`` (RFC 2544 benchmarking range), whose peer ``p<i>``
sits on bridge ``br0`` in namespace ``commlib-<pid>-<k>-hub``. A node rate
shapes both ends of the node's link: its uplink (egress of :data:`DEVICE`)
and its downlink (egress of ``p<i>``).

Topology (``paths=P >= 2``, two nodes): P direct veth links ``cl0 .. cl<P-1>``
(same names on both nodes), path ``p`` on ``198.18.<p+1>.0/24``; each node
also has ``198.19.0.<i+1>`` on ``lo`` and a multipath route to the peer's
``lo`` address with one nexthop per path, hashed on ports
(``fib_multipath_hash_policy=1``), so separate TCP connections may take
different paths; binding to a path address picks one path.

Modules: :mod:`.emulated` (the cluster), :mod:`.shaped` (link rates),
:mod:`.launching` (commands and MPI jobs on the nodes), :mod:`.lifecycle`
(teardown at exit and on signals), :mod:`.netns` and :mod:`.shaping` (the
``ip`` and ``tc`` work), :mod:`.tcpprobe` (throughput probe), :mod:`.cli`.
"""

from .cli import main
from .emulated import EmulatedCluster
from .layout import DEVICE
from .lifecycle import cluster_available
from .netns import PREFIX, ClusterError, clean_stale_namespaces

__all__ = [
    "DEVICE",
    "PREFIX",
    "ClusterError",
    "EmulatedCluster",
    "clean_stale_namespaces",
    "cluster_available",
    "main",
]

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
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from commlib.mpirun import App, Launcher, MPIRunResult, launcher_environment, run_command
from commlib.netns import (
    PREFIX,
    ClusterError,
    agent_command,
    batch,
    clean_stale_namespaces,
    delete_namespaces,
    kill_processes_in,
    namespaces,
    tool,
)
from commlib.shaping import Rate, parse_rate, rate_text, shape_device, slowest

__all__ = [
    "DEVICE",
    "PREFIX",
    "ClusterError",
    "EmulatedCluster",
    "clean_stale_namespaces",
    "cluster_available",
    "main",
]

DEVICE = "cl0"
STAR_SUBNET = "198.18.0."
LOOPBACK_SUBNET = "198.19.0."
MAX_NODES = 250
MAX_PATHS = 8
_NODE_INDEX = 100
_PEER_INDEX = 1000

_counter = itertools.count()
_live: set[EmulatedCluster] = set()
_lock = threading.Lock()
_previous_handlers: dict[int, object] = {}


_availability: tuple[bool, str] | None = None


def cluster_available() -> tuple[bool, str]:
    """Whether emulated clusters can be built here: ``(True, "")`` or ``(False, reason to skip)``.

    Needs root, ``ip``, ``tc`` and ``unshare``, and a kernel that lets us create
    a namespace with a veth link shaped by ``tbf``; the answer is probed once.
    """
    global _availability
    if _availability is not None:
        return _availability
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        uid = os.geteuid() if hasattr(os, "geteuid") else "?"
        _availability = (False, f"emulated cluster needs root (network namespaces, tc); running as uid {uid}")
        return _availability
    missing = [name for name in ("ip", "tc", "unshare") if shutil.which(name) is None]
    if missing:
        _availability = (False, f"emulated cluster needs {', '.join(missing)} on PATH (iproute2, util-linux)")
        return _availability
    ns = f"{PREFIX}{os.getpid()}-{next(_counter)}-probe"
    try:
        tool("ip", "netns", "add", ns)
        tool("ip", "-n", ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        tbf = ["tbf", "rate", "1gbit", "burst", "64kb", "latency", "50ms"]
        tool("tc", "-n", ns, "qdisc", "add", "dev", "pa", "root", *tbf)
        _availability = (True, "")
    except ClusterError as exc:
        _availability = (False, f"emulated cluster cannot be built here: {exc}")
    finally:
        tool("ip", "netns", "del", ns, check=False)
    return _availability


def _close_all() -> None:
    """Close every live cluster of this process; a failure is reported and the others are still closed."""
    with _lock:
        clusters = list(_live)
    for cl in clusters:
        try:
            cl.close()
        except Exception as exc:
            print(f"commlib.cluster: teardown of {cl.name!r} failed: {exc}", file=sys.stderr)


def _on_signal(signum: int, frame) -> None:
    _close_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    """Tear clusters down on SIGTERM/SIGINT (then do what the previous handler did) and at exit."""
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        _previous_handlers[sig] = signal.getsignal(sig)
        signal.signal(sig, _on_signal)


atexit.register(_close_all)


class EmulatedCluster:
    """``nodes`` emulated nodes (network namespaces) with links shaped to ``rate`` (``None``: unshaped).

    Usable as a context manager; :meth:`close` (idempotent) deletes everything
    it made. See the module docstring for the topology and addresses.
    """

    def __init__(
        self,
        nodes: int = 2,
        rate: Rate | None = "1gbit",
        paths: int = 1,
        name: str | None = None,
        *,
        burst: str | None = None,
    ) -> None:
        if not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"EmulatedCluster: nodes must be an int in 1..{MAX_NODES}, got {nodes!r}")
        if not isinstance(paths, int) or not 1 <= paths <= MAX_PATHS:
            raise ValueError(f"EmulatedCluster: paths must be an int in 1..{MAX_PATHS}, got {paths!r}")
        if paths > 1 and nodes != 2:
            raise ValueError(f"EmulatedCluster: paths={paths} needs exactly 2 nodes, got nodes={nodes}")
        parse_rate(rate, "EmulatedCluster")
        if burst is not None and not re.fullmatch(r"\d+(k|m)?b", burst.strip().lower()):
            raise ValueError(f"EmulatedCluster: burst {burst!r} is not a tc size in bytes (e.g. '64kb', '250000b')")
        self.burst = burst
        self._pid = os.getpid()
        self._key = f"{PREFIX}{self._pid}-{next(_counter)}"
        self.name = name or self._key
        self.paths = paths
        self.namespaces = [f"{self._key}-n{i}" for i in range(nodes)]
        self.hub = f"{self._key}-hub" if paths == 1 else None
        self.hostnames = [f"node{i}" for i in range(nodes)]
        self.devices = [f"cl{p}" for p in range(paths)]
        self.device = DEVICE
        self._node_rates: list[str | None] = [rate_text(rate)] * nodes
        self._link_rates: dict[tuple[int, int], str] = {}
        self._path_rates: list[str | None] = [None] * paths
        self._made: list[str] = []
        self._closed = False
        with _lock:
            _live.add(self)
        _install_handlers()
        try:
            self._build()
            if rate is not None:
                self._reshape(*range(nodes))
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- topology
    def __len__(self) -> int:
        return len(self.namespaces)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        rates = ", ".join(f"{h}={r or 'unshaped'}" for h, r in zip(self.hostnames, self._node_rates))
        links = "".join(f", link {a}-{b}={r}" for (a, b), r in sorted(self._link_rates.items()))
        kind = "star" if self.paths == 1 else f"{self.paths} paths"
        return f"<EmulatedCluster {self.name!r} {state}: {len(self)} nodes ({kind}) on {self.device}, {rates}{links}>"

    def __enter__(self) -> EmulatedCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def addresses(self) -> list[str]:
        """Each node's address: on :data:`DEVICE` (star), or on ``lo`` behind the multipath route (paths)."""
        subnet = STAR_SUBNET if self.paths == 1 else LOOPBACK_SUBNET
        return [f"{subnet}{i + 1}" for i in range(len(self))]

    def address(self, node: int) -> str:
        return self.addresses[self._node(node, "address")]

    def path_addresses(self, node: int) -> list[str]:
        """The node's address on each path device, in path order (one entry in the star topology)."""
        node = self._node(node, "path_addresses")
        if self.paths == 1:
            return [self.addresses[node]]
        return [f"198.18.{p + 1}.{node + 1}" for p in range(self.paths)]

    def peer_addresses(self, node: int, peer: int) -> list[str]:
        """Addresses of ``peer`` reachable from ``node``, one per path that joins them."""
        self._node(node, "peer_addresses")
        if self._node(peer, "peer_addresses") == node:
            raise ValueError(f"EmulatedCluster.peer_addresses: node and peer are both {node}")
        return self.path_addresses(peer)

    @property
    def node_rates(self) -> list[str | None]:
        """Each node's link rate as given to tc (``None``: unshaped)."""
        return list(self._node_rates)

    @property
    def link_rates(self) -> dict[tuple[int, int], str]:
        """Per-pair overrides set with :meth:`set_link_rate`, keyed ``(a, b)`` with ``a < b``."""
        return dict(self._link_rates)

    @property
    def path_rates(self) -> list[str | None]:
        return list(self._path_rates)

    def _node(self, node: int, what: str) -> int:
        if not isinstance(node, int) or not 0 <= node < len(self):
            raise IndexError(f"EmulatedCluster.{what}: node {node!r} out of range 0..{len(self) - 1}")
        return node

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClusterError(f"EmulatedCluster.{what}: cluster {self.name!r} is closed")

    def _build(self) -> None:
        """Make the namespaces and links with one ``ip -batch`` in the root namespace and one per namespace."""
        # Each veth end gets an ifindex unlike its peer's: the kernel defers (by up to 1 s) the carrier of a veth
        # whose ifindex equals its peer's, and UCX ignores a device without carrier.
        made = [*([self.hub] if self.hub else []), *self.namespaces]
        self._made = list(made)  # before creating: close() deletes whatever of these exists
        root = [f"netns add {ns}" for ns in made]
        per_ns: dict[str, list[str]] = {ns: ["link set lo up"] for ns in made}
        if self.hub is not None:
            per_ns[self.hub] += ["link add br0 type bridge", "link set br0 up"]
            for i, ns in enumerate(self.namespaces):
                node_end = f"{DEVICE} index {_NODE_INDEX} netns {ns}"
                root.append(f"link add {node_end} type veth peer name p{i} index {_PEER_INDEX + i} netns {self.hub}")
                per_ns[self.hub].append(f"link set p{i} master br0 up")
                per_ns[ns] += [f"addr add {self.addresses[i]}/24 dev {DEVICE}", f"link set {DEVICE} up"]
        else:
            a, b = self.namespaces
            for p, dev in enumerate(self.devices):
                ends = (f"{dev} index {_NODE_INDEX + p} netns {a}", f"{dev} index {_PEER_INDEX + p} netns {b}")
                root.append(f"link add {ends[0]} type veth peer name {ends[1]}")
                for i, ns in enumerate(self.namespaces):
                    per_ns[ns] += [f"addr add {self.path_addresses(i)[p]}/24 dev {dev}", f"link set {dev} up"]
            for i, ns in enumerate(self.namespaces):
                peer = 1 - i
                hops = " ".join(
                    f"nexthop via {self.path_addresses(peer)[p]} dev {dev}" for p, dev in enumerate(self.devices)
                )
                per_ns[ns] += [
                    f"addr add {self.addresses[i]}/32 dev lo",
                    f"route add {self.addresses[peer]}/32 src {self.addresses[i]} {hops}",
                ]
        batch("ip", root)
        for ns, lines in per_ns.items():
            batch("ip", lines, ns)
        if self.hub is None:
            for ns in self.namespaces:
                tool("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")
        self._wait_links_up()

    def _wait_links_up(self, timeout: float = 10.0) -> None:
        """Wait until every node device reports carrier: the kernel raises it asynchronously after ``link set up``,
        and UCX ignores a device that is not yet up."""
        deadline = time.monotonic() + timeout
        pending = list(range(len(self)))
        while pending:
            pending = [node for node in pending if not self._links_up(node)]
            if pending and time.monotonic() > deadline:
                raise ClusterError(f"EmulatedCluster: links of nodes {pending} not up after {timeout:g} s")
            if pending:
                time.sleep(0.02)

    def _links_up(self, node: int) -> bool:
        out = tool("ip", "-n", self.namespaces[node], "-j", "link", "show").stdout
        state = {link.get("ifname"): link.get("operstate") for link in json.loads(out)}
        return all(state.get(dev) == "UP" for dev in self.devices)

    # ------------------------------------------------------------------ shaping
    def _shape(self, node: int) -> None:
        """Apply the rates in force to node ``node``'s link (both of its ends)."""
        ns = self.namespaces[node]
        rate = self._node_rates[node]
        if self.hub is None:
            # Both ends of a direct path carry both nodes' traffic: each end gets the slowest applicable rate.
            pair = self._link_rates.get((0, 1))
            for p, dev in enumerate(self.devices):
                shape_device(ns, dev, slowest(*self._node_rates, self._path_rates[p], pair), {}, self.burst)
            return
        peers = {}
        for (a, b), link_rate in self._link_rates.items():
            if node in (a, b):
                peers[self.addresses[b if node == a else a]] = link_rate
        try:
            shape_device(ns, DEVICE, rate, peers, self.burst)
        except ClusterError as exc:
            if not peers or not re.search(r"unknown|not exist|not found|no such", str(exc), re.I):
                raise
            shape_device(ns, DEVICE, rate, {}, self.burst)
            raise NotImplementedError(
                f"EmulatedCluster.set_link_rate needs the kernel's htb qdisc and u32 filter (sch_htb, cls_u32): {exc}"
            ) from None
        shape_device(self.hub, f"p{node}", rate, {}, self.burst)

    def _reshape(self, *nodes: int) -> None:
        for node in range(len(self)) if self.hub is None else nodes:
            self._shape(node)

    def set_node_rate(self, node: int, rate: Rate | None) -> None:
        """Shape node ``node``'s link (both directions, every path) to ``rate``; ``None`` removes the limit."""
        self._check_open("set_node_rate")
        node = self._node(node, "set_node_rate")
        parse_rate(rate, "EmulatedCluster.set_node_rate")
        self._node_rates[node] = rate_text(rate)
        self._reshape(node)

    def set_link_rate(self, a: int, b: int, rate: Rate | None) -> None:
        """Limit only traffic between nodes ``a`` and ``b`` to ``rate`` (``None`` removes the override).

        In the star topology each of the two nodes gets an htb class with a u32
        filter on the other's address under its own node rate, so the pair is
        slow while the rest of both nodes' traffic is not.
        """
        self._check_open("set_link_rate")
        a, b = sorted((self._node(a, "set_link_rate"), self._node(b, "set_link_rate")))
        if a == b:
            raise ValueError(f"EmulatedCluster.set_link_rate: a link needs two different nodes, got {a} and {b}")
        parse_rate(rate, "EmulatedCluster.set_link_rate")
        before = dict(self._link_rates)
        if rate is None:
            self._link_rates.pop((a, b), None)
        else:
            self._link_rates[(a, b)] = rate_text(rate)
        try:
            self._reshape(a, b)
        except NotImplementedError:
            self._link_rates = before
            self._reshape(a, b)
            raise

    def set_path_rate(self, path: int, rate: Rate | None) -> None:
        """Limit path ``path`` (``paths >= 2``) to ``rate`` on both nodes; ``None`` removes the override."""
        self._check_open("set_path_rate")
        if self.paths == 1:
            raise ValueError("EmulatedCluster.set_path_rate: the cluster has one path per node (paths=1)")
        if not isinstance(path, int) or not 0 <= path < self.paths:
            raise IndexError(f"EmulatedCluster.set_path_rate: path {path!r} out of range 0..{self.paths - 1}")
        parse_rate(rate, "EmulatedCluster.set_path_rate")
        self._path_rates[path] = rate_text(rate)
        self._reshape()

    def qdiscs(self, node: int) -> str:
        """``tc qdisc show`` of the node's devices (and its hub port): what shaping is in force."""
        node = self._node(node, "qdiscs")
        self._check_open("qdiscs")
        text = tool("tc", "-n", self.namespaces[node], "qdisc", "show").stdout
        if self.hub is not None:
            text += tool("tc", "-n", self.hub, "qdisc", "show", "dev", f"p{node}").stdout
        return text

    def link_bytes(self, node: int) -> dict[str, tuple[int, int]]:
        """``{device: (rx_bytes, tx_bytes)}`` of the node's link devices, from the kernel's counters."""
        node = self._node(node, "link_bytes")
        self._check_open("link_bytes")
        out = tool("ip", "-n", self.namespaces[node], "-j", "-s", "link", "show").stdout
        counters = {}
        for link in json.loads(out):
            if link.get("ifname") in self.devices:
                stats = link["stats64"]
                counters[link["ifname"]] = (int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"]))
        return counters

    # --------------------------------------------------------------- launching
    def node_command(self, node: int, args: Sequence[str]) -> list[str]:
        """The command line that runs ``args`` on node ``node``: in its namespace, under its host name."""
        node = self._node(node, "node_command")
        hostname = self.hostnames[node]
        return [
            "ip", "netns", "exec", self.namespaces[node],
            "unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *args,
        ]  # fmt: skip

    def run_on(
        self, node: int, args: Sequence[str], *, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run one command on node ``node`` (bounded by ``timeout``), capturing its output."""
        self._check_open("run_on")
        command = self.node_command(node, args)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            kill_processes_in(self.namespaces[node])
            raise ClusterError(
                f"EmulatedCluster.run_on: {' '.join(args)} on node {node} timed out ({timeout:g} s)"
            ) from None
        if check and proc.returncode != 0:
            raise ClusterError(
                f"EmulatedCluster.run_on: {' '.join(args)} on node {node} exited with code {proc.returncode}:\n"
                f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        return proc

    def mpi_env(self, launcher: Launcher | None = None, *, devices: Sequence[str] | None = None) -> dict[str, str]:
        """Environment that makes the MPI of ``launcher`` (default: this Python's) talk TCP over the emulated
        links instead of shared memory.

        MPICH: its network module for node-local peers too (``MPIR_CVAR_NOLOCAL``),
        UCX or libfabric over TCP on the node device. Open MPI: the ``ob1``
        messaging layer over the ``tcp`` and ``self`` transports on the node
        device, and one daemon per node, started in the node's namespace by
        :func:`commlib.netns.agent`, reached over the same device. ``devices``
        (default: path 0's) are the devices MPI's messages may use; with several,
        UCX and Open MPI's TCP transport split large messages over them.
        """
        launcher = launcher or Launcher()
        names = ",".join(devices or [self.device])
        env = {"UCX_TLS": "tcp", "UCX_NET_DEVICES": names}
        if launcher.family == "hydra":
            env.update(
                MPIR_CVAR_NOLOCAL="1",
                MPIR_CVAR_CH4_NETMOD="ucx",
                FI_PROVIDER="tcp",
                FI_TCP_IFACE=self.device,
            )
        else:
            env.update(
                OMPI_MCA_pml="ob1",
                OMPI_MCA_btl="tcp,self",
                OMPI_MCA_btl_tcp_if_include=names,
                PRTE_MCA_oob_tcp_if_include=self.device,
                PRTE_MCA_plm_ssh_agent=agent_command(dict(zip(self.hostnames, self.namespaces))),
                PRTE_MCA_plm_ssh_no_tree_spawn="1",
            )
        return env

    def _segments(self, ranks_per_node: int | Sequence[int] | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """``(node, ranks)`` in rank order, from ranks per node (an int or one per node) or the pairs themselves."""
        what = "EmulatedCluster.mpirun: ranks_per_node"
        if isinstance(ranks_per_node, int):
            pairs = list(enumerate([ranks_per_node] * len(self)))
        else:
            items = list(ranks_per_node)
            if items and all(isinstance(x, tuple) for x in items):
                pairs = items
                if any(len(x) != 2 or not isinstance(x[0], int) or not 0 <= x[0] < len(self) for x in items):
                    raise ValueError(f"{what}: (node, ranks) pairs need a node in 0..{len(self) - 1}, got {items!r}")
            else:
                if len(items) != len(self):
                    raise ValueError(f"{what} has {len(items)} entries for {len(self)} nodes")
                pairs = list(enumerate(items))
        counts = [k for _, k in pairs]
        if any(not isinstance(k, int) or k < 0 for k in counts) or sum(counts) < 1:
            raise ValueError(f"{what} must be non-negative ints with at least one rank, got {ranks_per_node!r}")
        return [(node, k) for node, k in pairs if k]

    def node_env(self, node: int) -> dict[str, str]:
        """The environment every rank on node ``node`` gets: ``COMMLIB_NODE_ID``."""
        return {"COMMLIB_NODE_ID": str(node)}

    def mpirun_command(
        self, ranks_per_node: int | Sequence[int] | Sequence[tuple[int, int]], args: Sequence[str], *,
        python: bool = True, mpiexec_args: Sequence[str] = (), launcher: Launcher | None = None,
    ) -> list[str]:  # fmt: skip
        """The one MPMD ``mpiexec`` command line :meth:`mpirun` runs.

        Ranks are numbered node by node (or in the order of ``(node, ranks)``
        pairs). Under MPICH's Hydra every rank runs in its node's namespace
        through a per-rank wrapper (:meth:`node_command`); under Open MPI the
        launcher itself runs on node 0 and starts a daemon on every node
        (:meth:`mpi_env`), which starts that node's ranks.
        """
        launcher = launcher or Launcher()
        segments = self._segments(ranks_per_node)
        program = [sys.executable, "-m", "mpi4py", *args] if python else list(args)
        if launcher.family == "hydra":
            apps = [App(k, self.node_command(node, program), self.node_env(node)) for node, k in segments]
            return launcher.command(apps, args=["-genvall", *mpiexec_args])
        apps = [App(k, program, self.node_env(node), self.hostnames[node]) for node, k in segments]
        return self.node_command(0, launcher.command(apps, args=mpiexec_args))

    def mpirun(
        self,
        ranks_per_node: int | Sequence[int] | Sequence[tuple[int, int]],
        args: Sequence[str],
        *,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
        python: bool = True,
        check: bool = True,
        mpiexec_args: Sequence[str] = (),
        cwd: str | None = None,
    ) -> MPIRunResult:
        """Run ``args`` (``python -m mpi4py args`` with ``python``) with ``ranks_per_node`` ranks on each node.

        ``ranks_per_node`` is one count for every node, a count per node, or
        ``(node, ranks)`` pairs in rank order (e.g. ranks alternating between
        two nodes). Same bounds and errors as :func:`commlib.mpirun.run`. Each
        rank gets ``COMMLIB_NODE_ID`` and the :meth:`mpi_env` settings (``env``
        wins). Ranks left in the namespaces after a failed or timed-out job are
        killed.
        """
        self._check_open("mpirun")
        launcher = Launcher()
        command = self.mpirun_command(ranks_per_node, args, python=python, mpiexec_args=mpiexec_args, launcher=launcher)
        full_env = launcher_environment(launcher, {**self.mpi_env(launcher), **(env or {})})
        ok = False
        try:
            result = run_command(command, timeout=timeout, env=full_env, check=check, cwd=cwd)
            ok = result.returncode == 0
            return result
        finally:
            if not ok:
                kill_processes_in(*self.namespaces)

    def measure_throughput(
        self,
        src: int,
        dst: int,
        nbytes: int = 8 << 20,
        *,
        streams: int = 1,
        address: str | None = None,
        source: str | None = None,
        timeout: float = 60.0,
    ) -> float:
        """TCP throughput in bit/s of ``nbytes`` sent from node ``src`` to node ``dst`` over ``streams`` connections.

        ``address`` picks the destination address (default: ``dst``'s node
        address), ``source`` binds the sender to one of ``src``'s addresses
        (in the paths topology, one path).
        """
        self._check_open("measure_throughput")
        src, dst = self._node(src, "measure_throughput"), self._node(dst, "measure_throughput")
        if nbytes < 1 or streams < 1:
            raise ValueError(f"EmulatedCluster.measure_throughput: nbytes={nbytes}, streams={streams} must be >= 1")
        address = address or self.addresses[dst]
        probe = [sys.executable, "-m", "commlib.tcpprobe", "--timeout", str(timeout)]
        receiver = subprocess.Popen(
            self.node_command(dst, [*probe, "recv", address, str(streams)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            line = receiver.stdout.readline().split()
            if len(line) != 2 or line[0] != "PORT":
                raise ClusterError(f"EmulatedCluster.measure_throughput: receiver failed: {receiver.stderr.read()}")
            send = [*probe, "send", address, line[1], str(nbytes), str(streams), *([source] if source else [])]
            self.run_on(src, send, timeout=timeout + 10)
            out, err = receiver.communicate(timeout=timeout + 10)
        except BaseException:
            receiver.kill()
            receiver.communicate()
            raise
        fields = out.split()
        if receiver.returncode != 0 or len(fields) != 4 or int(fields[1]) != nbytes:
            raise ClusterError(f"EmulatedCluster.measure_throughput: receiver reported {out!r} {err[-2000:]}")
        return nbytes * 8 / max(float(fields[3]), 1e-9)

    # ---------------------------------------------------------------- teardown
    def close(self) -> None:
        """Kill what still runs on the nodes and delete every namespace (and so every link) made; idempotent.

        Safe to re-enter from the signal handler: the namespaces leave the list
        only once deleted, so an interrupted close is finished by the next.
        """
        if os.getpid() != self._pid:
            return
        self._closed = True
        if self._made:
            delete_namespaces(*self._made)
            self._made = []
        with _lock:
            _live.discard(self)
        left = {*self.namespaces, *([self.hub] if self.hub else [])} & set(namespaces())
        if left:
            raise ClusterError(f"EmulatedCluster.close: could not delete namespaces {sorted(left)}")


def _rank_list(text: str) -> int | list[int]:
    try:
        counts = [int(word) for word in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N0,N1,... ranks per node, got {text!r}") from None
    return counts[0] if len(counts) == 1 else counts


def main(argv: list[str] | None = None, prog: str = "python -m commlib cluster") -> int:
    """Run a program on emulated nodes: ``cluster --nodes 2 --ranks-per-node 2 [--rate 1gbit] -- prog.py args``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [options] -- program [args ...]",
        description="Run an MPI program with its ranks placed on emulated nodes (network namespaces joined by "
        "rate-limited links); everything is torn down when it ends.",
    )
    parser.add_argument("--nodes", type=int, default=2, help="number of emulated nodes (default 2)")
    parser.add_argument(
        "--ranks-per-node", type=_rank_list, default=1, metavar="N|N0,N1,..", help="ranks on each node (default 1)"
    )
    parser.add_argument("--rate", default=None, help="link rate per node, e.g. 1gbit, 100mbit (default: unshaped)")
    parser.add_argument("--paths", type=int, default=1, help="parallel paths between 2 nodes (default 1)")
    parser.add_argument(
        "--link-rate",
        action="append",
        default=[],
        metavar="A,B,RATE",
        help="slow only the link between nodes A and B (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before the job is killed (default 600)")
    parser.add_argument("--no-python", action="store_true", help="run the program as is, not under python -m mpi4py")
    parser.add_argument(
        "--clean-stale", action="store_true", help="delete namespaces left by dead harnesses, then exit"
    )
    parser.add_argument("program", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    program = ns.program[1:] if ns.program[:1] == ["--"] else ns.program
    if ns.clean_stale:
        removed = clean_stale_namespaces()
        print(f"removed {len(removed)} stale namespace(s)" + "".join(f"\n  {name}" for name in removed))
        return 0
    ok, why = cluster_available()
    if not ok:
        print(f"{prog}: {why}", file=sys.stderr)
        return 1
    if not program:
        parser.error("no program given (put it after --)")
    try:
        links = []
        for spec in ns.link_rate:
            a, b, rate = spec.split(",")
            links.append((int(a), int(b), rate))
    except ValueError:
        parser.error(f"--link-rate expects A,B,RATE, got {spec!r}")
    try:
        with EmulatedCluster(nodes=ns.nodes, rate=ns.rate, paths=ns.paths) as cl:
            for a, b, rate in links:
                cl.set_link_rate(a, b, rate)
            print(f"{prog}: {cl!r}", file=sys.stderr, flush=True)
            result = cl.mpirun(ns.ranks_per_node, program, timeout=ns.timeout, python=not ns.no_python, check=False)
    except (ValueError, IndexError, TypeError, ClusterError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if result.timed_out:
        print(f"{prog}: job did not finish within {ns.timeout:g} s and was killed", file=sys.stderr)
        return 124
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

"""Running commands and MPI jobs on an emulated cluster's nodes (a mixin)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from commlib.mpirun import App, Launcher, MPIRunResult, launcher_environment, run_command

from .netns import ClusterError, agent_command, kill_processes_in

__all__ = ["Launching"]


class Launching:
    """Commands on one node, and one ``mpiexec`` whose ranks are placed per node, over the emulated links."""

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
        :func:`commlib.cluster.netns.agent`, reached over the same device. ``devices``
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
        probe = [sys.executable, "-m", "commlib.cluster.tcpprobe", "--timeout", str(timeout)]
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

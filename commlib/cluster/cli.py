"""``python -m commlib cluster``: run a program on emulated nodes."""

from __future__ import annotations

import argparse
import sys

from .emulated import EmulatedCluster
from .lifecycle import cluster_available
from .netns import ClusterError, clean_stale_namespaces

__all__ = ["main"]


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

"""Command line interface of commlib: ``python -m commlib [options] <command> [args] ...``.

Commands are looked up in :data:`COMMANDS`, name -> (one-line help, handler);
a handler takes the arguments after its name and the program name to show
in its own usage, and returns the exit code. Commands import what they need
when they run, so ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from commlib import __version__

__all__ = ["COMMANDS", "main"]

PROG = "python -m commlib"

Handler = Callable[[list[str], str], int]


def _lazy(module: str, function: str = "main") -> Handler:
    """A handler importing ``module`` only when it runs, then calling ``function(argv, prog=prog)``."""

    def handler(argv: list[str], prog: str) -> int:
        import importlib

        return getattr(importlib.import_module(module), function)(argv, prog=prog)

    return handler


BENCHMARKS: dict[str, tuple[str, Handler]] = {
    "pack": ("MPI_Pack vs commlib's strided and auto pack engines vs memcpy", _lazy("commlib.bench.pack")),
    "halo": ("3D halo exchange (examples/halo3d.py), plain mpi4py vs python -m commlib", _lazy("commlib.bench.halo")),
    "allreduce": ("allreduce algorithms vs MPI_Allreduce, one or emulated nodes", _lazy("commlib.bench.allreduce")),
    "hierarchy": (
        "three-level allreduce, reduce-scatter + allgather vs two levels vs MPI, emulated racks",
        _lazy("commlib.bench.hierarchy"),
    ),
    "tokenring": ("TokenRing vs ring attention: bytes per direction, compute, wait", _lazy("commlib.bench.tokenring")),
    "moe": ("MoE dispatch+combine vs a straightforward mpi4py version; placement", _lazy("commlib.bench.moe")),
    "flows": ("one large transfer over two emulated paths, unsplit vs split", _lazy("commlib.bench.flows")),
    "model-accuracy": ("cost model: predicted vs measured time and regret", _lazy("commlib.bench.model_accuracy")),
    "monitor-overhead": ("allreduce loop with and without the fault monitor", _lazy("commlib.bench.monitor_overhead")),
    "cluster-rates": ("emulated links: measured vs configured rates", _lazy("commlib.bench.cluster_rates")),
    "percall": (
        "the interposer's cost per call: plain and derived-type calls, one rank",
        _lazy("commlib.bench.percall"),
    ),
    "strided": (
        "strided numpy views sent as they are vs copied to and from contiguous arrays",
        _lazy("commlib.bench.strided"),
    ),
    "noharm": (
        "do-no-harm sweeps: halo, pencil FFT, ping-pong, allreduce, plain vs interposed",
        _lazy("commlib.bench.noharm"),
    ),
    "pingpong": ("ping-pong latency, raw mpi4py vs a wrapped communicator (2 ranks)", _lazy("commlib.bench.pingpong")),
    "staging": (
        "packed derived-type exchanges: MPI vs fresh vs reused staging (2 ranks)",
        _lazy("commlib.bench.staging"),
    ),
    "pack-kernels": (
        "the strided packer's copy kernel: word lanes vs opaque elements",
        _lazy("commlib.bench.pack_kernels"),
    ),
}


def _command_list(table: dict[str, tuple[str, Handler]], title: str) -> str:
    width = max(len(name) for name in table)
    return title + ":\n" + "\n".join(f"  {name:<{width}}  {text}" for name, (text, _) in table.items())


def _dispatch(
    parser: argparse.ArgumentParser, table: dict[str, tuple[str, Handler]], what: str, name: str | None, argv: list[str]
) -> int:
    """Run ``table[name]`` with ``argv``; a missing or unknown name is a usage error (exit code 2)."""
    if name is None:
        parser.print_usage(sys.stderr)
        print(_command_list(table, what + "s"), file=sys.stderr)
        print(f"{parser.prog}: error: no {what} given", file=sys.stderr)
        return 2
    if name not in table:
        parser.error(f"unknown {what} {name!r} (choose from {', '.join(table)})")
    return table[name][1](argv, f"{parser.prog} {name}")


def _parser(prog: str, what: str, description: str, table: dict[str, tuple[str, Handler]]) -> argparse.ArgumentParser:
    """A parser of ``[options] <what> [args] ...``; the arguments after ``<what>`` are left to its handler."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage=f"%(prog)s [options] <{what}> [args] ...",
        description=description,
        epilog=_command_list(table, what + "s") + f"\n\nRun '{prog} <{what}> --help' for its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", metavar=f"<{what}>", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _bench(argv: list[str], prog: str) -> int:
    parser = _parser(prog, "benchmark", "Run a commlib benchmark.", BENCHMARKS)
    ns = parser.parse_args(argv)
    return _dispatch(parser, BENCHMARKS, "benchmark", ns.command, ns.args)


COMMANDS: dict[str, tuple[str, Handler]] = {
    "bench": ("run a benchmark: " + ", ".join(BENCHMARKS), _bench),
    "calibrate": ("measure this machine for the cost model (run under mpiexec)", _lazy("commlib.calibrate")),
    "explain": ("a datatype's canonical form, predicted strategy times and choice", _lazy("commlib.explain")),
    "monitor": ("summarise fault monitor reports, analyse flight-record dumps", _lazy("transport.reports")),
    "fabric": ("simulate flows on a leaf-spine fabric: ECMP vs splitting vs spraying", _lazy("transport.fabric")),
    "cluster": ("run a program on emulated nodes (network namespaces, shaped links)", _lazy("commlib.cluster")),
}


USAGE = f"""usage: {PROG} [options] <pyfile> [arg] ...
   or: {PROG} [options] -m <mod> [arg] ...
   or: {PROG} [options] -c <cmd> [arg] ...
   or: {PROG} [options] - [arg] ...
   or: {PROG} <command> [args] ...

Run a Python program with commlib interposed under mpi4py (like 'python -m mpi4py'),
or run one of commlib's commands.

options:
  -h, --help      show this help message and exit
  --version       show commlib's version and exit
  --no-interpose  run the program without the interposer (env COMMLIB_INTERPOSE=0)
  --report        print per rank, at exit, what was intercepted and chosen (env COMMLIB_REPORT=1)
  --no-monitor    run without the fault-detection monitor (env COMMLIB_MONITOR=0)

{_command_list(COMMANDS, "commands")}
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m commlib`` and of the ``commlib`` script; returns the exit code."""
    from commlib.config import config

    args = list(sys.argv[1:] if argv is None else argv)
    interpose, report, monitor = config.interpose, config.report, None
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option == "--help":
            print(USAGE, end="")
            return 0
        if option == "--version":
            print(f"commlib {__version__}")
            return 0
        if option == "--no-interpose":
            interpose = False
        elif option == "--report":
            report = True
        elif option == "--no-monitor":
            monitor = False
        else:
            print(f"{PROG}: error: unknown option {option!r}\n" + USAGE.splitlines()[0], file=sys.stderr)
            return 2
    if args and args[0] == "-h":
        print(USAGE, end="")
        return 0
    if not args:
        print(USAGE, end="", file=sys.stderr)
        print(f"{PROG}: error: no program or command given", file=sys.stderr)
        return 2
    if args[0] in COMMANDS:
        return COMMANDS[args[0]][1](args[1:], f"{PROG} {args[0]}")
    if args[0] in ("-m", "-c") and len(args) < 2:
        print(f"{PROG}: error: {args[0]} needs an argument", file=sys.stderr)
        return 2
    if not args[0].startswith("-") and not Path(args[0]).exists():
        print(f"{PROG}: error: {args[0]!r} is neither a command nor a file", file=sys.stderr)
        return 2
    from commlib.runner import run_program

    return run_program(args, interpose=interpose, report=report, monitor=monitor)


if __name__ == "__main__":
    sys.exit(main())

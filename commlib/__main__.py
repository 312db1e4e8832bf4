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

from commlib import __version__

__all__ = ["COMMANDS", "main"]

PROG = "python -m commlib"

Handler = Callable[[list[str], str], int]


def _bench_pack(argv: list[str], prog: str) -> int:
    from commlib.bench.pack import main as pack_main

    return pack_main(argv, prog=prog)


BENCHMARKS: dict[str, tuple[str, Handler]] = {
    "pack": ("MPI_Pack vs commlib's strided and auto pack engines vs memcpy", _bench_pack),
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
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m commlib`` and of the ``commlib`` script; returns the exit code."""
    description = "commlib: faster, safer MPI communication for unchanged mpi4py programs."
    parser = _parser(PROG, "command", description, COMMANDS)
    parser.add_argument("--version", action="version", version=f"commlib {__version__}")
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return _dispatch(parser, COMMANDS, "command", ns.command, ns.args)


if __name__ == "__main__":
    sys.exit(main())

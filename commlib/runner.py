"""Run a Python program with the interposer installed, as ``python -m mpi4py`` runs one.

An unhandled exception in a rank aborts the whole MPI job (mpi4py's own
behaviour, kept), so one failing rank cannot leave the others waiting.
"""

from __future__ import annotations

import sys

__all__ = ["run_program"]


def run_program(args: list[str], *, interpose: bool = True, report: bool = False, monitor: bool | None = None) -> int:
    """Run ``[pyfile | -m mod | -c cmd | -] [arg] ...``; returns 0 when the program ends normally.

    ``monitor`` (``None``: ``COMMLIB_MONITOR``) starts the fault-detection
    monitor with the interposer; it is stopped when the program ends.
    """
    from mpi4py import run as mpi4py_run

    session = None
    if interpose:
        from .interposer import interpose as install

        session = install(monitor=monitor)
    try:
        mpi4py_run.run_command_line(args)
    except BaseException as exc:
        mpi4py_run.set_abort_status(exc if isinstance(exc, (SystemExit, KeyboardInterrupt)) else 1)
        raise
    finally:
        if session is not None and session.monitor is not None:
            session.monitor.stop()
        if report:
            _print_report(session)
    return 0


def _print_report(session) -> None:
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() and not MPI.Is_finalized() else "?"
    text = session.report() if session is not None else "interposer not installed (--no-interpose)"
    for line in text.splitlines():
        print(f"[commlib report, rank {rank}] {line}", file=sys.stderr)

"""Every rank saves its recorded run to the same path without ``{rank}``: no rank may overwrite another's."""

from __future__ import annotations

import sys

from mpi4py import MPI

from commlib.interposer.session import Session


def main() -> int:
    path = Session().save_run(sys.argv[1])
    MPI.COMM_WORLD.Barrier()
    print(f"rank {MPI.COMM_WORLD.Get_rank()} wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

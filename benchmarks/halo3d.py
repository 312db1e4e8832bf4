"""Halo exchange, plain mpi4py vs python -m commlib (same as ``python -m commlib bench halo``)."""

import sys

from commlib.bench.halo import main

if __name__ == "__main__":
    sys.exit(main())

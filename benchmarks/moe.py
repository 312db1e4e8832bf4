"""MoE expert all-to-all benchmark; same as ``python -m commlib bench moe`` (see ``--help``)."""

import sys

from commlib.bench.moe import main

if __name__ == "__main__":
    sys.exit(main())

"""Emulated-cluster rate accuracy; same as ``python -m commlib bench cluster-rates`` (see ``--help``). Needs root."""

import sys

from commlib.bench.cluster_rates import main

if __name__ == "__main__":
    sys.exit(main())

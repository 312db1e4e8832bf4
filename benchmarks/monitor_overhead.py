"""Allreduce loop with and without the fault-detection monitor (same as ``python -m commlib bench monitor``)."""

import sys

from commlib.bench.monitor_overhead import main

if __name__ == "__main__":
    sys.exit(main())

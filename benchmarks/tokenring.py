"""TokenRing vs ring attention (same as ``python -m commlib bench tokenring``)."""

import sys

from commlib.bench.tokenring import main

if __name__ == "__main__":
    sys.exit(main())

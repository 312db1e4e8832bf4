"""Pack benchmark; same as ``python -m commlib bench pack`` (see ``--help``)."""

import sys

from commlib.bench.pack import main

if __name__ == "__main__":
    sys.exit(main())

"""Flow-splitting benchmark; same as ``python -m commlib bench flows`` (see ``--help``)."""

import sys

from commlib.bench.flows import main

if __name__ == "__main__":
    sys.exit(main())

"""Allreduce benchmark; same as ``python -m commlib bench allreduce`` (see ``--help``)."""

import sys

from commlib.bench.allreduce import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m transport.fabric``: the same as ``python -m commlib fabric``."""

import sys

from .cli import main

sys.exit(main(prog="python -m transport.fabric"))

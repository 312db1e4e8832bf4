"""Cost-model accuracy benchmark; same as ``python -m commlib bench model-accuracy`` (see ``--help``).

Run under ``mpiexec -n 2 python benchmarks/model_accuracy.py``.
"""

import sys

from commlib.bench.model_accuracy import main

if __name__ == "__main__":
    sys.exit(main(prog="benchmarks/model_accuracy.py"))

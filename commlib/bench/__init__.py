"""Benchmarks of commlib, run with ``python -m commlib bench <name>`` (see :mod:`commlib.bench.pack`)."""

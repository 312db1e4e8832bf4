"""Collective algorithms over mpi4py (allreduce, TokenRing attention, expert all-to-all)."""

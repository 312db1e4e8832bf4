"""Transport layer over mpi4py (flow splitting, fault-detection monitors)."""

"""commlib: faster, safer MPI communication for unchanged mpi4py programs."""

from .config import Config, config

__version__ = "0.1.0"
__all__ = ["Config", "config", "__version__"]

"""commlib: faster, safer MPI communication for unchanged mpi4py programs.

``commlib.interpose()`` installs the interposer in this process;
``commlib.wrap(comm)`` wraps one communicator; ``python -m commlib script.py``
runs a program with the interposer installed. Heavy submodules load on first
use, so ``import commlib`` (and ``commlib.config``) stays cheap.
"""

from typing import Any

from .config import Config, config

__version__ = "0.1.0"
__all__ = ["Config", "__version__", "active_session", "buffer", "config", "interpose", "uninterpose", "wrap"]

_LAZY = {
    "wrap": "commlib.interposer.comm",
    "interpose": "commlib.interposer",
    "uninterpose": "commlib.interposer",
    "active_session": "commlib.interposer",
    "buffer": "commlib.interposer.views",
}


_SUBMODULES = frozenset({"monitor"})


def __getattr__(name: str) -> Any:
    if name in _LAZY or name in _SUBMODULES:
        import importlib

        if name in _SUBMODULES:
            return importlib.import_module(f"commlib.{name}")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'commlib' has no attribute {name!r}")

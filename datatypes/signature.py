"""A datatype's constructor signature: what it was built from, as a hashable value.

Two datatypes built by the same constructor calls from the same arguments
have the same type map, the same bounds and the same canonical form. A
program that builds a new subarray type for every transfer (as the tests of
parallel FFT libraries do) gives MPI a new handle each time, but the same
signature, so anything learned about the first type (its canonical form, a
cost-model decision, a rebuilt type for MPI's own path) can serve every later
one for the price of reading the constructor back from MPI
(``MPI_Type_get_envelope`` and ``MPI_Type_get_contents``: about half a
microsecond per constructor level).

:func:`signature` returns ``None`` for types whose constructor arguments are
too long to be worth hashing (irregular indexed types with thousands of
blocks): such types are analysed per handle, as before.
"""

from __future__ import annotations

from typing import Any

from mpi4py import MPI

__all__ = ["MAX_ARGUMENTS", "Signature", "signature"]

Signature = tuple
MAX_ARGUMENTS = 1024  # integers, addresses and counts of one constructor beyond which no signature is made
_NAMED = MPI.COMBINER_NAMED


class _TooLong(Exception):
    """A constructor with more than MAX_ARGUMENTS arguments somewhere in the tree."""


def _signature(datatype: MPI.Datatype) -> Any:
    *sizes, combiner = datatype.Get_envelope()
    if combiner == _NAMED:
        return datatype.handle
    if sum(sizes[:-1]) > MAX_ARGUMENTS:
        raise _TooLong
    *arguments, children = datatype.Get_contents()
    try:
        return (combiner, *map(tuple, arguments), *map(_signature, children))
    finally:
        for child in children:
            if not child.is_predefined:
                child.Free()


def signature(datatype: MPI.Datatype) -> Signature | None:
    """The constructor tree of ``datatype`` as a tuple (a predefined type: its handle), or ``None`` if too long.

    Equal signatures mean equal type maps, bounds and packing. Whether the
    type is committed is not part of it.
    """
    try:
        sig = _signature(datatype)
    except _TooLong:
        return None
    return sig if isinstance(sig, tuple) else (_NAMED, sig)

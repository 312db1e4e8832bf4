"""Flight-record dumps: the versioned file format, its validation, and where ranks diverge.

A dump is one rank's flight record (:mod:`transport.recorder`) as a
self-describing JSON document, ``{"format": "commlib-flight-record",
"version": 1, ...}`` (:func:`build`; fields in README's monitor section).
Times are integer nanoseconds on the wall clock, converted from the
recorder's monotonic clock with one anchor pair taken when the dump is
built (``clock``). The monitor's ``dump`` action writes every rank's dump in
one document, ``{"format": "commlib-flight-records", "version": 1, "ranks":
{rank: dump}, "silent": {rank: reason}}``.

Nothing read from a file is trusted: :func:`validate` checks every field's
type and range, bounds every list and string, and :func:`read` refuses files
over :data:`MAX_FILE` bytes before reading them. :func:`diverge` matches the
ranks' records by (communicator, collective sequence number), which agree
across ranks, and tells per communicator the last collective every member
completed, who is inside or has not entered the next ones, collectives whose
operation differs between ranks, and point-to-point calls left in flight;
:func:`describe` says it in lines.

:mod:`.schema` holds the format's names, bounds and validation, :mod:`.build`
the making of documents, :mod:`.files` reading and loading them, and
:mod:`.divergence` the analysis of where ranks diverge.
"""

from .build import build, combine
from .divergence import FRONTIER, describe, diverge
from .files import collect, is_flight_record, load, parse, read
from .schema import (
    COMBINED,
    COMBINED_ENTRIES,
    DUMP_ENTRIES,
    FORMAT,
    MAX_ENTRIES,
    MAX_FILE,
    VERSION,
    parse_members,
    validate,
)

__all__ = [
    "COMBINED",
    "COMBINED_ENTRIES",
    "DUMP_ENTRIES",
    "FRONTIER",
    "MAX_ENTRIES",
    "FORMAT",
    "MAX_FILE",
    "VERSION",
    "build",
    "collect",
    "combine",
    "describe",
    "diverge",
    "is_flight_record",
    "load",
    "parse",
    "parse_members",
    "read",
    "validate",
]

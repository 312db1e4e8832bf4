"""The interposer: commlib's communicators, their requests, and what decides how each message moves.

:func:`interpose` installs it in this process (``python -m commlib app.py``
does it for a program); :func:`wrap` wraps one communicator. The modules:
:mod:`~commlib.interposer.comm` (the communicator classes),
:mod:`~commlib.interposer.point_to_point` and
:mod:`~commlib.interposer.packed_collectives` (the intercepted operations),
:mod:`~commlib.interposer.messages` and :mod:`~commlib.interposer.pieces`
(derived-type messages and the pieces of vector collectives, staged),
:mod:`~commlib.interposer.decision` (pack or MPI's path: the one rule),
:mod:`~commlib.interposer.session` (a session's decisions, tallies and report),
:mod:`~commlib.interposer.sides` (collective sides found again),
:mod:`~commlib.interposer.requests`, :mod:`~commlib.interposer.staging`,
:mod:`~commlib.interposer.views` (strided numpy views),
:mod:`~commlib.interposer.tracing` (the monitor hook) and
:mod:`~commlib.interposer.run_record`.
"""

from .comm import wrap
from .install import active_session, interpose, uninterpose

__all__ = ["active_session", "interpose", "uninterpose", "wrap"]

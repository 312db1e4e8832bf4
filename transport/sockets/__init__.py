"""Path-pinned TCP channels between two ranks, bootstrapped over MPI.

MPI picks its own connections, so it cannot be told to send one part of a
message down one network path and the rest down another. A TCP connection
whose local end is bound to the address a host has on one path (its own
subnet, its own device) and whose remote end is the peer's address on that
path can only take that path. :func:`connect_paths` makes one such connection
per path between two ranks: the ranks swap their path addresses and listening
ports over MPI, the lower rank listens, the higher rank connects from its
path address. Each connection is a :class:`SocketChannel` (the
:class:`transport.flows.Channel` protocol) served by a sending and a
receiving thread, so parts on different paths move at once.

Who may connect. With the listening ports, the lower rank sends over MPI a
fresh random 256-bit secret per path. The listener keeps accepting until a
connection comes from the peer's own path address and its handshake carries
that path's secret (checked with :func:`hmac.compare_digest`), closing every
other connection, or until the deadline; it then acknowledges with a digest
of the secret, which the connecting rank checks. A process outside the job,
which never saw the MPI message, cannot become the peer.

What is trusted on the wire. Frames are ``(tag, bytes)``; a frame must fit
the receive posted for its tag exactly, or, arriving before its receive, the
channel's cap on buffered early bytes; a tag may be buffered once. Any
violation, and any exception in a channel's thread, fails the channel and
every operation pending on it with the reason.

Only loopback and private addresses (RFC 1918, the RFC 2544 benchmarking
range of the emulated-cluster harness, ...) are accepted, and every blocking
step gives up after ``timeout`` seconds.

:mod:`.channel` holds the channel and its framing, :mod:`.handshake` the
connection of two ranks per path and who may connect.
"""

from .channel import MAX_UNEXPECTED, ChannelProtocolError, SocketChannel
from .handshake import check_address, connect_paths

__all__ = ["MAX_UNEXPECTED", "ChannelProtocolError", "SocketChannel", "check_address", "connect_paths"]

"""Flow splitting between two ranks: one large message cut into subflows over channels that finish together.

A *channel* is an independent stream between two ranks: a duplicated
communicator (:class:`CommChannel`; MPICH may map it onto its own virtual
communication interface and so its own connection) or a transport of the
project's own pinned to one network path (:mod:`transport.sockets`). A
:class:`Splitter` holds the channels of one communicator, learns each
channel's throughput online, and cuts a message into parts sized in
proportion to those throughputs, so that all parts finish at the same time.

Wire format. The sender first sends a header of :data:`HEADER_BYTES` bytes on
the communicator itself, with the user's tag (so it matches like the user's
message would: source, tag, ANY_SOURCE, ANY_TAG and order all behave): two
magic words, the total size, a sequence number and the bytes carried by each
channel. Part ``c`` then travels on channel ``c`` with the sequence number as
its tag, so receives posted in any order pair with the right parts. The
receiver receives into the user's buffer as for a plain message; a message of
exactly :data:`HEADER_BYTES` bytes beginning with the magic words is a header,
and the parts follow into the same buffer. A plain message that happens to be
exactly such bytes is sent as a one-part split message, so the rule is exact.

A split message longer than the receive buffer behaves as in MPI: the
receive fails with :class:`SplitTruncated` (an ``MPI.Exception`` of class
``MPI.ERR_TRUNCATE``) and the send completes. The receiver consumes the
parts into scratch memory of their own size (never a truncating receive:
Open MPI 5.0 writes a truncated rendezvous message past the receive buffer)
or, on channels that wait for a clear-to-send, answers with a
"discard" instead, and the sender sends no parts. Header fields are checked
as Python integers: sizes must be non-negative and sum to the total.
Buffers of Python objects (numpy ``object`` arrays) are refused before
anything is sent: their bytes are pointers, meaningless in another process.

Both sides must use a :class:`Splitter` (both interposed with
``COMMLIB_SPLIT=1``): a plain receiver would get the header as its message.
Programs that size receives by probing first (``Probe`` then ``Get_count``)
see the header's size for a split message, so they must not enable splitting.

The package, one module per piece: :mod:`.wire` (the header, part sizes,
buffer checks), :mod:`.channels` (the channel protocol and
:class:`CommChannel`), :mod:`.estimates` (:class:`ThroughputEstimator`),
:mod:`.request` (:class:`SplitRequest`), :mod:`.splitter` (:class:`Splitter`)
and :mod:`.registry` (one splitter per communicator, the ``split_*`` calls).
"""

from .channels import Channel, CommChannel
from .estimates import ThroughputEstimator
from .registry import (
    attach,
    detach,
    split_irecv,
    split_isend,
    split_recv,
    split_send,
    splitter_for,
    worth_splitting,
)
from .request import SplitRequest, wait_all
from .splitter import Splitter
from .wire import HEADER_BYTES, MAX_CHANNELS, SplitTruncated, is_header, split_sizes

__all__ = [
    "HEADER_BYTES",
    "MAX_CHANNELS",
    "Channel",
    "CommChannel",
    "SplitRequest",
    "SplitTruncated",
    "Splitter",
    "ThroughputEstimator",
    "attach",
    "detach",
    "is_header",
    "split_irecv",
    "split_isend",
    "split_recv",
    "split_send",
    "split_sizes",
    "splitter_for",
    "wait_all",
    "worth_splitting",
]

"""Two ranks build path-pinned channels while an impostor on loopback connects first.

Rank 1 learns rank 0's listening port (as any local process could, by
scanning) and, before its own connection, has an impostor connect with a
handshake of the documented format (a guessed secret) and send a frame of
its own for the tag the ranks use next. Rank 0 must receive rank 1's bytes,
never the impostor's. Prints ``OK paths`` on rank 0 when it does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time

import numpy as np
from mpi4py import MPI

from transport.sockets import connect_paths

TAG = 5
REAL = np.frombuffer(b"REAL" * 256, np.uint8)


class _Impostor(MPI.Intracomm):
    """The ranks' communicator, on which rank 1 lets an impostor connect as soon as it knows the ports."""

    def sendrecv(self, sendobj, dest, sendtag=0, recvbuf=None, source=MPI.ANY_SOURCE, recvtag=MPI.ANY_TAG, status=None):
        theirs = super().sendrecv(sendobj, dest, sendtag, recvbuf, source, recvtag, status)
        if self.Get_rank() == 1 and theirs is not None:
            for i, entry in enumerate(theirs):
                sock = socket.create_connection(("127.0.0.1", entry[1]), timeout=5)
                _IMPOSTORS.append(sock)
                hello = struct.pack("<8sqqq", b"cmlpath1", i, 0, 1)
                with contextlib.suppress(OSError):  # a listener that checks the secret hangs up on the impostor
                    sock.sendall(hello + struct.pack("<8sqqq", b"cmlpath2", i, 0, 1) + b"\0" * 32)
                    sock.sendall(struct.pack("<qq", TAG, REAL.nbytes) + b"EVIL" * (REAL.nbytes // 4))
            time.sleep(0.5)  # the impostors are first in line
        return theirs


_IMPOSTORS: list[socket.socket] = []


def main() -> int:
    comm = _Impostor(MPI.COMM_WORLD)
    rank = comm.Get_rank()
    if comm.Get_size() != 2:
        raise SystemExit("run with 2 ranks")
    channels = connect_paths(comm, 1 - rank, ["127.0.0.1", "127.0.0.1"], timeout=10)
    try:
        if rank == 1:
            channels[0].isend(memoryview(REAL), 0, TAG).wait()
        else:
            got = np.zeros_like(REAL)
            channels[0].irecv(memoryview(got), 1, TAG).wait()
            if not np.array_equal(got, REAL):
                print(f"FAIL: rank 0 received {bytes(got[:8])!r}... instead of rank 1's bytes", flush=True)
                return 1
            print("OK paths", flush=True)
        MPI.COMM_WORLD.Barrier()
    finally:
        for ch in channels:
            ch.close()
        for sock in _IMPOSTORS:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Point-to-point operations of commlib's communicators (a mixin of :class:`commlib.interposer.comm._Interposed`).

A buffer spec with a strided derived datatype is bounds-checked and, when
the session says ``"pack"``, travels packed as its signature's base type
(:mod:`commlib.interposer.messages`); a repeated spec known to go to MPI costs one
lookup (:meth:`commlib.interposer.session.Session.native_spec`). Plain buffers go to
mpi4py untouched, or to the flow splitter that ``COMMLIB_SPLIT`` attached.
Blocking receives never write past their buffer (:mod:`transport.truncation`).
Persistent sends pack again at each ``Start``; strided numpy views mpi4py
refuses are read here for them (:mod:`commlib.interposer.views`).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import numpy as np
from mpi4py import MPI

import datatypes
from transport import truncation
from transport.flows import HEADER_BYTES

from .messages import Packed
from .requests import Prequest, with_action
from .views import buffer, refused

__all__ = ["PointToPoint"]

ANY_SOURCE, ANY_TAG = MPI.ANY_SOURCE, MPI.ANY_TAG
_SPECS = (list, tuple)  # only a list or tuple spec can name a derived datatype: anything else goes straight through
_GUARDED = truncation.guarded()  # blocking receives never write past their buffer (transport.truncation)


def _nbytes(buf: Any) -> int | None:
    try:
        return memoryview(buf).nbytes
    except TypeError:
        return None


class PointToPoint:
    """Blocking, nonblocking and persistent point to point, through the interposer's staging."""

    # -- blocking point to point ---------------------------------------------
    def _splitting(self, buf: Any) -> Any:
        """The splitter to carry a plain buffer, or ``None`` (no splitter, or too small to ever be split)."""
        splitter = self._splitter
        if splitter is None or buf.__class__ in _SPECS or refused(buf):
            return None
        nbytes = buf.nbytes if type(buf) is np.ndarray else _nbytes(buf)
        return splitter if nbytes is not None and nbytes >= HEADER_BYTES else None

    def Send(self, buf: Any, dest: int, tag: int = 0) -> None:
        if self._splitter is not None and (splitter := self._splitting(buf)) is not None:
            return splitter.Send(buf, dest, tag)
        if buf.__class__ not in _SPECS:
            return super().Send(buf, dest, tag)
        if (known := self._known("Send", buf)) is not None:
            return super().Send(known, dest, tag)
        message, pack = self._message("Send", buf)
        if message is None:
            return super().Send(buf, dest, tag)
        start = perf_counter()
        super().Send(Packed.for_send(message, self._staging).spec if pack else self._native(buf, message), dest, tag)
        self._observe("Send", message, pack, start)

    def Ssend(self, buf: Any, dest: int, tag: int = 0) -> None:
        if buf.__class__ in _SPECS and (known := self._known("Ssend", buf)) is not None:
            return super().Ssend(known, dest, tag)
        message, pack = self._message("Ssend", buf)
        if message is None:
            return super().Ssend(buf, dest, tag)
        start = perf_counter()
        super().Ssend(Packed.for_send(message, self._staging).spec if pack else self._native(buf, message), dest, tag)
        self._observe("Ssend", message, pack, start)

    def Recv(self, buf: Any, source: int = ANY_SOURCE, tag: int = ANY_TAG, status: MPI.Status | None = None) -> None:
        if self._splitter is not None and (splitter := self._splitting(buf)) is not None:
            return splitter.Recv(buf, source, tag, status)
        if buf.__class__ not in _SPECS:
            return self._recv(buf, source, tag, status)
        if (known := self._known("Recv", buf)) is not None:
            return self._recv(known, source, tag, status)
        message, pack = self._message("Recv", buf, writable=True)
        if message is None:
            return self._recv(buf, source, tag, status)
        start = perf_counter()
        if pack:
            packed = Packed.for_recv(message, self._staging)
            st = status if status is not None else MPI.Status()
            self._recv(packed.spec, source, tag, st)
            packed.unpack(st)
        else:
            self._recv(self._native(buf, message), source, tag, status)
        self._observe("Recv", message, pack, start)

    def Sendrecv(
        self,
        sendbuf: Any,
        dest: int,
        sendtag: int = 0,
        recvbuf: Any = None,
        source: int = ANY_SOURCE,
        recvtag: int = ANY_TAG,
        status: MPI.Status | None = None,
    ) -> None:
        outgoing, _ = self._stage_one("Sendrecv", sendbuf, send=True)
        if recvbuf.__class__ in _SPECS and (known := self._known("Sendrecv", recvbuf)) is not None:
            return self._sendrecv(outgoing, dest, sendtag, known, source, recvtag, status)
        message, pack = self._message("Sendrecv", recvbuf, writable=True)
        if not pack:
            return self._sendrecv(outgoing, dest, sendtag, self._native(recvbuf, message), source, recvtag, status)
        packed = Packed.for_recv(message, self._staging)
        st = status if status is not None else MPI.Status()
        self._sendrecv(outgoing, dest, sendtag, packed.spec, source, recvtag, st)
        packed.unpack(st)

    def _recv(self, spec: Any, source: int, tag: int, status: MPI.Status | None) -> None:
        """mpi4py's ``Recv`` of a checked spec; matched first where MPI would write past the buffer."""
        if _GUARDED and (room := truncation.capacity(spec)) is not None:
            return truncation.recv(super(), spec, room, source, tag, status, "Recv")
        return super().Recv(spec, source, tag, status)

    def _sendrecv(
        self, outgoing: Any, dest: int, sendtag: int, spec: Any, source: int, recvtag: int, status: MPI.Status | None
    ) -> None:
        """mpi4py's ``Sendrecv`` of checked specs; the receive guarded as in :meth:`_recv`."""
        if not (_GUARDED and (room := truncation.capacity(spec)) is not None):
            return super().Sendrecv(outgoing, dest, sendtag, spec, source, recvtag, status)
        request = super().Isend(outgoing, dest, sendtag)
        try:
            truncation.recv(super(), spec, room, source, recvtag, status, "Sendrecv")
        finally:
            request.Wait()
        return None

    def Sendrecv_replace(
        self,
        buf: Any,
        dest: int,
        sendtag: int = 0,
        source: int = ANY_SOURCE,
        recvtag: int = ANY_TAG,
        status: MPI.Status | None = None,
    ) -> None:
        if buf.__class__ in _SPECS and (known := self._known("Sendrecv_replace", buf)) is not None:
            return super().Sendrecv_replace(known, dest, sendtag, source, recvtag, status)
        message, pack = self._message("Sendrecv_replace", buf, writable=True)
        if message is None:
            return super().Sendrecv_replace(buf, dest, sendtag, source, recvtag, status)
        start = perf_counter()
        if pack:
            packed = Packed.for_send(message, self._staging)
            st = status if status is not None else MPI.Status()
            super().Sendrecv_replace(packed.spec, dest, sendtag, source, recvtag, st)
            packed.unpack(st)
        else:
            super().Sendrecv_replace(self._native(buf, message), dest, sendtag, source, recvtag, status)
        self._observe("Sendrecv_replace", message, pack, start)

    # -- nonblocking and persistent ------------------------------------------
    def Isend(self, buf: Any, dest: int, tag: int = 0) -> MPI.Request:
        if self._splitter is not None and (splitter := self._splitting(buf)) is not None:
            transfer = splitter.Isend(buf, dest, tag)
            return with_action(transfer.request, transfer.finish)
        # the request keeps the packed data alive until it completes
        if buf.__class__ in _SPECS:
            buf, _ = self._stage_one("Isend", buf, send=True)
        return super().Isend(buf, dest, tag)

    def Issend(self, buf: Any, dest: int, tag: int = 0) -> MPI.Request:
        return super().Issend(self._stage_one("Issend", buf, send=True)[0], dest, tag)

    def Irecv(self, buf: Any, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> MPI.Request:
        if self._splitter is not None and (splitter := self._splitting(buf)) is not None:
            transfer = splitter.Irecv(buf, source, tag)
            return with_action(transfer.request, transfer.finish)
        if buf.__class__ not in _SPECS:
            return super().Irecv(buf, source, tag)
        spec, packed = self._stage_one("Irecv", buf, send=False)
        if packed is None:
            return super().Irecv(spec, source, tag)
        return with_action(super().Irecv(spec, source, tag), packed.unpack)

    def _send_init(self, op: str, init: Any, buf: Any, dest: int, tag: int) -> MPI.Prequest:
        if refused(buf):  # persistent requests are not traced: their strided views are read here
            buf = buffer(buf, op=op)
        message, pack = self._message(op, buf)
        if not pack:
            return init(self._native(buf, message), dest, tag)
        packed = Packed.for_send(message, self._staging)
        request = Prequest(init(packed.spec, dest, tag))
        # the buffer may change between starts: pack again at each Start
        request._before_start = lambda: datatypes.pack(message.buf, message.count, message.datatype, out=packed.data)
        return request

    def Send_init(self, buf: Any, dest: int, tag: int = 0) -> MPI.Prequest:
        return self._send_init("Send_init", super().Send_init, buf, dest, tag)

    def Ssend_init(self, buf: Any, dest: int, tag: int = 0) -> MPI.Prequest:
        return self._send_init("Ssend_init", super().Ssend_init, buf, dest, tag)

    def Bsend_init(self, buf: Any, dest: int, tag: int = 0) -> MPI.Prequest:
        return self._send_init("Bsend_init", super().Bsend_init, buf, dest, tag)

    def Rsend_init(self, buf: Any, dest: int, tag: int = 0) -> MPI.Prequest:
        return self._send_init("Rsend_init", super().Rsend_init, buf, dest, tag)

    def Recv_init(self, buf: Any, source: int = ANY_SOURCE, tag: int = ANY_TAG) -> MPI.Prequest:
        if refused(buf):
            buf = buffer(buf, writable=True, op="Recv_init", role="receive buffer")
        spec, packed = self._stage_one("Recv_init", buf, send=False)
        if packed is None:
            return super().Recv_init(spec, source, tag)
        request = Prequest(super().Recv_init(spec, source, tag))
        request._persistent_action = packed.unpack
        return request

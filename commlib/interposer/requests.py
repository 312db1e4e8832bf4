"""Requests whose completion runs an action (unpacking a packed receive).

A nonblocking receive of a derived type lands in a packed buffer; the data
reach the user's buffer when the request completes, through whichever of
``Wait``/``Test`` and their ``all``/``any``/``some`` forms the program calls.
:class:`Request` and :class:`Prequest` subclass mpi4py's, and the interposer
binds them to ``MPI.Request``/``MPI.Prequest`` so that class-level calls such
as ``MPI.Request.Waitall(reqs)`` run the actions too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from mpi4py import MPI

from transport.watchdog import register_waits

__all__ = ["Prequest", "Request", "add_action", "with_action"]

Action = Callable[[MPI.Status | None], None]


class _Completing:
    """Mixin: an optional ``_action`` run once with the status when the request completes.

    A persistent request re-arms ``_action`` from ``_persistent_action`` at each
    ``Start``, so completing an inactive request runs nothing.
    """

    _action: Action | None = None
    _persistent_action: Action | None = None

    def _finish(self, status: MPI.Status | None) -> None:
        action, self._action = self._action, None
        if action is not None:
            action(status)

    def Wait(self, status: MPI.Status | None = None) -> bool:
        st = status if status is not None else MPI.Status()
        super().Wait(st)
        self._finish(st)
        return True

    def Test(self, status: MPI.Status | None = None) -> bool:
        st = status if status is not None else MPI.Status()
        done = super().Test(st)
        if done:
            self._finish(st)
        return done

    def wait(self, status: MPI.Status | None = None) -> Any:
        self.Wait(status)

    @classmethod
    def _statuses(cls, requests: Sequence[MPI.Request], statuses: Sequence | None) -> Sequence:
        """The caller's statuses, passed to mpi4py as they are (it may extend a list), or this thread's own."""
        if statuses is not None:
            return statuses
        pool = getattr(_local, "statuses", None)
        if pool is None or len(pool) < len(requests):
            pool = _local.statuses = [MPI.Status() for _ in range(max(len(requests), 64))]
        return pool[: len(requests)]

    @staticmethod
    def _acting(requests: Sequence[MPI.Request]) -> list[int]:
        """Indices of the requests that carry a completion action."""
        return [i for i, r in enumerate(requests) if isinstance(r, _Completing) and r._action is not None]

    @staticmethod
    def _status(statuses: Sequence | dict, k: int) -> MPI.Status | None:
        try:
            return statuses[k]
        except (IndexError, KeyError):
            return None  # the caller gave fewer statuses: the action assumes a complete message

    @classmethod
    def _finish_all(cls, requests: Sequence[MPI.Request], statuses: Sequence | dict, which: Sequence[int]) -> None:
        for i in which:
            if isinstance(requests[i], _Completing):
                requests[i]._finish(cls._status(statuses, i))

    @classmethod
    def _completing_all(cls, base: Any, requests: Sequence[MPI.Request], statuses: list | None) -> bool:
        """``base(requests, statuses)`` (mpi4py's Waitall or Testall), then the actions of what completed."""
        acting = cls._acting(requests)
        if not acting:
            return base(requests, statuses)
        sts = cls._statuses(requests, statuses)
        done = base(requests, sts)
        if done:
            cls._finish_all(requests, sts, acting)
        return done

    @classmethod
    def _mpi_class(cls) -> type:
        return next(k for k in cls.__mro__ if k.__module__ == "mpi4py.MPI")

    @classmethod
    def fromhandle(cls, handle: int) -> Any:
        return cls(cls._mpi_class().fromhandle(handle))

    @classmethod
    def f2py(cls, arg: int) -> Any:
        return cls(cls._mpi_class().f2py(arg))

    @classmethod
    def fromint(cls, arg: int) -> Any:
        return cls(cls._mpi_class().fromint(arg))

    @classmethod
    def Waitall(cls, requests: Sequence[MPI.Request], statuses: list | None = None) -> bool:
        cls._completing_all(_BASE.Waitall, requests, statuses)
        return True

    @classmethod
    def Testall(cls, requests: Sequence[MPI.Request], statuses: list | None = None) -> bool:
        return cls._completing_all(_BASE.Testall, requests, statuses)

    @classmethod
    def Waitany(cls, requests: Sequence[MPI.Request], status: MPI.Status | None = None) -> int:
        st = status if status is not None else MPI.Status()
        index = _BASE.Waitany(requests, st)
        if index != MPI.UNDEFINED:
            cls._finish_all(requests, {index: st}, [index])
        return index

    @classmethod
    def Testany(cls, requests: Sequence[MPI.Request], status: MPI.Status | None = None) -> tuple[int, bool]:
        st = status if status is not None else MPI.Status()
        index, flag = _BASE.Testany(requests, st)
        if flag and index != MPI.UNDEFINED:
            cls._finish_all(requests, {index: st}, [index])
        return index, flag

    @classmethod
    def _some(cls, base: Any, requests: Sequence[MPI.Request], statuses: list | None) -> list[int] | None:
        sts = cls._statuses(requests, statuses)
        indices = base(requests, sts)
        if indices:
            cls._finish_all(requests, {i: cls._status(sts, k) for k, i in enumerate(indices)}, indices)
        return indices

    @classmethod
    def Waitsome(cls, requests: Sequence[MPI.Request], statuses: list | None = None) -> list[int] | None:
        return cls._some(_BASE.Waitsome, requests, statuses)

    @classmethod
    def Testsome(cls, requests: Sequence[MPI.Request], statuses: list | None = None) -> list[int] | None:
        return cls._some(_BASE.Testsome, requests, statuses)


_BASE = MPI.Request  # the original class, captured before the interposer rebinds the name
_local = threading.local()  # per thread: statuses reused by the class-level completion calls


class _StandsIn(type):
    """Metaclass of classes the interposer binds in place of mpi4py's: they pass mpi4py's class checks.

    While ``MPI.Request`` names commlib's class, ``isinstance(req, MPI.Request)``
    must still hold for every request mpi4py itself returns, and
    ``issubclass(MPI.Prequest, MPI.Request)`` must still hold.
    """

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls._mpi_class())

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, cls._mpi_class())


class Request(_Completing, MPI.Request, metaclass=_StandsIn):
    """An mpi4py request that may carry a completion action."""


class Prequest(_Completing, MPI.Prequest, metaclass=_StandsIn):
    """A persistent request whose action runs at every completion; ``Start`` may re-pack first."""

    _before_start: Callable[[], None] | None = None

    def Start(self) -> None:
        if self._before_start is not None:
            self._before_start()
        self._action = self._persistent_action
        super().Start()

    @classmethod
    def Startall(cls, requests: Sequence[MPI.Prequest]) -> None:
        for req in requests:
            if isinstance(req, _Completing):
                before = getattr(req, "_before_start", None)
                if before is not None:
                    before()
                req._action = req._persistent_action
        _BASE_PREQUEST.Startall(requests)


_BASE_PREQUEST = MPI.Prequest
_REQUEST_NULL = MPI.REQUEST_NULL


def with_action(request: MPI.Request, action: Action) -> Request:
    """``request`` as a :class:`Request` that runs ``action(status)`` once when it completes."""
    wrapped = Request(request)
    wrapped._action = action
    return wrapped


def add_action(request: MPI.Request, action: Action) -> MPI.Request:
    """``request`` running ``action(status)`` when it completes, after any action it already has.

    A persistent request is returned unchanged (its completions are not tied to one call).
    """
    if request.__class__ is _BASE:  # what mpi4py's Isend/Irecv return: no action yet
        return request if request == _REQUEST_NULL else with_action(request, action)
    if isinstance(request, _BASE_PREQUEST) or request == _REQUEST_NULL:
        return request
    if not isinstance(request, _Completing):
        return with_action(request, action)
    first = request._action
    if first is None:
        request._action = action
    else:

        def both(status: MPI.Status | None) -> None:
            first(status)
            action(status)

        request._action = both
    return request


# a thread inside one of these is waiting for requests (the fault monitor's hang rule)
register_waits(
    _Completing.Wait,
    _Completing.wait,
    _Completing._completing_all,
    _Completing._some,
    _Completing.Waitany,
)

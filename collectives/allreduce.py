"""``allreduce``: MPI_Allreduce by a chosen algorithm, the same bits on every rank.

``allreduce(comm, sendbuf, recvbuf, op=MPI.SUM, algorithm="auto")`` takes the
buffer specs mpi4py's ``Comm.Allreduce`` takes (an array, ``[buf, datatype]``,
``[buf, count, datatype]``, ``[buf, (count, displ), datatype]``, ``MPI.IN_PLACE``
as ``sendbuf``) and reduces every element in an order fixed by the algorithm
and the communicator's shape, never by message arrival, so every rank holds
bitwise the same result, run after run. Algorithms (:data:`ALGORITHMS`):

``native``
    MPI's own ``MPI_Allreduce``.
``ring``
    ring reduce-scatter + allgather, ranks ordered node by node.
``star``
    rank 0 gathers in arrival order, reduces in rank order, sends back: two
    rounds, for small, latency-bound messages.
``hierarchical``
    by nodes (see :mod:`collectives.topology`): ``hierarchical-root`` (reduce to
    a node leader, leaders allreduce, broadcast in the node) or
    ``hierarchical-shard`` (reduce-scatter in the node, every local rank
    allreduces its shard across nodes at once, allgather in the node),
    whichever the cost model predicts faster; the step between nodes runs the
    flat algorithm the model picks. ``hierarchical-levels``: over every level
    of :mod:`collectives.hierarchy` (``COMMLIB_TOPOLOGY``); where a communicator
    has levels above the node, ``auto`` and ``hierarchical`` leave the choice
    to the level model (:mod:`collectives.allreduce_levels`).
``auto``
    the cost model's pick for this size and shape (:mod:`collectives.allreduce_cost`),
    ``native`` unless another algorithm is predicted clearly faster.

``model`` (optional, the same on every rank) is any object with
``alpha_beta(level) -> (alpha, beta)`` for ``"intra"`` and ``"inter"`` (and
optionally ``reduce_beta(dtype)``); without it, commlib's model of the process
(``datatypes.model.current()``: the calibration, else analytic defaults) or,
where that module is absent, the defaults of :mod:`collectives.allreduce_cost`.
Rank 0's figures are used everywhere, so all ranks choose alike.

A pair MPI reduces wrongly never goes to MPI as it is: at the first allreduce
on a communicator every rank checks MPI's reductions against exact arithmetic
and the ranks agree on the verdict (:mod:`collectives.reduction_check`), and
``native``, ``auto`` and the hierarchical variants run ring or star for such a
pair (Open MPI's saturating 8- and 16-bit ``SUM``), whichever the cost model
predicts faster; ``MAX``/``MIN`` of floats that drop a NaN (MPICH and Open MPI
alike) run MPI's own algorithm with a NaN flag per element, so that a NaN
always wins, as in numpy (``COMMLIB_REDUCTION_CHECK=0`` trusts MPI). Where
commlib's own algorithm runs ``MAX``/``MIN`` on floating point and a NaN or
zeros of both signs are among the contributions, the call goes to MPI's path
all the same, so that every algorithm gives the same bits
(:mod:`collectives.extrema`). Send and receive buffers that overlap are
refused with :class:`AliasedBuffers`, as MPI refuses them (``MPI_ERR_BUFFER``).

What commlib does not handle - intercommunicators, user-defined operations,
``MAXLOC``/``MINLOC``, datatypes other than a predefined reducible type or a
contiguous run of one - :func:`allreduce` passes to MPI untouched, and
:func:`try_allreduce` reports as ``NotImplemented`` (see :func:`handles`). Every
rank must pass the same kind of spec (all handled or none), as MPI requires
matching type signatures. Device (cupy) arrays go to MPI as they are when
``commlib.config.cuda_aware_mpi`` is set, else through host copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from . import allreduce_cost as cost
from . import allreduce_levels, extrema, reduction_check
from .allreduce_algorithms import ALGORITHMS, HIERARCHICAL
from .allreduce_call import AliasedBuffers, Call, on_host, prepare, staged
from .allreduce_flat import FLAT
from .allreduce_hierarchical import node_root, shard_parallel
from .bufspec import datatype_of
from .reduction import reducer
from .settings import settings
from .topology import Topology, cached_topology, topology

__all__ = ["ALGORITHMS", "AliasedBuffers", "allreduce", "handles", "plan", "try_allreduce"]

_HIERARCHICAL = dict(zip(HIERARCHICAL, (node_root, shard_parallel, allreduce_levels.run)))
_MIN_BYTES = cost.MIN_BYTES


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"allreduce: unknown algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    return algorithm


def handles(comm: Any, sendbuf: Any, recvbuf: Any, op: Any = MPI.SUM) -> bool:
    """Whether commlib's algorithms take these buffers and op (else MPI gets them untouched); raises on bad specs."""
    return prepare(comm, sendbuf, recvbuf, op) is not None


def _process_model() -> Any:
    """commlib's cost model of this process (``datatypes.model.current()``), where that module exists."""
    try:
        from datatypes import model as models
    except ImportError:
        return None
    current = getattr(models, "current", None)
    return current() if current is not None else None


def _costs(topo: Topology, model: Any) -> cost.Costs:
    """The cost figures, rank 0's, agreed once per communicator and model."""
    if model is None:
        key = ("costs", None)
        if key not in topo.agreed:
            process_model = _process_model()
            local = cost.default_costs() if process_model is None else cost.costs_from_model(process_model)
            return topo.agree(key, local)
        return topo.agreed[key]
    key = ("costs", id(model))
    topo.agreed.setdefault(("model", id(model)), model)  # keeps the id from being reused while the key lives
    return topo.agree(key, cost.costs_from_model(model))


def _plan_key(model: Any, algorithm: str, nbytes: int) -> tuple[int | None, str, int]:
    """The key of a decision in a topology's plan cache."""
    return (None if model is None else id(model), algorithm, nbytes)


def _verdict(comm: Any, op: Any, datatype: MPI.Datatype | None) -> reduction_check.Verdict:
    """``comm``'s agreed verdict on MPI's reductions; agreed now (collectively) if this call is commlib's to reduce."""
    found = reduction_check.agreed(comm)
    if found is not None:
        return found
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL or datatype is None:
        return reduction_check.NONE
    if reducer(op, datatype) is None:  # not commlib's pair: MPI gets the call whatever the verdict
        return reduction_check.NONE
    return reduction_check.agree(comm)


_CODES = reduction_check.codes_by_handle
_NO_CODES: frozenset = frozenset()


def _wrong_for_array(comm: Any, op: Any, dtype: np.dtype) -> bool:
    """Whether MPI reduces ``op`` on arrays of ``dtype`` wrongly on ``comm``, at the first call on ``comm``
    (collective where it is commlib's pair to reduce); ``try_allreduce`` looks it up itself afterwards."""
    try:
        codes = _verdict(comm, op, datatype_of(dtype)).by_code
        return bool(codes) and (op.handle, dtype.char) in codes
    except AttributeError:  # not a communicator or not an op: MPI raises its own error
        return False


def _wrong(comm: Any, op: MPI.Op, datatype: MPI.Datatype) -> bool:
    return settings.reduction_check and (op.handle, datatype.handle) in _verdict(comm, op, datatype).by_handle


def _datatype_of_any(dtype: Any) -> MPI.Datatype | None:
    try:
        return datatype_of(np.dtype(dtype))
    except TypeError:
        return None


def plan(
    comm: MPI.Intracomm,
    nbytes: int,
    algorithm: str = "auto",
    *,
    model: Any = None,
    op: MPI.Op | None = None,
    datatype: Any = None,
) -> tuple[str, str, int]:
    """What ``algorithm`` runs for ``nbytes`` bytes on ``comm``: ``(algorithm, inner, segments)``.

    ``inner`` is the flat algorithm between nodes of a hierarchical variant and
    ``segments`` the number of pipelined segments (for the others: the
    algorithm itself and 1). With ``op`` and ``datatype`` (an MPI datatype or
    a numpy dtype), what runs for that pair: ring or star in place of
    anything that would reduce with MPI when MPI reduces the pair wrongly.
    Collective the first time per communicator (it may build the topology,
    agree on the cost figures and check MPI's reductions).
    """
    exact = False
    if isinstance(op, MPI.Op) and datatype is not None:
        mpi_type = datatype if isinstance(datatype, MPI.Datatype) else _datatype_of_any(datatype)
        exact = mpi_type is not None and _wrong(comm, op, mpi_type)
        if exact and (op.handle, mpi_type.handle) in _verdict(comm, op, mpi_type).nan_only:
            exact = False  # MPI's algorithms, mended with a NaN flag per element
    return _plan(comm, nbytes, algorithm, model, exact)


def _plan(comm: MPI.Intracomm, nbytes: int, algorithm: str, model: Any, exact: bool) -> tuple[str, str, int]:
    if algorithm in ("ring", "star") or (algorithm == "native" and not exact):
        return algorithm, algorithm, 1
    if exact:
        algorithm = "exact"  # commlib's own arithmetic: ring or star, whichever is predicted faster
    topo = topology(comm)
    decisions = topo.plans
    key = _plan_key(model, algorithm, nbytes)
    found = decisions.get(key)
    if found is not None:
        return found
    if algorithm != "exact":
        _check_algorithm(algorithm)
    costs = _costs(topo, model)
    levels = allreduce_levels.plan(topo, algorithm, nbytes, costs)  # levels above the node: their own model
    if levels is not None:
        decisions[key] = levels
        return levels
    shape = cost.Shape(topo.node_of)
    chosen = algorithm
    if chosen == "exact":
        chosen = min(("star", "ring"), key=lambda a: cost.predict(a, nbytes, shape, costs))
    if chosen == "auto":
        chosen = cost.choose(nbytes, shape, costs)
    if chosen == "hierarchical":
        chosen = cost.hierarchical_variant(nbytes, shape, costs)
    decision = (chosen, chosen, 1)
    if chosen in _HIERARCHICAL:
        how = cost.plan_hierarchical(chosen, nbytes, shape, costs)
        decision = (chosen, how.inner, how.segments)
    decisions[key] = decision
    return decision


def _native(comm: MPI.Intracomm, call: Call) -> None:
    source = MPI.IN_PLACE if call.send is None else [call.send, call.datatype]
    MPI.Comm.Allreduce(comm, source, [call.recv, call.datatype], call.op)


def _nan_propagating(comm: MPI.Intracomm, call: Call) -> None:
    """``MPI_MAX``/``MPI_MIN`` of floating-point values, NaN and signed zeros settled, through MPI's own algorithm.

    One allreduce of the values followed by two flags per element, reduced
    with the same operation (MAX of 1, MIN of -1): a NaN on any rank makes the
    element NaN, as numpy's maximum and minimum do, and a zero result takes
    the sign IEEE 754's maximum and minimum give it (``+0`` is the larger),
    whatever order MPI combined the values in.
    """
    src = call.recv if call.send is None else call.send
    n = src.size
    every = np.empty(3 * n, dtype=src.dtype)
    every[:n] = src
    maximum = call.op == MPI.MAX
    sign = 1 if maximum else -1
    zero = (src == 0) & (np.signbit(src) != maximum)  # MAX: a +0 is there; MIN: a -0 is there
    np.multiply(np.isnan(src), sign, out=every[n : 2 * n], casting="unsafe")
    np.multiply(zero, sign, out=every[2 * n :], casting="unsafe")
    MPI.Comm.Allreduce(comm, MPI.IN_PLACE, [every, call.datatype], call.op)
    result = every[:n]
    zeros = result == 0
    result[zeros] = np.where(every[2 * n :][zeros] != 0, 0.0 if maximum else -0.0, -0.0 if maximum else 0.0)
    result[every[n : 2 * n] != 0] = np.nan
    call.recv[...] = result


def _run(comm: MPI.Intracomm, call: Call, algorithm: str, model: Any, *, native_ok: bool, exact: bool) -> bool:
    """Run ``call`` with ``algorithm`` (ring or star if ``exact``); ``False`` (nothing touched) when it
    comes to MPI's own and not ``native_ok``."""
    send, buf = call.send, call.recv
    # MAX/MIN of floats whose NaN MPI drops: MPI's algorithms are fine once mended (_nan_propagating)
    mended = exact and (call.op.handle, call.datatype.handle) in _verdict(comm, call.op, call.datatype).nan_only
    chosen, inner, segments = "native", "native", 1
    if comm.Get_size() > 1 and buf.size:
        chosen, inner, segments = _plan(comm, int(buf.nbytes), algorithm, model, exact and not mended)
    if chosen == "native":
        if mended:
            _nan_propagating(comm, call)
            return True
        if native_ok:
            _native(comm, call)
        return native_ok
    topo = topology(comm)
    if extrema.order_sensitive(call.reduce):
        if extrema.ambiguous(topo.comm, buf if send is None else send):
            # NaN or signed zeros: MPI's path, so that every algorithm gives the same bits
            (_nan_propagating if mended else _native)(comm, call)
            return True
    if chosen in _HIERARCHICAL:
        _HIERARCHICAL[chosen](topo, send, buf, call.reduce, call.datatype, call.op, inner, segments)
        return True
    if send is not None:
        buf[...] = send
    if chosen == "ring":
        FLAT["ring"](topo.comm, buf, call.reduce, call.datatype, call.op, topo.ring_order)
    else:
        FLAT[chosen](topo.comm, buf, call.reduce, call.datatype, call.op)
    return True


def _auto_is_native(comm: Any, nbytes: int, model: Any) -> bool:
    """Whether ``auto`` keeps MPI's own for ``nbytes`` of host memory: on one node, or as planned.

    This runs before every interposed ``Allreduce`` of an array from
    ``cost.MIN_BYTES`` up; a size planned before costs one dictionary lookup.
    """
    topo = cached_topology(comm)
    if topo is not None:
        if topo.n_nodes == 1:
            return True
        decided = topo.plans.get(_plan_key(model, "auto", nbytes))  # plan()'s cache, without its calls
        if decided is not None:
            return decided[0] == "native"
    return isinstance(comm, MPI.Intracomm) and plan(comm, nbytes, "auto", model=model)[0] == "native"


def try_allreduce(
    comm: Any,
    sendbuf: Any,
    recvbuf: Any,
    op: MPI.Op = MPI.SUM,
    algorithm: str | None = None,
    *,
    model: Any = None,
) -> Any:
    """Run the allreduce and return ``None``, or return ``NotImplemented`` without touching anything.

    ``NotImplemented`` means "give this call to MPI's own ``Allreduce`` as it
    is": what commlib does not handle (see the module docstring), and host
    buffers for which the algorithm (or ``auto``'s choice) is ``native``, the
    (op, datatype) pair being one MPI reduces correctly. ``algorithm``
    defaults to ``commlib.config.allreduce``. Before MPI gets the call, the
    check of MPI's reductions costs a dictionary and a set lookup (after the
    first call on ``comm``), ``auto`` a size comparison below
    ``cost.MIN_BYTES`` and a cached lookup above.
    """
    if algorithm is None:
        algorithm = settings.allreduce
    if type(recvbuf) is np.ndarray:
        codes = _CODES.get(getattr(comm, "handle", None)) if settings.reduction_check else _NO_CODES
        if codes is None:  # the first call on comm: check MPI's reductions (collective)
            wrong = _wrong_for_array(comm, op, recvbuf.dtype)
        else:
            wrong = bool(codes) and (getattr(op, "handle", None), recvbuf.dtype.char) in codes
        if not wrong:  # else commlib's own arithmetic, whatever the algorithm
            if algorithm == "native":
                return NotImplemented
            if algorithm == "auto" and (recvbuf.nbytes < _MIN_BYTES or _auto_is_native(comm, recvbuf.nbytes, model)):
                return NotImplemented  # below MIN_BYTES: what cost.choose decides for any shape, without lookups
        host = True
    else:
        host = on_host(recvbuf)
        if host and algorithm == "native":
            return NotImplemented
    _check_algorithm(algorithm)
    call = prepare(comm, sendbuf, recvbuf, op)
    if call is None:
        return NotImplemented
    exact = _wrong(comm, call.op, call.datatype)
    if not host and not settings.cuda_aware_mpi:
        host_call, host_out = staged(call)
        _run(comm, host_call, algorithm, model, native_ok=True, exact=exact)
        call.recv.set(host_out)
        return None
    return None if _run(comm, call, algorithm, model, native_ok=not host, exact=exact) else NotImplemented


def allreduce(
    comm: MPI.Intracomm,
    sendbuf: Any,
    recvbuf: Any,
    op: MPI.Op = MPI.SUM,
    algorithm: str = "auto",
    *,
    model: Any = None,
) -> None:
    """``MPI_Allreduce`` of ``sendbuf`` (or ``MPI.IN_PLACE``) into ``recvbuf`` with ``algorithm``.

    Calls commlib does not handle, and those it gives to MPI's own algorithm,
    go to ``MPI_Allreduce`` unchanged.
    """
    if try_allreduce(comm, sendbuf, recvbuf, op, algorithm, model=model) is NotImplemented:
        MPI.Comm.Allreduce(comm, sendbuf, recvbuf, op)

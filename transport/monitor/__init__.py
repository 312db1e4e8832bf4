"""commlib's fault-detection monitor: names the rank, the operation and the probable cause of a hang.

A :class:`Monitor` is what a session's ``monitor`` hook calls (see
:mod:`commlib.interposer.tracing`): its ``enter``/``leave`` are the flight recorder's
(:mod:`transport.recorder`). Started, it also runs, per rank:

- a side-channel server (:mod:`transport.sidechannel`), found by the other
  ranks through the job's rendezvous directory (:mod:`transport.rendezvous`),
  which answers questions about this rank while its main thread is stuck in MPI;
- one daemon thread that polls the watchdog (:mod:`transport.watchdog`);
  when an operation runs past its limit it gathers the other members' states
  over the side channel, places them on the wavefront
  (:mod:`transport.wavefront`), reports, and warns, dumps or aborts
  (``COMMLIB_MONITOR_ACTION``). On the lowest monitored rank the same thread
  collects collective arrival times for straggler and slowdown detection
  (:mod:`transport.stragglers`) and runs link probes (:mod:`transport.linkprobe`).

Findings go to stderr, to the JSON-lines report file and to callbacks
(:mod:`transport.reports`). The monitor's threads are daemons, never call
MPI while the application runs (the ``mpi`` bootstrap aside, at start) and
swallow their own errors, so the monitor can neither keep a finishing job
alive nor raise into the application; a healthy run prints nothing.

The :class:`Monitor` is assembled from one module per job:

- :mod:`.core`: settings, start and stop, the two threads, internal errors;
- :mod:`.peers`: the other ranks' side-channel records, asking them, naming a silent one;
- :mod:`.answers`: what this rank answers on the side channel (its state, its arrivals);
- :mod:`.hangs`: examining a stuck operation, reporting it, the delayed and immediate abort;
- :mod:`.dumps`: flight-record dumps of this rank and of the whole job;
- :mod:`.patterns`: straggler and slowdown reports from collective arrival times;
- :mod:`.probes`: node-to-node link probes.
"""

from .core import Monitor, start_monitor
from .hangs import ABORT_CODE

__all__ = ["ABORT_CODE", "Monitor", "start_monitor"]

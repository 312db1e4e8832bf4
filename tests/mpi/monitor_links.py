"""Link probe on emulated nodes, under ``python -m commlib``.

``monitor_links.py explicit``: rank 0 probes the node-to-node matrix through
its monitor while the other ranks wait in a barrier (their side channels
answer all the same), then prints the localisation as one JSON line.
``monitor_links.py periodic --seconds S``: every rank runs allreduces for S
seconds while the monitor probes on its own (``COMMLIB_MONITOR_PROBE``).
"""

import argparse
import json
import time

import numpy as np
from mpi4py import MPI

import commlib

parser = argparse.ArgumentParser()
parser.add_argument("mode", choices=["explicit", "periodic"])
parser.add_argument("--seconds", type=float, default=4.0)
parser.add_argument("--floats", type=int, default=1 << 14, help="Allreduce size in float64 elements")
args = parser.parse_args()

world = MPI.COMM_WORLD
rank = world.Get_rank()
monitor = commlib.active_session().monitor
buf = np.ones(args.floats)
world.Allreduce(MPI.IN_PLACE, buf)
if args.mode == "explicit":
    if rank == 0:
        result = monitor.probe_links()
        print("LINKS " + json.dumps({k: result[k] for k in ("nodes", "slow_nodes", "slow_links", "bad")}), flush=True)
    world.Barrier()
else:
    end = time.monotonic() + args.seconds
    while world.allreduce(time.monotonic() < end, op=MPI.LAND):
        world.Allreduce(MPI.IN_PLACE, buf)
        buf[:] = 1
world.Barrier()
if rank == 0:
    print(f"OK {args.mode} on {world.Get_size()} ranks", flush=True)

"""Fault injection under ``python -m commlib``: the monitor must name the rank and the operation.

Usage: ``monitor_faults.py SCENARIO [--victim R] [--seconds S] [--iters N]``, scenarios:

- ``stop``: the victim stops itself (SIGSTOP) before a collective; a helper
  process continues it after ``--seconds`` (so the job ends even if nothing
  else kills it);
- ``late``: the victim spends ``--seconds`` in ``slow_compute`` before a
  collective the others have entered, then joins: the job completes
  (``--nonblocking``: the collective is an ``Iallreduce`` and a ``Wait``);
- ``skip``: the victim never enters a collective the others have entered: it
  waits for a message from rank 0 instead (a real deadlock);
- ``crossed``: rank 0 and the victim block in collectives on different
  communicators, each waiting for the other (a deadlock);
- ``p2p``: rank 0 receives from the victim, which sends only after ``--seconds``;
- ``straggler``: ``--iters`` allreduces, the victim sleeping ``--seconds``
  before each (the others a tenth of that);
- ``healthy``: ``--iters`` iterations of collectives, nonblocking and
  point-to-point calls, with a little jitter: nothing may be reported.

Each rank prints its pid first (the test cleans up stopped ranks); rank 0
prints an OK line when the scenario ran to its end.
"""

import argparse
import os
import random
import signal
import subprocess
import time

import numpy as np
from mpi4py import MPI

import commlib

parser = argparse.ArgumentParser()
parser.add_argument("scenario", choices=["stop", "late", "skip", "crossed", "p2p", "straggler", "healthy"])
parser.add_argument("--victim", type=int, default=1)
parser.add_argument("--seconds", type=float, default=5.0)
parser.add_argument("--iters", type=int, default=6)
parser.add_argument("--nonblocking", action="store_true")
parser.add_argument("--phase", type=float, default=0.0, help="healthy: longest random compute phase in seconds")
args = parser.parse_args()

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
print(f"PID {rank} {os.getpid()}", flush=True)
session = commlib.active_session()
monitored = session is not None and session.monitor is not None
buf = np.ones(4)


def slow_compute(seconds):
    time.sleep(seconds)


if args.scenario in ("stop", "late", "skip", "crossed"):
    pair = world.Split(0 if rank in (0, args.victim) else MPI.UNDEFINED, rank) if args.scenario == "crossed" else None
    for i in range(args.iters):
        if i == 3 and rank == args.victim:
            if args.scenario == "stop":
                subprocess.Popen(["sh", "-c", f"sleep {args.seconds}; kill -CONT {os.getpid()}"])
                os.kill(os.getpid(), signal.SIGSTOP)
            elif args.scenario == "skip":
                world.Recv(buf, source=0, tag=99)
            elif args.scenario == "crossed":
                pair.Allreduce(MPI.IN_PLACE, buf)
            else:
                slow_compute(args.seconds)
        if args.nonblocking:
            world.Iallreduce(MPI.IN_PLACE, buf).Wait()
        else:
            world.Allreduce(MPI.IN_PLACE, buf)
        if i == 3 and rank == 0 and args.scenario == "crossed":
            pair.Allreduce(MPI.IN_PLACE, buf)
elif args.scenario == "p2p":
    world.Barrier()
    if rank == 0:
        world.Recv(buf, source=args.victim, tag=7)
    elif rank == args.victim:
        slow_compute(args.seconds)
        world.Send(buf, dest=0, tag=7)
    world.Barrier()
elif args.scenario == "straggler":
    for _ in range(args.iters):
        time.sleep(args.seconds if rank == args.victim else args.seconds / 10)
        world.Allreduce(MPI.IN_PLACE, buf)
elif args.scenario == "healthy":
    rng = random.Random(rank)
    right, left = (rank + 1) % size, (rank - 1) % size
    sub = world.Split(rank % 2, rank)
    recv = np.zeros(4)
    for i in range(args.iters):
        if args.phase:
            time.sleep(rng.random() * args.phase)
        elif rng.random() < 0.05:
            time.sleep(rng.random() * 2e-3)
        world.Allreduce(MPI.IN_PLACE, buf)
        req = world.Iallreduce(MPI.IN_PLACE, buf)
        world.Sendrecv(buf, right, 1, recv, left, 1)
        req.Wait()
        sub.Barrier()
        if i % 100 == 0:
            world.bcast({"i": i}, root=i % size)
    sub.Free()
    buf[:] = 1

world.Barrier()
if rank == 0:
    print(f"OK {args.scenario} on {size} ranks (monitored: {monitored})", flush=True)

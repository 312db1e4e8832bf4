"""Made-up operations and rank states, as the monitor's side channel answers them, for the analysis tests."""


def op(op="Allreduce", seq=5, kind="collective", blocking=True, age=3.0, **extra):
    """A call as the recorder describes it: in flight on COMM_WORLD for ``age`` seconds."""
    return {"op": op, "comm": "44000000-aaaaaaaa", "label": "COMM_WORLD", "size": 4, "seq": seq, "kind": kind,
            "blocking": blocking, "thread": 1, "age": age, **extra}  # fmt: skip


def state(rank, entered, done, inflight=(), stack=None):
    """A rank's ``state`` answer: its COMM_WORLD counters, calls in flight, and its main thread's stack."""
    stack = stack or [["/app/train.py", 10, "main", "step()"], ["/app/train.py", 42, "step", "compute()"]]
    return {
        "rank": rank, "pid": 100 + rank, "host": "h", "main": "1",
        "comms": {"44000000-aaaaaaaa": {"ident": "44000000-aaaaaaaa", "coll_entered": entered, "coll_done": done,
                                        "last_op": "Allreduce", "label": "COMM_WORLD"}},
        "inflight": list(inflight), "threads": {"1": {"name": "MainThread", "stack": stack, "waiting": False}},
    }  # fmt: skip

/*
 * transport._flight: the per-call path of commlib's flight recorder, in C.
 * The Python twin, with the same behaviour, is in transport/flight.py.
 *
 * CommState: one communicator's identity and counters.
 *
 * Core: the recorder's application-side half. enter/leave/post write a
 * call into preallocated slots (in flight) and a ring (completed), with no
 * Python object made per call; the monitor's thread reads them back as
 * records (start, state, op, seq, thread, peers, collective). A nonblocking
 * call stays in flight until MPI has completed its request (mpi4py's
 * request then tests false): the core holds the request and checks a few
 * held requests at every call, and all of them when the monitor polls,
 * instead of wrapping the request in an object of its own.
 *
 * Traced: a method descriptor for the interposer's communicator classes.
 * It calls mpi4py's own method directly when no buffer argument is a
 * list/tuple spec (so no derived datatype can be involved), otherwise
 * commlib's Python method, and records the call in the session's Core.
 * The session's `_core` is the monitor's Core, or None (no monitor), or a
 * monitor of another kind, which gets the Python fallback given at construction.
 *
 * Only the Python C API is used: no MPI header, so the module builds the
 * same against any MPI that mpi4py uses.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <structmember.h>
#include <time.h>

#define MAX_FIELDS 3
#define SWEEP_PER_CALL 4
#define INDEX_BITS 24 /* a token is (serial << INDEX_BITS) | slot index */
#define MAX_LIVE (1 << INDEX_BITS)

static PyObject *s_handle, *s_session, *s_core, *s_splitter, *s_specs;
static long long epoch = 1; /* moved by invalidate(): what is cached about communicators and messages is stale */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* -- CommState ------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *handle, *members, *label, *ident, *last_op;
    long long coll_entered, coll_done, p2p;
} CommState;

static PyTypeObject CommStateType;

static int CommState_init(CommState *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"handle", "members", "label", "ident", NULL};
    PyObject *handle, *members, *label, *ident;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!UU", kwlist, &handle, &PyTuple_Type, &members, &label, &ident))
        return -1;
    Py_INCREF(handle);
    Py_XSETREF(self->handle, handle);
    Py_INCREF(members);
    Py_XSETREF(self->members, members);
    Py_INCREF(label);
    Py_XSETREF(self->label, label);
    Py_INCREF(ident);
    Py_XSETREF(self->ident, ident);
    Py_XSETREF(self->last_op, PyUnicode_FromString(""));
    self->coll_entered = self->coll_done = self->p2p = 0;
    return self->last_op == NULL ? -1 : 0;
}

static int CommState_traverse(CommState *self, visitproc visit, void *arg) {
    Py_VISIT(self->handle);
    Py_VISIT(self->members);
    Py_VISIT(self->label);
    Py_VISIT(self->ident);
    Py_VISIT(self->last_op);
    return 0;
}

static int CommState_clear(CommState *self) {
    Py_CLEAR(self->handle);
    Py_CLEAR(self->members);
    Py_CLEAR(self->label);
    Py_CLEAR(self->ident);
    Py_CLEAR(self->last_op);
    return 0;
}

static void CommState_dealloc(CommState *self) {
    PyObject_GC_UnTrack(self);
    CommState_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef CommState_members[] = {
    {"handle", T_OBJECT, offsetof(CommState, handle), READONLY, "the communicator's handle"},
    {"members", T_OBJECT, offsetof(CommState, members), READONLY, "world rank of each communicator rank"},
    {"label", T_OBJECT, offsetof(CommState, label), READONLY, "its name"},
    {"ident", T_OBJECT, offsetof(CommState, ident), READONLY, "an identity the members agree on"},
    {"last_op", T_OBJECT, offsetof(CommState, last_op), READONLY, "the last operation entered"},
    {"coll_entered", T_LONGLONG, offsetof(CommState, coll_entered), 0, "number of the last collective entered"},
    {"coll_done", T_LONGLONG, offsetof(CommState, coll_done), 0, "highest number of a collective completed"},
    {"p2p", T_LONGLONG, offsetof(CommState, p2p), 0, "point-to-point operations entered"},
    {NULL}};

static PyTypeObject CommStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "transport._flight.CommState",
    .tp_basicsize = sizeof(CommState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "CommState(handle, members, label, ident): what the recorder knows of one communicator.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CommState_init,
    .tp_dealloc = (destructor)CommState_dealloc,
    .tp_traverse = (traverseproc)CommState_traverse,
    .tp_clear = (inquiry)CommState_clear,
    .tp_members = CommState_members,
};

/* -- Core ----------------------------------------------------------------------------------------- */

typedef struct {
    char collective;
    char blocking;
    int nfields;
    Py_ssize_t position[MAX_FIELDS];
    PyObject *keyword[MAX_FIELDS];
    PyObject *fallback[MAX_FIELDS];
} OpSpec;

typedef struct {
    double start;
    CommState *state; /* owned */
    long long seq;
    long long peers[MAX_FIELDS];
    unsigned long thread;
    int op;
    unsigned char valid; /* bit f: peers[f] holds an int (else the field reads None) */
} Call;

typedef struct {
    Call call;
    long long token;   /* 0: a free slot */
    PyObject *request; /* owned, for a nonblocking call; else NULL */
} Live;

typedef struct {
    Call call;
    double end;
} Done;

typedef struct {
    PyObject_HEAD
    PyObject *comms; /* dict: communicator handle -> CommState */
    PyObject *adopt; /* callable(comm) -> CommState for a communicator met the first time */
    PyObject *names; /* tuple of operation names, by index */
    PyObject *index; /* dict: operation name -> index */
    OpSpec *ops;
    Py_ssize_t nops;
    Live *live;      /* calls in flight */
    Py_ssize_t nlive, live_cap;
    Py_ssize_t *free_slots;
    Py_ssize_t nfree;
    Py_ssize_t *pending; /* slots of nonblocking calls whose requests MPI has not completed */
    Py_ssize_t npending, pending_cap, cursor;
    Done *ring;      /* completed calls */
    Py_ssize_t capacity, mask, position;
    long long serial;     /* calls entered so far (the serial of the last token) */
    Py_ssize_t forgotten; /* nonblocking calls forgotten in flight */
} Core;

static PyTypeObject CoreType;

static void clear_call(Call *c) { Py_CLEAR(c->state); }

static int Core_traverse(Core *self, visitproc visit, void *arg) {
    Py_VISIT(self->comms);
    Py_VISIT(self->adopt);
    Py_VISIT(self->names);
    Py_VISIT(self->index);
    for (Py_ssize_t i = 0; i < self->nlive; i++) {
        if (self->live[i].token) {
            Py_VISIT(self->live[i].call.state);
            Py_VISIT(self->live[i].request);
        }
    }
    for (Py_ssize_t i = 0; self->ring && i < self->capacity; i++)
        Py_VISIT(self->ring[i].call.state);
    return 0;
}

static int Core_clear(Core *self) {
    Py_CLEAR(self->comms);
    Py_CLEAR(self->adopt);
    Py_CLEAR(self->names);
    Py_CLEAR(self->index);
    if (self->ops) {
        for (Py_ssize_t i = 0; i < self->nops; i++)
            for (int f = 0; f < self->ops[i].nfields; f++) {
                Py_CLEAR(self->ops[i].keyword[f]);
                Py_CLEAR(self->ops[i].fallback[f]);
            }
        PyMem_Free(self->ops);
        self->ops = NULL;
    }
    if (self->live) {
        for (Py_ssize_t i = 0; i < self->nlive; i++) {
            clear_call(&self->live[i].call);
            Py_CLEAR(self->live[i].request);
        }
        PyMem_Free(self->live);
        self->live = NULL;
    }
    self->nlive = self->live_cap = 0;
    PyMem_Free(self->free_slots);
    self->free_slots = NULL;
    self->nfree = 0;
    PyMem_Free(self->pending);
    self->pending = NULL;
    self->npending = self->pending_cap = self->cursor = 0;
    if (self->ring) {
        for (Py_ssize_t i = 0; i < self->capacity; i++)
            clear_call(&self->ring[i].call);
        PyMem_Free(self->ring);
        self->ring = NULL;
    }
    return 0;
}

static void Core_dealloc(Core *self) {
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse_specs(Core *self, PyObject *specs) {
    PyObject *seq = PySequence_Fast(specs, "Core: specs must be a sequence");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    self->ops = PyMem_Calloc(n ? n : 1, sizeof(OpSpec));
    self->names = PyTuple_New(n);
    self->index = PyDict_New();
    if (self->ops == NULL || self->names == NULL || self->index == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    self->nops = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name, *fields;
        int collective, blocking;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "UppO", &name, &collective, &blocking, &fields))
            goto fail;
        OpSpec *op = &self->ops[i];
        op->collective = (char)collective;
        op->blocking = (char)blocking;
        PyObject *fs = PySequence_Fast(fields, "Core: fields must be a sequence");
        if (fs == NULL)
            goto fail;
        Py_ssize_t nf = PySequence_Fast_GET_SIZE(fs);
        for (Py_ssize_t f = 0; f < nf && f < MAX_FIELDS; f++) {
            PyObject *keyword, *fallback;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fs, f), "nUO", &op->position[f], &keyword, &fallback)) {
                Py_DECREF(fs);
                goto fail;
            }
            Py_INCREF(keyword);
            op->keyword[f] = keyword;
            Py_INCREF(fallback);
            op->fallback[f] = fallback;
            op->nfields = (int)f + 1;
        }
        Py_DECREF(fs);
        if (nf > MAX_FIELDS) {
            PyErr_SetString(PyExc_ValueError, "Core: too many argument fields for one operation");
            goto fail;
        }
        Py_INCREF(name);
        PyTuple_SET_ITEM(self->names, i, name);
        PyObject *k = PyLong_FromSsize_t(i);
        if (k == NULL || PyDict_SetItem(self->index, name, k) < 0) {
            Py_XDECREF(k);
            goto fail;
        }
        Py_DECREF(k);
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

/* Core(comms, adopt, capacity, specs): specs is, per operation,
 * (name, collective, blocking, ((position, keyword, default), ...)). */
static int Core_init(Core *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"comms", "adopt", "capacity", "specs", NULL};
    PyObject *comms, *adopt, *specs;
    Py_ssize_t capacity;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OnO", kwlist, &PyDict_Type, &comms, &adopt, &capacity, &specs))
        return -1;
    if (capacity < 1 || (capacity & (capacity - 1))) {
        PyErr_SetString(PyExc_ValueError, "Core: capacity must be a power of two");
        return -1;
    }
    Core_clear(self);
    if (parse_specs(self, specs) < 0)
        return -1;
    self->ring = PyMem_Calloc(capacity, sizeof(Done));
    if (self->ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(comms);
    self->comms = comms;
    Py_INCREF(adopt);
    self->adopt = adopt;
    self->capacity = capacity;
    self->mask = capacity - 1;
    self->position = 0;
    self->serial = 0;
    self->forgotten = 0;
    return 0;
}

static Py_ssize_t take_slot(Core *self) {
    if (self->nfree > 0)
        return self->free_slots[--self->nfree];
    if (self->nlive == self->live_cap) {
        Py_ssize_t cap = self->live_cap ? 2 * self->live_cap : 64;
        if (cap > MAX_LIVE) {
            PyErr_SetString(PyExc_OverflowError, "flight recorder: too many calls in flight");
            return -1;
        }
        Live *live = PyMem_Realloc(self->live, cap * sizeof(Live));
        Py_ssize_t *free_slots = PyMem_Realloc(self->free_slots, cap * sizeof(Py_ssize_t));
        if (live) self->live = live;
        if (free_slots) self->free_slots = free_slots;
        if (live == NULL || free_slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memset(self->live + self->nlive, 0, (cap - self->nlive) * sizeof(Live));
        self->live_cap = cap;
    }
    return self->nlive++;
}

/* Record the start of operation `opi` on `comm`: the slot's index, or -1. */
/* The state of `comm` in `self` (a new reference); `cache`, when given, keeps it for the next call. */
static PyObject *state_of(Core *self, PyObject *comm, CommState **cache) {
    if (cache != NULL && *cache != NULL) {
        Py_INCREF(*cache);
        return (PyObject *)*cache;
    }
    PyObject *handle = PyObject_GetAttr(comm, s_handle);
    if (handle == NULL)
        return NULL;
    PyObject *state = PyDict_GetItemWithError(self->comms, handle);
    Py_DECREF(handle);
    if (state != NULL) {
        Py_INCREF(state);
    } else {
        if (PyErr_Occurred())
            return NULL;
        state = PyObject_CallOneArg(self->adopt, comm);
        if (state == NULL)
            return NULL;
        if (Py_TYPE(state) != &CommStateType) {
            Py_DECREF(state);
            PyErr_SetString(PyExc_TypeError, "flight recorder: adopt() must return a CommState");
            return NULL;
        }
    }
    if (cache != NULL) {
        Py_INCREF(state);
        *cache = (CommState *)state;
    }
    return state;
}

static Py_ssize_t core_enter(Core *self, PyObject *comm, CommState **cache, Py_ssize_t opi, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames) {
    double start = now();
    OpSpec *op = &self->ops[opi];
    PyObject *state = state_of(self, comm, cache);
    if (state == NULL)
        return -1;
    Py_ssize_t i = take_slot(self);
    if (i < 0) {
        Py_DECREF(state);
        return -1;
    }
    CommState *cs = (CommState *)state;
    Live *slot = &self->live[i];
    Call *c = &slot->call;
    c->start = start;
    c->state = cs; /* the reference taken above */
    c->seq = op->collective ? ++cs->coll_entered : ++cs->p2p;
    PyObject *name = PyTuple_GET_ITEM(self->names, opi);
    Py_INCREF(name);
    Py_SETREF(cs->last_op, name);
    c->thread = PyThread_get_thread_ident();
    c->op = (int)opi;
    c->valid = 0;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (int f = 0; f < op->nfields; f++) {
        PyObject *value = NULL;
        if (op->position[f] < nargs) {
            value = args[op->position[f]];
        } else {
            for (Py_ssize_t k = 0; k < nkw && value == NULL; k++)
                if (PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, k), op->keyword[f]) == 0)
                    value = args[nargs + k];
            if (value == NULL)
                value = op->fallback[f];
        }
        if (PyLong_Check(value)) {
            int overflow;
            long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
            if (!overflow && !(v == -1 && PyErr_Occurred())) {
                c->peers[f] = v;
                c->valid |= (unsigned char)(1u << f);
            }
            PyErr_Clear();
        }
    }
    slot->token = (++self->serial << INDEX_BITS) | (long long)i;
    slot->request = NULL;
    return i;
}

/* Move slot `i` to the ring, ended now. */
static void core_finish(Core *self, Py_ssize_t i) {
    Live *slot = &self->live[i];
    double end = now();
    Call *c = &slot->call;
    if (self->ops[c->op].collective && c->seq > c->state->coll_done)
        c->state->coll_done = c->seq;
    Done *d = &self->ring[self->position & self->mask];
    CommState *old = d->call.state;
    d->call = *c; /* the state reference moves to the ring */
    d->end = end;
    c->state = NULL;
    Py_XDECREF(old);
    Py_CLEAR(slot->request);
    slot->token = 0;
    self->free_slots[self->nfree++] = i;
    self->position++;
}

static Py_ssize_t slot_of(Core *self, long long token) {
    Py_ssize_t i = (Py_ssize_t)(token & (MAX_LIVE - 1));
    if (token <= 0 || i >= self->nlive || self->live[i].token != token)
        return -1;
    return i;
}

static void drop_pending(Core *self, Py_ssize_t k) {
    self->pending[k] = self->pending[--self->npending];
    if (self->cursor >= self->npending)
        self->cursor = 0;
}

/* End the held calls whose requests MPI has completed: `limit` of them checked (all when < 0). */
static int core_sweep(Core *self, Py_ssize_t limit) {
    Py_ssize_t checks = (limit < 0 || limit > self->npending) ? self->npending : limit;
    if (self->cursor >= self->npending)
        self->cursor = 0;
    while (checks-- > 0 && self->npending > 0) {
        Py_ssize_t k = self->cursor;
        Py_ssize_t i = self->pending[k];
        Live *slot = &self->live[i];
        int active = slot->token && slot->request ? PyObject_IsTrue(slot->request) : 0;
        if (active < 0)
            return -1;
        if (active) {
            self->cursor = (k + 1 < self->npending) ? k + 1 : 0;
            continue;
        }
        drop_pending(self, k);
        if (slot->token)
            core_finish(self, i);
    }
    return 0;
}

/* After a nonblocking call in slot `i` returned `request`: hold it until MPI completes it. */
static int core_post(Core *self, Py_ssize_t i, PyObject *request) {
    int active = PyObject_IsTrue(request);
    if (active < 0) {
        PyErr_Clear(); /* not a request: nothing to wait for */
        active = 0;
    }
    if (!active) {
        core_finish(self, i);
        return 0;
    }
    if (self->npending == self->pending_cap) {
        Py_ssize_t cap = self->pending_cap ? 2 * self->pending_cap : 64;
        Py_ssize_t *pending = PyMem_Realloc(self->pending, cap * sizeof(Py_ssize_t));
        if (pending == NULL) {
            core_finish(self, i);
            PyErr_NoMemory();
            return -1;
        }
        self->pending = pending;
        self->pending_cap = cap;
    }
    Py_INCREF(request);
    self->live[i].request = request;
    self->pending[self->npending++] = i;
    return 0;
}

static PyObject *call_record(Core *self, Call *c) {
    OpSpec *op = &self->ops[c->op];
    PyObject *peers;
    if (op->nfields == 0) {
        peers = Py_None;
        Py_INCREF(peers);
    } else {
        peers = PyTuple_New(op->nfields);
        if (peers == NULL)
            return NULL;
        for (int f = 0; f < op->nfields; f++) {
            PyObject *v = (c->valid >> f & 1) ? PyLong_FromLongLong(c->peers[f]) : (Py_INCREF(Py_None), Py_None);
            if (v == NULL) {
                Py_DECREF(peers);
                return NULL;
            }
            PyTuple_SET_ITEM(peers, f, v);
        }
    }
    return Py_BuildValue("(dOOLkNO)", c->start, (PyObject *)c->state, PyTuple_GET_ITEM(self->names, c->op), c->seq,
                         c->thread, peers, op->collective ? Py_True : Py_False);
}

/* The index of operation `name`; a name not in the specs joins them as a blocking point-to-point call. */
static Py_ssize_t op_of(Core *self, PyObject *name) {
    PyObject *i = PyDict_GetItemWithError(self->index, name);
    if (i != NULL)
        return PyLong_AsSsize_t(i);
    if (PyErr_Occurred())
        return -1;
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "Core: an operation is named by a str");
        return -1;
    }
    Py_ssize_t n = self->nops;
    OpSpec *ops = PyMem_Realloc(self->ops, (n + 1) * sizeof(OpSpec));
    if (ops == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->ops = ops;
    memset(&ops[n], 0, sizeof(OpSpec));
    ops[n].blocking = 1;
    PyObject *one = PyTuple_Pack(1, name), *names = one ? PySequence_Concat(self->names, one) : NULL;
    PyObject *k = PyLong_FromSsize_t(n);
    Py_XDECREF(one);
    if (names == NULL || k == NULL || PyDict_SetItem(self->index, name, k) < 0) {
        Py_XDECREF(names);
        Py_XDECREF(k);
        return -1;
    }
    Py_DECREF(k);
    Py_SETREF(self->names, names);
    self->nops = n + 1;
    return n;
}

/* enter(comm, op, args, kwargs) -> token: the monitor protocol of commlib.interposer.tracing. */
static PyObject *Core_enter(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "enter(comm, op, args: tuple, kwargs: dict)");
        return NULL;
    }
    Py_ssize_t opi = op_of(self, args[1]);
    if (opi < 0 || core_sweep(self, SWEEP_PER_CALL) < 0)
        return NULL;
    PyObject *call = args[2], *kwargs = args[3];
    Py_ssize_t n = PyTuple_GET_SIZE(call), i;
    if (kwargs == Py_None || !PyDict_Check(kwargs) || PyDict_GET_SIZE(kwargs) == 0) {
        i = core_enter(self, args[0], NULL, opi, &PyTuple_GET_ITEM(call, 0), n, NULL);
    } else { /* lay keywords out as a vectorcall would */
        Py_ssize_t nkw = PyDict_GET_SIZE(kwargs), pos = 0, k = 0;
        PyObject **flat = PyMem_Malloc((n + nkw) * sizeof(PyObject *));
        PyObject *kwnames = PyTuple_New(nkw), *key, *value;
        if (flat == NULL || kwnames == NULL) {
            PyMem_Free(flat);
            Py_XDECREF(kwnames);
            return PyErr_NoMemory();
        }
        for (Py_ssize_t j = 0; j < n; j++)
            flat[j] = PyTuple_GET_ITEM(call, j);
        while (PyDict_Next(kwargs, &pos, &key, &value)) {
            Py_INCREF(key);
            PyTuple_SET_ITEM(kwnames, k, key);
            flat[n + k++] = value;
        }
        i = core_enter(self, args[0], NULL, opi, flat, n, kwnames);
        PyMem_Free(flat);
        Py_DECREF(kwnames);
    }
    return i < 0 ? NULL : PyLong_FromLongLong(self->live[i].token);
}

static PyObject *Core_leave(Core *self, PyObject *token) {
    long long t = PyLong_AsLongLong(token);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t i = slot_of(self, t);
    if (i >= 0 && self->live[i].request == NULL)
        core_finish(self, i);
    Py_RETURN_NONE;
}

static PyObject *Core_post(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "post(token, request)");
        return NULL;
    }
    long long t = PyLong_AsLongLong(args[0]);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t i = slot_of(self, t);
    if (i >= 0 && self->live[i].request == NULL && core_post(self, i, args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core_sweep(Core *self, PyObject *args) {
    Py_ssize_t limit = -1;
    if (!PyArg_ParseTuple(args, "|n", &limit) || core_sweep(self, limit) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core_inflight(Core *self, PyObject *unused) {
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out && i < self->nlive; i++) {
        Live *slot = &self->live[i];
        if (!slot->token)
            continue;
        PyObject *record = call_record(self, &slot->call);
        PyObject *item = record ? Py_BuildValue("(LN)", slot->token, record) : NULL;
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
    }
    return out;
}

static PyObject *Core_completed(Core *self, PyObject *args) {
    Py_ssize_t count = -1;
    if (!PyArg_ParseTuple(args, "|n", &count))
        return NULL;
    Py_ssize_t kept = self->position < self->capacity ? self->position : self->capacity;
    if (count < 0 || count > kept)
        count = kept;
    PyObject *out = PyList_New(count);
    for (Py_ssize_t k = 0; out && k < count; k++) {
        Done *d = &self->ring[(self->position - count + k) & self->mask];
        PyObject *record = call_record(self, &d->call);
        PyObject *item = record ? Py_BuildValue("(Nd)", record, d->end) : NULL;
        if (item == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, k, item);
    }
    return out;
}

typedef struct {
    double start;
    Py_ssize_t slot;
} Aged;

static int by_age(const void *a, const void *b) {
    double x = ((const Aged *)a)->start, y = ((const Aged *)b)->start;
    return (x > y) - (x < y);
}

/* forget(keep) -> dropped: forget the oldest nonblocking calls in flight beyond `keep` calls in flight. */
static PyObject *Core_forget(Core *self, PyObject *arg) {
    Py_ssize_t keep = PyLong_AsSsize_t(arg);
    if (keep == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t excess = self->nlive - self->nfree - keep, n = 0;
    if (excess <= 0)
        return PyLong_FromLong(0);
    Aged *aged = PyMem_Malloc((self->nlive ? self->nlive : 1) * sizeof(Aged));
    if (aged == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < self->nlive; i++) {
        Live *slot = &self->live[i];
        if (slot->token && !self->ops[slot->call.op].blocking) {
            aged[n].slot = i;
            aged[n++].start = slot->call.start;
        }
    }
    qsort(aged, n, sizeof(Aged), by_age);
    Py_ssize_t dropped = excess < n ? excess : n;
    for (Py_ssize_t k = 0; k < dropped; k++) {
        Live *slot = &self->live[aged[k].slot];
        clear_call(&slot->call);
        Py_CLEAR(slot->request);
        slot->token = 0;
        self->free_slots[self->nfree++] = aged[k].slot;
    }
    PyMem_Free(aged);
    self->forgotten += dropped;
    Py_ssize_t kept = 0; /* the held requests of the calls still in flight */
    for (Py_ssize_t k = 0; k < self->npending; k++)
        if (self->live[self->pending[k]].token)
            self->pending[kept++] = self->pending[k];
    self->npending = kept;
    self->cursor = 0;
    return PyLong_FromSsize_t(dropped);
}

static PyObject *Core_get_pending(Core *self, void *closure) { return PyLong_FromSsize_t(self->npending); }

static PyMethodDef Core_methods[] = {
    {"enter", (PyCFunction)(void (*)(void))Core_enter, METH_FASTCALL,
     "enter(comm, op, args, kwargs) -> token: record the start of a call."},
    {"leave", (PyCFunction)Core_leave, METH_O, "leave(token): record the end of a blocking call."},
    {"post", (PyCFunction)(void (*)(void))Core_post, METH_FASTCALL,
     "post(token, request): a nonblocking call returned `request`; it ends when MPI completes it."},
    {"sweep", (PyCFunction)Core_sweep, METH_VARARGS,
     "sweep(limit=-1): end the calls whose requests MPI has completed (check `limit` of them; all if < 0)."},
    {"inflight", (PyCFunction)Core_inflight, METH_NOARGS, "inflight() -> [(token, record)] of the calls in flight."},
    {"completed", (PyCFunction)Core_completed, METH_VARARGS,
     "completed(count=-1) -> [(record, end)]: the last `count` completed calls kept, oldest first."},
    {"forget", (PyCFunction)Core_forget, METH_O,
     "forget(keep) -> dropped: forget the oldest nonblocking calls beyond `keep` calls in flight."},
    {NULL}};

static PyMemberDef Core_members[] = {
    {"position", T_PYSSIZET, offsetof(Core, position), READONLY, "calls completed so far"},
    {"capacity", T_PYSSIZET, offsetof(Core, capacity), READONLY, "completed calls kept"},
    {"recorded", T_LONGLONG, offsetof(Core, serial), READONLY, "calls entered so far"},
    {"forgotten", T_PYSSIZET, offsetof(Core, forgotten), READONLY, "nonblocking calls forgotten in flight"},
    {"names", T_OBJECT, offsetof(Core, names), READONLY, "operation names by index"},
    {NULL}};

static PyGetSetDef Core_getset[] = {
    {"pending", (getter)Core_get_pending, NULL, "nonblocking calls whose requests MPI has not completed", NULL},
    {NULL}};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "transport._flight.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Core(comms, adopt, capacity, specs): the application-side half of a flight recorder.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_methods = Core_methods,
    .tp_members = Core_members,
    .tp_getset = Core_getset,
};

/* -- SpecCache: messages known to go to MPI ------------------------------------------------------- */

/* For an (operation, datatype object, count) whose messages go to MPI, what a repeated call needs:
 * the byte range the message touches (checked against the buffer), the datatype MPI gets instead
 * (or none), and for a message not yet analysed how many more uses it may have before it is. */
typedef struct {
    PyObject *datatype; /* strong: the address cannot be reused while cached; NULL: a free entry */
    PyObject *twin;     /* the datatype MPI gets, or NULL for the message's own */
    Py_ssize_t count, lo, hi, nbytes;
    long long remaining; /* uses left before analysis (-1: analysed) */
    long long calls, bytes;
    long long epoch;
    int op;
    char writable;
} Known;

#define KNOWN 512

typedef struct {
    PyObject_HEAD
    Known table[KNOWN];
} SpecCache;

static PyTypeObject SpecCacheType;

static Known *known_slot(SpecCache *self, int op, PyObject *datatype, Py_ssize_t count) {
    size_t h = ((uintptr_t)datatype >> 4) * 31u + (size_t)count * 7u + (size_t)op;
    return &self->table[h % KNOWN];
}

static void known_clear(Known *k) {
    Py_CLEAR(k->datatype);
    Py_CLEAR(k->twin);
}

static int SpecCache_traverse(SpecCache *self, visitproc visit, void *arg) {
    for (int i = 0; i < KNOWN; i++) {
        Py_VISIT(self->table[i].datatype);
        Py_VISIT(self->table[i].twin);
    }
    return 0;
}

static int SpecCache_clear(SpecCache *self) {
    for (int i = 0; i < KNOWN; i++)
        known_clear(&self->table[i]);
    return 0;
}

static void SpecCache_dealloc(SpecCache *self) {
    PyObject_GC_UnTrack(self);
    SpecCache_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The spec's cached entry and its buffer checked: the entry, or NULL (take the full path). */
static Known *known_for(SpecCache *self, int op, PyObject *spec) {
    if (!(PyList_CheckExact(spec) || PyTuple_CheckExact(spec)) || PySequence_Fast_GET_SIZE(spec) != 3)
        return NULL;
    PyObject **items = PySequence_Fast_ITEMS(spec);
    if (!PyLong_CheckExact(items[1]))
        return NULL;
    Py_ssize_t count = PyLong_AsSsize_t(items[1]);
    if (count == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return NULL;
    }
    Known *k = known_slot(self, op, items[2], count);
    if (k->datatype != items[2] || k->count != count || k->op != op || k->epoch != epoch)
        return NULL;
    int alive = PyObject_IsTrue(k->datatype); /* a freed datatype is null */
    if (alive <= 0) {
        PyErr_Clear();
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(items[0], &view, PyBUF_C_CONTIGUOUS | (k->writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Clear();
        return NULL;
    }
    int fits = k->lo >= 0 && k->hi <= view.len;
    PyBuffer_Release(&view);
    if (!fits)
        return NULL;
    if (k->remaining >= 0 && --k->remaining <= 0) { /* its analysis may now pay: the full path does it */
        known_clear(k);
        return NULL;
    }
    k->calls++;
    k->bytes += k->nbytes;
    return k;
}

/* The spec MPI gets for a cached entry: the spec itself, or [buf, count, twin]. */
static PyObject *known_spec(Known *k, PyObject *spec) {
    if (k->twin == NULL) {
        Py_INCREF(spec);
        return spec;
    }
    PyObject **items = PySequence_Fast_ITEMS(spec);
    PyObject *out = PyList_New(3);
    if (out == NULL)
        return NULL;
    Py_INCREF(items[0]);
    PyList_SET_ITEM(out, 0, items[0]);
    Py_INCREF(items[1]);
    PyList_SET_ITEM(out, 1, items[1]);
    Py_INCREF(k->twin);
    PyList_SET_ITEM(out, 2, k->twin);
    return out;
}

/* add(op, datatype, count, lo, hi, twin, nbytes, remaining, writable) */
static PyObject *SpecCache_add(SpecCache *self, PyObject *args) {
    int op, writable;
    PyObject *datatype, *twin;
    Py_ssize_t count, lo, hi, nbytes;
    long long remaining;
    if (!PyArg_ParseTuple(args, "iOnnnOnLp", &op, &datatype, &count, &lo, &hi, &twin, &nbytes, &remaining, &writable))
        return NULL;
    Known *k = known_slot(self, op, datatype, count);
    known_clear(k);
    Py_INCREF(datatype);
    k->datatype = datatype;
    if (twin != Py_None) {
        Py_INCREF(twin);
        k->twin = twin;
    }
    k->op = op;
    k->count = count;
    k->lo = lo;
    k->hi = hi;
    k->nbytes = nbytes;
    k->remaining = remaining;
    k->writable = (char)writable;
    k->calls = k->bytes = 0;
    k->epoch = epoch;
    Py_RETURN_NONE;
}

/* lookup(op, spec) -> the spec for MPI, or None */
static PyObject *SpecCache_lookup(SpecCache *self, PyObject *args) {
    int op;
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "iO", &op, &spec))
        return NULL;
    Known *k = known_for(self, op, spec);
    if (k == NULL)
        Py_RETURN_NONE;
    return known_spec(k, spec);
}

/* drain() -> [(op, datatype, count, calls, bytes)]: the uses counted since the last drain */
static PyObject *SpecCache_drain(SpecCache *self, PyObject *unused) {
    PyObject *out = PyList_New(0);
    for (int i = 0; out && i < KNOWN; i++) {
        Known *k = &self->table[i];
        if (k->datatype == NULL || k->calls == 0)
            continue;
        PyObject *item = Py_BuildValue("(iOnLL)", k->op, k->datatype, k->count, k->calls, k->bytes);
        if (item == NULL || PyList_Append(out, item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
        k->calls = k->bytes = 0;
    }
    return out;
}

static PyObject *SpecCache_clear_all(SpecCache *self, PyObject *unused) {
    SpecCache_clear(self);
    Py_RETURN_NONE;
}

static PyMethodDef SpecCache_methods[] = {
    {"add", (PyCFunction)SpecCache_add, METH_VARARGS,
     "add(op, datatype, count, lo, hi, twin, nbytes, remaining, writable): messages of (op, datatype object, "
     "count) go to MPI as `twin` (None: as they are) while their buffer holds bytes [lo, hi); `remaining` uses "
     "before the full path must see one again (-1: never)."},
    {"lookup", (PyCFunction)SpecCache_lookup, METH_VARARGS,
     "lookup(op, spec) -> the spec to hand MPI for a known message, or None; counts the use."},
    {"drain", (PyCFunction)SpecCache_drain, METH_NOARGS,
     "drain() -> [(op, datatype, count, calls, bytes)] counted since the last drain."},
    {"clear", (PyCFunction)SpecCache_clear_all, METH_NOARGS, "clear(): forget every entry."},
    {NULL}};

static PyTypeObject SpecCacheType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "transport._flight.SpecCache",
    .tp_basicsize = sizeof(SpecCache),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "SpecCache(): derived-datatype messages known to go to MPI, found again in a few comparisons.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)SpecCache_dealloc,
    .tp_traverse = (traverseproc)SpecCache_traverse,
    .tp_clear = (inquiry)SpecCache_clear,
    .tp_methods = SpecCache_methods,
};

/* -- Traced: a recording method descriptor -------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *name;
    PyObject *method;   /* called with (comm, *args): commlib's method, or mpi4py's */
    PyObject *fast;     /* mpi4py's method, called instead when no buffer argument is a spec; or NULL */
    PyObject *fallback; /* called instead of everything here for a monitor without a Core */
    PyObject *doc;
    Py_ssize_t op;
    unsigned long buffers; /* bit i: positional argument i (after the communicator) is a buffer */
    char nonblocking;
    char splitter; /* the fast path also needs the communicator's _splitter to be None */
    char known;    /* the first argument may be a spec the session's SpecCache knows */
} Traced;

/* What a call needs to know of its communicator, kept for the last few communicators used: the core
 * its session records into (NULL: none; else a new reference), and whether it has no flow splitter.
 * Valid while `epoch` is unchanged: invalidate() moves it whenever a session's monitor, a
 * communicator's session or its splitter changes. */
typedef struct {
    PyObject *comm;   /* a strong reference, so the address cannot be reused while cached */
    PyObject *core;   /* the session's `_core`: a Core, None, or a monitor of another kind */
    PyObject *specs;  /* the session's `_specs`: a SpecCache, or NULL */
    CommState *state; /* the communicator's state in that Core, once known */
    long long epoch;
    char plain;
} Seen;

#define SEEN 16
static Seen seen[SEEN];

static PyObject *invalidate(PyObject *module, PyObject *unused) {
    epoch++;
    Py_RETURN_NONE;
}

/* Called as retry(name, method, args, kwargs) when a traced call raises BufferError: it may move the
 * buffers mpi4py refused some other way, or return NotImplemented to let the error through. */
static PyObject *retry_hook = NULL;

static PyObject *set_retry(PyObject *module, PyObject *hook) {
    if (hook != Py_None && !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError, "set_retry: expected a callable or None");
        return NULL;
    }
    Py_XSETREF(retry_hook, hook == Py_None ? NULL : Py_NewRef(hook));
    Py_RETURN_NONE;
}

/* target(*call): on BufferError, what the retry hook makes of the call (with `method`, commlib's method). */
static PyObject *call_target(Traced *self, PyObject *target, PyObject *const *call, size_t nargsf,
                             PyObject *kwnames) {
    PyObject *result = PyObject_Vectorcall(target, call, nargsf, kwnames);
    if (result != NULL || retry_hook == NULL || !PyErr_ExceptionMatches(PyExc_BufferError))
        return result;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject *args = PyTuple_New(nargs), *kwargs = PyDict_New();
    if (args != NULL && kwargs != NULL) {
        for (Py_ssize_t i = 0; i < nargs; i++)
            PyTuple_SET_ITEM(args, i, Py_NewRef(call[i]));
        for (Py_ssize_t i = 0; i < nkw; i++)
            if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), call[nargs + i]) < 0)
                break;
        if (!PyErr_Occurred()) {
            PyObject *hook = Py_NewRef(retry_hook); /* set_retry may replace it during the call */
            result = PyObject_CallFunctionObjArgs(hook, self->name, self->method, args, kwargs, NULL);
            Py_DECREF(hook);
        }
    }
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    if (result == Py_NotImplemented) {
        Py_CLEAR(result);
        PyErr_Restore(type, value, traceback); /* nothing to move another way: mpi4py's error stands */
        return NULL;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    return result;
}

static Seen *seen_of(PyObject *comm) {
    Seen *e = &seen[((uintptr_t)comm >> 4) % SEEN];
    if (e->comm == comm && e->epoch == epoch)
        return e;
    PyObject *session = PyObject_GetAttr(comm, s_session);
    if (session == NULL)
        return NULL;
    PyObject *core = Py_None, *specs = NULL;
    Py_INCREF(core);
    if (session != Py_None) {
        Py_DECREF(core);
        core = PyObject_GetAttr(session, s_core);
        specs = core ? PyObject_GetAttr(session, s_specs) : NULL;
        if (specs == NULL || Py_TYPE(specs) != &SpecCacheType) {
            PyErr_Clear();
            Py_CLEAR(specs);
        }
    }
    Py_DECREF(session);
    if (core == NULL)
        return NULL;
    PyObject *splitter = PyObject_GetAttr(comm, s_splitter);
    if (splitter == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            Py_DECREF(core);
            return NULL;
        }
        PyErr_Clear();
    }
    Py_INCREF(comm);
    Py_XSETREF(e->comm, comm);
    Py_XSETREF(e->core, core);
    Py_XSETREF(e->specs, specs);
    Py_CLEAR(e->state);
    e->plain = splitter == NULL || splitter == Py_None;
    Py_XDECREF(splitter);
    e->epoch = epoch;
    return e;
}

static PyObject *Traced_vectorcall(Traced *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%U() needs a communicator", self->name);
        return NULL;
    }
    PyObject *comm = args[0];
    Seen *e = seen_of(comm);
    if (e == NULL)
        return NULL;
    PyObject *target = self->method;
    if (self->fast != NULL && kwnames == NULL && (e->plain || !self->splitter)) {
        int plain = 1;
        unsigned long bits = self->buffers;
        for (Py_ssize_t i = 0; bits && i + 1 < nargs; i++, bits >>= 1) {
            PyObject *a = args[i + 1];
            if ((bits & 1) && (PyList_Check(a) || PyTuple_Check(a))) {
                plain = 0;
                break;
            }
        }
        if (plain)
            target = self->fast;
    }
    PyObject *local[8], *replaced = NULL;
    PyObject *const *call = args;
    if (target == self->method && self->known && e->specs != NULL && kwnames == NULL && nargs >= 2 && nargs <= 8 &&
        (e->plain || !self->splitter)) {
        Known *k = known_for((SpecCache *)e->specs, (int)self->op, args[1]);
        if (k != NULL) { /* a message known to go to MPI: straight to mpi4py, with its spec for MPI */
            replaced = known_spec(k, args[1]);
            if (replaced == NULL)
                return NULL;
            memcpy(local, args, nargs * sizeof(PyObject *));
            local[1] = replaced;
            call = local;
            nargsf = (size_t)nargs;
            target = self->fast;
        }
    }
    PyObject *core = e->core;
    PyObject *result = NULL;
    if (Py_TYPE(core) != &CoreType) { /* None: no monitor; anything else: a monitor of its own kind */
        result = call_target(self, core == Py_None ? target : self->fallback, call, nargsf, kwnames);
        Py_XDECREF(replaced);
        return result;
    }
    Py_INCREF(core); /* the call may replace the cache entry */
    Core *c = (Core *)core;
    Py_ssize_t i;
    long long token;
    if (core_sweep(c, SWEEP_PER_CALL) < 0 || (i = core_enter(c, comm, &e->state, self->op, args + 1, nargs - 1, kwnames)) < 0)
        goto done;
    token = c->live[i].token;
    result = call_target(self, target, call, nargsf, kwnames);
    i = slot_of(c, token); /* the slot may have moved if the call entered others */
    if (i < 0)
        goto done;
    if (result == NULL || !self->nonblocking)
        core_finish(c, i);
    else if (core_post(c, i, result) < 0)
        Py_CLEAR(result);
done:
    Py_DECREF(core);
    Py_XDECREF(replaced);
    return result;
}

static PyObject *Traced_call(Traced *self, PyObject *args, PyObject *kwargs) {
    return PyVectorcall_Call((PyObject *)self, args, kwargs);
}

static PyObject *Traced_get(PyObject *self, PyObject *obj, PyObject *type) {
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

/* Traced(name, op, method, fast, fallback, buffers, nonblocking, splitter, known) */
static int Traced_init(Traced *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name",    "op",          "method",   "fast",  "fallback",
                             "buffers", "nonblocking", "splitter", "known", NULL};
    PyObject *name, *method, *fast, *fallback;
    Py_ssize_t op;
    unsigned long buffers;
    int nonblocking, splitter, known = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UnOOOkpp|p", kwlist, &name, &op, &method, &fast, &fallback,
                                     &buffers, &nonblocking, &splitter, &known))
        return -1;
    if (known && fast == Py_None) {
        PyErr_SetString(PyExc_ValueError, "Traced: a method with known specs needs mpi4py's method as `fast`");
        return -1;
    }
    if (!PyCallable_Check(method) || !PyCallable_Check(fallback) || (fast != Py_None && !PyCallable_Check(fast))) {
        PyErr_SetString(PyExc_TypeError, "Traced: method, fast and fallback must be callable");
        return -1;
    }
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    Py_INCREF(method);
    Py_XSETREF(self->method, method);
    Py_INCREF(fallback);
    Py_XSETREF(self->fallback, fallback);
    if (fast == Py_None) {
        Py_CLEAR(self->fast);
    } else {
        Py_INCREF(fast);
        Py_XSETREF(self->fast, fast);
    }
    Py_XSETREF(self->doc, PyObject_GetAttrString(method, "__doc__"));
    if (self->doc == NULL) {
        PyErr_Clear();
        Py_INCREF(Py_None);
        self->doc = Py_None;
    }
    self->op = op;
    self->buffers = buffers;
    self->nonblocking = (char)nonblocking;
    self->splitter = (char)splitter;
    self->known = (char)known;
    self->vectorcall = (vectorcallfunc)Traced_vectorcall;
    return 0;
}

static int Traced_traverse(Traced *self, visitproc visit, void *arg) {
    Py_VISIT(self->name);
    Py_VISIT(self->method);
    Py_VISIT(self->fast);
    Py_VISIT(self->fallback);
    Py_VISIT(self->doc);
    return 0;
}

static int Traced_clear(Traced *self) {
    Py_CLEAR(self->name);
    Py_CLEAR(self->method);
    Py_CLEAR(self->fast);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->doc);
    return 0;
}

static void Traced_dealloc(Traced *self) {
    PyObject_GC_UnTrack(self);
    Traced_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Traced_members[] = {{"__name__", T_OBJECT, offsetof(Traced, name), READONLY, NULL},
                                       {"__qualname__", T_OBJECT, offsetof(Traced, name), READONLY, NULL},
                                       {"__doc__", T_OBJECT, offsetof(Traced, doc), READONLY, NULL},
                                       {"__wrapped__", T_OBJECT, offsetof(Traced, method), READONLY, NULL},
                                       {NULL}};

static PyTypeObject TracedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "transport._flight.Traced",
    .tp_basicsize = sizeof(Traced),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A communicator method that records its calls in the session's flight recorder.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Traced_init,
    .tp_dealloc = (destructor)Traced_dealloc,
    .tp_traverse = (traverseproc)Traced_traverse,
    .tp_clear = (inquiry)Traced_clear,
    .tp_call = (ternaryfunc)Traced_call,
    .tp_descr_get = Traced_get,
    .tp_vectorcall_offset = offsetof(Traced, vectorcall),
    .tp_members = Traced_members,
};

static PyMethodDef module_methods[] = {
    {"set_retry", set_retry, METH_O,
     "set_retry(hook): on BufferError a traced call returns hook(name, method, args, kwargs) unless that is "
     "NotImplemented (None: no hook)."},
    {"invalidate", invalidate, METH_NOARGS,
     "invalidate(): forget what traced calls know of communicators (a session's monitor, a communicator's "
     "session or its splitter changed)."},
    {NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_flight",
    .m_doc = "The flight recorder's per-call path in C (see transport.flight).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__flight(void) {
    if (PyType_Ready(&CommStateType) < 0 || PyType_Ready(&CoreType) < 0 || PyType_Ready(&SpecCacheType) < 0 ||
        PyType_Ready(&TracedType) < 0)
        return NULL;
#define INTERN(var, text)                                                                                              \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                                              \
        return NULL;
    INTERN(s_handle, "handle");
    INTERN(s_session, "_session");
    INTERN(s_core, "_core");
    INTERN(s_splitter, "_splitter");
    INTERN(s_specs, "_specs");
#undef INTERN
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CommStateType);
    Py_INCREF(&CoreType);
    Py_INCREF(&TracedType);
    Py_INCREF(&SpecCacheType);
    if (PyModule_AddObject(m, "CommState", (PyObject *)&CommStateType) < 0 ||
        PyModule_AddObject(m, "Core", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObject(m, "SpecCache", (PyObject *)&SpecCacheType) < 0 ||
        PyModule_AddObject(m, "Traced", (PyObject *)&TracedType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

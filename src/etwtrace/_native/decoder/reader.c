#include "reader.h"

#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* open_trace yields every event of a capture in time order.  Decoding each
 * stream, making its Event objects and merging the streams all happen here:
 * tens of millions of events in seconds, in memory that does not grow with
 * the trace (a stream is mapped and its decoded pages given back). */

typedef struct {
    PyObject_HEAD
    PyObject *name;
    PyObject *opcode;
    PyObject *fields;
    PyObject *stack;
    PyObject *frames;
    long long pid;
    long long tid;
    unsigned long long timestamp;
    int image;              /* 1, or 2... for the programs a process exec'd */
} EventObject;

static PyObject *trace_error;       /* etwtrace.TraceError, set by configure() */
static PyObject *event_names[ETW_N_EVENTS];
static PyObject *event_opcodes[ETW_N_EVENTS];
static PyObject *field_names[ETW_N_EVENTS][ETW_MAX_FIELDS];
static PyObject *empty_tuple;
static PyObject *key_function_id, *key_caller, *key_caller_line;

static void
event_dealloc(EventObject *self)
{
    Py_XDECREF(self->name);
    Py_XDECREF(self->opcode);
    Py_XDECREF(self->fields);
    Py_XDECREF(self->stack);
    Py_XDECREF(self->frames);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
event_init(EventObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "opcode", "pid", "tid", "timestamp", "fields", "stack",
                               "image", NULL};
    PyObject *name, *opcode, *fields, *stack;
    long long pid, tid;
    unsigned long long ts;
    int image = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOLLKOO|i:Event", keywords, &name, &opcode,
                                     &pid, &tid, &ts, &fields, &stack, &image)) {
        return -1;
    }
    self->image = image;
    Py_XSETREF(self->name, Py_NewRef(name));
    Py_XSETREF(self->opcode, Py_NewRef(opcode));
    Py_XSETREF(self->fields, Py_NewRef(fields));
    Py_XSETREF(self->stack, Py_NewRef(stack));
    Py_XSETREF(self->frames, Py_NewRef(empty_tuple));
    self->pid = pid;
    self->tid = tid;
    self->timestamp = ts;
    return 0;
}

static PyObject *
event_repr(EventObject *self)
{
    Py_ssize_t depth = self->stack && PyTuple_Check(self->stack) ? PyTuple_GET_SIZE(self->stack) : 0;
    if (self->opcode != NULL && self->opcode != Py_None) {
        return PyUnicode_FromFormat("<Event %S/%S pid=%lld tid=%lld t=%llu %R stack=%zd>",
                                    self->name, self->opcode, self->pid, self->tid,
                                    self->timestamp, self->fields, depth);
    }
    return PyUnicode_FromFormat("<Event %S pid=%lld tid=%lld t=%llu %R stack=%zd>", self->name,
                                self->pid, self->tid, self->timestamp, self->fields, depth);
}

static PyMemberDef event_members[] = {
    {"name", T_OBJECT, offsetof(EventObject, name), 0, "the event's name"},
    {"opcode", T_OBJECT, offsetof(EventObject, opcode), 0, "'start', 'stop' or None"},
    {"fields", T_OBJECT, offsetof(EventObject, fields), 0, "dict keyed by field names"},
    {"stack", T_OBJECT, offsetof(EventObject, stack), 0,
     "instruction addresses, innermost first (empty when none)"},
    {"frames", T_OBJECT, offsetof(EventObject, frames), 0, "perf's (symbol, dso) per address"},
    {"pid", T_LONGLONG, offsetof(EventObject, pid), 0, NULL},
    {"tid", T_LONGLONG, offsetof(EventObject, tid), 0, NULL},
    {"timestamp", T_ULONGLONG, offsetof(EventObject, timestamp), 0, "ns, CLOCK_MONOTONIC"},
    {"image", T_INT, offsetof(EventObject, image), 0,
     "which program of the process: 1, then 2, 3... after each exec; a process is\n"
     "(pid, image), and FunctionIDs are per (pid, image)"},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject EventType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "etwtrace.Event",
    .tp_basicsize = sizeof(EventObject),
    .tp_dealloc = (destructor)event_dealloc,
    .tp_repr = (reprfunc)event_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One event.  `fields` is keyed by the schema's field names; `stack` holds\n"
              "instruction addresses, innermost first (empty when none).",
    .tp_members = event_members,
    .tp_init = (initproc)event_init,
    .tp_new = PyType_GenericNew,
};

/* A new Event, taking the references to fields and stack. */
static PyObject *
new_event(PyObject *name, PyObject *opcode, long long pid, int image, long long tid, uint64_t ts,
          PyObject *fields, PyObject *stack)
{
    EventObject *e = PyObject_New(EventObject, &EventType);
    if (e == NULL) {
        Py_DECREF(fields);
        Py_DECREF(stack);
        return NULL;
    }
    e->name = Py_NewRef(name);
    e->opcode = Py_NewRef(opcode);
    e->fields = fields;
    e->stack = stack;
    e->frames = Py_NewRef(empty_tuple);
    e->pid = pid;
    e->image = image;
    e->tid = tid;
    e->timestamp = ts;
    return (PyObject *)e;
}

int
make_names(void)
{
    if (empty_tuple != NULL) {
        return 0;
    }
    empty_tuple = PyTuple_New(0);
    key_function_id = PyUnicode_InternFromString("FunctionID");
    key_caller = PyUnicode_InternFromString("Caller");
    key_caller_line = PyUnicode_InternFromString("CallerLine");
    if (empty_tuple == NULL || key_function_id == NULL || key_caller == NULL ||
        key_caller_line == NULL) {
        return -1;
    }
    for (size_t i = 0; i < ETW_N_EVENTS; i++) {
        const EtwEventDecl *e = &etw_event_decls[i];
        event_names[i] = PyUnicode_InternFromString(e->name);
        event_opcodes[i] = e->opcode ? PyUnicode_InternFromString(e->opcode) : Py_NewRef(Py_None);
        if (event_names[i] == NULL || event_opcodes[i] == NULL) {
            return -1;
        }
        for (uint32_t f = 0; f < e->n_fields; f++) {
            field_names[i][f] = PyUnicode_InternFromString(e->fields[f].name);
            if (field_names[i][f] == NULL) {
                return -1;
            }
        }
    }
    return 0;
}

/* The reader of one stream. */
typedef struct {
    PyObject_HEAD
    PyObject *path;
    FileData file;
    Py_buffer tail;
    Cursor c;
    long long pid;
    int image;
    uint32_t *open;          /* the thread's open pushes (FunctionIDs) */
    size_t depth, cap;
    int done;
    int partial;             /* corruption ends the stream with a warning */
} ReaderObject;

static void
reader_dealloc(ReaderObject *self)
{
    unmap_file(&self->file);
    if (self->tail.buf != NULL) {
        PyBuffer_Release(&self->tail);
    }
    Py_XDECREF(self->path);
    free(self->open);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
reader_init(ReaderObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"path", "pid", "version", "length", "tail", "fd", "image",
                               "partial", NULL};
    PyObject *path;
    long long pid;
    int version = ETW_FORMAT_VERSION, fd = -1, image = 1, partial = 0;
    Py_ssize_t length = -1;
    if (self->path != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Reader is set up once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OL|inz*iip:Reader", keywords, &path, &pid,
                                     &version, &length, &self->tail, &fd, &image, &partial)) {
        return -1;
    }
    if (make_names() < 0 || map_file(path, fd, &self->file) < 0) {
        return -1;
    }
    self->path = Py_NewRef(path);
    self->pid = pid;
    self->image = image;
    self->partial = partial;
    memset(&self->c, 0, sizeof(self->c));
    self->c.data = self->file.data;
    self->c.size = length >= 0 && (size_t)length < self->file.size ? (size_t)length : self->file.size;
    self->c.mapped = 1;
    self->c.head_size = head_size_of(version);
    self->c.zero_ends = version >= 2;
    self->c.tail = self->tail.buf;
    self->c.tail_size = self->tail.buf != NULL ? (size_t)self->tail.len : 0;
    return 0;
}

/* Matches a pop to the open pushes as the decoders do: the innermost, or
 * (events were lost) the innermost with that id, closing those above. */
static void
reader_pop(ReaderObject *r, uint32_t fid)
{
    for (size_t i = r->depth; i-- > 0;) {
        if (r->open[i] == fid) {
            r->depth = i;
            return;
        }
    }
}

static int
reader_push(ReaderObject *r, uint32_t fid)
{
    if (r->depth == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        uint32_t *open = realloc(r->open, cap * sizeof *open);
        if (open == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->open = open;
        r->cap = cap;
    }
    r->open[r->depth++] = fid;
    return 0;
}

/* fields dict of a push or pop; NULL with an exception, or 0 in *short. */
static PyObject *
push_pop_fields(ReaderObject *r, RawEvent *ev, size_t *used)
{
    const unsigned char *p = ev->payload;
    uint32_t fid, caller = 0, line = 0;
    int push = is_push(ev->id);
    if (!push_pop(ev, &fid, used)) {
        return NULL;
    }
    if (ev->id == ETW_EV_PUSH) {
        caller = rd32(p + 4);
        line = rd32(p + 8);
    }
    else if (ev->id == ETW_EV_PUSH_COMPACT) {
        caller = r->depth ? r->open[r->depth - 1] : 0;
        line = rd16(p + 2);
    }
    PyObject *fields = PyDict_New();
    PyObject *v = fields ? PyLong_FromUnsignedLong(fid) : NULL;
    if (v == NULL || PyDict_SetItem(fields, key_function_id, v) < 0) {
        goto error;
    }
    Py_DECREF(v);
    if (push) {
        v = PyLong_FromUnsignedLong(caller);
        if (v == NULL || PyDict_SetItem(fields, key_caller, v) < 0) {
            goto error;
        }
        Py_DECREF(v);
        v = PyLong_FromUnsignedLong(line);
        if (v == NULL || PyDict_SetItem(fields, key_caller_line, v) < 0) {
            goto error;
        }
        Py_DECREF(v);
        if (reader_push(r, fid) < 0) {
            Py_DECREF(fields);
            return NULL;
        }
    }
    else {
        reader_pop(r, fid);
    }
    return fields;

error:
    Py_XDECREF(v);
    Py_XDECREF(fields);
    if (!PyErr_Occurred()) {
        PyErr_NoMemory();
    }
    return NULL;
}

static PyObject *
reader_corrupt(ReaderObject *r)
{
    if (r->partial) {
        /* What came before the damage was given out; the rest is left. */
        r->done = 1;
        PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "%S: corrupt trace (%s); the events "
                         "after it are left out", r->path, r->c.error);
        return NULL;
    }
    PyErr_Format(trace_error ? trace_error : PyExc_ValueError, "%S: corrupt trace (%s)", r->path,
                 r->c.error);
    return NULL;
}

/* The stream is over: NULL, after a warning when it was cut short. */
static PyObject *
reader_end(ReaderObject *r)
{
    r->done = 1;
    if (r->c.truncated) {
        PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "%S: trace truncated mid-packet; "
                         "reporting the complete events before it", r->path);
    }
    return NULL;
}

static PyObject *
reader_next(ReaderObject *r)
{
    if (r->done) {
        return NULL;
    }
    RawEvent ev;
    int got = next_event(&r->c, &ev);
    if (got < 0) {
        r->done = 1;
        return reader_corrupt(r);
    }
    if (got > 0) {
        size_t used = 0;
        PyObject *fields, *stack = Py_NewRef(empty_tuple);
        long long tid = r->c.tid;
        if (is_push(ev.id) || is_pop(ev.id)) {
            fields = push_pop_fields(r, &ev, &used);
            if (fields == NULL && !PyErr_Occurred()) {
                int stop = bad_payload(&r->c, "short push/pop event");
                Py_DECREF(stack);
                r->done = 1;
                return stop < 0 ? reader_corrupt(r) : reader_end(r);
            }
        }
        else {
            int stop = 0;
            PyObject *values = decode_other(&r->c, &ev, &used, &stop);
            if (values == NULL) {
                Py_DECREF(stack);
                r->done = 1;
                return PyErr_Occurred() ? NULL : (stop < 0 ? reader_corrupt(r) : reader_end(r));
            }
            const EtwEventDecl *e = &etw_event_decls[ev.id];
            fields = PyDict_New();
            for (uint32_t f = 0; fields != NULL && f < e->n_fields; f++) {
                PyObject *value = PyTuple_GET_ITEM(values, f);
                if (e->fields[f].type == ETW_T_ADDRESSES) {
                    Py_SETREF(stack, Py_NewRef(value));
                }
                else if (PyDict_SetItem(fields, field_names[ev.id][f], value) < 0) {
                    Py_CLEAR(fields);
                }
            }
            /* Thread events are about the thread their ThreadId names. */
            if (fields != NULL && (ev.id <= ETW_EV_THREAD_STOP || ev.id == ETW_EV_THREAD_NAME)) {
                tid = (long long)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(values, 0));
            }
            Py_DECREF(values);
        }
        if (fields == NULL) {
            Py_DECREF(stack);
            return NULL;
        }
        r->c.pos += used;
        return new_event(event_names[ev.id], event_opcodes[ev.id], r->pid, r->image, tid, ev.ts,
                         fields, stack);
    }
    return reader_end(r);
}

PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "etwtrace._ctfdecode.Reader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(path, pid, version=FORMAT_VERSION, length=-1, tail=None, fd=-1, image=1,\n"
              "partial=False): the events of one stream, in order, as Event objects (the\n"
              "first `length` bytes of the file open at `fd`, or of `path`, then the packets\n"
              "in `tail`).  With partial, damage ends the stream with a RuntimeWarning.",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)reader_next,
    .tp_init = (initproc)reader_init,
    .tp_new = PyType_GenericNew,
};

/* Merge(iterables): their events in timestamp order (each already in
 * order); among equal timestamps, in the order of the iterables. */
typedef struct {
    uint64_t ts;
    size_t source;
    PyObject *event;
} HeapItem;

typedef struct {
    PyObject_HEAD
    PyObject **sources;
    size_t n_sources;
    HeapItem *heap;
    size_t n_heap;
    int started;
} MergeObject;

static void
merge_dealloc(MergeObject *self)
{
    for (size_t i = 0; i < self->n_sources; i++) {
        Py_XDECREF(self->sources[i]);
    }
    for (size_t i = 0; i < self->n_heap; i++) {
        Py_XDECREF(self->heap[i].event);
    }
    free(self->sources);
    free(self->heap);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
merge_init(MergeObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *iterables;
    static char *keywords[] = {"iterables", NULL};
    if (self->sources != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Merge is set up once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Merge", keywords, &iterables)) {
        return -1;
    }
    PyObject *seq = PySequence_Fast(iterables, "Merge takes a sequence of iterables");
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    self->sources = calloc((size_t)n + 1, sizeof(PyObject *));
    self->heap = calloc((size_t)n + 1, sizeof(HeapItem));
    if (self->sources == NULL || self->heap == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        self->sources[i] = PyObject_GetIter(PySequence_Fast_GET_ITEM(seq, i));
        if (self->sources[i] == NULL) {
            Py_DECREF(seq);
            return -1;
        }
        self->n_sources = (size_t)i + 1;
    }
    Py_DECREF(seq);
    return 0;
}

static int
timestamp_of(PyObject *event, uint64_t *ts)
{
    if (Py_IS_TYPE(event, &EventType)) {
        *ts = ((EventObject *)event)->timestamp;
        return 0;
    }
    PyObject *value = PyObject_GetAttrString(event, "timestamp");
    if (value == NULL) {
        return -1;
    }
    *ts = PyLong_AsUnsignedLongLong(value);
    Py_DECREF(value);
    return *ts == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

static int
heap_less(const HeapItem *a, const HeapItem *b)
{
    return a->ts < b->ts || (a->ts == b->ts && a->source < b->source);
}

static void
heap_down(MergeObject *m, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        if (l < m->n_heap && heap_less(&m->heap[l], &m->heap[best])) {
            best = l;
        }
        if (r < m->n_heap && heap_less(&m->heap[r], &m->heap[best])) {
            best = r;
        }
        if (best == i) {
            return;
        }
        HeapItem t = m->heap[i];
        m->heap[i] = m->heap[best];
        m->heap[best] = t;
        i = best;
    }
}

static void
heap_up(MergeObject *m, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(&m->heap[i], &m->heap[parent])) {
            return;
        }
        HeapItem t = m->heap[i];
        m->heap[i] = m->heap[parent];
        m->heap[parent] = t;
        i = parent;
    }
}

/* Pulls the next event of source `s` into the heap; -1 with an exception. */
static int
merge_pull(MergeObject *m, size_t s)
{
    PyObject *event = PyIter_Next(m->sources[s]);
    if (event == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    HeapItem item = {0, s, event};
    if (timestamp_of(event, &item.ts) < 0) {
        Py_DECREF(event);
        return -1;
    }
    m->heap[m->n_heap++] = item;
    heap_up(m, m->n_heap - 1);
    return 0;
}

static PyObject *
merge_next(MergeObject *m)
{
    if (!m->started) {
        m->started = 1;
        for (size_t s = 0; s < m->n_sources; s++) {
            if (merge_pull(m, s) < 0) {
                return NULL;
            }
        }
    }
    if (m->n_heap == 0) {
        return NULL;
    }
    HeapItem top = m->heap[0];
    m->heap[0] = m->heap[--m->n_heap];
    heap_down(m, 0);
    if (merge_pull(m, top.source) < 0) {
        Py_DECREF(top.event);
        return NULL;
    }
    return top.event;
}

PyTypeObject MergeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "etwtrace._ctfdecode.Merge",
    .tp_basicsize = sizeof(MergeObject),
    .tp_dealloc = (destructor)merge_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Merge(iterables): their events in timestamp order (stable).",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)merge_next,
    .tp_init = (initproc)merge_init,
    .tp_new = PyType_GenericNew,
};

PyObject *
configure(PyObject *module, PyObject *error_class)
{
    (void)module;
    Py_XSETREF(trace_error, Py_NewRef(error_class));
    Py_RETURN_NONE;
}

/* fold(): a stream's PythonFunctionPush/Pop events folded into a call
 * tree (one node per distinct call path: calls, inclusive and exclusive
 * ns), optionally with a timeline of every open and close; stacks_at():
 * the FunctionIDs open at given times.  Memory is bounded by the number
 * of distinct paths and the deepest stack, not by the number of events. */
#include "fold.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int64_t parent;
    uint32_t fid;
    uint64_t calls, inclusive, exclusive;
} Node;

typedef struct {
    int64_t node;
    uint64_t start, child_time;
    int opened;             /* its open is on the timeline */
} OpenCall;

/* One open or close of a call, for timelines: 16 bytes, returned to Python
 * as packed little-endian (ts u64, node u32, kind u32) records. */
typedef struct {
    uint64_t ts;
    uint32_t node;
    uint32_t kind;          /* 0 open, 1 close */
} TimelineRecord;

_Static_assert(sizeof(TimelineRecord) == 16, "timeline records are 16 packed bytes");

typedef struct {
    Node *nodes;
    size_t n_nodes, cap_nodes;
    int64_t *table;         /* open addressing: node index or -1 */
    size_t table_cap;       /* power of two */
    OpenCall *stack;
    size_t depth, cap_stack;
    uint64_t unmatched, mismatched, calls;
    int timeline;           /* record every open and close */
    int timeline_fd;        /* ... to this file, or -1: kept in `records` */
    uint64_t written;       /* records written to the file */
    uint64_t first_ts, last_ts;
    TimelineRecord *records;
    size_t n_records, cap_records;
    uint64_t from, to;      /* the window shown: calls made in [from, to),
                             * time spent in it */
} Tree;

static uint64_t
clamp(uint64_t ts, const Tree *t)
{
    return ts < t->from ? t->from : ts > t->to ? t->to : ts;
}

static size_t
slot_of(int64_t parent, uint32_t fid, size_t cap)
{
    uint64_t h = (uint64_t)(parent + 1) * UINT64_C(0x9E3779B97F4A7C15) ^ (uint64_t)fid * UINT64_C(0xC2B2AE3D27D4EB4F);
    h ^= h >> 29;
    return (size_t)h & (cap - 1);
}

static int
tree_grow_table(Tree *t)
{
    size_t cap = t->table_cap ? t->table_cap * 2 : 1024;
    int64_t *table = malloc(cap * sizeof *table);
    if (table == NULL) {
        return -1;
    }
    for (size_t i = 0; i < cap; i++) {
        table[i] = -1;
    }
    for (size_t n = 0; n < t->n_nodes; n++) {
        size_t s = slot_of(t->nodes[n].parent, t->nodes[n].fid, cap);
        while (table[s] >= 0) {
            s = (s + 1) & (cap - 1);
        }
        table[s] = (int64_t)n;
    }
    free(t->table);
    t->table = table;
    t->table_cap = cap;
    return 0;
}

/* The node for (parent, fid), made if new; -1 when out of memory. */
static int64_t
tree_child(Tree *t, int64_t parent, uint32_t fid)
{
    if ((t->n_nodes + 1) * 2 > t->table_cap && tree_grow_table(t) < 0) {
        return -1;
    }
    size_t s = slot_of(parent, fid, t->table_cap);
    while (t->table[s] >= 0) {
        Node *n = &t->nodes[t->table[s]];
        if (n->parent == parent && n->fid == fid) {
            return t->table[s];
        }
        s = (s + 1) & (t->table_cap - 1);
    }
    if (t->n_nodes == t->cap_nodes) {
        size_t cap = t->cap_nodes ? t->cap_nodes * 2 : 1024;
        Node *nodes = realloc(t->nodes, cap * sizeof *nodes);
        if (nodes == NULL) {
            return -1;
        }
        t->nodes = nodes;
        t->cap_nodes = cap;
    }
    Node *n = &t->nodes[t->n_nodes];
    n->parent = parent;
    n->fid = fid;
    n->calls = n->inclusive = n->exclusive = 0;
    t->table[s] = (int64_t)t->n_nodes;
    return (int64_t)t->n_nodes++;
}

/* Writes the records held to the timeline file; -1 with an exception. */
static int
tree_flush_records(Tree *t)
{
    const char *p = (const char *)t->records;
    size_t left = t->n_records * sizeof(TimelineRecord);
    while (left > 0) {
        ssize_t n = write(t->timeline_fd, p, left);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        p += n;
        left -= (size_t)n;
    }
    t->written += t->n_records;
    t->n_records = 0;
    return 0;
}

static int
tree_record(Tree *t, int64_t node, uint64_t ts, uint32_t kind)
{
    if (!t->timeline) {
        return 0;
    }
    if (node > (int64_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many call paths for a timeline");
        return -1;
    }
    if (t->n_records == t->cap_records) {
        if (t->timeline_fd >= 0 && t->cap_records > 0) {
            if (tree_flush_records(t) < 0) {
                return -1;
            }
        }
        else {
            size_t cap = t->cap_records ? t->cap_records * 2 : 4096;
            TimelineRecord *records = realloc(t->records, cap * sizeof *records);
            if (records == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            t->records = records;
            t->cap_records = cap;
        }
    }
    if (t->written == 0 && t->n_records == 0) {
        t->first_ts = ts;
    }
    t->last_ts = ts;
    TimelineRecord *r = &t->records[t->n_records++];
    r->ts = ts;
    r->node = (uint32_t)node;
    r->kind = kind;
    return 0;
}

static int
tree_push(Tree *t, uint32_t fid, uint64_t ts)
{
    int64_t parent = t->depth ? t->stack[t->depth - 1].node : -1;
    int64_t node = tree_child(t, parent, fid);
    if (node < 0) {
        return -1;
    }
    if (t->depth == t->cap_stack) {
        size_t cap = t->cap_stack ? t->cap_stack * 2 : 256;
        OpenCall *stack = realloc(t->stack, cap * sizeof *stack);
        if (stack == NULL) {
            return -1;
        }
        t->stack = stack;
        t->cap_stack = cap;
    }
    /* Calls outside the window stay on the stack (they give the paths of
     * calls inside it) but are not counted. */
    int inside = ts >= t->from && ts < t->to;
    if (inside) {
        if (tree_record(t, node, ts, 0) < 0) {
            return -1;
        }
        t->nodes[node].calls++;
        t->calls++;
    }
    t->stack[t->depth].node = node;
    t->stack[t->depth].start = ts;
    t->stack[t->depth].child_time = 0;
    t->stack[t->depth].opened = inside;
    t->depth++;
    return 0;
}

static int
tree_close(Tree *t, uint64_t ts)
{
    OpenCall *call = &t->stack[--t->depth];
    uint64_t start = clamp(call->start, t), end = clamp(ts, t);
    uint64_t duration = end > start ? end - start : 0;
    Node *n = &t->nodes[call->node];
    n->inclusive += duration;
    n->exclusive += duration > call->child_time ? duration - call->child_time : 0;
    if (t->depth) {
        t->stack[t->depth - 1].child_time += duration;
    }
    return call->opened ? tree_record(t, call->node, end, 1) : 0;
}

/* Where the pop of fid lands: the depth to close down to (exclusive), or
 * -1 to ignore it.  Counts unmatched and mismatched pops. */
static Py_ssize_t
pop_target(Tree *t, uint32_t fid)
{
    if (t->depth == 0) {
        t->unmatched++;
        return -1;
    }
    if (t->nodes[t->stack[t->depth - 1].node].fid == fid) {
        return (Py_ssize_t)t->depth - 1;
    }
    t->mismatched++;
    for (size_t i = t->depth; i-- > 0;) {
        if (t->nodes[t->stack[i].node].fid == fid) {
            return (Py_ssize_t)i;
        }
    }
    return -1;
}

static int
tree_pop(Tree *t, uint32_t fid, uint64_t ts)
{
    Py_ssize_t target = pop_target(t, fid);
    while (target >= 0 && (Py_ssize_t)t->depth > target) {
        if (tree_close(t, ts) < 0) {
            return -1;
        }
    }
    return 0;
}

static void
tree_free(Tree *t)
{
    free(t->nodes);
    free(t->table);
    free(t->stack);
    free(t->records);
}

static PyObject *
corrupt(PyObject *path, Cursor *c)
{
    PyErr_Format(PyExc_ValueError, "%S: corrupt trace (%s)", path, c->error);
    return NULL;
}

/* Applies one event: a push or pop to the tree, anything else decoded into
 * *other (a new reference; NULL for pushes and pops).  Returns 1, 0 at the
 * end of a truncated stream, -1 on corruption (c->error says where), -2
 * with a Python exception set. */
static int
step(Cursor *c, Tree *tree, RawEvent *ev, PyObject **other)
{
    size_t used = 0;
    *other = NULL;
    if (is_push(ev->id) || is_pop(ev->id)) {
        uint32_t fid;
        if (!push_pop(ev, &fid, &used)) {
            return bad_payload(c, "short push/pop event");
        }
        int r = is_push(ev->id) ? tree_push(tree, fid, ev->ts) : tree_pop(tree, fid, ev->ts);
        if (r < 0) {
            if (!PyErr_Occurred()) {
                PyErr_NoMemory();
            }
            return -2;
        }
    }
    else {
        int stop = 0;
        *other = decode_other(c, ev, &used, &stop);
        if (*other == NULL) {
            return PyErr_Occurred() ? -2 : stop;
        }
    }
    c->pos += used;
    return 1;
}

/* fold() over bytes in memory; `path` names them in errors. */
PyObject *
fold_data(PyObject *path, const unsigned char *data, size_t size, int timeline, int mapped,
          int version, const unsigned char *tail, size_t tail_size, int timeline_fd,
          uint64_t from, uint64_t to, int partial)
{
    Tree tree;
    memset(&tree, 0, sizeof tree);
    tree.from = from;
    tree.to = to;
    Cursor c;
    memset(&c, 0, sizeof c);
    c.data = data;
    c.size = size;
    c.mapped = mapped;
    c.head_size = head_size_of(version);
    c.zero_ends = version >= 2;
    c.tail = tail;
    c.tail_size = tail_size;
    PyObject *events = PyList_New(0), *result = NULL;
    tree.timeline = timeline;
    tree.timeline_fd = timeline_fd;
    if (events == NULL) {
        goto done;
    }
    uint64_t last = 0;
    RawEvent ev;
    int r;
    while ((r = next_event(&c, &ev)) == 1) {
        PyObject *fields;
        r = step(&c, &tree, &ev, &fields);
        if (r == -2) {
            goto done;
        }
        if (r <= 0) {
            break;
        }
        if (fields != NULL) {
            PyObject *item = Py_BuildValue("(iKN)", ev.id, (unsigned long long)ev.ts, fields);
            if (item == NULL || PyList_Append(events, item) < 0) {
                Py_XDECREF(item);
                goto done;
            }
            Py_DECREF(item);
        }
        last = ev.ts;
    }
    if (r < 0 && !partial) {
        corrupt(path, &c);
        goto done;
    }
    while (tree.depth) {
        if (tree_close(&tree, last) < 0) {
            goto done;
        }
    }
    PyObject *nodes = PyList_New((Py_ssize_t)tree.n_nodes);
    if (nodes == NULL) {
        goto done;
    }
    for (size_t i = 0; i < tree.n_nodes; i++) {
        Node *n = &tree.nodes[i];
        PyObject *item = Py_BuildValue("(LIKKK)", (long long)n->parent, n->fid,
                                       (unsigned long long)n->calls,
                                       (unsigned long long)n->inclusive,
                                       (unsigned long long)n->exclusive);
        if (item == NULL) {
            Py_DECREF(nodes);
            goto done;
        }
        PyList_SET_ITEM(nodes, (Py_ssize_t)i, item);
    }
    PyObject *records = Py_None;
    Py_INCREF(records);
    if (timeline && timeline_fd >= 0) {
        if (tree_flush_records(&tree) < 0) {
            Py_DECREF(nodes);
            Py_DECREF(records);
            goto done;
        }
        Py_DECREF(records);
        records = Py_BuildValue("{s:K,s:K,s:K}", "count", (unsigned long long)tree.written,
                                "first", (unsigned long long)tree.first_ts,
                                "last", (unsigned long long)tree.last_ts);
    }
    else if (timeline) {
        Py_DECREF(records);
        records = PyBytes_FromStringAndSize((const char *)tree.records,
                                            (Py_ssize_t)(tree.n_records * sizeof(TimelineRecord)));
    }
    if (records == NULL) {
        Py_DECREF(nodes);
        goto done;
    }
    PyObject *error = r < 0 ? PyUnicode_FromFormat("corrupt trace (%s)", c.error)
                            : Py_NewRef(Py_None);
    if (error == NULL) {
        Py_DECREF(nodes);
        Py_DECREF(records);
        goto done;
    }
    result = Py_BuildValue(
        "{s:I,s:N,s:O,s:N,s:K,s:K,s:K,s:O,s:O,s:K,s:K,s:N}",
        "tid", c.tid, "nodes", nodes, "events", events,
        "timeline", records,
        "calls", (unsigned long long)tree.calls,
        "unmatched_pops", (unsigned long long)tree.unmatched,
        "mismatched_pops", (unsigned long long)tree.mismatched,
        "truncated", c.truncated ? Py_True : Py_False,
        "unfinished", c.unfinished ? Py_True : Py_False,
        "discarded", (unsigned long long)c.discarded,
        "last", (unsigned long long)last,
        "error", error);
done:
    Py_XDECREF(events);
    tree_free(&tree);
    return result;
}

PyObject *
fold(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"path", "timeline", "version", "length", "tail", "timeline_fd",
                               "start", "end", "fd", "partial", NULL};
    PyObject *path;
    int timeline = 0, version = ETW_FORMAT_VERSION, timeline_fd = -1, fd = -1, partial = 0;
    Py_ssize_t length = -1;
    Py_buffer tail = {0};
    unsigned long long from = 0, to = UINT64_MAX;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|pinz*iKKip:fold", keywords, &path,
                                     &timeline, &version, &length, &tail, &timeline_fd,
                                     &from, &to, &fd, &partial)) {
        return NULL;
    }
    FileData file;
    if (map_file(path, fd, &file) < 0) {
        PyBuffer_Release(&tail);
        return NULL;
    }
    size_t size = length >= 0 && (size_t)length < file.size ? (size_t)length : file.size;
    PyObject *result = fold_data(path, file.data, size, timeline, 1, version, tail.buf,
                                 tail.buf != NULL ? (size_t)tail.len : 0, timeline_fd,
                                 (uint64_t)from, (uint64_t)to, partial);
    PyBuffer_Release(&tail);
    unmap_file(&file);
    return result;
}

static PyObject *
fid_tuple(Tree *t)
{
    PyObject *out = PyTuple_New((Py_ssize_t)t->depth);
    if (out == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < t->depth; i++) {
        PyObject *fid = PyLong_FromUnsignedLong(t->nodes[t->stack[i].node].fid);
        if (fid == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, (Py_ssize_t)i, fid);
    }
    return out;
}

/* stacks_at() over bytes in memory; `seq` is a PySequence_Fast. */
PyObject *
stacks_data(const unsigned char *data, size_t size, PyObject *seq, int mapped, int version,
            const unsigned char *tail, size_t tail_size)
{
    Tree tree;
    memset(&tree, 0, sizeof tree);
    Cursor c;
    memset(&c, 0, sizeof c);
    c.data = data;
    c.size = size;
    c.mapped = mapped;
    c.head_size = head_size_of(version);
    c.zero_ends = version >= 2;
    c.tail = tail;
    c.tail_size = tail_size;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), next = 0;
    PyObject *out = PyList_New(count), *result = NULL;
    if (out == NULL) {
        goto done;
    }
    RawEvent ev;
    while (next < count && next_event(&c, &ev) == 1) {
        /* Snapshot every requested time earlier than this event. */
        while (next < count) {
            unsigned long long when = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, next));
            if (when == (unsigned long long)-1 && PyErr_Occurred()) {
                goto done;
            }
            if (when >= ev.ts) {
                break;
            }
            PyObject *stack = fid_tuple(&tree);
            if (stack == NULL) {
                goto done;
            }
            PyList_SET_ITEM(out, next++, stack);
        }
        PyObject *fields;
        int r = step(&c, &tree, &ev, &fields);
        Py_XDECREF(fields);
        if (r == -2) {
            goto done;
        }
        if (r <= 0) {
            break;  /* fold() reports damage; here the replay just stops */
        }
    }
    while (next < count) {
        PyObject *stack = fid_tuple(&tree);
        if (stack == NULL) {
            goto done;
        }
        PyList_SET_ITEM(out, next++, stack);
    }
    result = out;
    out = NULL;
done:
    Py_XDECREF(out);
    tree_free(&tree);
    return result;
}

PyObject *
stacks_at(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *keywords[] = {"path", "timestamps", "version", "length", "tail", "fd", NULL};
    PyObject *path, *times;
    int version = ETW_FORMAT_VERSION, fd = -1;
    Py_ssize_t length = -1;
    Py_buffer tail = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|inz*i:stacks_at", keywords, &path, &times,
                                     &version, &length, &tail, &fd)) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(times, "timestamps must be a sequence");
    FileData file;
    if (seq == NULL || map_file(path, fd, &file) < 0) {
        Py_XDECREF(seq);
        PyBuffer_Release(&tail);
        return NULL;
    }
    size_t size = length >= 0 && (size_t)length < file.size ? (size_t)length : file.size;
    PyObject *result = stacks_data(file.data, size, seq, 1, version, tail.buf,
                                   tail.buf != NULL ? (size_t)tail.len : 0);
    unmap_file(&file);
    Py_DECREF(seq);
    PyBuffer_Release(&tail);
    return result;
}

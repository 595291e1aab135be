/* etwtrace._ctfdecode: the report's decoder for the built-in recorder's
 * CTF streams (one file per thread; layout in recorder.c).
 *
 * fold(path, timeline=False) reads a stream once and folds its
 * PythonFunctionPush/Pop events into a call tree in C: one node per distinct
 * call path with calls, inclusive and exclusive ns.  With timeline, it also
 * gives every open and close of a call as packed 16-byte records
 * (ts, node, kind), properly nested whatever the pops were: written to the
 * file descriptor `timeline_fd` as they come (so memory does not grow
 * with the trace), or returned as bytes when it is -1.  With start/end, only
 * calls made in [start, end) count and only time inside it is added (the
 * report's --from/--to).  Memory is bounded by
 * the number of distinct paths and the deepest stack, not by the number of
 * events.  The few other events (functions, threads, marks, stack samples)
 * are returned decoded, for Python to order and name.
 *
 * stacks_at(path, timestamps) replays the pushes and pops and returns, for
 * each timestamp (ascending), the FunctionIDs open on the thread then.
 *
 * Every length is checked against its packet: any byte sequence either
 * decodes, ends as truncated, or raises ValueError.  Pops are matched as
 * the tests' CallStacks (tests/callstacks.py) matches them.
 */
#include "compat.h"
#include "trace_format.h"

#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#define COMPACT_TS_MASK ((uint64_t)ETW_COMPACT_TS_MASK)

/* ---- little-endian reads (the recorder writes x86-64 byte order) ---- */

static uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* ---- the stream cursor ---- */

typedef struct {
    const unsigned char *data;
    size_t size;
    size_t packet;          /* offset of the current packet */
    size_t pos;             /* next event */
    size_t end;             /* end of the current packet's content */
    int in_packet;
    int truncated;          /* the stream ended inside a packet */
    uint64_t clock;
    uint32_t tid;
    int have_tid;
    size_t head_size;       /* packet header + context: by format version */
    int zero_ends;          /* version 2+: a zero word where an event would
                             * start ends the packet's written part */
    int unfinished;         /* ended at never-begun (all-zero) packets */
    uint64_t discarded;     /* events_discarded of the last packet read */
    int mapped;             /* data is a file mapping: drop pages once read */
    const unsigned char *tail;  /* packets read after `data` (from a ring) */
    size_t tail_size;
    size_t released;        /* bytes before this are dropped */
    char error[160];        /* set on corruption */
} Cursor;

/* Gives back the pages of packets already decoded, so a report's memory
 * does not grow with the size of the trace. */
static void
release_behind(Cursor *c, size_t offset)
{
    static size_t page;
    if (!c->mapped) {
        return;
    }
    if (page == 0) {
        page = (size_t)sysconf(_SC_PAGESIZE);
    }
    size_t upto = offset & ~(page - 1);
    if (upto >= c->released + (4u << 20)) {   /* in steps of 4 MiB */
        madvise((void *)(c->data + c->released), upto - c->released, MADV_DONTNEED);
        c->released = upto;
    }
}

typedef struct {
    int id;
    uint64_t ts;
    const unsigned char *payload;   /* within the packet */
    size_t payload_size;            /* bytes up to the packet's end */
} RawEvent;

/* Opens the next packet; 0 at the end of the stream, -1 on corruption.
 * A stream whose process died before closing it may end with never-begun
 * packets, all zero (see recorder.c): the stream ends at the first. */
static int
next_packet(Cursor *c)
{
    if (c->packet >= c->size && c->tail != NULL && !c->truncated && !c->unfinished) {
        /* The stream file is done: the packets still in its ring follow. */
        c->data = c->tail;
        c->size = c->tail_size;
        c->packet = 0;
        c->mapped = 0;
        c->tail = NULL;
    }
    if (c->packet >= c->size) {
        return 0;
    }
    size_t left = c->size - c->packet;
    if (left < c->head_size) {
        if (left >= 4 && rd32(c->data + c->packet) == 0) {
            c->unfinished = 1;
        }
        else {
            c->truncated = 1;
        }
        return 0;
    }
    release_behind(c, c->packet);
    const unsigned char *h = c->data + c->packet;
    uint64_t content_bits = rd64(h + 24), packet_bits = rd64(h + 32);
    if (rd32(h) == 0 && content_bits == 0 && packet_bits == 0) {
        c->unfinished = 1;
        return 0;
    }
    if (rd32(h) != ETW_CTF_MAGIC) {
        snprintf(c->error, sizeof c->error, "bad packet magic at byte %zu", c->packet);
        return -1;
    }
    /* Version 1's recorder wrote packets of ETW_PACKET_BYTES; later ones
     * end their content at a zero word (next_event), so a huge size read
     * from a damaged or sparse file never makes events out of zeros. */
    if (content_bits % 8 || packet_bits < content_bits || content_bits < c->head_size * 8 ||
        (!c->zero_ends && packet_bits > (uint64_t)ETW_PACKET_BYTES * 8)) {
        snprintf(c->error, sizeof c->error, "bad packet size at byte %zu", c->packet);
        return -1;
    }
    if (!c->have_tid) {
        c->tid = rd32(h + c->head_size - 4);
        c->have_tid = 1;
    }
    if (c->head_size >= ETW_PACKET_HEAD_V2) {
        c->discarded = rd64(h + offsetof(EtwPacketHead, events_discarded));
    }
    c->clock = rd64(h + 8);
    c->pos = c->packet + c->head_size;
    if (content_bits / 8 > left) {
        c->end = c->size;
        c->truncated = 1;
    }
    else {
        c->end = c->packet + (size_t)(content_bits / 8);
    }
    uint64_t step = packet_bits / 8;
    c->packet = step > left ? c->size : c->packet + (size_t)step;
    c->in_packet = 1;
    return 1;
}

/* Reads the next event header; 1 with *ev set, 0 at the end, -1 on
 * corruption.  The caller checks the payload against payload_size and
 * calls cursor_advance. */
static int
next_event(Cursor *c, RawEvent *ev)
{
again:
    for (;;) {
        if (c->in_packet && c->pos < c->end) {
            break;
        }
        if (c->in_packet && c->truncated) {
            return 0;   /* the stream ended inside this packet */
        }
        c->in_packet = 0;
        int r = next_packet(c);
        if (r <= 0) {
            return r;
        }
    }
    size_t left = c->end - c->pos;
    const unsigned char *p = c->data + c->pos;
    if (left < 4) {
        goto short_header;
    }
    uint32_t word = rd32(p);
    if (word == 0 && c->zero_ends) {
        /* No event starts with a zero word (trace_format.h): the writer
         * stopped here. */
        c->pos = c->end;
        goto again;
    }
    if ((word & 0x1F) == ETW_EXTENDED_ID) {
        if (left < ETW_EXTENDED_HEAD_SIZE) {
            goto short_header;
        }
        uint32_t id = rd32(p + 1);
        if (id > 0xFFFF) {
            snprintf(c->error, sizeof c->error, "unknown event id %u at byte %zu", id, c->pos);
            return -1;
        }
        ev->id = (int)id;
        c->clock = rd64(p + 5);
        c->pos += ETW_EXTENDED_HEAD_SIZE;
    }
    else {
        uint64_t ts = (c->clock & ~COMPACT_TS_MASK) | (word >> 5);
        if (ts < c->clock) {
            ts += UINT64_C(1) << ETW_COMPACT_TS_BITS;
        }
        c->clock = ts;
        ev->id = (int)(word & 0x1F);
        c->pos += 4;
    }
    ev->ts = c->clock;
    ev->payload = c->data + c->pos;
    ev->payload_size = c->end - c->pos;
    return 1;

short_header:
    if (c->truncated) {
        return 0;
    }
    snprintf(c->error, sizeof c->error, "event header cut short at byte %zu", c->pos);
    return -1;
}

/* A short or malformed payload: the end of a truncated stream, else
 * corruption.  Returns 0 (stop) or -1 (error). */
static int
bad_payload(Cursor *c, const char *what)
{
    if (c->truncated) {
        return 0;
    }
    snprintf(c->error, sizeof c->error, "%s at byte %zu", what, c->pos);
    return -1;
}

/* Length of a NUL-terminated string within n bytes, or -1. */
static Py_ssize_t
cstr_len(const unsigned char *p, size_t n)
{
    const unsigned char *nul = memchr(p, 0, n);
    return nul == NULL ? -1 : (Py_ssize_t)(nul - p);
}

/* Text fields as str; bytes that are not UTF-8 (an undecodable file name)
 * come back as surrogates (surrogateescape), so they are not lost. */
static PyObject *
text(const unsigned char *p, Py_ssize_t len)
{
    return PyUnicode_DecodeUTF8((const char *)p, len, "surrogateescape");
}

/* ---- the call tree ---- */

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

/* ---- reading a file ---- */

typedef struct {
    unsigned char *data;
    size_t size;
} FileData;

/* Maps a stream file read-only (an empty file maps to nothing): the file
 * open at `fd` when it is not negative (the caller keeps and closes it),
 * else `path`, never through a symbolic link, and only a regular file (a
 * FIFO or a device is no trace, and would block or never end). */
static int
map_file(PyObject *path, int fd, FileData *out)
{
    int own = fd < 0;
    if (own) {
        PyObject *bytes = NULL;
        if (!PyUnicode_FSConverter(path, &bytes)) {
            return -1;
        }
        fd = open(PyBytes_AS_STRING(bytes), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        Py_DECREF(bytes);
    }
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        if (own && fd >= 0) {
            close(fd);
        }
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        PyErr_Format(PyExc_ValueError, "%S: not a regular file; not read", path);
        if (own) {
            close(fd);
        }
        return -1;
    }
    out->size = (size_t)st.st_size;
    out->data = NULL;
    if (out->size > 0) {
        void *p = mmap(NULL, out->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
            if (own) {
                close(fd);
            }
            return -1;
        }
        madvise(p, out->size, MADV_SEQUENTIAL);
        out->data = p;
    }
    if (own) {
        close(fd);
    }
    return 0;
}

static void
unmap_file(FileData *file)
{
    if (file->data != NULL) {
        munmap(file->data, file->size);
    }
}

/* Decodes the payload of a non-push/pop event into a tuple of its fields'
 * values in declaration order (trace_format.h); sets *stop to 0 (end of a
 * truncated stream) or -1 (corruption) when it cannot. */
static PyObject *
decode_other(Cursor *c, RawEvent *ev, size_t *used, int *stop)
{
    if (ev->id < 0 || (size_t)ev->id >= ETW_N_EVENTS) {
        if (!c->truncated) {
            snprintf(c->error, sizeof c->error, "unknown event id %d at byte %zu", ev->id, c->pos);
            *stop = -1;
            return NULL;
        }
        *stop = 0;
        return NULL;
    }
    const EtwEventDecl *e = &etw_event_decls[ev->id];
    const unsigned char *p = ev->payload;
    size_t n = ev->payload_size, at = 0;
    PyObject *values = PyTuple_New(e->n_fields);
    if (values == NULL) {
        return NULL;
    }
    for (uint32_t f = 0; f < e->n_fields; f++) {
        PyObject *value = NULL;
        EtwFieldType type = e->fields[f].type;
        if (type == ETW_T_STRING) {
            Py_ssize_t len = cstr_len(p + at, n - at);
            if (len < 0) {
                goto short_payload;
            }
            value = text(p + at, len);
            at += (size_t)len + 1;
        }
        else if (type == ETW_T_ADDRESSES) {
            if (n - at < 4) {
                goto short_payload;
            }
            uint32_t depth = rd32(p + at);
            at += 4;
            if ((n - at) / 8 < depth) {
                goto short_payload;
            }
            value = PyTuple_New(depth);
            for (uint32_t i = 0; value != NULL && i < depth; i++) {
                PyObject *ip = PyLong_FromUnsignedLongLong(rd64(p + at + 8 * (size_t)i));
                if (ip == NULL) {
                    Py_CLEAR(value);
                    break;
                }
                PyTuple_SET_ITEM(value, i, ip);
            }
            at += 8 * (size_t)depth;
        }
        else {
            size_t size = etw_field_fixed_size(type);
            if (n - at < size) {
                goto short_payload;
            }
            uint64_t v = 0;
            memcpy(&v, p + at, size);
            value = PyLong_FromUnsignedLongLong(v);
            at += size;
        }
        if (value == NULL) {
            Py_DECREF(values);
            return NULL;
        }
        PyTuple_SET_ITEM(values, f, value);
    }
    *used = at;
    return values;

short_payload:
    Py_DECREF(values);
    *stop = bad_payload(c, "short event payload");
    return NULL;
}

/* A push or pop: its FunctionID and payload size, or 0 when short. */
static int
push_pop(RawEvent *ev, uint32_t *fid, size_t *used)
{
    size_t n = ev->payload_size;
    switch (ev->id) {
    case ETW_EV_PUSH:
        *used = ETW_FIXED_PAYLOAD(ETW_FIELDS_PUSH);
        if (n < *used) return 0;
        *fid = rd32(ev->payload);
        return 1;
    case ETW_EV_POP:
        *used = ETW_FIXED_PAYLOAD(ETW_FIELDS_POP);
        if (n < *used) return 0;
        *fid = rd32(ev->payload);
        return 1;
    case ETW_EV_PUSH_COMPACT:
        *used = ETW_FIXED_PAYLOAD(ETW_FIELDS_PUSH_COMPACT);
        if (n < *used) return 0;
        *fid = rd16(ev->payload);
        return 1;
    case ETW_EV_POP_COMPACT:
        *used = ETW_FIXED_PAYLOAD(ETW_FIELDS_POP_COMPACT);
        if (n < *used) return 0;
        *fid = rd16(ev->payload);
        return 1;
    }
    return 0;
}

static int
is_push(int id) { return id == ETW_EV_PUSH || id == ETW_EV_PUSH_COMPACT; }

static int
is_pop(int id) { return id == ETW_EV_POP || id == ETW_EV_POP_COMPACT; }

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
/* Size of the packet header and context of traces of format `version`. */
static size_t
head_size_of(int version)
{
    return version >= 2 ? ETW_PACKET_HEAD_V2 : ETW_PACKET_HEAD_V1;
}

static PyObject *
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

static PyObject *
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
static PyObject *
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

static PyObject *
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

/* Bytes of event `id`'s payload at p (n bytes available), or -1 when it
 * does not fit (an unknown id, or cut short). */
static Py_ssize_t
payload_size(int id, const unsigned char *p, size_t n)
{
    if (id < 0 || (size_t)id >= ETW_N_EVENTS) {
        return -1;
    }
    const EtwEventDecl *e = &etw_event_decls[id];
    size_t at = 0;
    for (uint32_t f = 0; f < e->n_fields; f++) {
        EtwFieldType type = e->fields[f].type;
        if (type == ETW_T_STRING) {
            Py_ssize_t len = cstr_len(p + at, n - at);
            if (len < 0) {
                return -1;
            }
            at += (size_t)len + 1;
        }
        else if (type == ETW_T_ADDRESSES) {
            if (n - at < 4) {
                return -1;
            }
            uint32_t depth = rd32(p + at);
            at += 4;
            if ((n - at) / 8 < depth) {
                return -1;
            }
            at += 8 * (size_t)depth;
        }
        else {
            size_t size = etw_field_fixed_size(type);
            if (n - at < size) {
                return -1;
            }
            at += size;
        }
    }
    return (Py_ssize_t)at;
}

/* scan_packet(packet, version) -> (content bytes, last timestamp): how much
 * of a packet its writer finished, for one left unfinished by a death (its
 * header's content_size not updated): the events up to the first zero word
 * (trace_format.h), never past the packet. */
static PyObject *
scan_packet(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer buf;
    int version = ETW_FORMAT_VERSION;
    if (!PyArg_ParseTuple(args, "y*|i:scan_packet", &buf, &version)) {
        return NULL;
    }
    const unsigned char *data = buf.buf;
    size_t size = (size_t)buf.len, head = head_size_of(version);
    if (size < head || rd32(data) != ETW_CTF_MAGIC) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "not a packet");
        return NULL;
    }
    uint64_t packet_bits = rd64(data + 32);
    if (packet_bits / 8 < size) {
        size = (size_t)(packet_bits / 8);
    }
    uint64_t clock = rd64(data + 8);
    size_t pos = head;
    while (pos + 4 <= size) {
        uint32_t word = rd32(data + pos);
        if (word == 0) {
            break;
        }
        int id;
        uint64_t ts;
        size_t at;
        if ((word & 0x1F) == ETW_EXTENDED_ID) {
            if (pos + ETW_EXTENDED_HEAD_SIZE > size) {
                break;
            }
            id = (int)rd32(data + pos + 1);
            ts = rd64(data + pos + 5);
            at = pos + ETW_EXTENDED_HEAD_SIZE;
        }
        else {
            id = (int)(word & 0x1F);
            ts = (clock & ~COMPACT_TS_MASK) | (word >> 5);
            if (ts < clock) {
                ts += UINT64_C(1) << ETW_COMPACT_TS_BITS;
            }
            at = pos + ETW_COMPACT_HEAD_SIZE;
        }
        Py_ssize_t n = payload_size(id, data + at, size - at);
        if (n < 0) {
            break;
        }
        clock = ts;
        pos = at + (size_t)n;
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(nK)", (Py_ssize_t)pos, (unsigned long long)clock);
}

/* The event table of trace_format.h, for the Python side: a tuple of
 * (id, ctf_name, name, opcode, ((field, type), ...)). */
static PyObject *
event_table(void)
{
    static const char *type_names[] = {
#define ETW_TYPE_NAME(name, ctf, size) #name,
        ETW_FIELD_TYPES(ETW_TYPE_NAME)
#undef ETW_TYPE_NAME
    };
    PyObject *table = PyTuple_New((Py_ssize_t)ETW_N_EVENTS);
    for (size_t i = 0; table != NULL && i < ETW_N_EVENTS; i++) {
        const EtwEventDecl *e = &etw_event_decls[i];
        PyObject *fields = PyTuple_New(e->n_fields);
        for (uint32_t f = 0; fields != NULL && f < e->n_fields; f++) {
            PyObject *field = Py_BuildValue("(ss)", e->fields[f].name,
                                            type_names[e->fields[f].type]);
            if (field == NULL) {
                Py_CLEAR(fields);
                break;
            }
            PyTuple_SET_ITEM(fields, f, field);
        }
        PyObject *item = fields == NULL ? NULL
            : Py_BuildValue("(IsszN)", e->id, e->ctf_name, e->name, e->opcode, fields);
        if (item == NULL) {
            Py_CLEAR(table);
            break;
        }
        PyTuple_SET_ITEM(table, (Py_ssize_t)i, item);
    }
    return table;
}

/* ---- events for open_trace: the Event type, a stream reader, a merge ----
 *
 * open_trace yields every event of a capture in time order.  Decoding each
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

static PyTypeObject EventType = {
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

static int
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
            if (fields != NULL && e->n_fields == 1 && ev.id <= ETW_EV_THREAD_STOP) {
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

static PyTypeObject ReaderType = {
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

static PyTypeObject MergeType = {
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

static PyObject *
configure(PyObject *module, PyObject *error_class)
{
    (void)module;
    Py_XSETREF(trace_error, Py_NewRef(error_class));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fold", (PyCFunction)(void (*)(void))fold, METH_VARARGS | METH_KEYWORDS,
     "fold(path, timeline=False, version=FORMAT_VERSION, length=-1, tail=None,\n"
     "     timeline_fd=-1, start=0, end=2**64-1, fd=-1, partial=False) -> dict: a stream's\n"
     "call tree and its other events; the first `length` bytes of the file open at `fd`\n"
     "(else of `path`; all when negative), then the packets in `tail` (those still in its\n"
     "ring).  With timeline, its records go to timeline_fd (then 'timeline' is their count,\n"
     "first and last time) or come back as bytes.  Damage raises ValueError, or with\n"
     "partial ends the stream: 'error' says what it was (else None)."},
    {"configure", configure, METH_O,
     "configure(error_class): the exception class corrupt traces raise (etwtrace.TraceError)."},
    {"scan_packet", scan_packet, METH_VARARGS,
     "scan_packet(packet, version=FORMAT_VERSION) -> (content bytes, last timestamp) of a\n"
     "packet left unfinished."},
    {"stacks_at", (PyCFunction)(void (*)(void))stacks_at, METH_VARARGS | METH_KEYWORDS,
     "stacks_at(path, timestamps, version=FORMAT_VERSION, length=-1, tail=None, fd=-1) ->\n"
     "list of FunctionID tuples open at each time (of the file open at `fd`, else `path`)."},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *module)
{
    PyObject *table = event_table();
    if (table == NULL || PyModule_AddObject(module, "EVENTS", table) < 0) {
        Py_XDECREF(table);
        return -1;
    }
    if (PyType_Ready(&EventType) < 0 || PyType_Ready(&ReaderType) < 0 ||
        PyType_Ready(&MergeType) < 0 ||
        PyModule_AddObject(module, "Event", Py_NewRef((PyObject *)&EventType)) < 0 ||
        PyModule_AddObject(module, "Reader", Py_NewRef((PyObject *)&ReaderType)) < 0 ||
        PyModule_AddObject(module, "Merge", Py_NewRef((PyObject *)&MergeType)) < 0 ||
        make_names() < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "FORMAT_VERSION", ETW_FORMAT_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "PACKET_HEAD_V1", ETW_PACKET_HEAD_V1) < 0 ||
        PyModule_AddIntConstant(module, "PACKET_HEAD_V2", ETW_PACKET_HEAD_V2) < 0 ||
        PyModule_AddIntConstant(module, "PACKET_BYTES", ETW_PACKET_BYTES) < 0) {
        return -1;
    }
    return 0;
}

static struct PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
    /* Its types are static and its names interned once per process. */
    ETW_MOD_INTERPRETERS_NOT_SUPPORTED_SLOT
    ETW_MOD_GIL_SLOT
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "etwtrace._ctfdecode",
    "The report's C decoder for the built-in recorder's CTF streams.",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__ctfdecode(void)
{
    return PyModuleDef_Init(&module_def);
}

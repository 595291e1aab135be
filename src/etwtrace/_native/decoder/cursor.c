/* The decoder's cursor over packets: a stream file mapped read-only (its
 * decoded pages given back), then the packets its ring still holds; each
 * event's header and payload checked against its packet.  Also
 * scan_packet, how much of a packet a dead writer finished. */
#include "cursor.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

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
int
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
int
bad_payload(Cursor *c, const char *what)
{
    if (c->truncated) {
        return 0;
    }
    snprintf(c->error, sizeof c->error, "%s at byte %zu", what, c->pos);
    return -1;
}

/* Length of a NUL-terminated string within n bytes, or -1. */
Py_ssize_t
cstr_len(const unsigned char *p, size_t n)
{
    const unsigned char *nul = memchr(p, 0, n);
    return nul == NULL ? -1 : (Py_ssize_t)(nul - p);
}

/* Text fields as str; bytes that are not UTF-8 (an undecodable file name)
 * come back as surrogates (surrogateescape), so they are not lost. */
PyObject *
text(const unsigned char *p, Py_ssize_t len)
{
    return PyUnicode_DecodeUTF8((const char *)p, len, "surrogateescape");
}

/* Maps a stream file read-only (an empty file maps to nothing): the file
 * open at `fd` when it is not negative (the caller keeps and closes it),
 * else `path`, never through a symbolic link, and only a regular file (a
 * FIFO or a device is no trace, and would block or never end). */
int
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

void
unmap_file(FileData *file)
{
    if (file->data != NULL) {
        munmap(file->data, file->size);
    }
}

/* Decodes the payload of a non-push/pop event into a tuple of its fields'
 * values in declaration order (trace_format.h); sets *stop to 0 (end of a
 * truncated stream) or -1 (corruption) when it cannot. */
PyObject *
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
int
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
PyObject *
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

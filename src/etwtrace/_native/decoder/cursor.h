/* The decoder's cursor over a stream's packets (cursor.c): a stream file
 * mapped, then the packets still in its ring, read event by event with
 * every length checked against its packet. */
#ifndef ETWTRACE_DECODER_CURSOR_H
#define ETWTRACE_DECODER_CURSOR_H

#include "compat.h"
#include "trace_format.h"

#include <stdint.h>
#include <string.h>

#define COMPACT_TS_MASK ((uint64_t)ETW_COMPACT_TS_MASK)

/* Little-endian reads (the recorder writes x86-64 byte order). */
static inline uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

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

typedef struct {
    int id;
    uint64_t ts;
    const unsigned char *payload;   /* within the packet */
    size_t payload_size;            /* bytes up to the packet's end */
} RawEvent;

typedef struct {
    unsigned char *data;
    size_t size;
} FileData;

static inline int
is_push(int id) { return id == ETW_EV_PUSH || id == ETW_EV_PUSH_COMPACT; }

static inline int
is_pop(int id) { return id == ETW_EV_POP || id == ETW_EV_POP_COMPACT; }

/* Size of the packet header and context of traces of format `version`. */
static inline size_t
head_size_of(int version)
{
    return version >= 2 ? ETW_PACKET_HEAD_V2 : ETW_PACKET_HEAD_V1;
}

/* The next event: 1, 0 at the end of the stream, -1 on corruption
 * (c->error says where). */
int next_event(Cursor *c, RawEvent *ev);
int bad_payload(Cursor *c, const char *what);
Py_ssize_t cstr_len(const unsigned char *p, size_t n);
PyObject *text(const unsigned char *p, Py_ssize_t len);
int map_file(PyObject *path, int fd, FileData *out);
void unmap_file(FileData *file);
PyObject *decode_other(Cursor *c, RawEvent *ev, size_t *used, int *stop);
int push_pop(RawEvent *ev, uint32_t *fid, size_t *used);
PyObject *scan_packet(PyObject *module, PyObject *args);

#endif

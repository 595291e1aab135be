/* The built-in recorder: per-thread buffers written as a CTF 1.8 trace.
 *
 * Layout of a capture directory DIR:
 *     DIR/ctf/pid-PID/metadata          TSDL text, one trace per process
 *     DIR/ctf/pid-PID/stream-N-tid-TID   one stream file per thread
 *
 * Each thread owns its stream: events are appended to its current packet
 * with no lock, and the packet is written out when full, when the thread
 * ends, when tracing stops and at interpreter exit.  The event layout is
 * described by the metadata that etw_recorder_start() writes (see
 * recorder.c); the reader in etwtrace/_ctf.py decodes the same layout.
 */
#ifndef ETWTRACE_RECORDER_H
#define ETWTRACE_RECORDER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "clock.h"

/* Event ids: the CTF event ids of the trace, shared with the reader. */
enum {
    ETW_EV_THREAD_START = 0,
    ETW_EV_THREAD_STOP = 1,
    ETW_EV_FUNCTION = 2,
    ETW_EV_MARK = 3,
    ETW_EV_MARK_START = 4,
    ETW_EV_MARK_STOP = 5,
    ETW_EV_STACK_SAMPLE = 6,
    ETW_EV_PUSH = 7,
    ETW_EV_POP = 8,
    /* Compact forms of push and pop for instrumented mode (see recorder.c):
     * a push whose Caller is the innermost open push of the stream and whose
     * FunctionID and CallerLine fit 16 bits, and a pop whose FunctionID does. */
    ETW_EV_PUSH_SHORT = 9,
    ETW_EV_POP_SHORT = 10,
};

#define ETW_PACKET_BYTES (64 * 1024)
#define ETW_COMPACT_ID_LIMIT 31u
#define ETW_COMPACT_TS_BITS 27
#define ETW_COMPACT_TS_MASK ((1u << ETW_COMPACT_TS_BITS) - 1)

/* A thread's stream.  Visible here only so the push/pop fast path below can
 * be inlined into the tracer; everything else goes through functions. */
typedef struct EtwStream {
    struct EtwStream *next;
    struct EtwStream *prev;
    int fd;
    uint32_t tid;
    uint64_t seq;
    uint64_t begin_ts;
    uint64_t last_ts;
    EtwClockAnchor clock;
    uint64_t file_size;   /* bytes handed to the writer so far */
    int timed;            /* 0: pushes and pops take the last time read */
    size_t used;          /* bytes in data, 0 = no packet open */
    uint8_t *data;        /* the open packet (ETW_PACKET_BYTES), or NULL */
} EtwStream;

/* Starts recording into DIR (creating DIR/ctf/pid-PID).  With `call_times`
 * 0, compact events (pushes and pops) are stamped with the stream's last
 * clock reading instead of reading the clock: exact call counts and order
 * at less cost, no call durations; the metadata says so (env call_times).
 * Returns 0, or -1 with a message in `error` (of `error_size` bytes). */
int etw_recorder_start(const char *dir, int call_times, char *error, size_t error_size);

/* Writes out every thread's pending events and closes the streams. */
void etw_recorder_stop(void);

/* Writes out every thread's pending events, keeping streams open. */
void etw_recorder_flush_all(void);

int etw_recorder_active(void);

/* The capture directory while recording, else NULL. */
const char *etw_recorder_dir(void);

/* The stream of the calling thread (kernel id `tid`), created on first use;
 * NULL when not recording or the stream file cannot be created. */
EtwStream *etw_stream_open(uint32_t tid);

/* Writes out and closes a thread's stream (at thread exit). */
void etw_stream_close(EtwStream *stream);

/* Reserves room for an event of `payload_size` bytes stamped now, writes
 * its header and returns where the payload goes, or NULL if the event can
 * never fit a packet.  The caller fills exactly `payload_size` bytes. */
uint8_t *etw_stream_reserve(EtwStream *stream, uint32_t id, size_t payload_size);

/* Fast path of etw_stream_reserve for small events: the compact header fits
 * and the packet has room.  Returns NULL when the caller must take the slow
 * path (etw_stream_reserve). */
static inline __attribute__((always_inline)) uint8_t *
etw_stream_reserve_compact(EtwStream *s, uint32_t id, size_t payload_size)
{
    if (__builtin_expect(s->used == 0 || s->used + 4 + payload_size > ETW_PACKET_BYTES, 0)) {
        return NULL;
    }
    uint64_t ts = __builtin_expect(s->timed, 1) ? etw_clock_read(&s->clock) : s->last_ts;
    if (__builtin_expect(ts - s->last_ts > ETW_COMPACT_TS_MASK, 0)) {
        return NULL; /* earlier than the last event, or too long after it */
    }
    uint8_t *p = s->data + s->used;
    uint32_t word = id | ((uint32_t)(ts & ETW_COMPACT_TS_MASK) << 5);
    memcpy(p, &word, 4);
    s->last_ts = ts;
    s->used += 4 + payload_size;
    return p + 4;
}

/* Forgets streams inherited across fork() without writing them (they are the
 * parent's); the child's first event starts a trace of its own. */
void etw_recorder_after_fork_child(void);

/* From a fatal-signal handler: writes out what every stream holds, unless
 * the registry is busy (the fault happened inside the recorder). */
void etw_recorder_flush_on_crash(void);

/* Bytes and events written so far (for --info and benchmarks). */
uint64_t etw_recorder_events_dropped(void);

#endif

/* The built-in recorder: one CTF 1.8 stream file per thread.
 *
 * Layout of a capture directory DIR:
 *     DIR/ctf/pid-PID/metadata             TSDL text, one trace per process
 *     DIR/ctf/pid-PID/stream-N-tid-TID      one stream file per thread
 *     DIR/ctf/pid-PID/.ring-N-tid-TID       its ring (while it records)
 * (pid-PID.2, .3, ... for the images a process execs into.)
 *
 * A thread writes its events straight into a small ring of packets, a file
 * mapped MAP_SHARED: every packet's header says how much of it is written,
 * after every event, so whatever the process dies of (SIGKILL, os._exit,
 * exec, a crash) every event written so far is in the page cache, in the
 * ring or in the stream.  Full packets are copied from the ring into the
 * stream file by a background thread (copier.c); readers take the packets
 * still in a ring after the stream's (etwtrace/trace/ctf.py), and finalize()
 * moves them into the stream for other CTF readers.  The ring's pages are
 * reused, so a traced thread pays neither for write(2) nor for fresh pages.
 *
 * The recorder never keeps a file descriptor across user code: files are
 * opened (and checked to be the ones it created) only for a moment, so a
 * program that closes or reuses descriptors cannot make it write into its
 * own files.
 *
 * The byte layout is declared in trace_format.h. */
#ifndef ETWTRACE_RECORDER_H
#define ETWTRACE_RECORDER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "clock.h"
#include "trace_format.h"

/* Packets in a stream's ring: a thread may be this many packets ahead of
 * the copier before it waits. */
#define ETW_RING_SLOTS 8

/* Memory mode (a session's --ring SIZE): each thread's ring holds this
 * many packets at least and at most; nothing is copied, the oldest packet
 * is overwritten. */
#define ETW_MEMORY_MIN_SLOTS 2
#define ETW_MEMORY_MAX_SLOTS 65536
/* With a --max-size, the rings of memory mode leave this share of it
 * (1/8) to the kept streams. */
#define ETW_MEMORY_KEPT_SHARE 8

/* How a trace is recorded. */
typedef struct {
    int call_times;      /* see etw_recorder_start */
    size_t ring_bytes;   /* 0: every packet goes to the stream file; else
                          * memory mode, about this much per thread */
    int quiet;           /* a session's trace: failures are counted in the
                          * trace, never printed (the program's stderr is
                          * not the session's) */
} EtwRecorderOptions;

/* A thread's stream.  Visible here only so the push/pop fast path below can
 * be inlined into the tracer; everything else goes through functions.
 * Only its own thread writes to it. */
typedef struct EtwStream {
    /* The open packet, in the ring: `used` bytes of `data` are written.
     * With no packet open, data is NULL and used is ETW_PACKET_BYTES, so
     * that the fast path's room check sends the writer to the slow path. */
    uint8_t *data;
    size_t used;
    uint64_t last_ts;
    EtwClockAnchor clock;
    int timed;                /* 0: pushes and pops take the last time read */
    uint32_t tid;
    uint64_t seq;             /* packets begun */
    uint64_t discarded;       /* events lost (also in every packet header) */
    uint8_t *ring;            /* `slots` packets, mapped shared ... */
    EtwRingControl *control;  /* ... then the ring's control page */
    unsigned slots;
    int overwrite;            /* memory mode: no copier, oldest packet reused */
    int quiet;                /* EtwRecorderOptions.quiet */
    /* The header of the event being written (see etw_stream_commit). */
    uint8_t *pending_at;
    uint8_t pending[ETW_EXTENDED_HEAD_SIZE];
    uint8_t pending_len;
    unsigned slot;            /* the ring slot of the open (or next) packet */
    uint8_t *busy;            /* per slot: being copied (the copier clears it) */
    uint64_t file_offset;     /* where the next packet copied goes */
    int error;                /* errno that stopped this stream, -ETW_STOP_*
                               * when the capture stopped it, or 0 */
    int copy_error;           /* errno of a failed copy (set by the copier) */
    size_t held_used;         /* a stopped stream's last packet, held open
                               * (its `used`) so its header counts the losses */
    int lost_outside;         /* events lost with no packet to count them in:
                               * the ring (its control page) is kept for readers */
    uint64_t in_budget;       /* of `discarded`, those counted in the budget's
                               * events_unrecorded already (a stream with no ring) */
    uint64_t generation;      /* the trace it belongs to (recorder.c) */
    pid_t pid;                /* its creator: after a fork, not the child */
    char *path;               /* the stream file, made by the recorder ... */
    dev_t dev;                /* ... with this identity */
    ino_t ino;
    char *ring_path;
} EtwStream;

/* Starts recording into DIR (creating DIR/ctf/pid-PID).  With `call_times`
 * 0, compact events (pushes and pops) are stamped with the stream's last
 * clock reading instead of reading the clock: exact call counts and order
 * at less cost, no call durations; the metadata says so (env call_times).
 * Returns 0, or -1 with a message in `error` (of `error_size` bytes). */
int etw_recorder_start(const char *dir, const EtwRecorderOptions *options, char *error,
                       size_t error_size);

/* Ends recording.  Each thread's stream is closed (its file cut to its
 * last event) by that thread, at its next event or when it ends; the
 * caller's own at once.  Prints one line to stderr if events were lost
 * (unless the trace is quiet). */
void etw_recorder_stop(void);

int etw_recorder_active(void);

/* The capture directory while recording, else NULL. */
const char *etw_recorder_dir(void);

/* This process's own trace directory (CAPTURE/ctf/pid-PID[.N]) into `buf`:
 * 0, or -1 when it records into none (or has not made its own yet). */
int etw_recorder_trace_dir(char *buf, size_t size);

/* The calling thread's stream for this session.  `*own` is the thread's
 * stream object (NULL at first): it is kept while it belongs to the trace
 * being recorded, so a thread writes one file in every session of a
 * capture; it is closed and let go when it belongs to an earlier trace or
 * to a fork's parent.  Returns the stream to write, or NULL when not
 * recording (or the file cannot be created: an event lost, counted). */
EtwStream *etw_stream_attach(EtwStream **own, uint32_t tid);

/* Memory mode keeps the events that describe the process (PythonFunction,
 * PythonThread) out of the rings, which forget: they go to one stream per
 * process that is copied to its file as usual.  Returns it locked (any
 * thread may write it; etw_kept_stream_unlock after the event), or NULL
 * when not recording. */
EtwStream *etw_kept_stream_lock(void);
void etw_kept_stream_unlock(void);

/* Whether the recorder records in memory mode now. */
int etw_recorder_memory_mode(void);

/* Closes the calling thread's stream (at thread exit) and frees it. */
void etw_stream_close(EtwStream *stream);

/* Ends the calling thread's open packet and waits until the copier has
 * written all of its stream (recording stopped); the stream continues in
 * the next session. */
void etw_stream_suspend(EtwStream *stream);

/* Reserves room for an event of `payload_size` bytes stamped now and
 * returns where its payload goes, or NULL when the event is lost
 * (counted).  The caller fills exactly `payload_size` bytes, then calls
 * etw_stream_commit, which writes the event's header. */
uint8_t *etw_stream_reserve(EtwStream *stream, uint32_t id, size_t payload_size);

/* Writes the header of the event reserved last, after its payload (and
 * after the zero word reserving put after it): the release fence keeps
 * those stores before this one, for the compiler and for the machine (no
 * instruction on x86-64, which keeps stores in order; dmb ish on aarch64),
 * so neither a reader of the ring nor the page cache after a SIGKILL sees
 * a header whose payload is not written (trace_format.h). */
static inline void
etw_stream_commit(EtwStream *s)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(s->pending_at, s->pending, s->pending_len);
}

/* Fast path of etw_stream_reserve for small events: the compact header fits
 * and the packet has room.  Returns where the payload goes, with the
 * header to write after it in *header (etw_stream_commit_compact), or NULL
 * when the caller must take the slow path (etw_stream_reserve). */
static inline __attribute__((always_inline)) uint8_t *
etw_stream_reserve_compact(EtwStream *s, uint32_t id, size_t payload_size, uint32_t *header)
{
    size_t size = ETW_COMPACT_HEAD_SIZE + payload_size;
    if (__builtin_expect(s->used + size + ETW_END_WORD_SIZE > ETW_PACKET_BYTES, 0)) {
        return NULL;
    }
    uint64_t ts = __builtin_expect(s->timed, 1) ? etw_clock_read(&s->clock) : s->last_ts;
    if (__builtin_expect(ts - s->last_ts > ETW_COMPACT_TS_MASK, 0)) {
        return NULL; /* earlier than the last event, or too long after it */
    }
    uint8_t *p = s->data + s->used;
    *header = id | ((uint32_t)(ts & ETW_COMPACT_TS_MASK) << 5);
    s->last_ts = ts;
    s->used += size;
    const uint32_t end = 0;
    memcpy(s->data + s->used, &end, ETW_END_WORD_SIZE);   /* where the next one starts */
    return p + ETW_COMPACT_HEAD_SIZE;
}

static inline __attribute__((always_inline)) void
etw_stream_commit_compact(uint8_t *payload, uint32_t header)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(payload - ETW_COMPACT_HEAD_SIZE, &header, 4);
}

/* Counts an event that could not be recorded on this stream. */
void etw_stream_discard(EtwStream *stream);

/* In a forked child, before anything else runs there: streams inherited
 * from the parent are let go without touching their files (the child's
 * first event starts a trace of its own); no lock is taken, nothing freed. */
void etw_recorder_after_fork_child(void);

/* Events lost so far in this process (disk full, mapping failed, event too
 * large, the capture's size limit or free-space reserve reached), and the
 * first failure (0 if none): an errno, or -ETW_STOP_*. */
uint64_t etw_recorder_events_discarded(void);
int etw_recorder_first_error(void);

/* What a failure of etw_recorder_first_error() was, for people. */
const char *etw_recorder_failure_text(int err);

/* Writes the CTF metadata text of a trace into `buf` (NUL-terminated);
 * returns its length, or -1 if `size` is too small. */
int etw_format_metadata(char *buf, size_t size, int pid, int call_times);

#endif

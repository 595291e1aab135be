/* The built-in recorder.  See recorder.h.
 *
 * Binary layout (little-endian), matching the TSDL in write_metadata():
 *   packet header   uint32 magic 0xC1FC1FC1, uint32 stream_id 0
 *   packet context  uint64 timestamp_begin, timestamp_end, content_size
 *                   (bits), packet_size (bits), packet_seq_num; uint32 tid
 *   event header    compact:  one 32-bit word, id in bits 0-4 and the low
 *                             27 bits of the timestamp in bits 5-31
 *                   extended: one byte 31, uint32 id, uint64 timestamp
 * A compact header is used when the event follows the previous one in the
 * same stream by less than 2^27 ns (about 134 ms); a reader restores the
 * full timestamp from the previous one, as CTF 1.8 specifies for clock
 * fields narrower than the clock.
 *
 * Concurrency: a stream is written only by its own thread, holding the GIL,
 * except by etw_recorder_flush_all()/stop(), which run holding the GIL and
 * `registry_lock`, and by etw_stream_close() at thread exit, which holds
 * `registry_lock`.  So the hot path takes no lock. */
#define _GNU_SOURCE
#include "recorder.h"

#include "writer.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CTF_MAGIC 0xC1FC1FC1u
#define PACKET_BYTES ETW_PACKET_BYTES
#define COMPACT_ID_LIMIT ETW_COMPACT_ID_LIMIT
#define COMPACT_TS_MASK ETW_COMPACT_TS_MASK

typedef struct {
    uint32_t magic;
    uint32_t stream_id;
    uint64_t timestamp_begin;
    uint64_t timestamp_end;
    uint64_t content_size;
    uint64_t packet_size;
    uint64_t packet_seq_num;
    uint32_t tid;
} __attribute__((packed)) PacketHead;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static EtwStream *streams;
static int active;
static char capture_dir[PATH_MAX];
static char trace_dir[PATH_MAX + 40];
static pid_t trace_pid;
static uint64_t stream_counter;
static uint64_t dropped;
static int call_times = 1;

static const char METADATA[] =
    "/* CTF 1.8 */\n"
    "\n"
    "typealias integer { size = 5; align = 1; signed = false; } := uint5_t;\n"
    "typealias integer { size = 8; align = 8; signed = false; } := uint8_t;\n"
    "typealias integer { size = 16; align = 8; signed = false; } := uint16_t;\n"
    "typealias integer { size = 32; align = 8; signed = false; } := uint32_t;\n"
    "typealias integer { size = 64; align = 8; signed = false; } := uint64_t;\n"
    "typealias integer { size = 64; align = 8; signed = false; base = hex; } := uint64x_t;\n"
    "\n"
    "trace {\n"
    "    major = 1;\n"
    "    minor = 8;\n"
    "    byte_order = le;\n"
    "    packet.header := struct {\n"
    "        uint32_t magic;\n"
    "        uint32_t stream_id;\n"
    "    };\n"
    "};\n"
    "\n"
    "env {\n"
    "    domain = \"etwtrace\";\n"
    "    tracer_name = \"etwtrace\";\n"
    "    provider = \"Python\";\n"
    "    provider_guid = \"99a10640-320d-4b37-9e26-c311d86da7ab\";\n"
    "    format_version = 1;\n"
    "    pid = %d;\n"
    "    call_times = %d;\n"
    "};\n"
    "\n"
    "clock {\n"
    "    name = monotonic;\n"
    "    description = \"CLOCK_MONOTONIC\";\n"
    "    freq = 1000000000;\n"
    "    offset = 0;\n"
    "};\n"
    "\n"
    "typealias integer { size = 27; align = 1; signed = false; map = clock.monotonic.value; } := uint27_clock_t;\n"
    "typealias integer { size = 64; align = 8; signed = false; map = clock.monotonic.value; } := uint64_clock_t;\n"
    "\n"
    "stream {\n"
    "    id = 0;\n"
    "    packet.context := struct {\n"
    "        uint64_clock_t timestamp_begin;\n"
    "        uint64_clock_t timestamp_end;\n"
    "        uint64_t content_size;\n"
    "        uint64_t packet_size;\n"
    "        uint64_t packet_seq_num;\n"
    "        uint32_t tid;\n"
    "    };\n"
    "    event.header := struct {\n"
    "        enum : uint5_t { compact = 0 ... 30, extended = 31 } id;\n"
    "        variant <id> {\n"
    "            struct { uint27_clock_t timestamp; } compact;\n"
    "            struct { uint32_t id; uint64_clock_t timestamp; } extended;\n"
    "        } v;\n"
    "    } align(8);\n"
    "};\n"
    "\n"
    "event { stream_id = 0; id = 0; name = \"PythonThread.start\"; fields := struct { uint32_t ThreadId; }; };\n"
    "event { stream_id = 0; id = 1; name = \"PythonThread.stop\"; fields := struct { uint32_t ThreadId; }; };\n"
    "event { stream_id = 0; id = 2; name = \"PythonFunction\"; fields := struct {\n"
    "    uint32_t FunctionID; uint64x_t BeginAddress; uint64x_t EndAddress; uint32_t LineNumber;\n"
    "    uint8_t IsPythonCode; string SourceFile; string Name; }; };\n"
    "event { stream_id = 0; id = 3; name = \"PythonMark\"; fields := struct { string Mark; }; };\n"
    "event { stream_id = 0; id = 4; name = \"PythonMark.start\"; fields := struct { string Mark; }; };\n"
    "event { stream_id = 0; id = 5; name = \"PythonMark.stop\"; fields := struct { string Mark; }; };\n"
    "event { stream_id = 0; id = 6; name = \"PythonStackSample\"; fields := struct {\n"
    "    string Mark; uint32_t StackDepth; uint64x_t Stack[StackDepth]; }; };\n"
    "event { stream_id = 0; id = 7; name = \"PythonFunctionPush\"; fields := struct {\n"
    "    uint32_t FunctionID; uint32_t Caller; uint32_t CallerLine; }; };\n"
    "event { stream_id = 0; id = 8; name = \"PythonFunctionPop\"; fields := struct { uint32_t FunctionID; }; };\n"
    "/* Compact push: Caller is the innermost open push of this stream. */\n"
    "event { stream_id = 0; id = 9; name = \"PythonFunctionPush.short\"; fields := struct {\n"
    "    uint16_t FunctionID; uint16_t CallerLine; }; };\n"
    "event { stream_id = 0; id = 10; name = \"PythonFunctionPop.short\"; fields := struct { uint16_t FunctionID; }; };\n";

static int
make_dir(const char *path)
{
    if (mkdir(path, 0777) == 0 || errno == EEXIST) {
        return 0;
    }
    return -1;
}

/* Creates DIR/ctf/pid-PID and its metadata for the current process. */
static int
open_trace(char *error, size_t error_size)
{
    pid_t pid = getpid();
    char ctf_dir[PATH_MAX + 8];
    snprintf(ctf_dir, sizeof(ctf_dir), "%s/ctf", capture_dir);
    int n = snprintf(trace_dir, sizeof(trace_dir), "%s/pid-%d", ctf_dir, (int)pid);
    if (n < 0 || (size_t)n >= sizeof(trace_dir)) {
        snprintf(error, error_size, "capture path is too long: %s", capture_dir);
        return -1;
    }
    if (make_dir(capture_dir) != 0 || make_dir(ctf_dir) != 0 || make_dir(trace_dir) != 0) {
        snprintf(error, error_size, "cannot create %s: %s", trace_dir, strerror(errno));
        return -1;
    }
    char path[PATH_MAX + 128];
    snprintf(path, sizeof(path), "%s/metadata", trace_dir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0666);
    if (fd < 0) {
        snprintf(error, error_size, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    char text[sizeof(METADATA) + 64];
    int len = snprintf(text, sizeof(text), METADATA, (int)pid, call_times);
    int rc = etw_pwrite_all(fd, (const uint8_t *)text, (size_t)len, 0);
    close(fd);
    if (rc != 0) {
        snprintf(error, error_size, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    trace_pid = pid;
    return 0;
}

int
etw_recorder_start(const char *dir, int with_call_times, char *error, size_t error_size)
{
    int rc = 0;
    pthread_mutex_lock(&registry_lock);
    call_times = with_call_times != 0;
    if (strlen(dir) >= sizeof(capture_dir)) {
        snprintf(error, error_size, "capture path is too long: %s", dir);
        rc = -1;
    } else if (!(active && trace_pid == getpid() && strcmp(dir, capture_dir) == 0)) {
        snprintf(capture_dir, sizeof(capture_dir), "%s", dir);
        rc = open_trace(error, error_size);
    }
    active = rc == 0;
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

int
etw_recorder_active(void)
{
    return active;
}

const char *
etw_recorder_dir(void)
{
    return active ? capture_dir : NULL;
}

uint64_t
etw_recorder_events_dropped(void)
{
    return dropped + etw_writer_failures();
}

/* Fills in the open packet's end time and sizes. */
static void
finish_packet(EtwStream *s)
{
    PacketHead head;
    memcpy(&head, s->data, sizeof(head));
    head.timestamp_end = s->last_ts;
    head.content_size = (uint64_t)s->used * 8;
    head.packet_size = head.content_size;
    memcpy(s->data, &head, sizeof(head));
}

/* Hands the open packet to the writer thread (see writer.h); the next
 * packet takes a fresh buffer. */
static void
flush_packet(EtwStream *s)
{
    if (s->used == 0) {
        return;
    }
    if (s->fd >= 0) {
        finish_packet(s);
        etw_writer_submit(s->fd, s->file_size, s->data, s->used);
        s->file_size += s->used;
        s->data = NULL;
    }
    s->used = 0;
}

/* Opens a packet; -1 when no buffer can be had. */
static int
begin_packet(EtwStream *s, uint64_t ts)
{
    if (s->data == NULL && (s->data = etw_packet_alloc()) == NULL) {
        return -1;
    }
    PacketHead head = {
        .magic = CTF_MAGIC,
        .stream_id = 0,
        .timestamp_begin = ts,
        .timestamp_end = ts,
        .packet_seq_num = s->seq++,
        .tid = s->tid,
    };
    memcpy(s->data, &head, sizeof(head));
    s->used = sizeof(head);
    s->begin_ts = ts;
    s->last_ts = ts;
    return 0;
}

EtwStream *
etw_stream_open(uint32_t tid)
{
    EtwStream *s = NULL;
    pthread_mutex_lock(&registry_lock);
    if (!active) {
        goto done;
    }
    if (trace_pid != getpid()) {
        char error[256];
        if (open_trace(error, sizeof(error)) != 0) {
            fprintf(stderr, "etwtrace: %s\n", error);
            active = 0;
            goto done;
        }
    }
    s = calloc(1, sizeof(EtwStream));
    if (s == NULL) {
        goto done;
    }
    char path[PATH_MAX + 128];
    snprintf(path, sizeof(path), "%s/stream-%llu-tid-%u", trace_dir,
             (unsigned long long)stream_counter++, tid);
    s->fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0666);
    if (s->fd < 0) {
        fprintf(stderr, "etwtrace: cannot write %s: %s\n", path, strerror(errno));
        free(s);
        s = NULL;
        goto done;
    }
    s->tid = tid;
    s->timed = call_times;
    s->next = streams;
    if (streams != NULL) {
        streams->prev = s;
    }
    streams = s;
done:
    pthread_mutex_unlock(&registry_lock);
    return s;
}

static void
unlink_stream(EtwStream *s)
{
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else if (streams == s) {
        streams = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    s->next = s->prev = NULL;
}

void
etw_stream_close(EtwStream *s)
{
    if (s == NULL) {
        return;
    }
    pthread_mutex_lock(&registry_lock);
    flush_packet(s);
    etw_writer_drain();
    if (s->fd >= 0) {
        close(s->fd);
    }
    unlink_stream(s);
    pthread_mutex_unlock(&registry_lock);
    free(s->data);
    free(s);
}

void
etw_recorder_flush_all(void)
{
    pthread_mutex_lock(&registry_lock);
    for (EtwStream *s = streams; s != NULL; s = s->next) {
        flush_packet(s);
    }
    etw_writer_drain();
    pthread_mutex_unlock(&registry_lock);
}

void
etw_recorder_flush_on_crash(void)
{
    /* Only async-signal-safe work: trylock, memcpy, pwrite.  Queued
     * packets and open ones go to their own offsets, so the order of the
     * writes does not matter. */
    etw_writer_flush_on_crash();
    if (pthread_mutex_trylock(&registry_lock) != 0) {
        return;
    }
    int saved_errno = errno;
    for (EtwStream *s = streams; s != NULL; s = s->next) {
        if (s->used != 0 && s->fd >= 0) {
            finish_packet(s);
            (void)etw_pwrite_all(s->fd, s->data, s->used, s->file_size);
        }
    }
    errno = saved_errno;
    pthread_mutex_unlock(&registry_lock);
}

void
etw_recorder_stop(void)
{
    pthread_mutex_lock(&registry_lock);
    for (EtwStream *s = streams; s != NULL; s = s->next) {
        flush_packet(s);
    }
    etw_writer_drain();
    for (EtwStream *s = streams; s != NULL; s = s->next) {
        /* Keep the stream object (its thread still points at it) but stop
         * writing: a later start opens a fresh stream per thread. */
        if (s->fd >= 0) {
            close(s->fd);
            s->fd = -1;
        }
        free(s->data);
        s->data = NULL;
    }
    active = 0;
    pthread_mutex_unlock(&registry_lock);
}

uint8_t *
etw_stream_reserve(EtwStream *s, uint32_t id, size_t payload_size)
{
    uint64_t ts = etw_clock_read(&s->clock);
    size_t worst = 13 + payload_size;
    if (sizeof(PacketHead) + worst > PACKET_BYTES) {
        dropped++;
        return NULL;
    }
    if (s->used != 0 && s->used + worst > PACKET_BYTES) {
        flush_packet(s);
    }
    if (s->used == 0 && begin_packet(s, ts) != 0) {
        dropped++;
        return NULL;
    }
    if (ts < s->last_ts) {
        ts = s->last_ts; /* keep the stream ordered */
    }
    uint8_t *p = s->data + s->used;
    if (id < COMPACT_ID_LIMIT && ts - s->last_ts <= COMPACT_TS_MASK) {
        uint32_t word = id | ((uint32_t)(ts & COMPACT_TS_MASK) << 5);
        memcpy(p, &word, 4);
        p += 4;
    } else {
        *p++ = COMPACT_ID_LIMIT;
        memcpy(p, &id, 4);
        memcpy(p + 4, &ts, 8);
        p += 12;
    }
    s->last_ts = ts;
    s->used = (size_t)(p - s->data) + payload_size;
    return p;
}

void
etw_recorder_after_fork_child(void)
{
    /* The inherited streams and their files are the parent's: forget them
     * without writing (the parent writes its own pending data).  Only
     * async-signal-safe calls here. */
    for (EtwStream *s = streams; s != NULL; s = s->next) {
        if (s->fd >= 0) {
            close(s->fd);
            s->fd = -1;
        }
        s->used = 0;
    }
    streams = NULL; /* the copies stay allocated: freeing is not fork-safe */
    pthread_mutex_init(&registry_lock, NULL);
    etw_writer_after_fork_child();
}

/* The built-in recorder.  See recorder.h; the byte layout is declared in
 * trace_format.h.
 *
 * A stream's ring is allocated (posix_fallocate) before it is mapped, so a
 * full disk is an error here, never a SIGBUS in the traced program, and its
 * pages are faulted in once, up front.  A stream that cannot go on (its
 * copy failed: a full disk) stops: its later events are counted in its
 * packet's events_discarded, and the packets the copier could not write
 * stay in the ring for readers.
 *
 * Recording also stops, for every process of the capture at once, before
 * the capture passes its --max-size or its file system's free space falls
 * to the reserve (budget.h): each packet is claimed from the capture's
 * budget before it is opened, and the copier checks the free space before
 * it writes one.  A stream that stops holds its last packet open, so that
 * the packet's header counts the events lost after it; the packet is
 * written (it was claimed) when the stream closes.
 *
 * Concurrency: only a stream's own thread writes, submits or closes it, so
 * no thread ever touches a packet another may be writing (free-threaded
 * builds need no stop-the-world); the copier only reads submitted packets.
 * Recording stops for everyone at once (`active`); each thread then ends
 * its stream at its next event or at its exit.  `registry_lock` guards the
 * trace's state. */
#define _GNU_SOURCE
#include "recorder.h"

#include "budget.h"
#include "copier.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#  define MADV_POPULATE_WRITE 23
#endif

#define PACKET_BYTES ETW_PACKET_BYTES
#define HEAD_BYTES sizeof(EtwPacketHead)
/* A packet being rewritten says so in its packet_seq_num first (see
 * begin_packet). */
#define SEQ_REWRITING UINT64_MAX

static size_t
ring_file_bytes(unsigned slots)
{
    return (size_t)slots * PACKET_BYTES + ETW_RING_CONTROL_BYTES;
}

_Static_assert(ETW_EV_PUSH_COMPACT != 0 && ETW_EV_POP_COMPACT != 0,
               "event id 0 never takes the compact header (trace_format.h)");

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static int active;             /* atomic */
static char capture_dir[PATH_MAX];
static char trace_dir[PATH_MAX + 48];
static pid_t trace_pid;
static uint64_t generation = 1;   /* bumped for each new trace, and at fork */
static unsigned stream_counter;
static EtwRecorderOptions options = {.call_times = 1};
static uint64_t discarded;     /* atomic */
static int first_error;        /* atomic */
static int warned;
static uint64_t reported;      /* losses already told at a stop */

/* ---- files ---- */

/* Writes all of `size` bytes at `offset`; 0, or -1 with errno. */
static int
pwrite_all(int fd, const void *data, size_t size, off_t offset)
{
    const char *p = data;
    while (size > 0) {
        ssize_t n = pwrite(fd, p, size, offset);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        size -= (size_t)n;
        offset += n;
    }
    return 0;
}

/* A directory of ours: made with mode 0700, or already there as a real
 * directory (not a symlink).  0, or -1 with errno. */
static int
make_private_dir(const char *path)
{
    if (mkdir(path, 0700) == 0) {
        return 0;
    }
    if (errno != EEXIST) {
        return -1;
    }
    struct stat st;
    if (lstat(path, &st) != 0) {
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* A new file for this process alone (never through a symlink, never an
 * existing one): its descriptor, and its identity in *st. */
static int
create_own_file(const char *path, struct stat *st)
{
    int fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0 && fstat(fd, st) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* Stores a 64-bit field of a packet header after the bytes it describes:
 * the release fence keeps earlier stores from being seen after it (on
 * x86-64, which keeps stores in order, it only stops the compiler; on
 * aarch64 it is a dmb ish). */
static inline void
put_head_u64(uint8_t *packet, size_t field, uint64_t value)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(packet + field, &value, 8);
}

/* ---- metadata ---- */

static int
appendf(char *buf, size_t size, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
appendf(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = *len < size ? vsnprintf(buf + *len, size - *len, fmt, ap) : -1;
    va_end(ap);
    if (n < 0 || (size_t)n >= size - *len) {
        *len = size;
        return -1;
    }
    *len += (size_t)n;
    return 0;
}

int
etw_format_metadata(char *buf, size_t size, int pid, int with_call_times)
{
    size_t len = 0;
    appendf(buf, size, &len,
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
        "    format_version = %d;\n"
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
        "        uint64_t events_discarded;\n"
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
        "\n",
        ETW_FORMAT_VERSION, pid, with_call_times);
    for (size_t i = 0; i < ETW_N_EVENTS; i++) {
        const EtwEventDecl *e = &etw_event_decls[i];
        appendf(buf, size, &len, "event { stream_id = 0; id = %u; name = \"%s\"; fields := struct {",
                e->id, e->ctf_name);
        for (uint32_t f = 0; f < e->n_fields; f++) {
            const EtwFieldDecl *field = &e->fields[f];
            if (field->type == ETW_T_ADDRESSES) {
                appendf(buf, size, &len, " uint32_t %sDepth; %s %s[%sDepth];", field->name,
                        etw_field_ctf_type(field->type), field->name, field->name);
            }
            else {
                appendf(buf, size, &len, " %s %s;", etw_field_ctf_type(field->type), field->name);
            }
        }
        appendf(buf, size, &len, " }; };\n");
    }
    return len < size ? (int)len : -1;
}

/* Writes DIR/metadata whole or not at all: into metadata.new, then renamed
 * over it.  A process killed as it starts (a pool's worker terminated
 * before it ran) leaves no metadata, never a partial one. */
static int
write_metadata(const char *dir, char *error, size_t error_size)
{
    char path[PATH_MAX + 128], fresh[PATH_MAX + 128];
    snprintf(path, sizeof(path), "%s/metadata", dir);
    snprintf(fresh, sizeof(fresh), "%s/metadata.new", dir);
    int fd = open(fresh, O_CREAT | O_TRUNC | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
    char text[8192];
    int len = etw_format_metadata(text, sizeof(text), (int)getpid(), options.call_times);
    int rc = fd < 0 || len < 0 || pwrite_all(fd, text, (size_t)len, 0) != 0 ? -1 : 0;
    if (fd >= 0) {
        close(fd);
    }
    if (rc == 0 && rename(fresh, path) != 0) {
        rc = -1;
    }
    if (rc != 0) {
        snprintf(error, error_size, "cannot write %s: %s", path, strerror(errno));
    }
    return rc;
}

/* Creates DIR/ctf/pid-PID (pid-PID.2, ... when an earlier image of this pid,
 * before an exec, made one) and its metadata. */
static int
open_trace_dir(char *error, size_t error_size)
{
    pid_t pid = getpid();
    if (etw_budget_stopped() != 0) {
        /* The capture stopped recording before this process began: it is
         * counted, and records nothing (nor makes any file). */
        etw_budget_refuse(1);
        trace_pid = pid;
        trace_dir[0] = '\0';
        return 0;
    }
    char ctf_dir[PATH_MAX + 8];
    snprintf(ctf_dir, sizeof(ctf_dir), "%s/ctf", capture_dir);
    if (make_private_dir(capture_dir) != 0 || make_private_dir(ctf_dir) != 0) {
        snprintf(error, error_size, "cannot create %s: %s", ctf_dir, strerror(errno));
        return -1;
    }
    for (int image = 1; image < 1000; image++) {
        int n = image == 1
            ? snprintf(trace_dir, sizeof(trace_dir), "%s/pid-%d", ctf_dir, (int)pid)
            : snprintf(trace_dir, sizeof(trace_dir), "%s/pid-%d.%d", ctf_dir, (int)pid, image);
        if (n < 0 || (size_t)n >= sizeof(trace_dir)) {
            snprintf(error, error_size, "capture path is too long: %s", capture_dir);
            return -1;
        }
        if (mkdir(trace_dir, 0700) == 0) {
            trace_pid = pid;
            stream_counter = 0;
            return write_metadata(trace_dir, error, error_size);
        }
        if (errno != EEXIST) {
            break;
        }
    }
    snprintf(error, error_size, "cannot create %s: %s", trace_dir, strerror(errno));
    return -1;
}

/* ---- streams ---- */

const char *
etw_recorder_failure_text(int err)
{
    if (err == -ETW_STOP_LIMIT) {
        return "the capture reached its size limit (--max-size)";
    }
    if (err == -ETW_STOP_RESERVE) {
        return "the file system's free space reached the reserve etwtrace leaves free";
    }
    return strerror(err);
}

/* Says once, for the whole capture, why it stopped recording. */
static void
say_stopped(int why, uint64_t free_bytes, uint64_t reserve)
{
    char limit[32], have[32], keep[32];
    if (why == ETW_STOP_LIMIT) {
        etw_budget_size_text(limit, sizeof(limit), etw_budget_limit());
        fprintf(stderr, "etwtrace: recording stopped: the capture reached its size limit "
                "(--max-size %s); the program runs on, its later events are counted "
                "as lost\n", limit);
    }
    else {
        etw_budget_size_text(have, sizeof(have), free_bytes);
        etw_budget_size_text(keep, sizeof(keep), reserve);
        fprintf(stderr, "etwtrace: recording stopped: the file system of %s has %s free, "
                "no more than the %s etwtrace leaves free (%d%% of its size, at most 1 GiB); the "
                "program runs on, its later events are counted as lost\n", capture_dir,
                have, keep, ETW_RESERVE_PERCENT);
    }
}

static void
note_failure(EtwStream *s, int err, const char *what)
{
    s->error = err;
    if (s->control != NULL) {
        s->control->error = (uint32_t)err;
    }
    int expected = 0;
    __atomic_compare_exchange_n(&first_error, &expected, err, 0, __ATOMIC_RELAXED,
                                __ATOMIC_RELAXED);
    if (err < 0) {
        return;     /* the capture stopped: said by stop_capture, once */
    }
    if (!s->quiet && !__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED)) {
        fprintf(stderr, "etwtrace: stopped recording thread %u: %s %s: %s; "
                "its later events are counted as lost\n", s->tid, what, s->path, strerror(err));
    }
}

/* The capture stops recording for `why` (ETW_STOP_*), seen by this
 * process: the process that stops it says so.  `stopped` says whether the
 * budget was stopped already by this caller (a failed claim). */
static void
stop_capture(const EtwStream *s, int why, int stopped)
{
    uint64_t free_bytes = 0, reserve = 0;
    if (why == ETW_STOP_RESERVE) {
        etw_budget_room_at(capture_dir, 0, &free_bytes, &reserve);
        stopped = etw_budget_stop(why, free_bytes, reserve);
    }
    if (stopped && !s->quiet) {
        say_stopped(why, free_bytes, reserve);
    }
}

/* Stops a stream (recording stopped, or a copy failed): its open packet,
 * if any, is held open and no event is added to it, so that its header
 * counts the events lost from now on; suspend_stream writes it. */
static void
stop_stream(EtwStream *s, int err, const char *what)
{
    if (s->data != NULL) {
        s->held_used = s->used;
        s->used = PACKET_BYTES;     /* full to the fast path */
    }
    else if (s->seq == 0 && err < 0) {
        etw_budget_refuse(0);       /* stopped before its first event */
    }
    note_failure(s, err, what);
}

void
etw_stream_discard(EtwStream *s)
{
    __atomic_fetch_add(&discarded, 1, __ATOMIC_RELAXED);
    s->discarded++;
    if (s->data != NULL) {
        put_head_u64(s->data, offsetof(EtwPacketHead, events_discarded), s->discarded);
    }
    else {
        s->lost_outside = 1;
    }
    if (s->control != NULL) {
        s->control->events_discarded = s->discarded;
    }
    else if (etw_budget_add_unrecorded(1)) {
        /* No ring either (a thread not recorded): its count goes to the
         * budget's shared page at once.  Kept here until the thread's exit,
         * it died with a process that ended first (os._exit, a signal, or
         * an exit() racing the thread's own end after a join). */
        s->in_budget++;
    }
}

/* Ends the open packet (its first `size` bytes) and moves to the next
 * slot; the packet goes to the copier, except in memory mode, where it
 * stays in the ring until its slot comes round again. */
static void
submit_packet(EtwStream *s, size_t size)
{
    unsigned slot = s->slot;
    const uint8_t *packet = s->data;
    put_head_u64(s->data, offsetof(EtwPacketHead, timestamp_end), s->last_ts);
    put_head_u64(s->data, offsetof(EtwPacketHead, content_size), (uint64_t)s->used * 8);
    s->slot = (slot + 1) % s->slots;
    s->data = NULL;
    s->used = PACKET_BYTES;
    if (s->overwrite) {
        return;
    }
    s->busy[slot] = 1;
    EtwCopy copy = {
        .path = s->path, .dev = s->dev, .ino = s->ino,
        .packet = packet, .size = size, .offset = s->file_offset,
        .busy = &s->busy[slot], .error = &s->copy_error,
    };
    s->file_offset += size;
    etw_copier_submit(&copy);
}

/* Opens the next packet at `ts` in the next free slot of the ring (after
 * handing a full one to the copier); -1 when the stream stops (a copy
 * failed: the packets it could not write stay in the ring). */
static int
begin_packet(EtwStream *s, uint64_t ts)
{
    if (!s->overwrite) {
        /* Before the open packet is let go: a stream that stops holds it. */
        int err = __atomic_load_n(&s->copy_error, __ATOMIC_RELAXED);
        int stopped = 0;
        int why = err == 0 ? etw_budget_claim(PACKET_BYTES, &stopped) : 0;
        if (err == -ETW_STOP_RESERVE || why != 0) {
            why = why != 0 ? why : ETW_STOP_RESERVE;
            stop_capture(s, why, stopped);
            err = -why;
        }
        if (err != 0) {
            stop_stream(s, err, "cannot write");
            return -1;
        }
    }
    if (s->data != NULL) {
        submit_packet(s, PACKET_BYTES);
    }
    if (!s->overwrite) {
        etw_copier_wait(&s->busy[s->slot]);
        int err = __atomic_load_n(&s->copy_error, __ATOMIC_RELAXED);
        if (err == -ETW_STOP_RESERVE) {
            stop_capture(s, ETW_STOP_RESERVE, 0);
        }
        if (err != 0) {
            note_failure(s, err, "cannot write");
            return -1;
        }
    }
    s->data = s->ring + (size_t)s->slot * PACKET_BYTES;
    /* A reader may be copying this slot from the ring file while it is
     * reused (memory mode, or a snapshot racing the copier): it reads the
     * packet_seq_num before and after, and keeps the packet only when both
     * are the same real number.  So the number is spoiled first, the rest
     * rewritten, and the new number stored last. */
    put_head_u64(s->data, offsetof(EtwPacketHead, packet_seq_num), SEQ_REWRITING);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memset(s->data + HEAD_BYTES, 0, ETW_END_WORD_SIZE);   /* no event yet */
    EtwPacketHead head = {
        .magic = ETW_CTF_MAGIC,
        .stream_id = 0,
        .timestamp_begin = ts,
        .timestamp_end = ts,
        .content_size = HEAD_BYTES * 8,
        .packet_size = (uint64_t)PACKET_BYTES * 8,
        .packet_seq_num = SEQ_REWRITING,
        .events_discarded = s->discarded,
        .tid = s->tid,
    };
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(s->data, &head, sizeof(head));
    put_head_u64(s->data, offsetof(EtwPacketHead, packet_seq_num), s->seq++);
    s->used = HEAD_BYTES;
    s->last_ts = ts;
    return 0;
}

/* Ends the open packet where its content does (padded to 8 bytes), hands
 * it to the copier and waits until the whole stream is written. */
static void
suspend_stream(EtwStream *s)
{
    if (s->pid != getpid()) {
        return;     /* a fork's parent's stream: not ours to write */
    }
    if (s->data != NULL && s->held_used != 0) {
        s->used = s->held_used;     /* a stopped stream's last packet (claimed) */
        s->held_used = 0;
    }
    if (s->data != NULL && s->used > HEAD_BYTES) {
        uint64_t padded = ((uint64_t)s->used + 7) & ~(uint64_t)7;
        put_head_u64(s->data, offsetof(EtwPacketHead, packet_size), padded * 8);
        put_head_u64(s->data, offsetof(EtwPacketHead, events_discarded), s->discarded);
        submit_packet(s, (size_t)padded);
    }
    else if (s->data != NULL) {
        s->seq--;   /* an empty packet: never written */
    }
    s->data = NULL;
    s->used = PACKET_BYTES;
    for (unsigned i = 0; s->busy != NULL && i < s->slots; i++) {
        etw_copier_wait(&s->busy[i]);
    }
}

void
etw_stream_suspend(EtwStream *s)
{
    if (s != NULL) {
        suspend_stream(s);
    }
}

/* Closes a stream: written out, its ring removed (kept when a copy failed,
 * or events were lost with no packet to count them in, and in memory mode:
 * readers find the packets, and the count, there; and when the capture
 * stopped it in a process that cannot write the budget: its control page
 * tells the session why). */
static void
free_stream(EtwStream *s)
{
    int own = s->pid == getpid();
    if (own) {
        suspend_stream(s);
    }
    /* No packet holds the count of a stream that never had one: the
     * budget does, when this process may write it (what it was not told
     * yet: see etw_stream_discard); else its ring does. */
    uint64_t untold = s->discarded - s->in_budget;
    int counted = own && s->seq == 0 && s->discarded > 0 &&
                  (untold == 0 || etw_budget_add_unrecorded(untold));
    int keep_ring = s->copy_error != 0 || (s->lost_outside && !counted) ||
                    (s->error < 0 && !etw_budget_writable());
    if (s->ring != NULL) {
        munmap(s->ring, ring_file_bytes(s->slots));
    }
    if (own && !s->overwrite && !keep_ring && s->ring_path != NULL) {
        unlink(s->ring_path);
    }
    free(s->path);
    free(s->ring_path);
    free(s->busy);
    free(s);
}

/* Slots of a new stream's ring. */
static unsigned
ring_slots(void)
{
    if (options.ring_bytes == 0) {
        return ETW_RING_SLOTS;
    }
    size_t n = options.ring_bytes / PACKET_BYTES;
    if (n < ETW_MEMORY_MIN_SLOTS) {
        n = ETW_MEMORY_MIN_SLOTS;
    }
    return n > ETW_MEMORY_MAX_SLOTS ? ETW_MEMORY_MAX_SLOTS : (unsigned)n;
}

/* A stream with no file, of a thread that began after the capture stopped
 * recording or whose files could not be made: it counts the events lost
 * (etw_budget_add_unrecorded, as they are lost), and writes nothing. */
static EtwStream *
unrecorded_stream(uint32_t tid)
{
    EtwStream *s = calloc(1, sizeof(EtwStream));
    if (s == NULL) {
        return NULL;
    }
    s->tid = tid;
    s->used = PACKET_BYTES;
    s->generation = generation;
    s->pid = getpid();
    s->quiet = options.quiet;
    s->error = -ETW_STOP_LIMIT;     /* (memory mode: no room for its ring) */
    int why = etw_budget_stopped();
    if (why != 0) {
        s->error = -why;
    }
    return s;
}

/* Holding registry_lock: a new stream file and ring for thread `tid`; a
 * stream that only counts what is lost when the capture stopped or the
 * files cannot be made; NULL when out of memory.  `kept`: never
 * overwritten, whatever the mode. */
static EtwStream *
create_stream(uint32_t tid, int kept)
{
    if (trace_dir[0] == '\0') {
        return unrecorded_stream(tid);  /* the process began after the stop */
    }
    if (etw_budget_stopped() != 0) {
        etw_budget_refuse(0);
        return unrecorded_stream(tid);
    }
    EtwStream *s = calloc(1, sizeof(EtwStream));
    size_t size = strlen(trace_dir) + 48;
    char *path = malloc(size), *ring_path = malloc(size);
    if (s == NULL || path == NULL || ring_path == NULL) {
        free(s);
        free(path);
        free(ring_path);
        return NULL;
    }
    unsigned number = stream_counter++;
    snprintf(path, size, "%s/stream-%u-tid-%u", trace_dir, number, tid);
    snprintf(ring_path, size, "%s/.ring-%u-tid-%u", trace_dir, number, tid);
    s->tid = tid;
    s->timed = options.call_times;
    s->overwrite = options.ring_bytes != 0 && !kept;
    s->quiet = options.quiet;
    s->slots = s->overwrite ? ring_slots() : ETW_RING_SLOTS;
    if (s->overwrite) {
        /* Memory mode: the ring is what the capture keeps, so it is
         * claimed whole, as much of it as the limit leaves; the rings
         * leave 1/ETW_MEMORY_KEPT_SHARE of it to the kept streams (the
         * processes' functions and threads). */
        uint64_t got = etw_budget_claim_up_to(ring_file_bytes(s->slots),
                                              ring_file_bytes(ETW_MEMORY_MIN_SLOTS),
                                              ETW_MEMORY_KEPT_SHARE);
        if (got == 0) {
            etw_budget_refuse(0);
            free(s);
            free(path);
            free(ring_path);
            return unrecorded_stream(tid);
        }
        s->slots = (unsigned)((got - ETW_RING_CONTROL_BYTES) / PACKET_BYTES);
    }
    s->used = PACKET_BYTES;
    s->generation = generation;
    s->pid = getpid();
    s->path = path;
    struct stat st;
    int fd = create_own_file(path, &st);
    if (fd < 0) {
        note_failure(s, errno, "cannot create");
        goto failed;
    }
    close(fd);
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->ring_path = ring_path;
    ring_path = NULL;
    size_t file_bytes = ring_file_bytes(s->slots);
    int rc = 0;
    if (!s->overwrite && (s->busy = calloc(s->slots, 1)) == NULL) {
        rc = ENOMEM;
    }
    fd = rc ? -1 : create_own_file(s->ring_path, &st);
    if (rc == 0 && fd < 0) {
        rc = errno;
    }
    else if (rc == 0 && etw_budget_room_begin(fd, file_bytes) != 0) {
        rc = -ETW_STOP_RESERVE;
    }
    else if (rc == 0) {
        rc = posix_fallocate(fd, 0, (off_t)file_bytes);
        etw_budget_room_end();
    }
    if (rc == 0) {
        void *p = mmap(NULL, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            rc = errno;
        }
        else {
            /* Fault every page in now rather than one by one from the traced
             * code (a no-op before Linux 5.14). */
            (void)madvise(p, file_bytes, MADV_POPULATE_WRITE);
            s->ring = p;
            s->control = (EtwRingControl *)(s->ring + (size_t)s->slots * PACKET_BYTES);
            memcpy(s->control->magic, ETW_RING_CONTROL_MAGIC, 8);
            s->control->slots = s->slots;
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    if (rc != 0 && fd >= 0) {
        unlink(s->ring_path);
    }
    if (rc == -ETW_STOP_RESERVE) {
        /* No room for its ring above the reserve: not recorded. */
        unlink(s->path);
        stop_capture(s, ETW_STOP_RESERVE, 0);
        etw_budget_refuse(0);
        free(s->path);
        free(s->ring_path);
        free(s->busy);
        free(s);
        return unrecorded_stream(tid);
    }
    if (rc != 0) {
        note_failure(s, rc, "cannot create the ring of");
        goto failed;
    }
    return s;

failed:;
    /* Not recorded, as note_failure said: a stream with no file counts
     * every later event of the thread as lost. */
    int err = s->error;
    free(s->path);
    free(s->ring_path);
    free(s->busy);
    free(ring_path);
    free(s);
    etw_budget_unwritable_thread();
    EtwStream *unrecorded = unrecorded_stream(tid);
    if (unrecorded != NULL) {
        unrecorded->error = err;
    }
    return unrecorded;
}

static EtwStream *
attach(EtwStream **own, uint32_t tid, int kept)
{
    EtwStream *s = *own;
    pthread_mutex_lock(&registry_lock);
    if (s != NULL && s->generation != generation) {
        /* Of an earlier capture, or of a fork's parent: done with it. */
        free_stream(s);
        s = NULL;
    }
    if (s != NULL && !etw_recorder_active()) {
        suspend_stream(s);    /* kept for the next session of this trace */
    }
    if (s != NULL) {
        s->timed = options.call_times;
    }
    if (etw_recorder_active() && s == NULL) {
        if (trace_pid != getpid()) {
            /* A forked child: a trace of its own in the same capture. */
            char error[PATH_MAX + 64];
            if (open_trace_dir(error, sizeof(error)) != 0) {
                fprintf(stderr, "etwtrace: %s\n", error);
                __atomic_store_n(&active, 0, __ATOMIC_RELEASE);
            }
        }
        if (etw_recorder_active() && (s = create_stream(tid, kept)) == NULL) {
            __atomic_fetch_add(&discarded, 1, __ATOMIC_RELAXED);
        }
    }
    int writable = etw_recorder_active();
    pthread_mutex_unlock(&registry_lock);
    *own = s;
    return writable ? s : NULL;
}

EtwStream *
etw_stream_attach(EtwStream **own, uint32_t tid)
{
    return attach(own, tid, 0);
}

/* Memory mode's kept stream (see recorder.h). */
static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
static EtwStream *kept_stream;

EtwStream *
etw_kept_stream_lock(void)
{
    pthread_mutex_lock(&kept_lock);
    EtwStream *s = attach(&kept_stream, (uint32_t)getpid(), 1);
    if (s == NULL) {
        pthread_mutex_unlock(&kept_lock);
    }
    return s;
}

void
etw_kept_stream_unlock(void)
{
    pthread_mutex_unlock(&kept_lock);
}

int
etw_recorder_memory_mode(void)
{
    return etw_recorder_active() && options.ring_bytes != 0;
}

void
etw_stream_close(EtwStream *s)
{
    if (s != NULL) {
        free_stream(s);
    }
}

uint8_t *
etw_stream_reserve(EtwStream *s, uint32_t id, size_t payload_size)
{
    if (s->error != 0) {
        etw_stream_discard(s);
        return NULL;
    }
    uint64_t ts = etw_clock_read(&s->clock);
    size_t worst = ETW_EXTENDED_HEAD_SIZE + payload_size + ETW_END_WORD_SIZE;
    if (HEAD_BYTES + worst > PACKET_BYTES) {
        etw_stream_discard(s);
        return NULL;
    }
    if (s->data == NULL || s->used + worst > PACKET_BYTES) {
        if (ts < s->last_ts) {
            ts = s->last_ts;
        }
        if (begin_packet(s, ts) != 0) {
            etw_stream_discard(s);
            return NULL;
        }
    }
    if (ts < s->last_ts) {
        ts = s->last_ts; /* keep the stream ordered */
    }
    /* The header is written by etw_stream_commit, after the payload. */
    uint8_t *p = s->data + s->used;
    s->pending_at = p;
    if (id != 0 && id < ETW_EXTENDED_ID && ts - s->last_ts <= ETW_COMPACT_TS_MASK) {
        uint32_t word = id | ((uint32_t)(ts & ETW_COMPACT_TS_MASK) << 5);
        memcpy(s->pending, &word, 4);
        s->pending_len = ETW_COMPACT_HEAD_SIZE;
    }
    else {
        s->pending[0] = ETW_EXTENDED_ID;
        memcpy(s->pending + 1, &id, 4);
        memcpy(s->pending + 5, &ts, 8);
        s->pending_len = ETW_EXTENDED_HEAD_SIZE;
    }
    p += s->pending_len;
    s->last_ts = ts;
    s->used = (size_t)(p - s->data) + payload_size;
    memset(s->data + s->used, 0, ETW_END_WORD_SIZE);   /* where the next one starts */
    return p;
}

/* ---- the recorder ---- */

int
etw_recorder_start(const char *dir, const EtwRecorderOptions *with, char *error,
                   size_t error_size)
{
    int rc = 0;
    pthread_mutex_lock(&registry_lock);
    int times_changed = options.call_times != (with->call_times != 0);
    int same_kind = options.ring_bytes == with->ring_bytes && options.quiet == with->quiet;
    options = *with;
    options.call_times = with->call_times != 0;
    if (strlen(dir) >= sizeof(capture_dir)) {
        snprintf(error, error_size, "capture path is too long: %s", dir);
        rc = -1;
    }
    else if (trace_pid == getpid() && strcmp(dir, capture_dir) == 0 && same_kind) {
        /* Another session of this process in the same capture: its threads
         * continue their streams. */
        if (times_changed && trace_dir[0] != '\0') {
            rc = write_metadata(trace_dir, error, error_size);
        }
    }
    else {
        /* A new trace: streams of an earlier one are closed by their
         * threads at their next event. */
        generation++;
        snprintf(capture_dir, sizeof(capture_dir), "%s", dir);
        etw_budget_open(capture_dir);
        rc = open_trace_dir(error, error_size);
    }
    __atomic_store_n(&active, rc == 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

int
etw_recorder_active(void)
{
    return __atomic_load_n(&active, __ATOMIC_ACQUIRE);
}

const char *
etw_recorder_dir(void)
{
    return etw_recorder_active() ? capture_dir : NULL;
}

int
etw_recorder_trace_dir(char *buf, size_t size)
{
    pthread_mutex_lock(&registry_lock);
    int rc = etw_recorder_active() && trace_pid == getpid() && strlen(trace_dir) < size ? 0 : -1;
    if (rc == 0) {
        memcpy(buf, trace_dir, strlen(trace_dir) + 1);
    }
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

uint64_t
etw_recorder_events_discarded(void)
{
    return __atomic_load_n(&discarded, __ATOMIC_RELAXED);
}

int
etw_recorder_first_error(void)
{
    return __atomic_load_n(&first_error, __ATOMIC_RELAXED);
}

void
etw_recorder_stop(void)
{
    pthread_mutex_lock(&registry_lock);
    int was_active = etw_recorder_active();
    __atomic_store_n(&active, 0, __ATOMIC_RELEASE);
    uint64_t lost = etw_recorder_events_discarded() - reported;
    reported += lost;
    pthread_mutex_unlock(&registry_lock);
    if (was_active && lost > 0 && !options.quiet && !etw_budget_summarized()) {
        int err = etw_recorder_first_error();
        fprintf(stderr, "etwtrace: %llu events were lost%s%s; the trace holds every event "
                "recorded before\n", (unsigned long long)lost, err ? ": " : "",
                err ? etw_recorder_failure_text(err) : "");
    }
}

void
etw_recorder_after_fork_child(void)
{
    /* Inherited streams are the parent's; each is let go untouched (they
     * know their creator's pid) when its thread next writes. */
    pthread_mutex_init(&registry_lock, NULL);
    pthread_mutex_init(&kept_lock, NULL);
    etw_budget_after_fork_child();
    kept_stream = NULL;     /* the parent's: let go */
    generation++;
    etw_copier_after_fork_child();
}

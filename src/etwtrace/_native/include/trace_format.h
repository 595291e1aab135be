/* The trace format, declared once.
 *
 * Every event of the built-in recorder is one line of ETW_EVENTS below: its
 * CTF id, its CTF name, the event name and opcode readers show, and its
 * fields in stream order with their types.  From this table come
 *   - the CTF metadata each trace carries (recorder.c, etw_format_metadata),
 *   - the generic serializer the writer uses (events.c, etw_emit_event),
 *   - both decoders: the C one (decoder/) and, through the table that
 *     etwtrace._ctfdecode exports, the Python names (etwtrace/trace/events.py),
 *   - the README's event table (python -m etwtrace.trace.events --markdown).
 * Adding an event: one line here (and its field list), then an emit call.
 *
 * Byte layout (little-endian), version ETW_FORMAT_VERSION:
 *   packet header   uint32 magic 0xC1FC1FC1, uint32 stream_id 0
 *   packet context  uint64 timestamp_begin, timestamp_end, content_size
 *                   (bits), packet_size (bits), packet_seq_num,
 *                   events_discarded (version 2+); uint32 tid
 *   event header    compact:  one 32-bit word, id in bits 0-4 and the low
 *                             27 bits of the timestamp in bits 5-31
 *                   extended: one byte 31, uint32 id, uint64 timestamp
 * A compact header is used when the event follows the previous one in the
 * same stream by less than 2^27 ns; a reader restores the full timestamp
 * from the previous one, as CTF 1.8 specifies for clock fields narrower than
 * the clock.  Version 1 traces (no events_discarded) are still read.
 *
 * Version 2 also fixes how a packet is written, so that one a process left
 * unfinished (it died) can be read up to its last event: event id 0 always
 * takes the extended header, so no event starts with a zero 32-bit word;
 * before an event is written, a zero word is put where the next one will
 * start, and an event's header is written after its payload.  So a
 * packet's written part ends where its content_size says or, when that was
 * not updated yet, at the first zero word after it. */
#ifndef ETWTRACE_TRACE_FORMAT_H
#define ETWTRACE_TRACE_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define ETW_FORMAT_VERSION 2
#define ETW_CTF_MAGIC 0xC1FC1FC1u
#define ETW_PACKET_BYTES (64 * 1024)

/* The packet header and context, as written (version 2). */
typedef struct {
    uint32_t magic;
    uint32_t stream_id;
    uint64_t timestamp_begin;
    uint64_t timestamp_end;
    uint64_t content_size;       /* bits */
    uint64_t packet_size;        /* bits */
    uint64_t packet_seq_num;
    uint64_t events_discarded;   /* this stream's events lost so far */
    uint32_t tid;
} __attribute__((packed)) EtwPacketHead;

/* Size of the packet header and context of each format version. */
#define ETW_PACKET_HEAD_V1 52
#define ETW_PACKET_HEAD_V2 60
_Static_assert(sizeof(EtwPacketHead) == ETW_PACKET_HEAD_V2, "packet head layout");

/* Event header: ids below ETW_EXTENDED_ID, except 0, fit the compact form. */
#define ETW_EXTENDED_ID 31u
#define ETW_COMPACT_TS_BITS 27
#define ETW_COMPACT_TS_MASK ((UINT32_C(1) << ETW_COMPACT_TS_BITS) - 1)
#define ETW_COMPACT_HEAD_SIZE 4
#define ETW_EXTENDED_HEAD_SIZE 13
/* Room kept after the last event of a packet for the zero end word. */
#define ETW_END_WORD_SIZE 4

/* Field types: name, CTF type, encoded size in bytes (0: variable). */
#define ETW_FIELD_TYPES(T)                                   \
    T(U8, "uint8_t", 1)                                      \
    T(U16, "uint16_t", 2)                                    \
    T(U32, "uint32_t", 4)                                    \
    T(HEX64, "uint64x_t", 8)                                 \
    T(STRING, "string", 0)       /* UTF-8 bytes, NUL-ended */ \
    T(ADDRESSES, "uint64x_t", 0) /* uint32 count, then that many uint64 */

#define ETW_TYPE_ENUM(name, ctf, size) ETW_T_##name,
typedef enum { ETW_FIELD_TYPES(ETW_TYPE_ENUM) ETW_T_COUNT } EtwFieldType;
#undef ETW_TYPE_ENUM

/* Field lists: F(name, type). */
#define ETW_FIELDS_THREAD(F) F(ThreadId, U32)
#define ETW_FIELDS_FUNCTION(F)                                                   \
    F(FunctionID, U32) F(BeginAddress, HEX64) F(EndAddress, HEX64) F(LineNumber, U32) \
    F(IsPythonCode, U8) F(SourceFile, STRING) F(Name, STRING)
/* A Python thread's name (threading.Thread.name), written by any thread
 * of the process once it is known: ThreadId names the thread. */
#define ETW_FIELDS_THREAD_NAME(F) F(ThreadId, U32) F(Name, STRING)
#define ETW_FIELDS_MARK(F) F(Mark, STRING)
#define ETW_FIELDS_STACK_SAMPLE(F) F(Mark, STRING) F(Stack, ADDRESSES)
/* A CPU sample taken by the BPF sampler (--sampled) on the stream's thread:
 * native addresses and, for Python frames, addresses inside the ranges of
 * the sampler's PythonFunction events; leaf first, as perf's. */
#define ETW_FIELDS_SAMPLED_PROFILE(F) F(Stack, ADDRESSES)
/* asyncio (tracer/tasks.c): a step of task TaskId (the process's own
 * number for it) begins on the stream's thread, or ends with the task
 * waiting, at the chain of FunctionIDs given root first: its task frames,
 * then the coroutines down to the await it waits at.  An empty chain: the
 * same as the task's last suspend in the trace. */
#define ETW_FIELDS_TASK_RESUME(F) F(TaskId, U32)
#define ETW_FIELDS_TASK_SUSPEND(F) F(TaskId, U32) F(Functions, ADDRESSES)
#define ETW_FIELDS_PUSH(F) F(FunctionID, U32) F(Caller, U32) F(CallerLine, U32)
#define ETW_FIELDS_POP(F) F(FunctionID, U32)
/* Compact push: its Caller is the innermost open push of the stream (the
 * decoders restore it); FunctionID and CallerLine fit 16 bits. */
#define ETW_FIELDS_PUSH_COMPACT(F) F(FunctionID, U16) F(CallerLine, U16)
#define ETW_FIELDS_POP_COMPACT(F) F(FunctionID, U16)

/* Events: E(symbol, id, CTF name, event name, opcode or NULL, fields). */
#define ETW_EVENTS(E)                                                                       \
    E(THREAD_START, 0, "PythonThread.start", "PythonThread", "start", ETW_FIELDS_THREAD)      \
    E(THREAD_STOP, 1, "PythonThread.stop", "PythonThread", "stop", ETW_FIELDS_THREAD)        \
    E(FUNCTION, 2, "PythonFunction", "PythonFunction", NULL, ETW_FIELDS_FUNCTION)           \
    E(MARK, 3, "PythonMark", "PythonMark", NULL, ETW_FIELDS_MARK)                           \
    E(MARK_START, 4, "PythonMark.start", "PythonMark", "start", ETW_FIELDS_MARK)            \
    E(MARK_STOP, 5, "PythonMark.stop", "PythonMark", "stop", ETW_FIELDS_MARK)               \
    E(STACK_SAMPLE, 6, "PythonStackSample", "PythonStackSample", NULL, ETW_FIELDS_STACK_SAMPLE) \
    E(PUSH, 7, "PythonFunctionPush", "PythonFunctionPush", NULL, ETW_FIELDS_PUSH)          \
    E(POP, 8, "PythonFunctionPop", "PythonFunctionPop", NULL, ETW_FIELDS_POP)              \
    E(PUSH_COMPACT, 9, "PythonFunctionPush.compact", "PythonFunctionPush", NULL,            \
      ETW_FIELDS_PUSH_COMPACT)                                                              \
    E(POP_COMPACT, 10, "PythonFunctionPop.compact", "PythonFunctionPop", NULL,              \
      ETW_FIELDS_POP_COMPACT)                                                               \
    E(SAMPLED_PROFILE, 11, "SampledProfile", "SampledProfile", NULL,                        \
      ETW_FIELDS_SAMPLED_PROFILE)                                                           \
    E(THREAD_NAME, 12, "PythonThreadName", "PythonThreadName", NULL, ETW_FIELDS_THREAD_NAME) \
    E(TASK_RESUME, 13, "PythonTask.resume", "PythonTask", "resume", ETW_FIELDS_TASK_RESUME)  \
    E(TASK_SUSPEND, 14, "PythonTask.suspend", "PythonTask", "suspend", ETW_FIELDS_TASK_SUSPEND)

#define ETW_EVENT_ENUM(sym, id, ctf, name, opcode, fields) ETW_EV_##sym = id,
enum { ETW_EVENTS(ETW_EVENT_ENUM) };
#undef ETW_EVENT_ENUM

#define ETW_MAX_FIELDS 8

/* The control page at the end of a stream's ring file (see recorder.h):
 * what the ring's packet headers cannot say after the stream stopped. */
#define ETW_RING_CONTROL_MAGIC "ETWRING2"
typedef struct {
    char magic[8];
    uint64_t events_discarded;   /* events lost on this stream so far */
    uint32_t error;              /* errno that stopped it, or 0 */
    uint32_t slots;              /* packets in the ring */
} EtwRingControl;
#define ETW_RING_CONTROL_BYTES 4096

/* A capture's budget: the file CAPTURE/ctf/.budget, mapped shared by
 * every process recording into the capture (budget.h), created by the
 * launcher or the session (etwtrace/trace/budget.py, which reads the same
 * layout).  Recording stops for every process once `stopped` is set:
 * when the capture reaches `limit` (--max-size) or a file system keeps no
 * more than its reserve free. */
#define ETW_BUDGET_MAGIC "ETWBUDG1"
#define ETW_BUDGET_NAME ".budget"
typedef struct {
    char magic[8];
    uint64_t limit;              /* bytes the capture may hold; 0: no limit */
    uint64_t claimed;            /* bytes the recorders claimed (atomic) */
    uint64_t counted;            /* bytes counted from outside: perf.data, traces
                                  * of processes that may not claim */
    uint32_t stopped;            /* ETW_STOP_* once recording stopped, else 0 */
    uint32_t stopped_pid;        /* the process that stopped it */
    uint64_t free_at_stop;       /* free bytes then (ETW_STOP_RESERVE) */
    uint64_t reserve_at_stop;    /* the reserve then */
    uint32_t threads_refused;    /* threads (and processes) that began after */
    uint32_t processes_refused;
    uint64_t events_unrecorded;  /* events lost by those threads (no trace file
                                  * of theirs to count them in) */
    uint32_t summarized;         /* 1: the launcher or session says at the end
                                  * what was lost; processes do not */
    uint32_t threads_unwritable; /* threads whose trace files could not be made
                                  * (their events are in events_unrecorded) */
} EtwBudget;
#define ETW_BUDGET_BYTES 4096
#define ETW_STOP_LIMIT 1
#define ETW_STOP_RESERVE 2

/* The free space a capture leaves on its file system: this share of the
 * file system's size, at most ETW_RESERVE_MAX. */
#define ETW_RESERVE_PERCENT 5
#define ETW_RESERVE_MAX (UINT64_C(1) << 30)

typedef struct {
    const char *name;
    EtwFieldType type;
} EtwFieldDecl;

typedef struct {
    uint32_t id;
    const char *ctf_name;
    const char *name;
    const char *opcode;
    uint32_t n_fields;
    EtwFieldDecl fields[ETW_MAX_FIELDS];
} EtwEventDecl;

#define ETW_FIELD_COUNT(fname, type) +1
#define ETW_FIELD_INIT(fname, type) {#fname, ETW_T_##type},
#define ETW_EVENT_DECL(sym, id, ctf, name, opcode, fields) \
    [id] = {id, ctf, name, opcode, 0 fields(ETW_FIELD_COUNT), {fields(ETW_FIELD_INIT)}},
static const EtwEventDecl etw_event_decls[] = {ETW_EVENTS(ETW_EVENT_DECL)};
#undef ETW_EVENT_DECL
#undef ETW_FIELD_INIT
#undef ETW_FIELD_COUNT

#define ETW_N_EVENTS (sizeof(etw_event_decls) / sizeof(etw_event_decls[0]))

/* Fixed payload size of an event whose fields all have fixed sizes, checked
 * at compile time by the hand-written fast paths (push and pop). */
#define ETW_TYPE_SIZE_U8 1
#define ETW_TYPE_SIZE_U16 2
#define ETW_TYPE_SIZE_U32 4
#define ETW_TYPE_SIZE_HEX64 8
#define ETW_FIELD_SIZE(fname, type) +ETW_TYPE_SIZE_##type
#define ETW_FIXED_PAYLOAD(fields) (0 fields(ETW_FIELD_SIZE))

static inline const char *
etw_field_ctf_type(EtwFieldType type)
{
#define ETW_TYPE_CTF(name, ctf, size) case ETW_T_##name: return ctf;
    switch (type) {
    ETW_FIELD_TYPES(ETW_TYPE_CTF)
    default: return "?";
    }
#undef ETW_TYPE_CTF
}

static inline size_t
etw_field_fixed_size(EtwFieldType type)
{
#define ETW_TYPE_SIZE(name, ctf, size) case ETW_T_##name: return size;
    switch (type) {
    ETW_FIELD_TYPES(ETW_TYPE_SIZE)
    default: return 0;
    }
#undef ETW_TYPE_SIZE
}

#endif

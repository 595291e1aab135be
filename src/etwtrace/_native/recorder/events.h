/* The event writer: every event goes to two outputs at once, the USDT probe
 * of provider `etwtrace` (a no-op until perf, bpftrace or SystemTap attaches)
 * and, while a capture is recording, the built-in recorder.
 *
 * Emitters run on the thread the event is about, attached to the
 * interpreter (holding the GIL where there is one). */
#ifndef ETWTRACE_EVENTS_H
#define ETWTRACE_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "recorder.h"

/* USDT probes: at most 6 arguments each, the most x86-64 bpftrace reads. */
#ifdef ETWTRACE_HAVE_SDT
#  include <sys/sdt.h>
#  define ETW_PROBE1(n, a) DTRACE_PROBE1(etwtrace, n, a)
#  define ETW_PROBE2(n, a, b) DTRACE_PROBE2(etwtrace, n, a, b)
#  define ETW_PROBE3(n, a, b, c) DTRACE_PROBE3(etwtrace, n, a, b, c)
#  define ETW_PROBE6(n, a, b, c, d, e, f) DTRACE_PROBE6(etwtrace, n, a, b, c, d, e, f)
#else
#  define ETW_PROBE1(n, a) ((void)0)
#  define ETW_PROBE2(n, a, b) ((void)0)
#  define ETW_PROBE3(n, a, b, c) ((void)0)
#  define ETW_PROBE6(n, a, b, c, d, e, f) ((void)0)
#endif

/* How deep C calls may nest on one thread in instrumented mode; deeper ones
 * are not traced (their push/pop pairs are left out together). */
#define ETW_MAX_C_DEPTH 128

/* How many resumable frames of a task's step are followed; deeper awaits
 * are left out of where it waits. */
#define ETW_TASK_PATH_MAX 32

/* Per-thread writer state. */
typedef struct EtwThread {
    struct EtwThread *next;   /* registry of live threads (threads lock) */
    struct EtwThread *prev;
    uint32_t tid;         /* kernel thread id */
    uint32_t epoch;       /* epoch whose stream this thread took */
    uint32_t announced;   /* epoch its PythonThread start was written in (by
                           * itself, or by a rundown; threads lock) */
    EtwStream *stream;    /* recorder stream to write, NULL when not recording */
    EtwStream *own;       /* this thread's stream, kept across sessions */
    /* Instrumented mode: the innermost open push of this thread in this
     * session (0: none), and the Caller each open C-call push replaced. */
    uint32_t current;
    uint32_t c_depth;
    uint32_t c_saved[ETW_MAX_C_DEPTH];
    /* asyncio (tracer/tasks.c): the task whose step runs on this thread
     * (0: none), the resumable frames of the step (FunctionIDs, root
     * first) and those open when a frame last returned without calling
     * any (where the step waits, once it ends suspended). */
    uint32_t task;
    uint32_t task_path_n, task_waits_n;
    int task_leaf;
    uint32_t task_path[ETW_TASK_PATH_MAX];
    uint32_t task_waits[ETW_TASK_PATH_MAX];
    /* Stack mode: the trampolines the step still calls before its own. */
    void *const *task_chain;
    uint32_t task_chain_n, task_chain_next;
    void *task_target;
    void *task_target_eval;
} EtwThread;

/* Bumped by each enable and disable; a thread whose epoch differs announces
 * itself (PythonThread start) before its next event.  Read with
 * etw_current_epoch(). */
extern uint32_t etw_epoch;
extern __thread EtwThread *etw_tls_thread __attribute__((tls_model("initial-exec")));

static inline uint32_t
etw_current_epoch(void)
{
    return __atomic_load_n(&etw_epoch, __ATOMIC_ACQUIRE);
}

EtwThread *etw_thread_slow(void);

/* Called when a thread is announced in a session; the tracer uses it to
 * give each thread its C-call hook. */
extern void (*etw_thread_started_hook)(EtwThread *);

/* Writes, on thread `t`, a PythonFunction event for every function and C
 * callable registered so far (the tracer's; see etw_events_restart). */
extern void (*etw_rundown_hook)(EtwThread *);

/* The calling thread's writer state, announcing the thread if needed. */
static inline EtwThread *
etw_thread(void)
{
    EtwThread *t = etw_tls_thread;
    if (__builtin_expect(t == NULL || t->epoch != etw_current_epoch(), 0)) {
        t = etw_thread_slow();
    }
    return t;
}

/* Starts a tracing session; `capture_dir` (or NULL) turns the recorder on,
 * with or without `call_times` (see etw_recorder_start).  Returns 0, or -1
 * with a message in `error`.  Other threads must not be running Python
 * (the tracer stops the world around this in free-threaded builds). */
int etw_events_enable(const char *capture_dir, int call_times, char *error, size_t error_size);

/* While tracing, from any thread: every thread takes its stream afresh at
 * its next event (the recorder was started or stopped under it).  With
 * `rundown`, the first thread to write then also writes the rundown: a
 * PythonFunction event for every function registered before
 * (etw_rundown_hook) and a PythonThread start for every live thread, so a
 * trace that begins while the program runs maps all of its stacks. */
void etw_events_restart(int rundown);

/* On a thread attached to the interpreter: takes the thread's writer state
 * now (announcing it, writing a rundown owed) if tracing. */
void etw_events_touch(void);

/* Ends the session: PythonThread stop for every thread announced in it,
 * then the recorder stops.  Same condition as etw_events_enable. */
void etw_events_disable(void);

int etw_events_usdt_available(void);

/* Mark opcodes, as in the original: 0 plain, 1 start, 2 stop. */
enum { ETW_MARK_PLAIN = 0, ETW_MARK_START = 1, ETW_MARK_STOP = 2 };

/* One field value for etw_emit_event, in the order the event declares its
 * fields (trace_format.h). */
typedef union {
    uint64_t u;                 /* U8, U16, U32, HEX64 */
    struct {
        const char *s;          /* STRING: bytes, cut at 4095 */
        size_t len;             /* (size_t)-1: up to the NUL */
    } str;
    struct {
        void *const *frames;    /* ADDRESSES */
        uint32_t depth;
    } addresses;
} EtwValue;

/* Writes event `id` with `values` to the recorder (the probe is the
 * caller's). */
void etw_emit_event(EtwThread *t, uint32_t id, const EtwValue *values);

/* A Python function (its trampoline's range) or, with begin 0, a C
 * callable, whose SourceFile is its module. */
void etw_emit_function(EtwThread *t, uint32_t function_id, uintptr_t begin, uintptr_t end,
                       uint32_t line, int is_python, const char *file, size_t file_len,
                       const char *name, size_t name_len);
void etw_emit_mark(EtwThread *t, int opcode, const char *text);
/* PythonThreadName: thread `tid` of this process is called `name`. */
void etw_emit_thread_name(EtwThread *t, uint32_t tid, const char *name);
void etw_emit_stack_sample(EtwThread *t, const char *text, void *const *frames, int depth);
void etw_emit_task_resume(EtwThread *t, uint32_t task);
/* `functions`: FunctionIDs as the pointer-sized values of an ADDRESSES field. */
void etw_emit_task_suspend(EtwThread *t, uint32_t task, void *const *functions, uint32_t n);
void etw_emit_push_slow(EtwThread *t, uint32_t function_id, uint32_t caller, uint32_t caller_line);
void etw_emit_pop_slow(EtwThread *t, uint32_t function_id);

_Static_assert(ETW_FIXED_PAYLOAD(ETW_FIELDS_PUSH_COMPACT) == 4, "compact push payload");
_Static_assert(ETW_FIXED_PAYLOAD(ETW_FIELDS_POP_COMPACT) == 2, "compact pop payload");

/* PythonFunctionPush: inlined into the tracer's hooks, since it runs twice
 * per call.  The common case (Caller is the thread's innermost open push,
 * small ids and lines) is a 4-byte header and two 16-bit fields. */
static inline __attribute__((always_inline)) void
etw_emit_push(EtwThread *t, uint32_t function_id, uint32_t caller, uint32_t caller_line)
{
    ETW_PROBE3(push, function_id, caller, caller_line);
    EtwStream *s = t->stream;
    if (s == NULL) {
        return;
    }
    if (__builtin_expect(caller == t->current && caller != 0 &&
                         (function_id | caller_line) <= 0xFFFF, 1)) {
        uint32_t header;
        uint8_t *p = etw_stream_reserve_compact(s, ETW_EV_PUSH_COMPACT, 4, &header);
        if (__builtin_expect(p != NULL, 1)) {
            uint32_t fields = function_id | (caller_line << 16);
            memcpy(p, &fields, 4);
            etw_stream_commit_compact(p, header);
            return;
        }
    }
    etw_emit_push_slow(t, function_id, caller, caller_line);
}

static inline __attribute__((always_inline)) void
etw_emit_pop(EtwThread *t, uint32_t function_id)
{
    ETW_PROBE1(pop, function_id);
    EtwStream *s = t->stream;
    if (s == NULL) {
        return;
    }
    if (__builtin_expect(function_id <= 0xFFFF, 1)) {
        uint32_t header;
        uint8_t *p = etw_stream_reserve_compact(s, ETW_EV_POP_COMPACT, 2, &header);
        if (__builtin_expect(p != NULL, 1)) {
            uint16_t v = (uint16_t)function_id;
            memcpy(p, &v, 2);
            etw_stream_commit_compact(p, header);
            return;
        }
    }
    etw_emit_pop_slow(t, function_id);
}

/* Called in a forked child: the parent's streams and files are not ours. */
void etw_events_after_fork_child(void);

#endif

/* The event writer: every event goes to two outputs at once, the USDT probe
 * of provider `etwtrace` (a no-op until perf, bpftrace or SystemTap attaches)
 * and, while a capture is recording, the built-in recorder.
 *
 * All emitters are called holding the GIL. */
#ifndef ETWTRACE_EVENTS_H
#define ETWTRACE_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "recorder.h"

#ifdef ETWTRACE_HAVE_SDT
#  include <sys/sdt.h>
#  define ETW_PROBE1(n, a) DTRACE_PROBE1(etwtrace, n, a)
#  define ETW_PROBE2(n, a, b) DTRACE_PROBE2(etwtrace, n, a, b)
#  define ETW_PROBE3(n, a, b, c) DTRACE_PROBE3(etwtrace, n, a, b, c)
#  define ETW_PROBE7(n, a, b, c, d, e, f, g) DTRACE_PROBE7(etwtrace, n, a, b, c, d, e, f, g)
#else
#  define ETW_PROBE1(n, a) ((void)0)
#  define ETW_PROBE2(n, a, b) ((void)0)
#  define ETW_PROBE3(n, a, b, c) ((void)0)
#  define ETW_PROBE7(n, a, b, c, d, e, f, g) ((void)0)
#endif

/* How deep C calls may nest on one thread in instrumented mode; deeper ones
 * are not traced (their push/pop pairs are left out together). */
#define ETW_MAX_C_DEPTH 128

/* Per-thread writer state. */
typedef struct EtwThread {
    struct EtwThread *next;   /* registry of live threads (threads_lock) */
    struct EtwThread *prev;
    uint32_t tid;         /* kernel thread id */
    uint32_t epoch;       /* tracing session this thread was announced in */
    EtwStream *stream;    /* recorder stream, NULL when not recording */
    /* Instrumented mode: the innermost open push of this thread in this
     * session (0: none), and the Caller each open C-call push replaced. */
    uint32_t current;
    uint32_t c_depth;
    uint32_t c_saved[ETW_MAX_C_DEPTH];
} EtwThread;

/* Bumped by each etw_events_enable(); a thread whose epoch differs announces
 * itself (PythonThread start) before its next event. */
extern uint32_t etw_epoch;
extern __thread EtwThread *etw_tls_thread __attribute__((tls_model("initial-exec")));

EtwThread *etw_thread_slow(void);

/* Called (holding the GIL) when a thread is announced in a session; the
 * tracer uses it to give each thread its C-call hook. */
extern void (*etw_thread_started_hook)(EtwThread *);

/* The calling thread's writer state, announcing the thread if needed. */
static inline EtwThread *
etw_thread(void)
{
    EtwThread *t = etw_tls_thread;
    if (__builtin_expect(t == NULL || t->epoch != etw_epoch, 0)) {
        t = etw_thread_slow();
    }
    return t;
}

/* Starts a tracing session; `capture_dir` (or NULL) turns the recorder on,
 * with or without `call_times` (see etw_recorder_start).  Returns 0, or -1
 * with a message in `error`. */
int etw_events_enable(const char *capture_dir, int call_times, char *error, size_t error_size);

/* Ends the session: PythonThread stop for every thread announced in it,
 * then every pending event is written out. */
void etw_events_disable(void);

int etw_events_usdt_available(void);

/* Mark opcodes, as in the original: 0 plain, 1 start, 2 stop. */
enum { ETW_MARK_PLAIN = 0, ETW_MARK_START = 1, ETW_MARK_STOP = 2 };

void etw_emit_function(EtwThread *t, uint32_t function_id, uintptr_t begin, uintptr_t end,
                       uint32_t line, int is_python, const char *file, const char *name);
void etw_emit_mark(EtwThread *t, int opcode, const char *text);
void etw_emit_stack_sample(EtwThread *t, const char *text, void *const *frames, int depth);
void etw_emit_push_slow(EtwThread *t, uint32_t function_id, uint32_t caller, uint32_t caller_line);
void etw_emit_pop_slow(EtwThread *t, uint32_t function_id);

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
        uint8_t *p = etw_stream_reserve_compact(s, ETW_EV_PUSH_SHORT, 4);
        if (__builtin_expect(p != NULL, 1)) {
            uint32_t fields = function_id | (caller_line << 16);
            memcpy(p, &fields, 4);
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
        uint8_t *p = etw_stream_reserve_compact(s, ETW_EV_POP_SHORT, 2);
        if (__builtin_expect(p != NULL, 1)) {
            uint16_t v = (uint16_t)function_id;
            memcpy(p, &v, 2);
            return;
        }
    }
    etw_emit_pop_slow(t, function_id);
}

/* Called in a forked child: the parent's streams and files are not ours. */
void etw_events_after_fork_child(void);

#endif

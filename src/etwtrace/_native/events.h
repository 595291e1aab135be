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

/* Per-thread writer state. */
typedef struct EtwThread {
    struct EtwThread *next;   /* registry of live threads (threads_lock) */
    struct EtwThread *prev;
    uint32_t tid;         /* kernel thread id */
    uint32_t epoch;       /* tracing session this thread was announced in */
    EtwStream *stream;    /* recorder stream, NULL when not recording */
} EtwThread;

/* Bumped by each etw_events_enable(); a thread whose epoch differs announces
 * itself (PythonThread start) before its next event. */
extern uint32_t etw_epoch;
extern __thread EtwThread *etw_tls_thread __attribute__((tls_model("initial-exec")));

EtwThread *etw_thread_slow(void);

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

/* Starts a tracing session; `capture_dir` (or NULL) turns the recorder on.
 * Returns 0, or -1 with a message in `error`. */
int etw_events_enable(const char *capture_dir, char *error, size_t error_size);

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
void etw_emit_push(EtwThread *t, uint32_t function_id, uint32_t caller, uint32_t caller_line);
void etw_emit_pop(EtwThread *t, uint32_t function_id);

/* Called in a forked child: the parent's streams and files are not ours. */
void etw_events_after_fork_child(void);

#endif

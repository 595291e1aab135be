/* The event writer.  See events.h. */
#define _GNU_SOURCE
#include "events.h"

#include "clock.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Strings longer than this are cut, and stacks deeper: an event must fit
 * one packet. */
#define MAX_STRING 4095
#define MAX_STACK 512

uint32_t etw_epoch;
void (*etw_thread_started_hook)(EtwThread *);
void (*etw_rundown_hook)(EtwThread *);
static uint32_t rundown_epoch;   /* epoch that still owes a rundown (atomic) */
__thread EtwThread *etw_tls_thread __attribute__((tls_model("initial-exec")));

static int tracing;   /* atomic */
/* Guards the registry of threads, and a thread's stream whenever it is
 * written by anyone but its own thread (thread exit, disable). */
static pthread_mutex_t threads_lock = PTHREAD_MUTEX_INITIALIZER;
static EtwThread *threads;
static pthread_key_t thread_key;
static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;

int
etw_events_usdt_available(void)
{
#ifdef ETWTRACE_HAVE_SDT
    return 1;
#else
    return 0;
#endif
}

static int
is_tracing(void)
{
    return __atomic_load_n(&tracing, __ATOMIC_ACQUIRE);
}

/* ---- serializing events (layouts from trace_format.h) ---- */

static size_t
string_length(const EtwValue *v)
{
    if (v->str.s == NULL) {
        return 0;
    }
    size_t len = v->str.len == (size_t)-1 ? strnlen(v->str.s, MAX_STRING) : v->str.len;
    return len > MAX_STRING ? MAX_STRING : len;
}

static void write_event(EtwStream *s, uint32_t id, const EtwValue *values);

/* Events that describe the process rather than what it does: in memory
 * mode they go to the kept stream (recorder.h). */
static int
describes_process(uint32_t id)
{
    return id == ETW_EV_FUNCTION || id == ETW_EV_THREAD_START || id == ETW_EV_THREAD_STOP ||
           id == ETW_EV_THREAD_NAME;
}

void
etw_emit_event(EtwThread *t, uint32_t id, const EtwValue *values)
{
    EtwStream *s = t->stream;
    if (s == NULL || id >= ETW_N_EVENTS) {
        return;
    }
    if (s->overwrite && describes_process(id)) {
        EtwStream *kept = etw_kept_stream_lock();
        if (kept != NULL) {
            write_event(kept, id, values);
            etw_kept_stream_unlock();
        }
        return;
    }
    write_event(s, id, values);
}

static void
write_event(EtwStream *s, uint32_t id, const EtwValue *values)
{
    const EtwEventDecl *e = &etw_event_decls[id];
    size_t size = 0;
    for (uint32_t f = 0; f < e->n_fields; f++) {
        const EtwValue *v = &values[f];
        switch (e->fields[f].type) {
        case ETW_T_STRING:
            size += string_length(v) + 1;
            break;
        case ETW_T_ADDRESSES:
            size += 4 + 8 * (size_t)(v->addresses.depth > MAX_STACK ? MAX_STACK
                                                                    : v->addresses.depth);
            break;
        default:
            size += etw_field_fixed_size(e->fields[f].type);
        }
    }
    uint8_t *p = etw_stream_reserve(s, id, size);
    if (p == NULL) {
        return;
    }
    for (uint32_t f = 0; f < e->n_fields; f++) {
        const EtwValue *v = &values[f];
        EtwFieldType type = e->fields[f].type;
        if (type == ETW_T_STRING) {
            size_t len = string_length(v);
            if (len) {
                memcpy(p, v->str.s, len);
            }
            p[len] = 0;
            p += len + 1;
        }
        else if (type == ETW_T_ADDRESSES) {
            uint32_t n = v->addresses.depth > MAX_STACK ? MAX_STACK : v->addresses.depth;
            memcpy(p, &n, 4);
            p += 4;
            for (uint32_t i = 0; i < n; i++, p += 8) {
                uint64_t ip = (uint64_t)(uintptr_t)v->addresses.frames[i];
                memcpy(p, &ip, 8);
            }
        }
        else {
            /* Little-endian: the low bytes of the value. */
            size_t n = etw_field_fixed_size(type);
            memcpy(p, &v->u, n);
            p += n;
        }
    }
    etw_stream_commit(s);
}

/* PythonThread start or stop of thread `t`, written by `writer` (itself,
 * or at disable the disabling thread: a thread's stream is only ever
 * written by its own thread; readers take the event's thread from its
 * ThreadId). */
static void
emit_thread(EtwThread *writer, EtwThread *t, uint32_t id)
{
    if (id == ETW_EV_THREAD_START) {
        ETW_PROBE1(thread_start, t->tid);
    }
    else {
        ETW_PROBE1(thread_stop, t->tid);
    }
    EtwValue v[] = {{.u = t->tid}};
    etw_emit_event(writer, id, v);
}

void
etw_emit_function(EtwThread *t, uint32_t function_id, uintptr_t begin, uintptr_t end,
                  uint32_t line, int is_python, const char *file, size_t file_len,
                  const char *name, size_t name_len)
{
    if (is_python) {
        ETW_PROBE6(function, function_id, begin, end, line, file, name);
    }
    else {
        ETW_PROBE3(c_function, function_id, file, name);
    }
    EtwValue v[] = {
        {.u = function_id}, {.u = begin}, {.u = end}, {.u = line}, {.u = is_python ? 1 : 0},
        {.str = {file, file_len}}, {.str = {name, name_len}},
    };
    etw_emit_event(t, ETW_EV_FUNCTION, v);
}

void
etw_emit_mark(EtwThread *t, int opcode, const char *text)
{
    uint32_t id;
    switch (opcode) {
    case ETW_MARK_START:
        ETW_PROBE1(mark_start, text);
        id = ETW_EV_MARK_START;
        break;
    case ETW_MARK_STOP:
        ETW_PROBE1(mark_stop, text);
        id = ETW_EV_MARK_STOP;
        break;
    default:
        ETW_PROBE1(mark, text);
        id = ETW_EV_MARK;
        break;
    }
    EtwValue v[] = {{.str = {text, (size_t)-1}}};
    etw_emit_event(t, id, v);
}

void
etw_emit_thread_name(EtwThread *t, uint32_t tid, const char *name)
{
    ETW_PROBE2(thread_name, tid, name);
    EtwValue v[] = {{.u = tid}, {.str = {name, (size_t)-1}}};
    etw_emit_event(t, ETW_EV_THREAD_NAME, v);
}

void
etw_emit_stack_sample(EtwThread *t, const char *text, void *const *frames, int depth)
{
    ETW_PROBE1(stack_sample, text);
    EtwValue v[] = {{.str = {text, (size_t)-1}},
                    {.addresses = {frames, depth > 0 ? (uint32_t)depth : 0}}};
    etw_emit_event(t, ETW_EV_STACK_SAMPLE, v);
}

void
etw_emit_task_resume(EtwThread *t, uint32_t task)
{
    ETW_PROBE1(task_resume, task);
    EtwValue v[] = {{.u = task}};
    etw_emit_event(t, ETW_EV_TASK_RESUME, v);
}

void
etw_emit_task_suspend(EtwThread *t, uint32_t task, void *const *functions, uint32_t depth)
{
    ETW_PROBE2(task_suspend, task, depth);
    EtwValue v[] = {{.u = task},
                    {.addresses = {functions, depth}}};
    etw_emit_event(t, ETW_EV_TASK_SUSPEND, v);
}

void
etw_emit_push_slow(EtwThread *t, uint32_t function_id, uint32_t caller, uint32_t caller_line)
{
    if (caller == t->current && caller != 0 && function_id <= 0xFFFF && caller_line <= 0xFFFF) {
        EtwValue v[] = {{.u = function_id}, {.u = caller_line}};
        etw_emit_event(t, ETW_EV_PUSH_COMPACT, v);
        return;
    }
    EtwValue v[] = {{.u = function_id}, {.u = caller}, {.u = caller_line}};
    etw_emit_event(t, ETW_EV_PUSH, v);
}

void
etw_emit_pop_slow(EtwThread *t, uint32_t function_id)
{
    EtwValue v[] = {{.u = function_id}};
    etw_emit_event(t, function_id <= 0xFFFF ? ETW_EV_POP_COMPACT : ETW_EV_POP, v);
}

/* ---- threads ---- */

/* Holding threads_lock. */
static void
unlink_thread(EtwThread *t)
{
    if (t->prev != NULL) {
        t->prev->next = t->next;
    }
    else if (threads == t) {
        threads = t->next;
    }
    if (t->next != NULL) {
        t->next->prev = t->prev;
    }
    t->next = t->prev = NULL;
}

/* pthread key destructor: the thread is ending (it no longer runs Python). */
static void
thread_ended(void *arg)
{
    EtwThread *t = arg;
    if (t == NULL) {
        return;
    }
    pthread_mutex_lock(&threads_lock);
    uint32_t epoch = etw_current_epoch();
    if (is_tracing() && t->announced == epoch) {
        if (t->epoch != epoch) {
            /* Announced by a rundown, and has not written since. */
            t->stream = etw_stream_attach(&t->own, t->tid);
            t->epoch = epoch;
        }
        emit_thread(t, t, ETW_EV_THREAD_STOP);
    }
    unlink_thread(t);
    pthread_mutex_unlock(&threads_lock);
    etw_stream_close(t->own);
    t->stream = t->own = NULL;
    etw_tls_thread = NULL;
    free(t);
}

static void rundown(EtwThread *me, uint32_t epoch);

static void
make_thread_key(void)
{
    pthread_key_create(&thread_key, thread_ended);
}

EtwThread *
etw_thread_slow(void)
{
    EtwThread *t = etw_tls_thread;
    if (t == NULL) {
        pthread_once(&thread_key_once, make_thread_key);
        t = calloc(1, sizeof(EtwThread));
        if (t == NULL) {
            /* Out of memory: a stand-in per thread keeps callers simple; it
             * records nothing. */
            static __thread EtwThread fallback;
            fallback.epoch = etw_current_epoch();
            return &fallback;
        }
        t->tid = (uint32_t)syscall(SYS_gettid);
        etw_tls_thread = t;
        pthread_setspecific(thread_key, t);
        pthread_mutex_lock(&threads_lock);
        t->next = threads;
        if (threads != NULL) {
            threads->prev = t;
        }
        threads = t;
        pthread_mutex_unlock(&threads_lock);
    }
    pthread_mutex_lock(&threads_lock);
    uint32_t epoch = etw_current_epoch();
    t->epoch = epoch;
    int announce = t->announced != epoch;
    t->announced = epoch;   /* read by disable and rundowns, under the lock */
    pthread_mutex_unlock(&threads_lock);
    t->current = 0;
    t->c_depth = 0;
    int on = is_tracing();
    if (t->own != NULL || (on && etw_recorder_active())) {
        /* The same stream file as in an earlier session of this capture,
         * else a new one (or none when not recording). */
        t->stream = etw_stream_attach(&t->own, t->tid);
    }
    else {
        t->stream = NULL;
    }
    if (on) {
        uint32_t owed = epoch;
        if (__atomic_compare_exchange_n(&rundown_epoch, &owed, 0, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED)) {
            rundown(t, epoch);
        }
        if (announce) {
            emit_thread(t, t, ETW_EV_THREAD_START);
        }
        if (etw_thread_started_hook != NULL) {
            etw_thread_started_hook(t);
        }
    }
    return t;
}

/* The rundown of epoch `epoch`, written by `me`: every registered function,
 * then a PythonThread start for every other live thread (each then writes
 * its own events without announcing itself again). */
static void
rundown(EtwThread *me, uint32_t epoch)
{
    if (etw_rundown_hook != NULL) {
        etw_rundown_hook(me);
    }
    pthread_mutex_lock(&threads_lock);
    for (EtwThread *t = threads; t != NULL; t = t->next) {
        if (t != me && t->announced != epoch) {
            emit_thread(me, t, ETW_EV_THREAD_START);
            t->announced = epoch;
        }
    }
    pthread_mutex_unlock(&threads_lock);
}

void
etw_events_touch(void)
{
    if (is_tracing()) {
        etw_thread();
    }
}

void
etw_events_restart(int with_rundown)
{
    pthread_mutex_lock(&threads_lock);
    uint32_t epoch = __atomic_add_fetch(&etw_epoch, 1, __ATOMIC_RELEASE);
    if (with_rundown) {
        __atomic_store_n(&rundown_epoch, epoch, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&threads_lock);
}

int
etw_events_enable(const char *capture_dir, int call_times, char *error, size_t error_size)
{
    etw_clock_init();
    if (capture_dir != NULL && capture_dir[0] != '\0') {
        EtwRecorderOptions options = {.call_times = call_times};
        if (etw_recorder_start(capture_dir, &options, error, error_size) != 0) {
            return -1;
        }
    }
    pthread_mutex_lock(&threads_lock);
    __atomic_store_n(&tracing, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&etw_epoch, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&threads_lock);
    return 0;
}

void
etw_events_disable(void)
{
    if (!is_tracing()) {
        return;
    }
    /* The disabling thread writes the end of every thread's part of the
     * session (PythonThread stop) into its own stream, then closes it;
     * the others close theirs at their next event or exit. */
    EtwThread *me = etw_thread();
    pthread_mutex_lock(&threads_lock);
    uint32_t epoch = etw_current_epoch();
    for (EtwThread *t = threads; t != NULL; t = t->next) {
        if (t->announced == epoch) {
            emit_thread(me, t, ETW_EV_THREAD_STOP);
        }
    }
    __atomic_store_n(&tracing, 0, __ATOMIC_RELEASE);
    __atomic_add_fetch(&etw_epoch, 1, __ATOMIC_RELEASE); /* all re-announce next time */
    pthread_mutex_unlock(&threads_lock);
    if (etw_recorder_active()) {
        etw_recorder_stop();
    }
    etw_stream_suspend(me->own);
    me->stream = NULL;
}

void
etw_events_after_fork_child(void)
{
    etw_recorder_after_fork_child();
    /* Only the forking thread exists in the child. */
    pthread_mutex_init(&threads_lock, NULL);
    EtwThread *t = etw_tls_thread;
    threads = t;
    if (t != NULL) {
        t->next = t->prev = NULL;
        t->tid = (uint32_t)syscall(SYS_gettid);
    }
    /* The child announces its thread in its own trace; its stream (the
     * parent's) is let go at its next event. */
    __atomic_add_fetch(&etw_epoch, 1, __ATOMIC_RELEASE);
}

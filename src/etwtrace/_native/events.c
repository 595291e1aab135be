/* The event writer.  See events.h. */
#define _GNU_SOURCE
#include "events.h"

#include "clock.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>


/* Strings longer than this are cut: an event must fit one packet. */
#define MAX_STRING 4095
#define MAX_STACK 512

uint32_t etw_epoch;
void (*etw_thread_started_hook)(EtwThread *);
__thread EtwThread *etw_tls_thread __attribute__((tls_model("initial-exec")));

static int tracing;
/* Guards the registry below, and a thread's stream whenever it is written
 * by anyone but its own thread holding the GIL (thread exit, disable). */
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

static void
emit_thread(EtwThread *t, uint32_t id)
{
    if (id == ETW_EV_THREAD_START) {
        ETW_PROBE1(thread_start, t->tid);
    } else {
        ETW_PROBE1(thread_stop, t->tid);
    }
    if (t->stream != NULL) {
        uint8_t *p = etw_stream_reserve(t->stream, id, 4);
        if (p != NULL) {
            memcpy(p, &t->tid, 4);
        }
    }
}

/* pthread key destructor: the thread is ending. */
static void
thread_ended(void *arg)
{
    EtwThread *t = arg;
    if (t == NULL) {
        return;
    }
    pthread_mutex_lock(&threads_lock);
    if (tracing && t->epoch == etw_epoch) {
        emit_thread(t, ETW_EV_THREAD_STOP);
    }
    etw_stream_close(t->stream);
    if (t->prev != NULL) {
        t->prev->next = t->next;
    } else if (threads == t) {
        threads = t->next;
    }
    if (t->next != NULL) {
        t->next->prev = t->prev;
    }
    pthread_mutex_unlock(&threads_lock);
    etw_tls_thread = NULL;
    free(t);
}

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
            /* Out of memory: a static stand-in keeps callers simple; it
             * records nothing. */
            static EtwThread fallback;
            fallback.epoch = etw_epoch;
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
    if (t->stream != NULL) {
        /* A stream from an earlier session: write it out and start anew. */
        etw_stream_close(t->stream);
        t->stream = NULL;
    }
    t->epoch = etw_epoch;
    t->current = 0;
    t->c_depth = 0;
    if (tracing && etw_recorder_active()) {
        t->stream = etw_stream_open(t->tid);
    }
    if (tracing) {
        emit_thread(t, ETW_EV_THREAD_START);
        if (etw_thread_started_hook != NULL) {
            etw_thread_started_hook(t);
        }
    }
    return t;
}

/* Fatal signals write out what the recorder holds, then let the previous
 * handler (faulthandler, a debugger's, or the default) act as before. */
static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
#define N_FATAL (sizeof(fatal_signals) / sizeof(fatal_signals[0]))
static struct sigaction previous_actions[N_FATAL];

static void
on_fatal_signal(int sig)
{
    etw_recorder_flush_on_crash();
    for (size_t i = 0; i < N_FATAL; i++) {
        if (fatal_signals[i] == sig) {
            sigaction(sig, &previous_actions[i], NULL);
            break;
        }
    }
    raise(sig); /* delivered to the previous handler when this one returns */
}

static void
install_fatal_handlers(void)
{
    static int installed;
    if (installed) {
        return;
    }
    installed = 1;
    for (size_t i = 0; i < N_FATAL; i++) {
        struct sigaction action;
        memset(&action, 0, sizeof(action));
        action.sa_handler = on_fatal_signal;
        sigemptyset(&action.sa_mask);
        action.sa_flags = SA_ONSTACK;
        sigaction(fatal_signals[i], &action, &previous_actions[i]);
    }
}

int
etw_events_enable(const char *capture_dir, int call_times, char *error, size_t error_size)
{
    etw_clock_init();
    if (capture_dir != NULL && capture_dir[0] != '\0') {
        if (etw_recorder_start(capture_dir, call_times, error, error_size) != 0) {
            return -1;
        }
        install_fatal_handlers();
    }
    tracing = 1;
    etw_epoch++;
    return 0;
}

void
etw_events_disable(void)
{
    if (!tracing) {
        return;
    }
    /* Threads that are still alive (or whose exit has not been seen yet)
     * end their part of the session here. */
    pthread_mutex_lock(&threads_lock);
    for (EtwThread *t = threads; t != NULL; t = t->next) {
        if (t->epoch == etw_epoch) {
            emit_thread(t, ETW_EV_THREAD_STOP);
        }
    }
    tracing = 0;
    etw_epoch++; /* every thread re-announces in the next session */
    if (etw_recorder_active()) {
        etw_recorder_stop();
    }
    pthread_mutex_unlock(&threads_lock);
}

static size_t
bounded_len(const char *s)
{
    return s == NULL ? 0 : strnlen(s, MAX_STRING);
}

/* Copies a string field (cut at MAX_STRING) with its terminating NUL. */
static uint8_t *
put_string(uint8_t *p, const char *s, size_t len)
{
    if (len) {
        memcpy(p, s, len);
    }
    p[len] = 0;
    return p + len + 1;
}

void
etw_emit_function(EtwThread *t, uint32_t function_id, uintptr_t begin, uintptr_t end,
                  uint32_t line, int is_python, const char *file, const char *name)
{
    ETW_PROBE7(function, function_id, begin, end, line, file, name, is_python);
    if (t->stream == NULL) {
        return;
    }
    size_t file_len = bounded_len(file), name_len = bounded_len(name);
    size_t size = 4 + 8 + 8 + 4 + 1 + file_len + 1 + name_len + 1;
    uint8_t *p = etw_stream_reserve(t->stream, ETW_EV_FUNCTION, size);
    if (p == NULL) {
        return;
    }
    uint64_t b = begin, e = end;
    uint8_t py = is_python ? 1 : 0;
    memcpy(p, &function_id, 4);
    memcpy(p + 4, &b, 8);
    memcpy(p + 12, &e, 8);
    memcpy(p + 20, &line, 4);
    p[24] = py;
    p = put_string(p + 25, file, file_len);
    put_string(p, name, name_len);
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
    if (t->stream == NULL) {
        return;
    }
    size_t len = bounded_len(text);
    uint8_t *p = etw_stream_reserve(t->stream, id, len + 1);
    if (p != NULL) {
        put_string(p, text, len);
    }
}

void
etw_emit_stack_sample(EtwThread *t, const char *text, void *const *frames, int depth)
{
    ETW_PROBE1(stack_sample, text);
    if (t->stream == NULL) {
        return;
    }
    if (depth < 0) {
        depth = 0;
    }
    if (depth > MAX_STACK) {
        depth = MAX_STACK;
    }
    size_t len = bounded_len(text);
    uint32_t n = (uint32_t)depth;
    uint8_t *p = etw_stream_reserve(t->stream, ETW_EV_STACK_SAMPLE, len + 1 + 4 + 8 * (size_t)n);
    if (p == NULL) {
        return;
    }
    p = put_string(p, text, len);
    memcpy(p, &n, 4);
    p += 4;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t ip = (uint64_t)(uintptr_t)frames[i];
        memcpy(p + 8 * i, &ip, 8);
    }
}

void
etw_emit_push_slow(EtwThread *t, uint32_t function_id, uint32_t caller, uint32_t caller_line)
{
    if (caller == t->current && caller != 0 && function_id <= 0xFFFF && caller_line <= 0xFFFF) {
        uint8_t *p = etw_stream_reserve(t->stream, ETW_EV_PUSH_SHORT, 4);
        if (p != NULL) {
            uint16_t v[2] = {(uint16_t)function_id, (uint16_t)caller_line};
            memcpy(p, v, 4);
        }
        return;
    }
    uint8_t *p = etw_stream_reserve(t->stream, ETW_EV_PUSH, 12);
    if (p != NULL) {
        memcpy(p, &function_id, 4);
        memcpy(p + 4, &caller, 4);
        memcpy(p + 8, &caller_line, 4);
    }
}

void
etw_emit_pop_slow(EtwThread *t, uint32_t function_id)
{
    if (function_id <= 0xFFFF) {
        uint8_t *p = etw_stream_reserve(t->stream, ETW_EV_POP_SHORT, 2);
        if (p != NULL) {
            uint16_t v = (uint16_t)function_id;
            memcpy(p, &v, 2);
        }
        return;
    }
    uint8_t *p = etw_stream_reserve(t->stream, ETW_EV_POP, 4);
    if (p != NULL) {
        memcpy(p, &function_id, 4);
    }
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
        t->stream = NULL;
        t->tid = (uint32_t)syscall(SYS_gettid);
    }
    etw_epoch++; /* the child announces its thread in its own trace */
}

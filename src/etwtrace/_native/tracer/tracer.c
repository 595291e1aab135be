/* The tracer.  See tracer.h.
 *
 * A PEP 523 hook has no context argument, so the tracer's state is the one
 * process-wide global of the core.  It is set by enable before the hook is
 * installed and read by the hooks on every thread; `previous` (what the
 * hooks call) is never cleared, since a free-threaded build may still be
 * inside a hook when tracing stops. */
#include "tracer.h"

#include "c_functions.h"
#include "cstack.h"
#include "monitoring.h"
#include "perf_jit.h"
#include "recorder.h"
#include "session.h"
#include "tasks.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef PyObject *(*TrampolineFunc)(PyThreadState *, EtwFrame *, int, EtwEvalFunc);

static struct {
    int mode;
    int c_calls;               /* instrumented: also C callables */
    int c_calls_monitoring;    /* ... observed through sys.monitoring */
    EtwEvalFunc previous;      /* evaluator the hook hands frames to (atomic) */
    EtwEvalFunc hook;          /* the hook installed */
    PyInterpreterState *interp;
    /* Strong references, kept after disable: a free-threaded build may
     * still be registering a function with them (they are the module
     * state's set and list, which live as long anyway). */
    EtwFilter filter;
} tracer;

/* Serializes enable and disable (they call into Python, so a PyMutex in
 * free-threaded builds). */
static EtwLock enable_lock = ETW_LOCK_INIT;

/* The function record of `co` for this session, registering it (and emitting
 * its PythonFunction event) if needed; NULL if out of memory. */
static inline __attribute__((always_inline)) EtwFunction *
function_of(PyCodeObject *co, EtwThread *t, int want_trampoline)
{
    EtwFunction *f = etw_code_index_get(co);
    if (__builtin_expect(f == NULL || __atomic_load_n(&f->epoch, __ATOMIC_ACQUIRE) !=
                                          etw_current_epoch(), 0)) {
        f = etw_function_for_code(co, f, t, &tracer.filter, want_trampoline);
    }
    return f;
}

static inline EtwEvalFunc
previous_eval(void)
{
    return __atomic_load_n(&tracer.previous, __ATOMIC_RELAXED);
}

/* The hooks' bodies run where their C stack has room (cstack.h), and give
 * back the C-recursion units the evaluator takes for a call that untraced
 * would not have been one (compat.h). */
static inline __attribute__((always_inline)) PyObject *
stack_eval_plain(PyThreadState *ts, EtwFrame *frame, int throwflag, EtwFunction *f)
{
    PyObject *result;
    etw_eval_units_refund(ts);
    if (f != NULL && f->trampoline != NULL) {
        result = ((TrampolineFunc)f->trampoline)(ts, frame, throwflag, previous_eval());
    }
    else {
        result = previous_eval()(ts, frame, throwflag);
    }
    etw_eval_units_charge(ts);
    return result;
}

#ifdef ETW_HAVE_TASKS
/* A coroutine's or generator's frame, in either mode (defined below). */
static PyObject *resumable_eval(PyThreadState *ts, EtwFrame *frame, int throwflag, EtwThread *t,
                                PyCodeObject *co, EtwFunction *f, int instrumented);
#endif

static inline __attribute__((always_inline)) PyObject *
stack_eval_body(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    /* A thread seen for the first time in this session announces itself
     * (PythonThread start); afterwards this is one TLS load and compare. */
    EtwThread *t = etw_thread();
    PyCodeObject *co = etw_frame_code(frame);
    EtwFunction *f = function_of(co, t, 1);
#ifdef ETW_HAVE_TASKS
    if (__builtin_expect(etw_code_is_resumable(co), 0)) {
        return resumable_eval(ts, frame, throwflag, t, co, f, 0);
    }
#endif
    return stack_eval_plain(ts, frame, throwflag, f);
}

static PyObject *
stack_eval_deep(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    return stack_eval_body(ts, frame, throwflag);
}

static PyObject *
stack_eval(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    if (__builtin_expect(etw_cstack_low(), 0)) {
        return etw_cstack_eval(ts, frame, throwflag, stack_eval_deep);
    }
    return stack_eval_body(ts, frame, throwflag);
}

/* Caller and CallerLine of a call made now on thread `t` from Python frame
 * `cf` (NULL: none).  The Caller is the thread's innermost open push; only
 * at the bottom of a stack that started before tracing did (no open push)
 * is it the calling frame's function.  The line is known when the Caller is
 * that Python frame's function. */
static inline __attribute__((always_inline)) uint32_t
caller_of(EtwThread *t, EtwFrame *cf, uint32_t *line)
{
    uint32_t caller = t->current;
    *line = 0;
    if (cf == NULL) {
        return caller;
    }
    PyCodeObject *cco = etw_frame_code(cf);
    EtwFunction *cfn = etw_code_index_get(cco);
    if (__builtin_expect(caller == 0, 0)) {
        cfn = function_of(cco, t, 0);
        if (cfn != NULL && cfn->traced) {
            caller = cfn->id;
        }
    }
    if (cfn != NULL && cfn->id == caller && caller != 0) {
        *line = etw_function_line_at(cfn, cco, etw_frame_lasti(cf));
    }
    return caller;
}

/* Instrumented mode: a push before and a pop after every traced Python
 * frame's evaluation.  The evaluator returns once per entry (return, yield,
 * await or exception), so pushes and pops nest per thread by construction.
 * A pop is written only in the session its push was: frames still running
 * when tracing stops, or restarts, are not closed in a later trace. */
static void close_unreturned_c_calls(PyThreadState *ts, EtwThread *t, uint32_t c_depth);

static inline __attribute__((always_inline)) PyObject *
instrumented_eval_plain(PyThreadState *ts, EtwFrame *frame, int throwflag, EtwThread *t,
                        EtwFunction *f)
{
    PyObject *result;
    etw_eval_units_refund(ts);
    if (__builtin_expect(f == NULL || !f->traced, 0)) {
        result = previous_eval()(ts, frame, throwflag);
        etw_eval_units_charge(ts);
        return result;
    }
    uint32_t epoch = t->epoch;
    uint32_t saved = t->current;
    uint32_t c_depth = t->c_depth;
    uint32_t line;
    uint32_t caller = caller_of(t, etw_thread_caller_frame(ts), &line);
    etw_emit_push(t, f->id, caller, line);
    t->current = f->id;
    result = previous_eval()(ts, frame, throwflag);
    etw_eval_units_charge(ts);
    if (__builtin_expect(epoch == etw_current_epoch(), 1)) {
        if (__builtin_expect(t->c_depth > c_depth, 0)) {
            close_unreturned_c_calls(ts, t, c_depth);
        }
        t->current = saved;
        etw_emit_pop(t, f->id);
    }
    return result;
}

#ifdef ETW_HAVE_TASKS
/* A coroutine's or generator's frame (tasks.h): the first coroutine a
 * thread enters outside an asyncio task's step may begin one, whose task
 * frames go around it, as trampolines in stack mode and as pushes and
 * pops in instrumented mode; inside a step, resumable frames are followed
 * for where the task waits. */
static __attribute__((noinline)) PyObject *
resumable_eval(PyThreadState *ts, EtwFrame *frame, int throwflag, EtwThread *t,
               PyCodeObject *co, EtwFunction *f, int instrumented)
{
    EtwTaskStep step;
    int begins = t->task == 0 && etw_code_is_coroutine(co) && etw_task_step_begin(t, frame, &step);
    uint32_t epoch = t->epoch;
    uint32_t saved = t->current;
    if (begins && instrumented) {
        for (uint32_t i = 0; i < step.n; i++) {
            etw_emit_push(t, step.chain[i]->id, t->current, 0);
            t->current = step.chain[i]->id;
        }
    }
    int follow = t->task != 0 && f != NULL && f->traced;
    PyObject *coroutine = NULL;
    if (follow) {
        coroutine = etw_frame_coroutine(frame);
        etw_task_frame_enter(t, f->id);
    }
    PyObject *result;
    if (instrumented) {
        result = instrumented_eval_plain(ts, frame, throwflag, t, f);
    }
    else if (begins && step.n > 0) {
        etw_eval_units_refund(ts);
        result = etw_task_step_eval(ts, frame, throwflag, &step,
                                    f != NULL ? f->trampoline : NULL, previous_eval());
        etw_eval_units_charge(ts);
    }
    else {
        result = stack_eval_plain(ts, frame, throwflag, f);
    }
    if (follow) {
        etw_task_frame_exit(t, coroutine);
    }
    if (begins) {
        if (instrumented && epoch == etw_current_epoch()) {
            for (uint32_t i = step.n; i-- > 0;) {
                etw_emit_pop(t, step.chain[i]->id);
            }
            t->current = saved;
        }
        etw_task_step_end(t, &step);
    }
    return result;
}
#endif

static inline __attribute__((always_inline)) PyObject *
instrumented_eval_body(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    EtwThread *t = etw_thread();
    PyCodeObject *co = etw_frame_code(frame);
    EtwFunction *f = function_of(co, t, 0);
#ifdef ETW_HAVE_TASKS
    if (__builtin_expect(etw_code_is_resumable(co), 0)) {
        return resumable_eval(ts, frame, throwflag, t, co, f, 1);
    }
#endif
    return instrumented_eval_plain(ts, frame, throwflag, t, f);
}

static PyObject *
instrumented_eval_deep(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    return instrumented_eval_body(ts, frame, throwflag);
}

static PyObject *
instrumented_eval(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    if (__builtin_expect(etw_cstack_low(), 0)) {
        return etw_cstack_eval(ts, frame, throwflag, instrumented_eval_deep);
    }
    return instrumented_eval_body(ts, frame, throwflag);
}

/* Instrumented mode with C calls: an observer that sees only C calls
 * (Python calls are the eval hook's), through sys.monitoring on 3.12+ or a
 * profile function per thread.  Each C call's push saves the Caller it
 * replaces on a small per-thread stack; the return or exception that ends
 * the call pops it.  A call from an ignored file (or one whose callable is
 * not a builtin function) is not traced but keeps its place on that stack
 * so pairs stay matched. */
#define C_CALL_UNTRACED UINT32_MAX

static void
c_call_enter(PyObject *callable)
{
    EtwThread *t = etw_thread();
    uint32_t depth = t->c_depth++;
    if (depth >= ETW_MAX_C_DEPTH) {
        return;
    }
    EtwFrame *cf = etw_thread_caller_frame(PyThreadState_Get());
    EtwFunction *cfn = cf != NULL ? function_of(etw_frame_code(cf), t, 0) : NULL;
    uint32_t id = callable != NULL && (cfn == NULL || cfn->traced) ? etw_c_function_id(callable, t) : 0;
    if (id == 0) {
        t->c_saved[depth] = C_CALL_UNTRACED;
        return;
    }
    uint32_t line;
    uint32_t caller = caller_of(t, cf, &line);
    etw_emit_push(t, id, caller, line);
    t->c_saved[depth] = t->current;
    t->current = id;
}

static void
c_call_exit(void)
{
    EtwThread *t = etw_thread();
    if (t->c_depth == 0) {
        return; /* the call began before this session */
    }
    uint32_t depth = --t->c_depth;
    if (depth >= ETW_MAX_C_DEPTH || t->c_saved[depth] == C_CALL_UNTRACED) {
        return;
    }
    uint32_t id = t->current;
    t->current = t->c_saved[depth];
    etw_emit_pop(t, id);
}

static int c_call_profile(PyObject *unused, PyFrameObject *pyframe, int what, PyObject *arg);

/* A frame returns with C calls it made still open: the program replaced
 * the profile function (sys.setprofile) during them, so their returns
 * were never seen.  Their pops are written now, before the frame's, so the
 * thread's calls stay nested and no pop looks like one after lost events.
 * (With the profile function still ours, the calls are open on another
 * stack, a greenlet's, and are left as they are.) */
static void
close_unreturned_c_calls(PyThreadState *ts, EtwThread *t, uint32_t c_depth)
{
    if (!tracer.c_calls || tracer.c_calls_monitoring || ts->c_profilefunc == c_call_profile) {
        return;
    }
    while (t->c_depth > c_depth) {
        c_call_exit();
    }
}

static int
c_call_profile(PyObject *unused, PyFrameObject *pyframe, int what, PyObject *arg)
{
    (void)unused;
    (void)pyframe;
    if (what == PyTrace_C_CALL) {
        c_call_enter(arg);
    }
    else if (what == PyTrace_C_RETURN || what == PyTrace_C_EXCEPTION) {
        c_call_exit();
    }
    return 0;
}

/* Whether C calls go through sys.monitoring: on 3.12+ unless
 * ETWTRACE_C_CALL_HOOK=profile asks for the profile function (both are
 * measured in docs/BENCHMARKS.md). */
static int
want_monitoring(void)
{
#ifdef ETW_HAVE_SYS_MONITORING
    const char *hook = getenv("ETWTRACE_C_CALL_HOOK");
    return !(hook != NULL && strcmp(hook, "profile") == 0);
#else
    return 0;
#endif
}

static void
start_c_calls_on_thread(EtwThread *t)
{
    (void)t;
    if (tracer.c_calls && tracer.mode == ETW_MODE_INSTRUMENTED) {
        PyEval_SetProfile(c_call_profile, NULL);
    }
}

/* The rundown a recording session asks for (events.h). */
static void
rundown(EtwThread *t)
{
    etw_functions_rundown(t);
    if (tracer.c_calls) {
        etw_c_functions_rundown(t);
    }
}

static void
after_fork_child(void)
{
    etw_events_after_fork_child();
    etw_session_after_fork_child();
}

static int enable_locked(int mode, int c_calls, int call_times, const char *capture_dir,
                         int sessions, PyObject *ignored_files, PyObject *include_prefixes);
static void disable_locked(void);

int
etw_tracer_enable(int mode, int c_calls, int call_times, const char *capture_dir,
                  int sessions, PyObject *ignored_files, PyObject *include_prefixes)
{
    etw_lock(&enable_lock);
    int rc = enable_locked(mode, c_calls, call_times, capture_dir, sessions, ignored_files,
                           include_prefixes);
    etw_unlock(&enable_lock);
    return rc;
}

void
etw_tracer_disable(void)
{
    etw_lock(&enable_lock);
    disable_locked();
    etw_unlock(&enable_lock);
}

static int
enable_locked(int mode, int c_calls, int call_times, const char *capture_dir,
              int sessions, PyObject *ignored_files, PyObject *include_prefixes)
{
    static int atfork_registered;
    if (tracer.mode != ETW_MODE_OFF) {
        PyErr_SetString(PyExc_RuntimeError, "a tracer is already enabled in this process");
        return -1;
    }
    if (etw_functions_init() < 0) {
        return -1;
    }
    PyInterpreterState *interp = PyInterpreterState_Get();
    EtwEvalFunc current = etw_get_eval_func(interp);
    if (current == stack_eval || current == instrumented_eval) {
        PyErr_SetString(PyExc_RuntimeError, "a tracer is already enabled in this process");
        return -1;
    }
    int monitoring = mode == ETW_MODE_INSTRUMENTED && c_calls && want_monitoring();
    if (mode == ETW_MODE_INSTRUMENTED && c_calls && !monitoring &&
        etw_profile_func_in_use(PyThreadState_Get(), c_call_profile)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "another profiler (cProfile?) holds this thread's profile function, "
                        "which tracing C calls needs here; stop it first, or trace without "
                        "C calls");
        return -1;
    }
    char error[PATH_MAX + 128];
    if (etw_events_enable(capture_dir, mode != ETW_MODE_INSTRUMENTED || call_times, error,
                          sizeof(error)) != 0) {
        PyErr_SetString(PyExc_OSError, error);
        return -1;
    }
    if (!atfork_registered) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_registered = 1;
    }
    if (mode == ETW_MODE_STACK) {
        etw_perf_jit_open();
    }

    if (tracer.filter.ignored_files != ignored_files) {
        Py_XINCREF(ignored_files);
        Py_XSETREF(tracer.filter.ignored_files, ignored_files);
    }
    if (tracer.filter.include_prefixes != include_prefixes) {
        Py_XINCREF(include_prefixes);
        Py_XSETREF(tracer.filter.include_prefixes, include_prefixes);
    }
    __atomic_store_n(&tracer.previous, current, __ATOMIC_RELAXED);
    tracer.interp = interp;
    tracer.mode = mode;
    tracer.c_calls = mode == ETW_MODE_INSTRUMENTED && c_calls;
    tracer.hook = mode == ETW_MODE_STACK ? stack_eval : instrumented_eval;
    tracer.c_calls_monitoring = 0;
    if (monitoring) {
        int r = etw_monitoring_start(c_call_enter, c_call_exit);
        if (r < 0) {
            PyErr_Clear();  /* fall back to the profile function */
        }
        tracer.c_calls_monitoring = r == 0;
    }
    etw_thread_started_hook = tracer.c_calls && !tracer.c_calls_monitoring
        ? start_c_calls_on_thread : NULL;
    etw_rundown_hook = rundown;
    etw_set_eval_func(interp, tracer.hook);
    etw_thread(); /* announce the enabling thread now */
    if (sessions && (capture_dir == NULL || capture_dir[0] == '\0')) {
        int times = mode != ETW_MODE_INSTRUMENTED || call_times;
        if (etw_session_watch_start(times) != 0) {
            PyErr_WarnEx(PyExc_RuntimeWarning, "etwtrace: cannot watch for recording sessions "
                         "(no thread); this process joins only a session running now", 1);
        }
    }
    return 0;
}

static void
disable_locked(void)
{
    if (tracer.mode == ETW_MODE_OFF) {
        return;
    }
    etw_session_watch_stop();
    if (etw_get_eval_func(tracer.interp) == tracer.hook) {
        etw_set_eval_func(tracer.interp, tracer.previous);
    }
    if (tracer.c_calls_monitoring) {
        etw_monitoring_stop();
        tracer.c_calls_monitoring = 0;
    }
    else if (tracer.c_calls) {
        etw_clear_profile_all_threads(tracer.interp, c_call_profile);
    }
    etw_thread_started_hook = NULL;
    etw_tasks_clear();
    tracer.mode = ETW_MODE_OFF;
    tracer.c_calls = 0;
    etw_events_disable();
}

int
etw_tracer_mode(void)
{
    return tracer.mode;
}

EtwThread *
etw_tracer_thread(void)
{
    return tracer.mode == ETW_MODE_OFF ? NULL : etw_thread();
}

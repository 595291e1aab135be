/* The tracer.  See tracer.h.
 *
 * A PEP 523 hook has no context argument, so the tracer's state is the one
 * process-wide global of the core; it is only touched holding the GIL. */
#include "tracer.h"

#include "perf_jit.h"
#include "recorder.h"

#include <pthread.h>

typedef PyObject *(*TrampolineFunc)(PyThreadState *, EtwFrame *, int, EtwEvalFunc);

static struct {
    int mode;
    EtwEvalFunc previous;      /* evaluator the hook hands frames to */
    PyInterpreterState *interp;
    EtwFilter filter;          /* strong references while enabled */
} tracer;

static PyObject *
stack_eval(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    /* A thread seen for the first time in this session announces itself
     * (PythonThread start); afterwards this is one TLS load and compare. */
    EtwThread *t = etw_thread();
    PyCodeObject *co = etw_frame_code(frame);
    EtwFunction *f = etw_code_get_extra(co, etw_code_extra_index);
    if (__builtin_expect(f == NULL || f->epoch != etw_epoch, 0)) {
        f = etw_function_for_code(co, f, t, &tracer.filter, 1);
        if (f == NULL) {
            return tracer.previous(ts, frame, throwflag);
        }
    }
    if (f->trampoline != NULL) {
        return ((TrampolineFunc)f->trampoline)(ts, frame, throwflag, tracer.previous);
    }
    return tracer.previous(ts, frame, throwflag);
}

int
etw_tracer_enable(int mode, const char *capture_dir, PyObject *ignored_files,
                  PyObject *include_prefixes)
{
    static int atfork_registered;
    if (tracer.mode != ETW_MODE_OFF) {
        PyErr_SetString(PyExc_RuntimeError, "a tracer is already enabled in this process");
        return -1;
    }
    if (mode != ETW_MODE_STACK) {
        PyErr_SetString(PyExc_NotImplementedError,
                        "instrumented tracing is not yet available");
        return -1;
    }
    if (etw_functions_init() < 0) {
        return -1;
    }
    PyInterpreterState *interp = PyInterpreterState_Get();
    EtwEvalFunc current = etw_get_eval_func(interp);
    if (current == stack_eval) {
        PyErr_SetString(PyExc_RuntimeError, "a tracer is already enabled in this process");
        return -1;
    }
    char error[512];
    if (etw_events_enable(capture_dir, error, sizeof(error)) != 0) {
        PyErr_SetString(PyExc_OSError, error);
        return -1;
    }
    if (!atfork_registered) {
        pthread_atfork(NULL, NULL, etw_events_after_fork_child);
        atfork_registered = 1;
    }
    etw_perf_jit_open(capture_dir && capture_dir[0] ? capture_dir : NULL);

    Py_XINCREF(ignored_files);
    Py_XINCREF(include_prefixes);
    tracer.filter.ignored_files = ignored_files;
    tracer.filter.include_prefixes = include_prefixes;
    tracer.previous = current;
    tracer.interp = interp;
    tracer.mode = mode;
    etw_set_eval_func(interp, stack_eval);
    etw_thread(); /* announce the enabling thread now */
    return 0;
}

void
etw_tracer_disable(void)
{
    if (tracer.mode == ETW_MODE_OFF) {
        return;
    }
    if (etw_get_eval_func(tracer.interp) == stack_eval) {
        etw_set_eval_func(tracer.interp, tracer.previous);
    }
    tracer.mode = ETW_MODE_OFF;
    etw_events_disable();
    Py_CLEAR(tracer.filter.ignored_files);
    Py_CLEAR(tracer.filter.include_prefixes);
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

/* etwtrace._etwtrace: the Python face of the native core. */
#include "compat.h"
#include "arch.h"

#include "cstack.h"
#include "events.h"
#include "perf_jit.h"
#include "recorder.h"
#include "session.h"
#include "trampoline.h"
#include "tracer.h"

#include <execinfo.h>
#include <limits.h>
#include <string.h>

#define MAX_STACK_FRAMES 512

typedef struct {
    PyObject *ignored_files;     /* set of str */
    PyObject *include_prefixes;  /* list of str */
} ModuleState;

static ModuleState *
get_state(PyObject *module)
{
    return (ModuleState *)PyModule_GetState(module);
}

static PyObject *
etw_enable(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"mode", "capture_dir", "c_calls", "call_times", "sessions", NULL};
    const char *mode_name = "stack";
    PyObject *capture = Py_None;
    int c_calls = 0;
    int call_times = 1;
    int sessions = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|sOppp:enable", kwlist, &mode_name, &capture,
                                     &c_calls, &call_times, &sessions)) {
        return NULL;
    }
    int mode;
    if (strcmp(mode_name, "stack") == 0) {
        mode = ETW_MODE_STACK;
    } else if (strcmp(mode_name, "instrumented") == 0) {
        mode = ETW_MODE_INSTRUMENTED;
    } else {
        PyErr_Format(PyExc_ValueError, "unknown tracing mode '%s' (use 'stack' or 'instrumented')",
                     mode_name);
        return NULL;
    }
    PyObject *capture_bytes = NULL;
    const char *capture_dir = NULL;
    if (capture != Py_None) {
        if (!PyUnicode_FSConverter(capture, &capture_bytes)) {
            return NULL;
        }
        capture_dir = PyBytes_AS_STRING(capture_bytes);
    }
    ModuleState *state = get_state(module);
    int rc = etw_tracer_enable(mode, c_calls, call_times, capture_dir, sessions,
                               state->ignored_files, state->include_prefixes);
    Py_XDECREF(capture_bytes);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
etw_disable(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    etw_tracer_disable();
    Py_RETURN_NONE;
}

static PyObject *
etw_is_active(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyBool_FromLong(etw_tracer_mode() != ETW_MODE_OFF);
}

static PyObject *
etw_session_id(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    char id[128];
    if (!etw_session_joined(id, sizeof(id))) {
        Py_RETURN_NONE;
    }
    return PyUnicode_DecodeFSDefault(id);
}

static PyObject *
etw_session_after_fork(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    etw_session_resume_in_child();
    Py_RETURN_NONE;
}

static PyObject *
etw_get_mode(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    switch (etw_tracer_mode()) {
    case ETW_MODE_STACK:
        return PyUnicode_FromString("stack");
    case ETW_MODE_INSTRUMENTED:
        return PyUnicode_FromString("instrumented");
    default:
        Py_RETURN_NONE;
    }
}

static PyObject *
etw_get_ignored_files(PyObject *module, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(get_state(module)->ignored_files);
}

static PyObject *
etw_get_include_prefixes(PyObject *module, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(get_state(module)->include_prefixes);
}

/* write_mark(text, opcode): 0 plain, 1 range start, 2 range stop.
 * Returns False (and records nothing) when no tracer is enabled. */
static PyObject *
etw_write_mark(PyObject *module, PyObject *args)
{
    (void)module;
    const char *text;
    int opcode = ETW_MARK_PLAIN;
    if (!PyArg_ParseTuple(args, "s|i:write_mark", &text, &opcode)) {
        return NULL;
    }
    if (opcode < ETW_MARK_PLAIN || opcode > ETW_MARK_STOP) {
        PyErr_Format(PyExc_ValueError, "mark opcode must be 0, 1 or 2, not %d", opcode);
        return NULL;
    }
    EtwThread *t = etw_tracer_thread();
    if (t == NULL) {
        Py_RETURN_FALSE;
    }
    etw_emit_mark(t, opcode, text);
    Py_RETURN_TRUE;
}

/* write_thread_name(tid, name): a PythonThreadName event.  Returns False
 * (and records nothing) when no tracer is enabled. */
static PyObject *
etw_write_thread_name(PyObject *module, PyObject *args)
{
    (void)module;
    unsigned int tid;
    const char *name;
    if (!PyArg_ParseTuple(args, "Is:write_thread_name", &tid, &name)) {
        return NULL;
    }
    EtwThread *t = etw_tracer_thread();
    if (t == NULL) {
        Py_RETURN_FALSE;
    }
    etw_emit_thread_name(t, tid, name);
    Py_RETURN_TRUE;
}

/* mark_stack(text): a PythonStackSample event carrying the calling thread's
 * native stack, walked in process by glibc's unwinder (which sees the
 * trampolines through their registered unwind info). */
static PyObject *
etw_mark_stack(PyObject *module, PyObject *args)
{
    (void)module;
    const char *text;
    if (!PyArg_ParseTuple(args, "s:mark_stack", &text)) {
        return NULL;
    }
    EtwThread *t = etw_tracer_thread();
    if (t == NULL) {
        Py_RETURN_FALSE;
    }
    void *frames[MAX_STACK_FRAMES];
    int depth = backtrace(frames, MAX_STACK_FRAMES);
    etw_emit_stack_sample(t, text, frames, depth);
    Py_RETURN_TRUE;
}

static PyObject *
etw_remove_perf_files_at_exit(PyObject *module, PyObject *arg)
{
    (void)module;
    int remove = PyObject_IsTrue(arg);
    if (remove < 0) {
        return NULL;
    }
    etw_perf_jit_remove_at_exit(remove);
    Py_RETURN_NONE;
}

static PyObject *
etw_recorder_losses(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    int err = etw_recorder_first_error();
    return Py_BuildValue("(Kz)", (unsigned long long)etw_recorder_events_discarded(),
                         err ? etw_recorder_failure_text(err) : NULL);
}

static PyObject *
etw_technical_info(PyObject *module, PyObject *unused)
{
    (void)unused;
    const char *jitdump = etw_perf_jit_dump_path();
    const char *capture = etw_recorder_dir();
#ifdef ETW_FREE_THREADED
    int free_threaded = 1;
#else
    int free_threaded = 0;
#endif
    return Py_BuildValue(
        "(sNsNNNzzNNK)",
        PyModule_GetName(module),
        PyLong_FromLong(PY_VERSION_HEX),
        ETW_ARCH_NAME,
        PyBool_FromLong(etw_events_usdt_available()),
        PyBool_FromLong(etw_trampoline_unwind_registered()),
        PyLong_FromLong(ETW_TRAMPOLINE_SIZE),
        jitdump,
        capture,
        PyLong_FromLong(ETW_FORMAT_VERSION),
        PyBool_FromLong(free_threaded),
        (unsigned long long)etw_recorder_events_discarded());
}

static void
close_stream_at_exit(void)
{
    /* The interpreter is ending: this thread's stream is written out and its
     * ring removed (nothing would be lost without this: the ring holds what
     * was not copied yet). */
    EtwThread *t = etw_tls_thread;
    if (t != NULL) {
        etw_stream_close(t->own);
        t->own = t->stream = NULL;
    }
}

/* The CTF metadata of a trace of process `pid`: for writers other than the
 * recorder (the BPF sampler's captures) to declare the same format. */
static PyObject *
etw_ctf_metadata(PyObject *module, PyObject *args)
{
    (void)module;
    int pid, call_times = 1;
    if (!PyArg_ParseTuple(args, "i|p:ctf_metadata", &pid, &call_times)) {
        return NULL;
    }
    char text[16384];
    int len = etw_format_metadata(text, sizeof text, pid, call_times);
    if (len < 0 || (size_t)len >= sizeof text) {
        return PyErr_Format(PyExc_RuntimeError, "CTF metadata longer than %zu bytes",
                            sizeof text);
    }
    return PyBytes_FromStringAndSize(text, len);
}

/* This process's own trace directory, or None when it records into none. */
static PyObject *
etw_trace_dir(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    etw_events_touch();    /* a forked child makes its own at its first event */
    char dir[PATH_MAX + 64];
    if (etw_recorder_trace_dir(dir, sizeof dir) != 0) {
        Py_RETURN_NONE;
    }
    return PyUnicode_DecodeFSDefault(dir);
}

/* For tests: whether the calling thread runs on its larger stack now. */
static PyObject *
etw_on_larger_stack(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyBool_FromLong(etw_cstack_on_larger());
}

/* Untraced children (trace/children.py): a C audit hook that passes on only the
 * events that start a process, so that the program's other audit events
 * (exec, compile, open, sys._getframe...) cost a few compares, not a Python
 * call each.  C hooks are the runtime's, not one interpreter's: only the
 * main interpreter's events reach the callback, which lives for good. */
static int
child_audit_hook(const char *event, PyObject *args, void *callback)
{
    if (strcmp(event, "subprocess.Popen") != 0 && strcmp(event, "os.posix_spawn") != 0 &&
            strcmp(event, "os.exec") != 0) {
        return 0;
    }
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        return 0;       /* the callback belongs to the main interpreter */
    }
    PyObject *name = PyUnicode_FromString(event);
    PyObject *result = name != NULL
        ? PyObject_CallFunctionObjArgs((PyObject *)callback, name, args, NULL) : NULL;
    Py_XDECREF(name);
    if (result == NULL) {
        PyErr_Clear();      /* never fail the program's own call */
    }
    Py_XDECREF(result);
    return 0;
}

static PyObject *
etw_watch_children(PyObject *module, PyObject *callback)
{
    (void)module;
    if (!PyCallable_Check(callback)) {
        return PyErr_Format(PyExc_TypeError, "watch_children needs a callable");
    }
    Py_INCREF(callback);
    if (PySys_AddAuditHook(child_audit_hook, callback) < 0) {
        Py_DECREF(callback);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"watch_children", etw_watch_children, METH_O,
     "watch_children(callback): callback(event, args) at each subprocess.Popen, "
     "os.posix_spawn and os.exec audit event, for good."},
    {"trace_dir", etw_trace_dir, METH_NOARGS,
     "This process's own trace directory in the capture, or None."},
    {"_on_larger_stack", etw_on_larger_stack, METH_NOARGS,
     "Whether this thread runs on the larger stack deep recursion moves to (tests)."},
    {"ctf_metadata", etw_ctf_metadata, METH_VARARGS,
     "ctf_metadata(pid, call_times=True): a trace's CTF metadata text (bytes)."},
    {"enable", (PyCFunction)(void (*)(void))etw_enable, METH_VARARGS | METH_KEYWORDS,
     "enable(mode='stack', capture_dir=None, c_calls=False, call_times=True, sessions=True)\n"
     "--\n\n"
     "Start tracing this interpreter; c_calls adds C callables in instrumented mode;\n"
     "call_times=False records pushes and pops without reading the clock; with no\n"
     "capture_dir and sessions, record into the recording sessions that run."},
    {"session_id", etw_session_id, METH_NOARGS,
     "The id of the recording session this process records into, or None."},
    {"session_after_fork", etw_session_after_fork, METH_NOARGS,
     "In a forked child: watch for recording sessions again (a new thread)."},
    {"disable", etw_disable, METH_NOARGS, "Stop tracing and write out pending events."},
    {"is_active", etw_is_active, METH_NOARGS, "Whether a tracer is enabled."},
    {"get_mode", etw_get_mode, METH_NOARGS, "'stack', 'instrumented' or None."},
    {"get_ignored_files", etw_get_ignored_files, METH_NOARGS,
     "The set of source files the tracer does not trace."},
    {"get_include_prefixes", etw_get_include_prefixes, METH_NOARGS,
     "The list of path prefixes traced even when ignored."},
    {"write_mark", etw_write_mark, METH_VARARGS,
     "write_mark(text, opcode=0)\n--\n\nEmit a PythonMark event (opcode 0 plain, 1 start, 2 stop)."},
    {"write_thread_name", etw_write_thread_name, METH_VARARGS,
     "write_thread_name(tid, name)\n--\n\nEmit a PythonThreadName event."},
    {"mark_stack", etw_mark_stack, METH_VARARGS,
     "mark_stack(text)\n--\n\nEmit a PythonStackSample event with the native stack."},
    {"remove_perf_files_at_exit", etw_remove_perf_files_at_exit, METH_O,
     "remove_perf_files_at_exit(flag)\n--\n\n"
     "Delete this process's /tmp/perf-PID.map and /tmp/jit-PID.dump when it exits."},
    {"recorder_losses", etw_recorder_losses, METH_NOARGS,
     "(events lost by the recorder in this process, the first error or None)"},
    {"_get_technical_info", etw_technical_info, METH_NOARGS,
     "(module, PY_VERSION_HEX, arch, usdt, unwind_registered, trampoline_size, jitdump, capture,\n"
     " trace_format_version, free_threaded, events_lost)"},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *module)
{
    static int at_exit_registered;
    ModuleState *state = get_state(module);
    state->ignored_files = PySet_New(NULL);
    state->include_prefixes = PyList_New(0);
    if (state->ignored_files == NULL || state->include_prefixes == NULL) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "TRAMPOLINE_SIZE", ETW_TRAMPOLINE_SIZE) < 0 ||
        PyModule_AddIntConstant(module, "HAVE_USDT", etw_events_usdt_available()) < 0) {
        return -1;
    }
    if (!at_exit_registered) {
        Py_AtExit(close_stream_at_exit);
        at_exit_registered = 1;
    }
    return 0;
}

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    ModuleState *state = get_state(module);
    Py_VISIT(state->ignored_files);
    Py_VISIT(state->include_prefixes);
    return 0;
}

static int
module_clear(PyObject *module)
{
    ModuleState *state = get_state(module);
    Py_CLEAR(state->ignored_files);
    Py_CLEAR(state->include_prefixes);
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    /* One tracer per process: the hook and the recorder are process-wide. */
    ETW_MOD_INTERPRETERS_NOT_SUPPORTED_SLOT
    ETW_MOD_GIL_SLOT
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "etwtrace._etwtrace",
    .m_doc = "Native core of etwtrace: trampolines, perf map/jitdump, USDT probes and the CTF recorder.",
    .m_size = sizeof(ModuleState),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__etwtrace(void)
{
    return PyModuleDef_Init(&module_def);
}

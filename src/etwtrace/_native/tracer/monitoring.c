/* C calls through sys.monitoring.  See monitoring.h.
 *
 * A CALL event fires for every call; only builtin functions, and method
 * descriptors called with a self (bound here, as CPython's own legacy
 * profile shim binds them), are C calls.  The same test on the C_RETURN or
 * C_RAISE event of that call decides its exit, so enters and exits pair. */
#include "monitoring.h"

#ifdef ETW_HAVE_SYS_MONITORING

static struct {
    int tool;               /* -1 when not started */
    PyObject *monitoring;   /* sys.monitoring */
    PyObject *missing;      /* sys.monitoring.MISSING: a call without self */
    PyObject *callbacks[2]; /* on_call, on_c_exit */
    long events[3];         /* the CALL, C_RETURN and C_RAISE event bits */
    EtwCEnter enter;
    EtwCExit exit;
} mon = {.tool = -1};

static int
is_c_call(PyObject *callable, PyObject *arg0)
{
    return PyCFunction_Check(callable)
        || (Py_IS_TYPE(callable, &PyMethodDescr_Type) && arg0 != mon.missing);
}

static PyObject *
on_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs == 4 && is_c_call(args[2], args[3])) {
        PyObject *callable = args[2];
        if (PyCFunction_Check(callable)) {
            mon.enter(callable);
        }
        else {
            PyObject *bound = Py_TYPE(callable)->tp_descr_get(callable, args[3],
                                                              (PyObject *)Py_TYPE(args[3]));
            if (bound == NULL) {
                PyErr_Clear();
            }
            mon.enter(bound);
            Py_XDECREF(bound);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
on_c_exit(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs == 4 && is_c_call(args[2], args[3])) {
        mon.exit();
    }
    Py_RETURN_NONE;
}

static PyMethodDef callback_defs[2] = {
    {"etwtrace_on_call", (PyCFunction)(void (*)(void))on_call, METH_FASTCALL, NULL},
    {"etwtrace_on_c_exit", (PyCFunction)(void (*)(void))on_c_exit, METH_FASTCALL, NULL},
};

static long
event_bit(PyObject *events, const char *name)
{
    PyObject *bit = PyObject_GetAttrString(events, name);
    long value = bit ? PyLong_AsLong(bit) : -1;
    Py_XDECREF(bit);
    return value;
}

static void
forget(void)
{
    Py_CLEAR(mon.monitoring);
    Py_CLEAR(mon.missing);
    Py_CLEAR(mon.callbacks[0]);
    Py_CLEAR(mon.callbacks[1]);
    mon.tool = -1;
}

int
etw_monitoring_start(EtwCEnter enter, EtwCExit exit)
{
    if (mon.tool >= 0) {
        return 0;
    }
    PyObject *sys = PyImport_ImportModule("sys");
    if (sys == NULL) {
        return -1;
    }
    mon.monitoring = PyObject_GetAttrString(sys, "monitoring");
    Py_DECREF(sys);
    PyObject *events = mon.monitoring ? PyObject_GetAttrString(mon.monitoring, "events") : NULL;
    mon.missing = mon.monitoring ? PyObject_GetAttrString(mon.monitoring, "MISSING") : NULL;
    if (events == NULL || mon.missing == NULL) {
        Py_XDECREF(events);
        forget();
        return -1;
    }
    static const char *names[3] = {"CALL", "C_RETURN", "C_RAISE"};
    for (int i = 0; i < 3; i++) {
        mon.events[i] = event_bit(events, names[i]);
    }
    Py_DECREF(events);
    long call = mon.events[0], c_return = mon.events[1], c_raise = mon.events[2];
    if (call < 0 || c_return < 0 || c_raise < 0) {
        forget();
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        mon.callbacks[i] = PyCFunction_New(&callback_defs[i], NULL);
        if (mon.callbacks[i] == NULL) {
            forget();
            return -1;
        }
    }
    /* The profiler's id first; others if a profiler (cProfile) holds it. */
    static const int tools[] = {2, 3, 4};
    int tool = -1;
    for (size_t i = 0; i < sizeof tools / sizeof tools[0] && tool < 0; i++) {
        PyObject *r = PyObject_CallMethod(mon.monitoring, "use_tool_id", "is", tools[i], "etwtrace");
        if (r != NULL) {
            Py_DECREF(r);
            tool = tools[i];
        }
        else if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
        }
        else {
            forget();
            return -1;
        }
    }
    if (tool < 0) {
        forget();
        return 1;
    }
    mon.tool = tool;
    mon.enter = enter;
    mon.exit = exit;
    PyObject *r1 = PyObject_CallMethod(mon.monitoring, "register_callback", "ilO", tool, call,
                                       mon.callbacks[0]);
    PyObject *r2 = r1 ? PyObject_CallMethod(mon.monitoring, "register_callback", "ilO", tool,
                                            c_return, mon.callbacks[1]) : NULL;
    PyObject *r3 = r2 ? PyObject_CallMethod(mon.monitoring, "register_callback", "ilO", tool,
                                            c_raise, mon.callbacks[1]) : NULL;
    PyObject *r4 = r3 ? PyObject_CallMethod(mon.monitoring, "set_events", "il", tool,
                                            call | c_return | c_raise) : NULL;
    Py_XDECREF(r1);
    Py_XDECREF(r2);
    Py_XDECREF(r3);
    if (r4 == NULL) {
        PyObject *exc = PyErr_GetRaisedException();
        etw_monitoring_stop();
        PyErr_SetRaisedException(exc);
        return -1;
    }
    Py_DECREF(r4);
    return 0;
}

void
etw_monitoring_stop(void)
{
    if (mon.tool < 0) {
        return;
    }
    PyObject *exc = PyErr_GetRaisedException();
    /* free_tool_id also unregisters the callbacks (3.13); clear them
     * explicitly for 3.12. */
    PyObject *r = PyObject_CallMethod(mon.monitoring, "set_events", "ii", mon.tool, 0);
    Py_XDECREF(r);
    for (size_t i = 0; i < 3; i++) {
        r = PyObject_CallMethod(mon.monitoring, "register_callback", "ilO", mon.tool,
                                mon.events[i], Py_None);
        Py_XDECREF(r);
    }
    r = PyObject_CallMethod(mon.monitoring, "free_tool_id", "i", mon.tool);
    Py_XDECREF(r);
    PyErr_Clear();
    forget();
    PyErr_SetRaisedException(exc);
}

#else /* before 3.12: no sys.monitoring */

int
etw_monitoring_start(EtwCEnter enter, EtwCExit exit)
{
    (void)enter;
    (void)exit;
    return 1;
}

void
etw_monitoring_stop(void)
{
}

#endif

/* The floors: a PEP 523 hook that does nothing but call CPython's own
 * evaluator (stack mode's floor), and a C profile hook that does nothing
 * (instrumented mode's floor, as the project brief names it).  Built by the bench
 * scripts. */
#include "../src/etwtrace/_native/include/compat.h"

static EtwEvalFunc previous;

static PyObject *
noop_eval(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    return previous(ts, frame, throwflag);
}

static PyObject *
enable(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyInterpreterState *interp = PyInterpreterState_Get();
    previous = etw_get_eval_func(interp);
    etw_set_eval_func(interp, noop_eval);
    Py_RETURN_NONE;
}

static int
noop_profile(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg)
{
    (void)obj;
    (void)frame;
    (void)what;
    (void)arg;
    return 0;
}

static PyObject *
enable_profile(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyEval_SetProfile(noop_profile, NULL);
    Py_RETURN_NONE;
}

#if PY_VERSION_HEX >= 0x030C0000
/* The sys.monitoring floor (3.12+): C callbacks that do nothing for the
 * events an instrumented tracer would take there (every start, resume,
 * return, yield, unwind and throw of a Python function).  They return
 * None, never DISABLE: every event keeps firing, as it would for a tracer
 * that counts every call. */
static PyObject *
noop_event(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    (void)args;
    (void)nargs;
    Py_RETURN_NONE;
}

static PyMethodDef noop_event_def = {"noop_event", (PyCFunction)(void (*)(void))noop_event,
                                     METH_FASTCALL, NULL};

static PyObject *
enable_monitoring(PyObject *self, PyObject *unused)
{
    (void)unused;
    static const char *const events[] = {"PY_START", "PY_RESUME", "PY_RETURN", "PY_YIELD",
                                         "PY_UNWIND", "PY_THROW"};
    const int tool = 4;     /* a free id (0-5 are for tools; 2 is cProfile's) */
    PyObject *callback = NULL, *mon = NULL, *ev = NULL, *r = NULL;
    long all = 0;
    PyObject *sys = PyImport_ImportModule("sys");
    if (sys == NULL) {
        goto done;
    }
    mon = PyObject_GetAttrString(sys, "monitoring");
    Py_DECREF(sys);
    if (mon == NULL) {
        goto done;
    }
    callback = PyCFunction_New(&noop_event_def, self);
    ev = PyObject_GetAttrString(mon, "events");
    if (callback == NULL || ev == NULL) {
        goto done;
    }
    r = PyObject_CallMethod(mon, "use_tool_id", "is", tool, "noop floor");
    if (r == NULL) {
        goto done;
    }
    for (size_t i = 0; i < sizeof events / sizeof events[0]; i++) {
        PyObject *bit = PyObject_GetAttrString(ev, events[i]);
        if (bit == NULL) {
            goto done;
        }
        long b = PyLong_AsLong(bit);
        Py_XSETREF(r, PyObject_CallMethod(mon, "register_callback", "iOO", tool, bit, callback));
        Py_DECREF(bit);
        if (r == NULL) {
            goto done;
        }
        all |= b;
    }
    Py_XSETREF(r, PyObject_CallMethod(mon, "set_events", "il", tool, all));
done:
    Py_XDECREF(callback);
    Py_XDECREF(ev);
    Py_XDECREF(mon);
    return r;
}
#endif

static PyMethodDef methods[] = {
    {"enable", enable, METH_NOARGS, "Install the no-op PEP 523 hook."},
    {"enable_profile", enable_profile, METH_NOARGS, "Install the no-op C profile hook."},
#if PY_VERSION_HEX >= 0x030C0000
    {"enable_monitoring", enable_monitoring, METH_NOARGS,
     "Install no-op sys.monitoring callbacks for every Python call event."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, .m_name = "noop_hook", .m_size = 0,
                                 .m_methods = methods};

PyMODINIT_FUNC
PyInit_noop_hook(void)
{
    return PyModule_Create(&def);
}

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

static PyMethodDef methods[] = {
    {"enable", enable, METH_NOARGS, "Install the no-op PEP 523 hook."},
    {"enable_profile", enable_profile, METH_NOARGS, "Install the no-op C profile hook."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "noop_hook", NULL, 0, methods};

PyMODINIT_FUNC
PyInit_noop_hook(void)
{
    return PyModule_Create(&def);
}

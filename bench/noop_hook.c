/* The floor of stack mode: a PEP 523 hook that does nothing but call
 * CPython's own evaluator.  Built by bench/stack_overhead.py. */
#include "../src/etwtrace/_native/compat.h"

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

static PyMethodDef methods[] = {
    {"enable", enable, METH_NOARGS, "Install the no-op hook."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "noop_hook", NULL, 0, methods};

PyMODINIT_FUNC
PyInit_noop_hook(void)
{
    return PyModule_Create(&def);
}

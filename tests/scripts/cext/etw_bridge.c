/* A compiled extension frame for the stack-tag tests: bridge_call(f)
 * calls f from C, so a sampled stack reads
 * outer (Python) -> bridge_call (this .so) -> inner (Python). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

__attribute__((noinline)) static PyObject *
bridge_call(PyObject *self, PyObject *callable)
{
    (void)self;
    PyObject *result = PyObject_CallObject(callable, NULL);
    /* Work after the call keeps it from being a tail call, so this
     * frame stays on the stack while `callable` runs. */
    __asm__ volatile("" ::: "memory");
    return result;
}

static PyMethodDef methods[] = {
    {"bridge_call", bridge_call, METH_O, "Call a callable from C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "etw_bridge", NULL, -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit_etw_bridge(void)
{
    return PyModule_Create(&module);
}

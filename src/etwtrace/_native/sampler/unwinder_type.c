/* etwtrace._sampler.Unwinder (unwinder_type.h):
 *
 *   u = Unwinder()
 *   u.add(start, end, bias, path)   a file mapped at [start, end); OSError
 *                                   when it cannot be read as ELF
 *   u.clear()                       forget the files (maps read again)
 *   u.ends()                        {reason: samples} of how unwindings ended
 *   u.unwind(copy)                  the addresses unwound from a struct
 *                                   etw_stack_copy's bytes (for tests)
 */
#include "unwinder_type.h"

#include <stddef.h>
#include <string.h>

#include <linux/types.h>

#include "sampler.h"

static const char *const end_names[] = {
    [ETW_UNWIND_COMPLETE] = "complete",
    [ETW_UNWIND_NO_FILE] = "no_file",
    [ETW_UNWIND_NO_CFI] = "no_cfi",
    [ETW_UNWIND_OUTSIDE_COPY] = "outside_copy",
    [ETW_UNWIND_UNSUPPORTED] = "unsupported",
    [ETW_UNWIND_FULL] = "full",
};
#define N_ENDS (sizeof end_names / sizeof end_names[0])

typedef struct {
    PyObject_HEAD
    etw_unwinder *unwinder;
    unsigned long long ends[N_ENDS];
} Unwinder;

static int
unwinder_init(Unwinder *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":Unwinder", keywords)) {
        return -1;
    }
    etw_unwinder_free(self->unwinder);
    memset(self->ends, 0, sizeof self->ends);
    self->unwinder = etw_unwinder_new();
    if (self->unwinder == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
unwinder_dealloc(Unwinder *self)
{
    etw_unwinder_free(self->unwinder);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
ready(Unwinder *self)
{
    if (self->unwinder == NULL) {
        PyErr_SetString(PyExc_ValueError, "an Unwinder not initialised");
        return 0;
    }
    return 1;
}

static PyObject *
unwinder_add(Unwinder *self, PyObject *args)
{
    unsigned long long start, end, bias;
    PyObject *path;
    if (!PyArg_ParseTuple(args, "KKKO&:add", &start, &end, &bias, PyUnicode_FSConverter,
                          &path)) {
        return NULL;
    }
    if (!ready(self)) {
        Py_DECREF(path);
        return NULL;
    }
    int err = etw_unwinder_add(self->unwinder, start, end, bias, PyBytes_AS_STRING(path));
    if (err != 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        Py_DECREF(path);
        return NULL;
    }
    Py_DECREF(path);
    Py_RETURN_NONE;
}

static PyObject *
unwinder_clear(Unwinder *self, PyObject *Py_UNUSED(ignored))
{
    if (!ready(self)) {
        return NULL;
    }
    etw_unwinder_clear(self->unwinder);
    Py_RETURN_NONE;
}

static PyObject *
unwinder_ends(Unwinder *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    for (size_t i = 0; d != NULL && i < N_ENDS; i++) {
        PyObject *n = PyLong_FromUnsignedLongLong(self->ends[i]);
        if (n == NULL || PyDict_SetItemString(d, end_names[i], n) < 0) {
            Py_XDECREF(n);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(n);
    }
    return d;
}

uint32_t
etw_unwinder_run(PyObject *unwinder, const void *copy_bytes, __u64 *out, uint32_t room)
{
    struct etw_stack_copy copy;
    memcpy(&copy, copy_bytes, offsetof(struct etw_stack_copy, bytes));
    if (unwinder == NULL || !PyObject_TypeCheck(unwinder, &etw_UnwinderType)
        || ((Unwinder *)unwinder)->unwinder == NULL) {
        if (room == 0 || copy.ip == 0) {
            return 0;
        }
        out[0] = copy.ip;       /* no unwinder: the leaf alone */
        return 1;
    }
    Unwinder *self = (Unwinder *)unwinder;
    enum etw_unwind_end end;
    uint64_t frames[ETW_SAMPLER_MAX_NATIVE + 1];
    size_t size = copy.size < ETW_SAMPLER_STACK_BYTES ? copy.size : ETW_SAMPLER_STACK_BYTES;
    uint32_t n = etw_unwind(self->unwinder, copy.ip, copy.sp, copy.bp, copy.lr,
                            (const uint8_t *)copy_bytes + offsetof(struct etw_stack_copy, bytes),
                            size, frames, room < ETW_SAMPLER_MAX_NATIVE + 1 ? room
                                                                            : ETW_SAMPLER_MAX_NATIVE + 1,
                            &end);
    self->ends[end]++;
    for (uint32_t i = 0; i < n; i++) {
        out[i] = frames[i];
    }
    return n;
}

static PyObject *
unwinder_unwind(Unwinder *self, PyObject *args)
{
    Py_buffer copy;
    if (!PyArg_ParseTuple(args, "y*:unwind", &copy)) {
        return NULL;
    }
    size_t head = offsetof(struct etw_stack_copy, bytes);
    if (!ready(self) || (size_t)copy.len < head) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "a stack copy shorter than its %zu-byte header", head);
        }
        PyBuffer_Release(&copy);
        return NULL;
    }
    /* The copy as the ring buffer holds it: whole, its size checked. */
    struct etw_stack_copy *whole = PyMem_Calloc(1, sizeof *whole);
    if (whole == NULL) {
        PyBuffer_Release(&copy);
        return PyErr_NoMemory();
    }
    size_t len = (size_t)copy.len < sizeof *whole ? (size_t)copy.len : sizeof *whole;
    memcpy(whole, copy.buf, len);
    PyBuffer_Release(&copy);
    if (whole->size > len - head) {
        whole->size = (__u32)(len - head);
    }
    __u64 out[ETW_SAMPLER_MAX_NATIVE + 1];
    uint32_t n = etw_unwinder_run((PyObject *)self, whole, out, ETW_SAMPLER_MAX_NATIVE + 1);
    PyMem_Free(whole);
    PyObject *list = PyList_New(n);
    for (uint32_t i = 0; list != NULL && i < n; i++) {
        PyObject *a = PyLong_FromUnsignedLongLong(out[i]);
        if (a == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, a);
    }
    return list;
}

static PyMethodDef unwinder_methods[] = {
    {"add", (PyCFunction)unwinder_add, METH_VARARGS,
     "add(start, end, bias, path): a file mapped at [start, end) with load bias"},
    {"clear", (PyCFunction)unwinder_clear, METH_NOARGS, "forget every file"},
    {"ends", (PyCFunction)unwinder_ends, METH_NOARGS,
     "how the unwindings so far ended: {reason: count}"},
    {"unwind", (PyCFunction)unwinder_unwind, METH_VARARGS,
     "unwind(copy): addresses unwound from a struct etw_stack_copy's bytes"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject etw_UnwinderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "etwtrace._sampler.Unwinder",
    .tp_basicsize = sizeof(Unwinder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)unwinder_init,
    .tp_dealloc = (destructor)unwinder_dealloc,
    .tp_methods = unwinder_methods,
    .tp_doc = "Unwinder(): the native stacks of a process without frame pointers",
};

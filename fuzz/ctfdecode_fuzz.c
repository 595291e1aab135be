/* libFuzzer target for the report's CTF decoder (src/etwtrace/_native/decoder/:
 * cursor.c and fold.c, built with it by fuzz/run): every input must fold
 * into a call tree, end as truncated, or raise ValueError -- never crash,
 * never another error. */
#include "fold.h"

#include <stdio.h>

static PyObject *input_name;
static PyObject *probe_times;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    Py_InitializeEx(0);
    input_name = PyUnicode_FromString("fuzz-input");
    /* Times before, inside and after any stream's clock range. */
    probe_times = Py_BuildValue("(KKKK)", 0ULL, 1ULL << 27, 1ULL << 40, ~0ULL >> 1);
    if (input_name == NULL || probe_times == NULL) {
        abort();
    }
    return 0;
}

static void
expect_value_error(const char *what)
{
    if (!PyErr_ExceptionMatches(PyExc_ValueError)) {
        fprintf(stderr, "%s raised something other than ValueError:\n", what);
        PyErr_Print();
        abort();
    }
    PyErr_Clear();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The input is read as a stream file followed by packets from its ring
     * (the tail), split where the last byte says; both must be handled. */
    size_t split = size > 0 ? (size_t)data[size - 1] * size / 255 : 0;
    const uint8_t *tail = data + split;
    size_t tail_size = size - split;
    for (int timeline = 0; timeline <= 1; timeline++) {
        /* Kept to the damage (the report's way) it never fails. */
        PyObject *kept = fold_data(input_name, data, split, timeline, 0, 2, tail, tail_size, -1,
                                   0, UINT64_MAX, 1);
        if (kept == NULL) {
            abort();
        }
        Py_DECREF(kept);
        PyObject *folded = fold_data(input_name, data, split, timeline, 0, 2, tail, tail_size, -1,
                                      0, UINT64_MAX, 0);
        if (folded == NULL) {
            expect_value_error("fold");
            return 0;   /* corrupt: stacks_at is never asked about it */
        }
        Py_DECREF(folded);
    }
    PyObject *stacks = stacks_data(data, split, probe_times, 0, 2, tail, tail_size);
    if (stacks == NULL) {
        expect_value_error("stacks_at");
        return 0;
    }
    if (PyList_GET_SIZE(stacks) != PyTuple_GET_SIZE(probe_times)) {
        abort();
    }
    Py_DECREF(stacks);
    return 0;
}

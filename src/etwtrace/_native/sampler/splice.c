/* Splices a sample's Python frames into its native stack (splice.h).
 *
 * The Python frames come innermost first, in runs: each run is one
 * evaluator call's frames, ended by that call's entry frame (3.13+), or
 * by its own first frame, marked (3.11).  Each run
 * goes right above its evaluator frame (_PyEval_EvalFrameDefault, or where
 * that has no symbol, a nameless frame of the interpreter called by a
 * named caller) in the native stack.  With fewer evaluator frames than
 * runs, some are missing from the native stack: at its leaf when the
 * stack still reaches a thread's start (a leaf function that had not set
 * up its frame hides its caller), so the outermost runs pair with the
 * outermost evaluator frames and the rest go on top, right under the
 * leaf; else at its root end (a walk cut short), so pairing starts at the
 * leaf and the rest go below the root. */
#include "splice.h"

#include <string.h>

#include "sampler.h"

#define MAX_FRAMES (ETW_SAMPLER_MAX_NATIVE + 1 + ETW_SAMPLER_MAX_PYTHON)

static uint64_t
load_u64(const unsigned char *at)
{
    uint64_t value;
    memcpy(&value, at, sizeof value);
    return value;
}

/* The dict's value for `key` as an unsigned integer: 1 found, 0 missing,
 * -1 with an exception set. */
static int
lookup(PyObject *dict, PyObject *key, unsigned long long *value)
{
    if (key == NULL) {
        return -1;
    }
    PyObject *found = PyDict_GetItemWithError(dict, key);      /* borrowed */
    Py_DECREF(key);
    if (found == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    *value = PyLong_AsUnsignedLongLong(found);
    return *value == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 1;
}

int
etw_splice(const unsigned char *native, uint32_t n_native,
           const unsigned char *python, uint32_t n_python, size_t frame_bytes,
           PyObject *frame_kinds, PyObject *native_kinds, PyObject **payload)
{
    if (n_native > ETW_SAMPLER_MAX_NATIVE + 1 || n_python > ETW_SAMPLER_MAX_PYTHON) {
        PyErr_SetString(PyExc_ValueError, "a sample with more frames than the sampler takes");
        return -1;
    }
    /* The Python frames' addresses, and where each run of them starts. */
    uint64_t frames[ETW_SAMPLER_MAX_PYTHON];
    uint32_t run_start[ETW_SAMPLER_MAX_PYTHON + 2], run_end[ETW_SAMPLER_MAX_PYTHON + 2];
    uint32_t n_frames = 0, n_runs = 0, open_at = 0;
    for (uint32_t i = 0; i <= n_python; i++) {
        unsigned long long kind = ETW_FRAME_ENTRY;      /* the last run ends here */
        if (i < n_python) {
            PyObject *key = PyBytes_FromStringAndSize((const char *)python + i * frame_bytes,
                                                      (Py_ssize_t)frame_bytes);
            int found = lookup(frame_kinds, key, &kind);
            if (found <= 0) {
                return found;
            }
        }
        int ends_run = kind == ETW_FRAME_ENTRY;
        if (kind > ETW_FRAME_NO_FUNCTION) {
            frames[n_frames++] = kind & ~(unsigned long long)ETW_FRAME_ENDS_RUN;
            ends_run = (kind & ETW_FRAME_ENDS_RUN) != 0;
        }
        if (ends_run) {
            if (n_frames > open_at) {
                run_start[n_runs] = open_at;
                run_end[n_runs++] = n_frames;
            }
            open_at = n_frames;
        }
    }
    unsigned char kinds[ETW_SAMPLER_MAX_NATIVE + 1];
    uint32_t evals[ETW_SAMPLER_MAX_NATIVE + 1];
    uint32_t n_evals = 0;
    int reaches_root = 0;
    for (uint32_t i = 0; i < n_native; i++) {
        unsigned long long kind;
        int found = lookup(native_kinds, PyLong_FromUnsignedLongLong(load_u64(native + 8 * i)),
                           &kind);
        if (found <= 0) {
            return found;
        }
        kinds[i] = (unsigned char)kind;
        reaches_root |= (kind & ETW_NATIVE_THREAD_ROOT) != 0;
        if (kind & ETW_NATIVE_EVAL) {
            evals[n_evals++] = i;
        }
    }
    if (n_evals == 0 && n_runs > 0) {
        for (uint32_t i = 0; i + 1 < n_native; i++) {
            if ((kinds[i] & ETW_NATIVE_NAMELESS) && (kinds[i + 1] & ETW_NATIVE_EVAL_CALLER)) {
                evals[n_evals++] = i;
            }
        }
    }
    /* Runs [0, on_top) go under the leaf; runs [on_top, on_top + paired)
     * pair with evals[0, paired); the rest go below the root. */
    uint32_t on_top = 0;
    if (n_evals < n_runs && reaches_root) {
        on_top = n_runs - n_evals;
    }
    uint32_t paired = n_runs - on_top < n_evals ? n_runs - on_top : n_evals;

    uint64_t stack[MAX_FRAMES];
    uint32_t n = 0;
#define PUT_RUNS(first, last)                                           \
    for (uint32_t r = (first); r < (last); r++) {                       \
        for (uint32_t f = run_start[r]; f < run_end[r]; f++) {          \
            stack[n++] = frames[f];                                     \
        }                                                               \
    }
    uint32_t next_eval = 0;
    for (uint32_t i = 0; i < n_native; i++) {
        if (i == 1) {
            PUT_RUNS(0, on_top);
        }
        if (next_eval < paired && evals[next_eval] == i) {
            PUT_RUNS(on_top + next_eval, on_top + next_eval + 1);
            next_eval++;
        }
        stack[n++] = load_u64(native + 8 * i);
    }
    if (n_native <= 1) {
        PUT_RUNS(0, on_top);
    }
    PUT_RUNS(on_top + paired, n_runs);
#undef PUT_RUNS

    if (n == 0) {
        *payload = PyBytes_FromStringAndSize(NULL, 0);
        return *payload == NULL ? -1 : 1;
    }
    *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 + 8 * (size_t)n));
    if (*payload == NULL) {
        return -1;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(*payload);
    for (int b = 0; b < 4; b++) {
        out[b] = (unsigned char)(n >> (8 * b));
    }
    for (uint32_t i = 0; i < n; i++) {
        for (int b = 0; b < 8; b++) {
            out[4 + 8 * i + b] = (unsigned char)(stack[i] >> (8 * b));
        }
    }
    return 1;
}

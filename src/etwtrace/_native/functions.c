/* The function registry.  See functions.h.  Called holding the GIL. */
#include "functions.h"

#include "perf_jit.h"
#include "trampoline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

Py_ssize_t etw_code_extra_index = -1;
static uint32_t last_function_id;

/* The code object's extra slot owns its record. */
static void
free_function(void *p)
{
    EtwFunction *f = p;
    if (f != NULL) {
        free(f->lines);
        free(f);
    }
}

void
etw_function_build_lines(EtwFunction *f, PyCodeObject *co)
{
    /* Keep any exception of the running frame untouched. */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    uint32_t n = 0;
    uint32_t *lines = etw_code_line_table(co, ETW_LINE_TABLE_MAX_UNITS, &n);
    if (lines == NULL) {
        PyErr_Clear();
    }
    free(f->lines);
    f->lines = lines;
    f->n_lines = n;
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

int
etw_functions_init(void)
{
    if (etw_code_extra_index >= 0) {
        return 0;
    }
    /* Records are freed with their code object; trampolines never are, so
     * an address keeps naming one function. */
    etw_code_extra_index = etw_request_code_extra_index(free_function);
    if (etw_code_extra_index < 0) {
        PyErr_SetString(PyExc_RuntimeError, "etwtrace: no code extra slot available");
        return -1;
    }
    return 0;
}

uint32_t
etw_function_next_id(void)
{
    return ++last_function_id;
}

static int
starts_with_any(const char *text, PyObject *prefixes)
{
    if (prefixes == NULL || !PyList_Check(prefixes)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(prefixes); i++) {
        PyObject *item = PyList_GET_ITEM(prefixes, i);
        const char *prefix = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
        if (prefix == NULL) {
            PyErr_Clear();
            continue;
        }
        if (strncmp(text, prefix, strlen(prefix)) == 0) {
            return 1;
        }
    }
    return 0;
}

static int
is_traced(PyCodeObject *co, const char *file, const EtwFilter *filter)
{
    if (filter == NULL) {
        return 1;
    }
    if (starts_with_any(file, filter->include_prefixes)) {
        return 1;
    }
    if (filter->ignored_files != NULL) {
        int found = PySet_Contains(filter->ignored_files, co->co_filename);
        if (found < 0) {
            PyErr_Clear();
            return 1;
        }
        return !found;
    }
    return 1;
}

static const char *
utf8_or(PyObject *text, const char *fallback)
{
    const char *s = (text != NULL && PyUnicode_Check(text)) ? PyUnicode_AsUTF8(text) : NULL;
    if (s == NULL) {
        PyErr_Clear();
        return fallback;
    }
    return s;
}

static PyObject *
code_qualname(PyCodeObject *co)
{
#if PY_VERSION_HEX >= 0x030B0000
    return co->co_qualname;
#else
    return co->co_name;
#endif
}

EtwFunction *
etw_function_for_code(PyCodeObject *co, EtwFunction *known, EtwThread *t,
                      const EtwFilter *filter, int want_trampoline)
{
    /* Keep any exception of the running frame untouched. */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);

    EtwFunction *f = known;
    if (f == NULL) {
        f = calloc(1, sizeof(EtwFunction));
        if (f == NULL) {
            PyErr_Restore(exc_type, exc_value, exc_tb);
            return NULL;
        }
        f->id = etw_function_next_id();
        f->line_offset[0] = f->line_offset[1] = -1;
        if (etw_code_set_extra((PyObject *)co, etw_code_extra_index, f) < 0) {
            PyErr_Clear();
            free(f);
            PyErr_Restore(exc_type, exc_value, exc_tb);
            return NULL;
        }
    }

    const char *file = utf8_or(co->co_filename, "");
    const char *name = utf8_or(code_qualname(co), "?");
    f->traced = is_traced(co, file, filter);
    f->epoch = etw_epoch;

    if (f->traced) {
        if (want_trampoline && f->trampoline == NULL) {
            f->trampoline = etw_trampoline_new();
        }
        pid_t pid = getpid();
        if (f->trampoline != NULL && f->described_pid != pid) {
            char label[1024];
            snprintf(label, sizeof(label), "py::%s:%s", name, file);
            etw_perf_jit_describe(f->trampoline, ETW_TRAMPOLINE_SIZE, label);
            f->described_pid = pid;
        }
        uintptr_t begin = (uintptr_t)f->trampoline;
        uintptr_t end = begin ? begin + ETW_TRAMPOLINE_SIZE : 0;
        etw_emit_function(t, f->id, begin, end, (uint32_t)co->co_firstlineno, 1, file, name);
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return f;
}

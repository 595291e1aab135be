/* The function registry.  See functions.h.
 *
 * Registration runs holding `registry_lock` (free-threaded builds; the GIL
 * elsewhere), so two threads that meet a function for the first time at
 * once give it one FunctionID and one PythonFunction event. */
#include "functions.h"

#include "code_index.h"
#include "perf_jit.h"
#include "trampoline.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint32_t last_function_id;   /* atomic */
static EtwLock registry_lock = ETW_LOCK_INIT;
/* Guards `functions`, the list of every record.  A plain mutex, taken
 * without calling into Python: records are freed from code objects'
 * deallocation, on any thread. */
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static EtwFunction *functions;

/* A record goes with its code object (code_index.h). */
static void
free_function(void *p)
{
    EtwFunction *f = p;
    if (f == NULL) {
        return;
    }
    pthread_mutex_lock(&list_lock);
    if (f->prev != NULL) {
        f->prev->next = f->next;
    }
    else if (functions == f) {
        functions = f->next;
    }
    if (f->next != NULL) {
        f->next->prev = f->prev;
    }
    pthread_mutex_unlock(&list_lock);
    free(f->lines);
    free(f);
}

void
etw_function_build_lines(EtwFunction *f, PyCodeObject *co)
{
    etw_lock(&registry_lock);
    if (f->lines == NULL) {
        /* Keep any exception of the running frame untouched. */
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        uint32_t n = 0;
        uint32_t *lines = etw_code_line_table(co, ETW_LINE_TABLE_MAX_UNITS, &n);
        if (lines == NULL) {
            PyErr_Clear();
            f->line_misses = UINT32_MAX;   /* too large: do not try again */
        }
        f->n_lines = n;
        __atomic_store_n(&f->lines, lines, __ATOMIC_RELEASE);
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    etw_unlock(&registry_lock);
}

int
etw_functions_init(void)
{
    /* Records are freed with their code object; trampolines never are, so
     * an address keeps naming one function. */
    return etw_code_index_init(free_function);
}

uint32_t
etw_function_next_id(void)
{
    return __atomic_add_fetch(&last_function_id, 1, __ATOMIC_RELAXED);
}

/* UTF-8 bytes of `text`; names that are not valid Unicode (a file name's
 * undecodable bytes come back as surrogates) keep those bytes
 * (surrogateescape), so nothing is lost.  *holder owns the bytes when they
 * had to be encoded. */
static const char *
utf8_of(PyObject *text, Py_ssize_t *len, PyObject **holder, const char *fallback)
{
    *holder = NULL;
    if (text != NULL && PyUnicode_Check(text)) {
        const char *s = PyUnicode_AsUTF8AndSize(text, len);
        if (s != NULL) {
            return s;
        }
        PyErr_Clear();
        *holder = PyUnicode_AsEncodedString(text, "utf-8", "surrogateescape");
        if (*holder != NULL) {
            *len = PyBytes_GET_SIZE(*holder);
            return PyBytes_AS_STRING(*holder);
        }
        PyErr_Clear();
    }
    *len = (Py_ssize_t)strlen(fallback);
    return fallback;
}

static int
starts_with_any(PyObject *file, PyObject *prefixes)
{
    if (prefixes == NULL || !PyList_Check(prefixes) || !PyUnicode_Check(file)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(prefixes); i++) {
        PyObject *prefix = PyList_GET_ITEM(prefixes, i);
        if (!PyUnicode_Check(prefix)) {
            continue;
        }
        int match = PyUnicode_Tailmatch(file, prefix, 0, PY_SSIZE_T_MAX, -1);
        if (match < 0) {
            PyErr_Clear();
        }
        else if (match) {
            return 1;
        }
    }
    return 0;
}

static int
is_traced(PyCodeObject *co, const EtwFilter *filter)
{
    if (filter == NULL) {
        return 1;
    }
    if (starts_with_any(co->co_filename, filter->include_prefixes)) {
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

/* Describes traced function `f` of `co`: its trampoline to perf (once per
 * process) and its PythonFunction event on `t`. */
static void
describe(EtwFunction *f, PyCodeObject *co, EtwThread *t)
{
    PyObject *file_holder, *name_holder;
    Py_ssize_t file_len, name_len;
    const char *file = utf8_of(co->co_filename, &file_len, &file_holder, "");
    const char *name = utf8_of(etw_code_qualname(co), &name_len, &name_holder, "?");
    pid_t pid = getpid();
    if (f->trampoline != NULL && f->described_pid != pid) {
        /* perf's name for the trampoline: CPython's own form
         * (py::qualname:file) plus the first line. */
        char label[1024];
        snprintf(label, sizeof(label), "py::%.*s:%.*s:%d", (int)name_len, name,
                 (int)file_len, file, co->co_firstlineno);
        etw_perf_jit_describe(f->trampoline, ETW_TRAMPOLINE_SIZE, label);
        f->described_pid = pid;
    }
    uintptr_t begin = (uintptr_t)f->trampoline;
    uintptr_t end = begin ? begin + ETW_TRAMPOLINE_SIZE : 0;
    etw_emit_function(t, f->id, begin, end, (uint32_t)co->co_firstlineno, 1, file,
                      (size_t)file_len, name, (size_t)name_len);
    Py_XDECREF(file_holder);
    Py_XDECREF(name_holder);
}

void
etw_functions_rundown(EtwThread *t)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    etw_lock(&registry_lock);
    pthread_mutex_lock(&list_lock);
    uint32_t epoch = etw_current_epoch();
    for (EtwFunction *f = functions; f != NULL; f = f->next) {
        if (f->traced) {
            describe(f, f->code, t);
        }
        __atomic_store_n(&f->epoch, epoch, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&list_lock);
    etw_unlock(&registry_lock);
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

EtwFunction *
etw_function_for_code(PyCodeObject *co, EtwFunction *known, EtwThread *t,
                      const EtwFilter *filter, int want_trampoline)
{
    /* Keep any exception of the running frame untouched. */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    etw_lock(&registry_lock);

    uint32_t epoch = etw_current_epoch();
    EtwFunction *f = etw_code_index_get(co);
    (void)known;   /* re-read under the lock: another thread may have won */
    if (f != NULL && __atomic_load_n(&f->epoch, __ATOMIC_ACQUIRE) == epoch &&
        (f->trampoline != NULL || !want_trampoline || !f->traced)) {
        goto done;
    }
    if (f == NULL) {
        f = calloc(1, sizeof(EtwFunction));
        if (f == NULL) {
            goto done;
        }
        f->id = etw_function_next_id();
        f->code = co;
        f->line_offset[0] = f->line_offset[1] = -1;
        if (etw_code_index_set(co, f) < 0) {
            PyErr_Clear();
            free(f);
            f = NULL;
            goto done;
        }
        pthread_mutex_lock(&list_lock);
        f->next = functions;
        if (functions != NULL) {
            functions->prev = f;
        }
        functions = f;
        pthread_mutex_unlock(&list_lock);
    }

    f->traced = is_traced(co, filter);
    if (f->traced) {
        if (want_trampoline && f->trampoline == NULL) {
            f->trampoline = etw_trampoline_new();
        }
        describe(f, co, t);
    }
    __atomic_store_n(&f->epoch, epoch, __ATOMIC_RELEASE);
done:
    etw_unlock(&registry_lock);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return f;
}

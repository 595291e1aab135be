/* The function registry: what the tracer knows about each Python code
 * object (found through code_index.h). */
#ifndef ETWTRACE_FUNCTIONS_H
#define ETWTRACE_FUNCTIONS_H

#include "code_index.h"
#include "compat.h"
#include "events.h"

#include <sys/types.h>

/* Fields are written holding the registry lock (etw_function_for_code);
 * `epoch` last, with release order, so a thread that reads the current
 * epoch (acquire) reads the rest as written. */
typedef struct EtwFunction {
    /* Every record, for rundowns (`list_lock` in functions.c); `code` is
     * borrowed: the record goes with its code object. */
    struct EtwFunction *prev, *next;
    PyCodeObject *code;
    uint32_t id;           /* FunctionID, unique for the life of the process */
    uint32_t epoch;        /* session its PythonFunction event was emitted in */
    pid_t described_pid;   /* process whose perf map/jitdump name it */
    int traced;            /* 0: an ignored file, runs without a trampoline */
    void *trampoline;      /* NULL when not traced or out of memory */
    /* Instrumented mode: the last two call sites' lines (CallerLine), keyed
     * by instruction offset; a loop calling from one or two places hits.
     * A function that keeps missing them (calls from many places, as
     * richards' methods do) gets a line per code unit instead (see
     * docs/BENCHMARKS.md: asking CPython each time was a third of
     * richards' run).  Free-threaded builds use only the table, built
     * once under the registry lock and never changed. */
    int line_offset[2];
    uint32_t line_value[2];
    uint32_t line_misses;
    uint32_t n_lines;      /* entries of lines[] */
    uint32_t *lines;       /* line of each code unit, or NULL */
} EtwFunction;

/* Misses of the two-entry cache after which a function gets its table, and
 * the largest code (in units) that gets one. */
#define ETW_LINE_TABLE_AFTER_MISSES 8
#define ETW_LINE_TABLE_MAX_UNITS (1u << 16)

/* Rules deciding which files are traced, owned by the module state. */
typedef struct EtwFilter {
    PyObject *ignored_files;     /* set of str */
    PyObject *include_prefixes;  /* list of str; a match overrides ignore */
} EtwFilter;

/* Sets up the registry (once per process).  Returns 0 or -1 with an
 * exception set. */
int etw_functions_init(void);

/* Looks up or registers `co` for this session: decides whether it is traced,
 * gives it an id and trampoline, describes the trampoline to perf and emits
 * its PythonFunction event.  `known` is the current extra value (may be
 * NULL).  Returns NULL only when memory is exhausted. */
EtwFunction *etw_function_for_code(PyCodeObject *co, EtwFunction *known, EtwThread *t,
                                   const EtwFilter *filter, int want_trampoline);

/* Gives `f` its per-unit line table (see EtwFunction); leaves it without
 * one when the code is too large or memory is short (free-threaded builds
 * then mark line_misses so it is not tried again). */
void etw_function_build_lines(EtwFunction *f, PyCodeObject *co);

/* The line of instruction `offset` (bytes) in `co`, which `f` describes. */
static inline uint32_t
etw_function_line_at(EtwFunction *f, PyCodeObject *co, int offset)
{
    unsigned unit = (unsigned)offset / sizeof(_Py_CODEUNIT);
    uint32_t *lines = __atomic_load_n(&f->lines, __ATOMIC_ACQUIRE);
    if (lines != NULL && unit < f->n_lines) {
        return lines[unit];
    }
#ifdef ETW_FREE_THREADED
    if (lines == NULL && f->line_misses == 0) {
        etw_function_build_lines(f, co);
        lines = __atomic_load_n(&f->lines, __ATOMIC_ACQUIRE);
        if (lines != NULL && unit < f->n_lines) {
            return lines[unit];
        }
    }
    int line = PyCode_Addr2Line(co, offset);
    return line > 0 ? (uint32_t)line : 0;
#else
    unsigned slot = ((unsigned)offset >> 1) & 1;
    if (f->line_offset[slot] == offset) {
        return f->line_value[slot];
    }
    if (++f->line_misses == ETW_LINE_TABLE_AFTER_MISSES) {
        etw_function_build_lines(f, co);
        if (f->lines != NULL && unit < f->n_lines) {
            return f->lines[unit];
        }
    }
    int line = PyCode_Addr2Line(co, offset);
    f->line_offset[slot] = offset;
    f->line_value[slot] = line > 0 ? (uint32_t)line : 0;
    return f->line_value[slot];
#endif
}

/* The next FunctionID (shared with C callables in instrumented mode). */
uint32_t etw_function_next_id(void);

/* Writes on `t` the PythonFunction event of every traced function
 * registered so far, as registered, and counts them as described in the
 * current epoch (etw_events_restart's rundown). */
void etw_functions_rundown(EtwThread *t);

#endif

/* Every CPython-version difference the native core depends on lives here.
 *
 * The rest of the core speaks only in the names defined below; no other
 * file tests PY_VERSION_HEX or Py_GIL_DISABLED.
 *   EtwFrame                     the frame type passed to a PEP 523 hook
 *   EtwEvalFunc                  the PEP 523 hook signature
 *   etw_frame_code(frame)        the code object a frame executes (borrowed)
 *   etw_thread_caller_frame(ts)  the frame that calls the one being entered
 *   etw_frame_lasti(frame)       its instruction offset, for CallerLine
 *   etw_get_eval_func / etw_set_eval_func
 *   etw_request_code_extra_index / etw_code_get_extra / etw_code_set_extra
 *   etw_default_eval             CPython's own frame evaluator
 *   etw_code_qualname(co)        a code object's qualified name (borrowed)
 *   etw_clear_profile_all_threads, etw_profile_func_in_use
 *   ETW_HAVE_SYS_MONITORING      3.12+: C calls can be seen through sys.monitoring
 *   ETW_FREE_THREADED            a build without the GIL (3.13t+)
 *   EtwLock, etw_lock, etw_unlock  a lock for state the GIL guards elsewhere
 *   ETW_MOD_GIL_SLOT             the module slot declaring it needs no GIL
 *   etw_eval_units_refund / etw_eval_units_charge
 *                                the C-recursion units a hooked call gives back
 *   etw_eval_recursion_error     a frame ending in CPython's own RecursionError
 *   EtwStackLimits, etw_stack_limits_switch / _restore
 *                                CPython's C-stack bounds (3.14+), moved to
 *                                another stack while the hooks run there
 *   ETW_CPYTHON_STACK_RESERVE    the end of a stack CPython 3.14+ keeps
 *   ETW_HAVE_TASKS               3.11+: asyncio task steps can be told apart
 *   etw_frame_coroutine(frame)   the coroutine (or generator) owning a frame
 *   etw_coroutine_suspended(gen) whether it yielded (rather than finished)
 *   etw_weakref_get(ref, &obj)   a weak reference's object, as a new reference
 */
#ifndef ETWTRACE_COMPAT_H
#define ETWTRACE_COMPAT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX < 0x03090000 || PY_VERSION_HEX >= 0x03100000
#  error "etwtrace supports CPython 3.9 to 3.15"
#endif

#if PY_VERSION_HEX >= 0x030B0000
/* 3.11+: the hook receives a _PyInterpreterFrame, whose layout is only in
 * the internal headers. */
#  ifndef Py_BUILD_CORE
#    define Py_BUILD_CORE 1
#    define ETWTRACE_DEFINED_BUILD_CORE
#  endif
#  include "internal/pycore_frame.h"
#  include "internal/pycore_code.h"
#  if PY_VERSION_HEX >= 0x030E0000
/* 3.14 moved the frame's layout and its inline helpers here. */
#    include "internal/pycore_interpframe.h"
#    include "internal/pycore_genobject.h"
/* The thread state's C-stack bounds, and the margin they keep. */
#    include "internal/pycore_tstate.h"
#    include "internal/pycore_pythonrun.h"
#  endif
#  ifdef ETWTRACE_DEFINED_BUILD_CORE
#    undef Py_BUILD_CORE
#    undef ETWTRACE_DEFINED_BUILD_CORE
#  endif
typedef struct _PyInterpreterFrame EtwFrame;
#else
/* 3.9 and 3.10: the hook receives a PyFrameObject. */
#  include <frameobject.h>
typedef PyFrameObject EtwFrame;
#endif

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}
#endif

typedef PyObject *(*EtwEvalFunc)(PyThreadState *, EtwFrame *, int);

static inline PyCodeObject *
etw_frame_code(EtwFrame *frame)
{
#if PY_VERSION_HEX >= 0x030D0000
    return _PyFrame_GetCode(frame);
#else
    return frame->f_code;
#endif
}

/* The thread's innermost complete Python frame: inside a PEP 523 hook,
 * before the default evaluator links the new frame in, that is its caller.
 * NULL when there is none. */
static inline EtwFrame *
etw_thread_caller_frame(PyThreadState *ts)
{
#if PY_VERSION_HEX >= 0x030D0000
    EtwFrame *f = ts->current_frame;
#elif PY_VERSION_HEX >= 0x030B0000
    EtwFrame *f = ts->cframe->current_frame;
#else
    return ts->frame;
#endif
#if PY_VERSION_HEX >= 0x030B0000
    while (f != NULL && _PyFrame_IsIncomplete(f)) {
        f = f->previous;
    }
    return f;
#endif
}

/* Byte offset of the instruction a frame is executing (for line lookup with
 * PyCode_Addr2Line). */
static inline int
etw_frame_lasti(EtwFrame *frame)
{
#if PY_VERSION_HEX >= 0x030B0000
    return _PyInterpreterFrame_LASTI(frame) * (int)sizeof(_Py_CODEUNIT);
#elif PY_VERSION_HEX >= 0x030A0000
    return frame->f_lasti * (int)sizeof(_Py_CODEUNIT);
#else
    return frame->f_lasti;
#endif
}

static inline EtwEvalFunc
etw_get_eval_func(PyInterpreterState *interp)
{
    return (EtwEvalFunc)_PyInterpreterState_GetEvalFrameFunc(interp);
}

static inline void
etw_set_eval_func(PyInterpreterState *interp, EtwEvalFunc func)
{
    _PyInterpreterState_SetEvalFrameFunc(interp, (_PyFrameEvalFunction)func);
}

static inline PyObject *
etw_default_eval(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    return _PyEval_EvalFrameDefault(ts, frame, throwflag);
}

#if PY_VERSION_HEX >= 0x030C0000
/* Exported by every 3.12+ build, declared only in the internal
 * pycore_ceval.h. */
PyAPI_FUNC(int) _PyEval_SetProfile(PyThreadState *tstate, Py_tracefunc func, PyObject *arg);
#endif

/* ---- recursion: CPython's counts and its C-stack bounds ----
 *
 * Untraced, 3.11+ evaluates a Python function called from Python inside
 * its caller's evaluator call; through a PEP 523 hook each such call is a
 * call of the evaluator of its own, on the C stack (cstack.h guards that
 * stack).  What CPython counts per evaluator call differs:
 *   3.9, 3.10  recursion_depth per frame, traced or not: nothing to do.
 *   3.11       recursion_remaining per frame, traced or not: nothing to do.
 *   3.12, 3.13 also c_recursion_remaining, PY_EVAL_C_STACK_UNITS (2, in
 *              their ceval.c) per evaluator call: 1500 and 10000 units
 *              ended a traced recursion at depth 750 and 5000 that runs
 *              untraced.  The hooks give those units back around the
 *              evaluator.
 *   3.14+      the stack pointer against the thread state's bounds, which
 *              the hooks move to the stack they run on. */
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000
#  define ETW_EVAL_C_UNITS 2
static inline void
etw_eval_units_refund(PyThreadState *ts)
{
    ts->c_recursion_remaining += ETW_EVAL_C_UNITS;
}

static inline void
etw_eval_units_charge(PyThreadState *ts)
{
    ts->c_recursion_remaining -= ETW_EVAL_C_UNITS;
}
#else
static inline void etw_eval_units_refund(PyThreadState *ts) { (void)ts; }
static inline void etw_eval_units_charge(PyThreadState *ts) { (void)ts; }
#endif

/* Evaluates `frame` to a RecursionError (returns NULL with it set), as
 * CPython's own check at the entry of its evaluator ends a frame: on
 * 3.11+ by making that very check fail (the evaluator then unwinds and
 * frees the frame as it does for its own RecursionError); on 3.9 and 3.10,
 * where the frame is its caller's to free, by raising it here. */
static inline PyObject *
etw_eval_recursion_error(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
#if PY_VERSION_HEX >= 0x030E0000
    /* Bounds that put the evaluator's stack pointer just below the soft
     * limit (a RecursionError) and above the hard one (not a fatal
     * error). */
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)ts;
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    uintptr_t soft = impl->c_stack_soft_limit, hard = impl->c_stack_hard_limit;
    impl->c_stack_soft_limit = here;
    impl->c_stack_hard_limit = here - 2 * _PyOS_STACK_MARGIN_BYTES;
    PyObject *result = etw_default_eval(ts, frame, throwflag);
    impl->c_stack_soft_limit = soft;
    impl->c_stack_hard_limit = hard;
    return result;
#elif PY_VERSION_HEX >= 0x030C0000
    int saved = ts->c_recursion_remaining;
    ts->c_recursion_remaining = 0;
    PyObject *result = etw_default_eval(ts, frame, throwflag);
    ts->c_recursion_remaining = saved;
    return result;
#elif PY_VERSION_HEX >= 0x030B0000
    int saved = ts->recursion_remaining;
    ts->recursion_remaining = 0;
    PyObject *result = etw_default_eval(ts, frame, throwflag);
    ts->recursion_remaining = saved;
    return result;
#else
    (void)ts;
    (void)frame;
    (void)throwflag;
    PyErr_SetString(PyExc_RecursionError, "maximum recursion depth exceeded");
    return NULL;
#endif
}

/* Bytes at the low end of a stack in which CPython 3.14+ raises
 * RecursionError by itself (below its soft limit); 0 before 3.14. */
#if PY_VERSION_HEX >= 0x030E0000
#  define ETW_CPYTHON_STACK_RESERVE (2 * _PyOS_STACK_MARGIN_BYTES)
#else
#  define ETW_CPYTHON_STACK_RESERVE 0
#endif

/* CPython's bounds of the stack a thread runs on (3.14+; nothing before). */
typedef struct {
    uintptr_t top, soft, hard;
} EtwStackLimits;

/* Tells CPython that the thread now runs on [base, top), keeping in
 * `saved` what it had (restored by etw_stack_limits_restore). */
static inline void
etw_stack_limits_switch(PyThreadState *ts, uintptr_t base, uintptr_t top, EtwStackLimits *saved)
{
#if PY_VERSION_HEX >= 0x030E0000
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)ts;
    *saved = (EtwStackLimits){impl->c_stack_top, impl->c_stack_soft_limit,
                              impl->c_stack_hard_limit};
    /* As CPython sets them for a thread's stack (tstate_set_stack). */
    impl->c_stack_top = top;
    impl->c_stack_hard_limit = base + _PyOS_STACK_MARGIN_BYTES;
    impl->c_stack_soft_limit = base + 2 * _PyOS_STACK_MARGIN_BYTES;
#else
    (void)ts;
    (void)base;
    (void)top;
    *saved = (EtwStackLimits){0, 0, 0};
#endif
}

static inline void
etw_stack_limits_restore(PyThreadState *ts, const EtwStackLimits *saved)
{
#if PY_VERSION_HEX >= 0x030E0000
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)ts;
    impl->c_stack_top = saved->top;
    impl->c_stack_soft_limit = saved->soft;
    impl->c_stack_hard_limit = saved->hard;
#else
    (void)ts;
    (void)saved;
#endif
}

/* Removes profile function `func` from every thread of `interp` that has it;
 * other tools keep theirs (PyEval_SetProfileAllThreads(NULL) would clear
 * every one).  Holding the GIL. */
static inline void
etw_clear_profile_all_threads(PyInterpreterState *interp, Py_tracefunc func)
{
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL;
         ts = PyThreadState_Next(ts)) {
        if (ts->c_profilefunc == func) {
            _PyEval_SetProfile(ts, NULL, NULL);
        }
    }
}

#if PY_VERSION_HEX >= 0x030C0000
#  define etw_request_code_extra_index PyUnstable_Eval_RequestCodeExtraIndex
#  define etw_code_set_extra PyUnstable_Code_SetExtra
#else
#  define etw_request_code_extra_index _PyEval_RequestCodeExtraIndex
#  define etw_code_set_extra _PyCode_SetExtra
#endif

/* Reading a code object's extra slot is on the hot path of every call, so
 * read the slot directly where the layout is known rather than through the
 * exported (argument-checking) function. */
#if PY_VERSION_HEX >= 0x030B0000
/* Mirrors CPython's private _PyCodeObjectExtra (Objects/codeobject.c in 3.11,
 * pycore_code.h later), unchanged from 3.6 to 3.14. */
typedef struct {
    Py_ssize_t ce_size;
    void *ce_extras[1];
} EtwCodeExtra;
#endif

static inline void *
etw_code_get_extra(PyCodeObject *co, Py_ssize_t index)
{
#if PY_VERSION_HEX >= 0x030B0000
    EtwCodeExtra *extra = (EtwCodeExtra *)co->co_extra;
    if (extra == NULL || index >= extra->ce_size) {
        return NULL;
    }
    return extra->ce_extras[index];
#else
    void *result = NULL;
    if (_PyCode_GetExtra((PyObject *)co, index, &result) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return result;
#endif
}

static inline PyObject *
etw_code_qualname(PyCodeObject *co)
{
#if PY_VERSION_HEX >= 0x030B0000
    return co->co_qualname;
#else
    return co->co_name;
#endif
}

/* Whether thread state `ts` has a profile function other than `ours` (an
 * active cProfile, say), which C-call tracing must not replace. */
static inline int
etw_profile_func_in_use(PyThreadState *ts, Py_tracefunc ours)
{
    return ts->c_profilefunc != NULL && ts->c_profilefunc != ours;
}

#if PY_VERSION_HEX >= 0x030C0000
#  define ETW_HAVE_SYS_MONITORING 1
#endif

/* Free-threaded builds: state that the GIL would guard takes a lock, and
 * the module says it runs without the GIL. */
#ifdef Py_GIL_DISABLED
#  define ETW_FREE_THREADED 1
typedef PyMutex EtwLock;
#  define ETW_LOCK_INIT {0}
static inline void etw_lock(EtwLock *lock) { PyMutex_Lock(lock); }
static inline void etw_unlock(EtwLock *lock) { PyMutex_Unlock(lock); }
#  define ETW_MOD_GIL_SLOT {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#else
typedef int EtwLock;
#  define ETW_LOCK_INIT 0
static inline void etw_lock(EtwLock *lock) { (void)lock; }
static inline void etw_unlock(EtwLock *lock) { (void)lock; }
#  define ETW_MOD_GIL_SLOT
#endif

/* asyncio task steps (tracer/tasks.c): a task runs its coroutine one step
 * at a time, each step a call of the evaluator on the coroutine's own
 * frame.  From 3.11 the hook is given that frame, which the coroutine
 * object owns, and after the step the coroutine's state says whether it
 * yielded.  3.9 and 3.10 hand the hook a frame object: not followed. */
#if PY_VERSION_HEX >= 0x030B0000
#  define ETW_HAVE_TASKS 1

static inline int
etw_code_is_coroutine(PyCodeObject *co)
{
    return (co->co_flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE)) != 0;
}

/* Frames of coroutines, generators and async generators: what a suspended
 * task's chain of awaits is made of. */
static inline int
etw_code_is_resumable(PyCodeObject *co)
{
    return (co->co_flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_GENERATOR |
                            CO_ASYNC_GENERATOR)) != 0;
}

static inline PyObject *
etw_frame_coroutine(EtwFrame *frame)
{
    if (frame->owner != FRAME_OWNED_BY_GENERATOR) {
        return NULL;
    }
#  if PY_VERSION_HEX >= 0x030E0000
    return (PyObject *)_PyGen_GetGeneratorFromFrame(frame);
#  else
    return (PyObject *)_PyFrame_GetGenerator(frame);
#  endif
}

/* Right after the evaluator returned from a step of `gen`: whether the
 * step ended in a yield or await (the coroutine waits), not in a return
 * or an exception.  CPython marks a finished frame only after the
 * evaluator returns, so here a suspended state can only come from a
 * yield. */
static inline int
etw_coroutine_suspended(PyObject *gen)
{
    int state = ((PyGenObject *)gen)->gi_frame_state;
#  ifdef FRAME_STATE_SUSPENDED
    return FRAME_STATE_SUSPENDED(state);
#  else
    return state == FRAME_SUSPENDED;
#  endif
}

/* 1 with *obj a new reference, 0 if the object is gone, -1 on error. */
static inline int
etw_weakref_get(PyObject *ref, PyObject **obj)
{
#  if PY_VERSION_HEX >= 0x030D0000
    return PyWeakref_GetRef(ref, obj);
#  else
    PyObject *o = PyWeakref_GetObject(ref);
    if (o == NULL) {
        *obj = NULL;
        return -1;
    }
    *obj = o == Py_None ? NULL : Py_NewRef(o);
    return *obj != NULL;
#  endif
}
#endif

/* Sub-interpreters: the tracer is process-wide state, and the decoder has
 * static types, so only the main interpreter imports them. */
#if PY_VERSION_HEX >= 0x030C0000
#  define ETW_MOD_INTERPRETERS_NOT_SUPPORTED_SLOT \
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#else
#  define ETW_MOD_INTERPRETERS_NOT_SUPPORTED_SLOT
#endif

/* The line of every code unit of `co` (0 where none), in a new array of
 * *n_units entries the caller frees.  NULL with *n_units 0 when the code
 * has more than `max_units` units; NULL with an exception on failure.
 * 3.10+ walks co_lines() once; 3.9 has no co_lines, so it asks
 * PyCode_Addr2Line per unit (fine under the cap). */
static inline uint32_t *
etw_code_line_table(PyCodeObject *co, uint32_t max_units, uint32_t *n_units)
{
    *n_units = 0;
#if PY_VERSION_HEX >= 0x030A0000
    PyObject *ranges = PyObject_CallMethod((PyObject *)co, "co_lines", NULL);
    PyObject *list = ranges != NULL ? PySequence_List(ranges) : NULL;
    Py_XDECREF(ranges);
    if (list == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(list);
    long end = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        long e = PyLong_AsLong(PyTuple_GET_ITEM(PyList_GET_ITEM(list, i), 1));
        end = e > end ? e : end;
    }
    uint32_t n = (uint32_t)(end / (long)sizeof(_Py_CODEUNIT));
    uint32_t *lines = NULL;
    if (!PyErr_Occurred() && n > 0 && n <= max_units && (lines = calloc(n, sizeof(uint32_t))) != NULL) {
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *range = PyList_GET_ITEM(list, i);
            long start = PyLong_AsLong(PyTuple_GET_ITEM(range, 0)) / (long)sizeof(_Py_CODEUNIT);
            long stop = PyLong_AsLong(PyTuple_GET_ITEM(range, 1)) / (long)sizeof(_Py_CODEUNIT);
            PyObject *line = PyTuple_GET_ITEM(range, 2);
            long value = line == Py_None ? 0 : PyLong_AsLong(line);
            for (long u = start < 0 ? 0 : start; u < stop && u < (long)n; u++) {
                lines[u] = value > 0 ? (uint32_t)value : 0;
            }
        }
        *n_units = n;
    }
    Py_DECREF(list);
    if (PyErr_Occurred()) {
        free(lines);
        return NULL;
    }
    return lines;
#else
    uint32_t n = (uint32_t)(PyBytes_GET_SIZE(co->co_code) / (Py_ssize_t)sizeof(_Py_CODEUNIT));
    uint32_t *lines = n > 0 && n <= max_units ? calloc(n, sizeof(uint32_t)) : NULL;
    if (lines == NULL) {
        return NULL;
    }
    for (uint32_t u = 0; u < n; u++) {
        int line = PyCode_Addr2Line(co, (int)(u * sizeof(_Py_CODEUNIT)));
        lines[u] = line > 0 ? (uint32_t)line : 0;
    }
    *n_units = n;
    return lines;
#endif
}

#endif /* ETWTRACE_COMPAT_H */

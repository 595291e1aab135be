/* The hooks' C stack.
 *
 * Untraced, CPython 3.11+ evaluates a Python function called from Python
 * inside its caller's evaluator call, so a deep Python recursion costs no C
 * stack (3.9 and 3.10 cost a little).  Through a PEP 523 hook every Python
 * call is a C call of the hook and the evaluator, about half a KiB: a
 * recursion CPython allows (19,000 deep under sys.setrecursionlimit(20000))
 * would overflow the main thread's 8 MiB stack.
 *
 * So each hook compares the stack pointer with a per-thread floor.  Below
 * it, the hook goes on evaluating on a larger stack of the thread's own
 * (mapped at the first need, its pages committed as they are touched, kept
 * until the thread ends, as a thread's own stack keeps its pages); CPython
 * 3.14+ is told of that stack's bounds while it runs there.  Where that
 * stack too is used up, the frame raises RecursionError as CPython's own
 * check does.  Each stack keeps room below its floor for what a frame does
 * besides calling Python (C code that recurses, signal handlers). */
#ifndef ETWTRACE_CSTACK_H
#define ETWTRACE_CSTACK_H

#include "compat.h"

#include <stdint.h>

/* The calling thread's floor: UINTPTR_MAX until its stack is known, 0 on a
 * stack it does not know (nothing is checked there). */
extern __thread uintptr_t etw_cstack_floor __attribute__((tls_model("initial-exec")));

/* Whether the caller must evaluate through etw_cstack_eval: its stack is
 * near its end, or not known yet.  Inlined into the hooks. */
static inline __attribute__((always_inline)) int
etw_cstack_low(void)
{
    return (uintptr_t)__builtin_frame_address(0) < etw_cstack_floor;
}

/* Evaluates `frame` with `body` (a hook without its etw_cstack_low check)
 * where there is room: on this stack when it has some, else on the
 * thread's larger stack; or raises RecursionError where there is none. */
PyObject *etw_cstack_eval(PyThreadState *ts, EtwFrame *frame, int throwflag, EtwEvalFunc body);

/* Whether the calling thread runs on its larger stack now (for tests). */
int etw_cstack_on_larger(void);

#endif

/* asyncio tasks: which task each step of a coroutine runs for.
 *
 * An asyncio task runs its coroutine one step at a time; each step is one
 * evaluation of the coroutine's frame, entered from the event loop, not
 * from another coroutine.  The tracer asks here, at the first coroutine
 * frame a thread enters outside any step, whether it begins a task's step,
 * and if so puts the task's frames (`task:NAME`, the tasks awaiting it
 * above) around the step: in stack mode as trampolines, real native frames
 * every sampler sees; in instrumented mode as pushes and pops.  Each step
 * also writes PythonTask resume and, when the task waits, suspend with the
 * chain of awaits it waits at (report --async --off-cpu), or with no chain
 * when it waits where it waited last in this session.
 *
 * The task frames are code objects made by etwtrace.asynciotasks (one per
 * name, registered like any function), which also finds the task and the
 * tasks awaiting it.  What it says is kept per coroutine, checked against
 * the task's name at each step, and asked again now and then for the
 * awaiting tasks, which can change; a coroutine's entry goes with it. */
#ifndef ETWTRACE_TASKS_H
#define ETWTRACE_TASKS_H

#include "compat.h"
#include "events.h"
#include "functions.h"

/* Task frames of a step: the task and up to this many minus one above. */
#define ETW_TASK_CHAIN_MAX 8

typedef struct {
    PyObject *coroutine;                    /* the step's (borrowed) */
    uint64_t waits_hash;                    /* where the task last waited */
    uint32_t task;                          /* the task's number */
    uint32_t n;
    EtwFunction *chain[ETW_TASK_CHAIN_MAX]; /* outermost first */
} EtwTaskStep;

typedef PyObject *(*EtwTrampolineFunc)(PyThreadState *, EtwFrame *, int, EtwEvalFunc);

#ifdef ETW_HAVE_TASKS

/* Whether the evaluation of coroutine frame `frame` that thread `t`
 * (outside any step) is about to begin is a step of an asyncio task; if so
 * fills `step`, marks the thread and writes PythonTask resume. */
int etw_task_step_begin(EtwThread *t, EtwFrame *frame, EtwTaskStep *step);

/* After the step's evaluation returned: PythonTask suspend if the task
 * waits, and the thread is outside any step again. */
void etw_task_step_end(EtwThread *t, const EtwTaskStep *step);

/* Stack mode: evaluates the step's frame through the trampolines of its
 * task frames, then its own `trampoline` (NULL: none), then `eval`. */
PyObject *etw_task_step_eval(PyThreadState *ts, EtwFrame *frame, int throwflag,
                             const EtwTaskStep *step, void *trampoline, EtwEvalFunc eval);

/* Inside a step, around each resumable frame the tracer follows. */
static inline void
etw_task_frame_enter(EtwThread *t, uint32_t id)
{
    if (t->task_path_n < ETW_TASK_PATH_MAX) {
        t->task_path[t->task_path_n] = id;
    }
    t->task_path_n++;
    t->task_leaf = 1;
}

/* `coroutine`: the frame's owner, taken before it ran (NULL: the frame is
 * a call that makes a coroutine, not one of its steps). */
static inline void
etw_task_frame_exit(EtwThread *t, PyObject *coroutine)
{
    if (t->task_path_n == 0) {
        return;
    }
    if (t->task_leaf && coroutine != NULL && etw_coroutine_suspended(coroutine)) {
        /* The innermost frame that waits, with the frames above it: where
         * the step waits, unless it enters another before it ends. */
        uint32_t n = t->task_path_n < ETW_TASK_PATH_MAX ? t->task_path_n : ETW_TASK_PATH_MAX;
        memcpy(t->task_waits, t->task_path, n * sizeof(uint32_t));
        t->task_waits_n = n;
        t->task_leaf = 0;
    }
    t->task_path_n--;
}

#endif

/* Drops what is kept per coroutine (at disable: the module it asks may go). */
void etw_tasks_clear(void);

#endif

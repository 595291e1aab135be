/* asyncio tasks.  See tasks.h.
 *
 * What etwtrace.asynciotasks said of each coroutine is kept in an
 * open-addressing table keyed by the coroutine's address.  The entry holds
 * a weak reference to the coroutine whose callback removes the entry, so
 * an address never names an entry of a coroutine that is gone, and a weak
 * reference to the task, so a task is never kept alive.  The table is
 * touched holding `lock` (free-threaded builds; the GIL elsewhere). */
#include "tasks.h"

#include "pointer_slot.h"

#ifdef ETW_HAVE_TASKS

#include <stdlib.h>
#include <string.h>

typedef struct {
    PyObject *coroutine;     /* key, borrowed; NULL: empty slot */
    PyObject *coroutine_ref; /* its weak reference, whose callback evicts */
    PyObject *task_ref;      /* weak reference to the task; NULL: no task's */
    PyObject *name;          /* the task's name the frames were made for */
    uint32_t task;           /* the task's number */
    uint32_t steps;
    /* Where the task last waited (a hash of its suspend's chain) and in
     * which session: a suspend at the same place leaves its chain out. */
    uint64_t waits_hash;
    uint32_t waits_epoch;
    uint32_t n;
    PyObject *codes[ETW_TASK_CHAIN_MAX];   /* task frames, outermost first */
} Entry;

static struct {
    Entry *slots;
    size_t capacity;          /* a power of two, or 0 */
    size_t count;
    uint32_t last_task;
    /* etwtrace.asynciotasks, once asyncio is in use (atomic), and what
     * is asked of it: set once (init_lock), kept for the process's life. */
    PyObject *helper;
    PyObject *asyncio_name, *get_name, *describe, *chain;
    int failed;               /* the helper could not be used: stop asking (atomic) */
} tasks;

static EtwLock lock = ETW_LOCK_INIT;
/* Taken to set up the helper; never with `lock`. */
static EtwLock init_lock = ETW_LOCK_INIT;

static Entry *
find(const PyObject *coroutine)
{
    if (tasks.capacity == 0) {
        return NULL;
    }
    for (size_t i = etw_pointer_slot(coroutine, tasks.capacity);; i = (i + 1) & (tasks.capacity - 1)) {
        Entry *e = &tasks.slots[i];
        if (e->coroutine == coroutine || e->coroutine == NULL) {
            return e;
        }
    }
}

static void
clear_entry(Entry *e)
{
    Py_CLEAR(e->coroutine_ref);
    Py_CLEAR(e->task_ref);
    Py_CLEAR(e->name);
    for (uint32_t i = 0; i < e->n; i++) {
        Py_CLEAR(e->codes[i]);
    }
    memset(e, 0, sizeof(*e));
}

/* Removes the entry of `coroutine`, moving later entries of its probe run
 * back so lookups still find them (linear probing has no tombstones). */
static void
evict(const PyObject *coroutine)
{
    Entry *e = find(coroutine);
    if (e == NULL || e->coroutine == NULL) {
        return;
    }
    clear_entry(e);
    tasks.count--;
    size_t cap = tasks.capacity;
    size_t hole = (size_t)(e - tasks.slots);
    for (size_t i = (hole + 1) & (cap - 1); tasks.slots[i].coroutine != NULL; i = (i + 1) & (cap - 1)) {
        size_t home = etw_pointer_slot(tasks.slots[i].coroutine, cap);
        /* Moves back unless its home lies cyclically in (hole, i]. */
        if ((i > hole && (home <= hole || home > i)) || (i < hole && home <= hole && home > i)) {
            tasks.slots[hole] = tasks.slots[i];
            memset(&tasks.slots[i], 0, sizeof(Entry));
            hole = i;
        }
    }
}

/* The weak reference's callback: self is the coroutine's address. */
static PyObject *
coroutine_gone(PyObject *key, PyObject *ref)
{
    (void)ref;
    void *coroutine = PyLong_AsVoidPtr(key);
    if (coroutine == NULL && PyErr_Occurred()) {
        return NULL;
    }
    etw_lock(&lock);
    evict(coroutine);
    etw_unlock(&lock);
    Py_RETURN_NONE;
}

static PyMethodDef coroutine_gone_def = {"_etwtrace_coroutine_gone", coroutine_gone, METH_O, NULL};

/* Room for one more entry, growing the table; 0 or -1 (out of memory). */
static int
make_room(void)
{
    if ((tasks.count + 1) * 2 <= tasks.capacity) {
        return 0;
    }
    size_t cap = tasks.capacity ? tasks.capacity * 2 : 256;
    Entry *old = tasks.slots;
    size_t old_cap = tasks.capacity;
    Entry *fresh = calloc(cap, sizeof(Entry));
    if (fresh == NULL) {
        return -1;
    }
    tasks.slots = fresh;
    tasks.capacity = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].coroutine != NULL) {
            *find(old[i].coroutine) = old[i];
        }
    }
    free(old);
    return 0;
}

/* Sets the entry's task frames from `codes`, a tuple of code objects
 * (outermost first), and the name they were made for. */
static void
set_codes(Entry *e, PyObject *codes, PyObject *name)
{
    for (uint32_t i = 0; i < e->n; i++) {
        Py_CLEAR(e->codes[i]);
    }
    e->n = 0;
    Py_ssize_t n = PyTuple_Check(codes) ? PyTuple_GET_SIZE(codes) : 0;
    /* The innermost frames (the task itself) are kept when there are more. */
    Py_ssize_t first = n > ETW_TASK_CHAIN_MAX ? n - ETW_TASK_CHAIN_MAX : 0;
    for (Py_ssize_t i = first; i < n; i++) {
        PyObject *code = PyTuple_GET_ITEM(codes, i);
        if (PyCode_Check(code)) {
            e->codes[e->n++] = Py_NewRef(code);
        }
    }
    Py_XSETREF(e->name, Py_XNewRef(name));
}

static int
failed(void)
{
    return __atomic_load_n(&tasks.failed, __ATOMIC_RELAXED);
}

/* Asks the helper; a failure is said once and stops task attribution. */
static PyObject *
ask(PyObject *function, PyObject *arg)
{
    PyObject *result = PyObject_CallOneArg(function, arg);
    if (result == NULL) {
        PyErr_WriteUnraisable(function);
        __atomic_store_n(&tasks.failed, 1, __ATOMIC_RELAXED);
    }
    return result;
}

/* The helper, once asyncio is imported; NULL before (or if it failed).
 * Set once for the process's life and published last: its functions are
 * read by any thread after it. */
static PyObject *
helper(void)
{
    PyObject *module = __atomic_load_n(&tasks.helper, __ATOMIC_ACQUIRE);
    if (module != NULL || failed()) {
        return module;
    }
    etw_lock(&init_lock);
    module = tasks.helper;
    if (module == NULL && tasks.asyncio_name == NULL) {
        tasks.asyncio_name = PyUnicode_InternFromString("asyncio");
        tasks.get_name = PyUnicode_InternFromString("get_name");
        if (tasks.asyncio_name == NULL || tasks.get_name == NULL) {
            PyErr_Clear();
            Py_CLEAR(tasks.asyncio_name);
            Py_CLEAR(tasks.get_name);
            __atomic_store_n(&tasks.failed, 1, __ATOMIC_RELAXED);
        }
    }
    PyObject *asyncio = NULL;
    if (module == NULL && !failed()) {
        asyncio = PyImport_GetModule(tasks.asyncio_name);
        if (asyncio == NULL) {
            PyErr_Clear();      /* a coroutine, but no asyncio (yet) */
        }
    }
    if (asyncio != NULL) {
        Py_DECREF(asyncio);
        /* Importing may let another thread in (the GIL is released for
         * the import lock): whoever publishes first wins. */
        PyObject *imported = PyImport_ImportModule("etwtrace.asynciotasks");
        PyObject *describe = imported ? PyObject_GetAttrString(imported, "describe") : NULL;
        PyObject *chain = imported ? PyObject_GetAttrString(imported, "chain") : NULL;
        if (describe == NULL || chain == NULL) {
            PyErr_WriteUnraisable(NULL);
            __atomic_store_n(&tasks.failed, 1, __ATOMIC_RELAXED);
            Py_XDECREF(imported);
            Py_XDECREF(describe);
            Py_XDECREF(chain);
        }
        else if (tasks.helper == NULL) {
            tasks.describe = describe;
            tasks.chain = chain;
            __atomic_store_n(&tasks.helper, imported, __ATOMIC_RELEASE);
            module = imported;
        }
        else {
            Py_DECREF(imported);
            Py_DECREF(describe);
            Py_DECREF(chain);
            module = tasks.helper;
        }
    }
    etw_unlock(&init_lock);
    return module;
}

/* Adds the entry of `coroutine` from the helper's word on it: (task,
 * name, codes), or None (no task runs it).  Python is called outside
 * `lock`: it may collect a coroutine, whose callback takes the lock. */
static void
add_entry(PyObject *coroutine)
{
    PyObject *said = ask(tasks.describe, coroutine);
    if (said == NULL) {
        return;
    }
    PyObject *key = NULL, *callback = NULL, *ref = NULL, *task_ref = NULL;
    if (said != Py_None && !(PyTuple_Check(said) && PyTuple_GET_SIZE(said) == 3)) {
        goto done;
    }
    key = PyLong_FromVoidPtr(coroutine);
    callback = key ? PyCFunction_New(&coroutine_gone_def, key) : NULL;
    ref = callback ? PyWeakref_NewRef(coroutine, callback) : NULL;
    if (ref != NULL && said != Py_None) {
        task_ref = PyWeakref_NewRef(PyTuple_GET_ITEM(said, 0), NULL);
    }
    if (ref == NULL || (said != Py_None && task_ref == NULL)) {
        PyErr_Clear();
        Py_XDECREF(ref);
        Py_XDECREF(task_ref);
        goto done;
    }
    etw_lock(&lock);
    Entry *e = find(coroutine);
    if ((e != NULL && e->coroutine != NULL) || make_room() < 0) {
        etw_unlock(&lock);     /* another thread added it first, or no memory */
        Py_DECREF(ref);
        Py_XDECREF(task_ref);
        goto done;
    }
    e = find(coroutine);
    e->coroutine = coroutine;
    e->coroutine_ref = ref;
    tasks.count++;
    if (said != Py_None) {
        e->task_ref = task_ref;
        e->task = ++tasks.last_task;
        set_codes(e, PyTuple_GET_ITEM(said, 2), PyTuple_GET_ITEM(said, 1));
    }
    etw_unlock(&lock);
done:
    Py_XDECREF(key);
    Py_XDECREF(callback);
    Py_DECREF(said);
}

/* Asking the helper costs a few microseconds, and a step can cost less
 * than two, so a task is checked at some of its steps only: its name at
 * each of its first 16 steps (a task is renamed early, if at all), then at
 * every 16th; who awaits it, if no task did yet, at steps 2, 16 and 256
 * (it was made, then awaited); every task's at every 4096th step. */
static int
name_due(uint32_t steps)
{
    return steps <= 16 || (steps & 15) == 0;
}

static int
chain_due(uint32_t steps, uint32_t n)
{
    return (n <= 1 && (steps == 2 || steps == 16 || steps == 256)) || (steps & 4095) == 0;
}

/* Brings a task's frames up to date when its name changed or its chain is
 * due to be asked again. */
static void
refresh(PyObject *coroutine, PyObject *task_ref, PyObject *known_name, int chain)
{
    PyObject *task = NULL;
    if (etw_weakref_get(task_ref, &task) <= 0) {
        PyErr_Clear();
        return;
    }
    PyObject *name = PyObject_CallMethodNoArgs(task, tasks.get_name);
    if (name == NULL) {
        PyErr_Clear();
    }
    if (name != NULL && (name != known_name || chain)) {
        PyObject *codes = ask(tasks.chain, task);
        if (codes != NULL) {
            etw_lock(&lock);
            Entry *e = find(coroutine);
            if (e != NULL && e->coroutine != NULL) {
                set_codes(e, codes, name);
            }
            etw_unlock(&lock);
            Py_DECREF(codes);
        }
    }
    Py_XDECREF(name);
    Py_DECREF(task);
}

/* What the entry of `coroutine` says: 0 if it has none, else 1 with its
 * task's number, its task frames (borrowed: the helper keeps every one
 * it made) and, when the task is due a check (`refs` given), new
 * references to what refresh needs. */
static int
read_entry(PyObject *coroutine, uint32_t *task, PyCodeObject **codes, uint32_t *n,
           PyObject **task_ref, PyObject **name, int *chain, uint64_t *waits_hash)
{
    etw_lock(&lock);
    Entry *e = find(coroutine);
    int known = e != NULL && e->coroutine != NULL;
    if (known) {
        *task = e->task;
        *waits_hash = e->waits_epoch == etw_current_epoch() ? e->waits_hash : 0;
        *n = e->n;
        for (uint32_t i = 0; i < e->n; i++) {
            codes[i] = (PyCodeObject *)e->codes[i];
        }
        if (task_ref != NULL && e->task != 0) {
            uint32_t steps = ++e->steps;
            *chain = chain_due(steps, e->n);
            if (*chain || name_due(steps)) {
                *task_ref = Py_NewRef(e->task_ref);
                *name = Py_XNewRef(e->name);
            }
        }
    }
    etw_unlock(&lock);
    return known;
}

int
etw_task_step_begin(EtwThread *t, EtwFrame *frame, EtwTaskStep *step)
{
    PyObject *coroutine = etw_frame_coroutine(frame);
    if (coroutine == NULL || failed()) {
        return 0;
    }
    PyCodeObject *codes[ETW_TASK_CHAIN_MAX];
    PyObject *task_ref = NULL, *name = NULL;
    uint32_t task = 0, n = 0;
    int chain = 0;
    uint64_t waits_hash = 0;
    int known = read_entry(coroutine, &task, codes, &n, &task_ref, &name, &chain, &waits_hash);
    if (known && task_ref == NULL && task != 0) {
        /* The common case: a task's step, nothing due. */
    }
    else {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        if (!known) {
            if (helper() != NULL) {
                add_entry(coroutine);
            }
        }
        else if (task_ref != NULL) {
            refresh(coroutine, task_ref, name, chain);
            Py_DECREF(task_ref);
            Py_XDECREF(name);
        }
        n = 0;
        read_entry(coroutine, &task, codes, &n, NULL, NULL, NULL, &waits_hash);
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    if (task == 0 || failed()) {
        return 0;
    }
    step->coroutine = coroutine;
    step->waits_hash = waits_hash;
    step->task = task;
    step->n = 0;
    for (uint32_t i = 0; i < n; i++) {
        EtwFunction *f = etw_code_index_get(codes[i]);
        if (f == NULL || __atomic_load_n(&f->epoch, __ATOMIC_ACQUIRE) != etw_current_epoch() ||
            f->trampoline == NULL) {
            PyObject *exc_type, *exc_value, *exc_tb;
            PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
            f = etw_function_for_code(codes[i], f, t, NULL, 1);
            PyErr_Restore(exc_type, exc_value, exc_tb);
        }
        if (f != NULL) {
            step->chain[step->n++] = f;
        }
    }
    t->task = task;
    t->task_path_n = t->task_waits_n = 0;
    t->task_leaf = 0;
    etw_emit_task_resume(t, task);
    return 1;
}

/* FNV-1a over the chain's FunctionIDs; never 0 (0: no hash yet). */
static uint64_t
hash_of(void *const *ids, uint32_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint32_t i = 0; i < n; i++) {
        h = (h ^ (uint64_t)(uintptr_t)ids[i]) * 0x100000001b3ull;
    }
    return h ? h : 1;
}

void
etw_task_step_end(EtwThread *t, const EtwTaskStep *step)
{
    /* The task holds its coroutine through the step. */
    if (etw_coroutine_suspended(step->coroutine)) {
        void *ids[ETW_TASK_CHAIN_MAX + ETW_TASK_PATH_MAX];
        uint32_t n = 0;
        for (uint32_t i = 0; i < step->n; i++) {
            ids[n++] = (void *)(uintptr_t)step->chain[i]->id;
        }
        for (uint32_t i = 0; i < t->task_waits_n; i++) {
            ids[n++] = (void *)(uintptr_t)t->task_waits[i];
        }
        uint64_t h = hash_of(ids, n);
        if (h == step->waits_hash) {
            etw_emit_task_suspend(t, step->task, ids, 0);   /* where it last waited */
        }
        else {
            etw_emit_task_suspend(t, step->task, ids, n);
            etw_lock(&lock);
            Entry *e = find(step->coroutine);
            if (e != NULL && e->coroutine != NULL) {
                e->waits_hash = h;
                e->waits_epoch = etw_current_epoch();
            }
            etw_unlock(&lock);
        }
    }
    t->task = 0;
    t->task_path_n = t->task_waits_n = 0;
}

/* The evaluator each task frame's trampoline calls: the next trampoline,
 * and after the last one the frame's own. */
static PyObject *
next_in_chain(PyThreadState *ts, EtwFrame *frame, int throwflag)
{
    EtwThread *t = etw_tls_thread;
    uint32_t i = t->task_chain_next++;
    if (i < t->task_chain_n) {
        return ((EtwTrampolineFunc)t->task_chain[i])(ts, frame, throwflag, next_in_chain);
    }
    EtwEvalFunc eval = (EtwEvalFunc)t->task_target_eval;
    if (t->task_target != NULL) {
        return ((EtwTrampolineFunc)t->task_target)(ts, frame, throwflag, eval);
    }
    return eval(ts, frame, throwflag);
}

PyObject *
etw_task_step_eval(PyThreadState *ts, EtwFrame *frame, int throwflag, const EtwTaskStep *step,
                   void *trampoline, EtwEvalFunc eval)
{
    void *chain[ETW_TASK_CHAIN_MAX];
    uint32_t n = 0;
    for (uint32_t i = 0; i < step->n; i++) {
        if (step->chain[i]->trampoline != NULL) {
            chain[n++] = step->chain[i]->trampoline;
        }
    }
    /* The chain is walked before the frame runs any Python, so one
     * thread's fields hold it; the stack keeps it for that time. */
    EtwThread *t = etw_tls_thread;
    t->task_chain = chain;
    t->task_chain_n = n;
    t->task_chain_next = 0;
    t->task_target = trampoline;
    t->task_target_eval = (void *)eval;
    PyObject *result = next_in_chain(ts, frame, throwflag);
    t->task_chain = NULL;
    return result;
}

void
etw_tasks_clear(void)
{
    etw_lock(&lock);
    Entry *slots = tasks.slots;
    size_t cap = tasks.capacity;
    tasks.slots = NULL;
    tasks.capacity = tasks.count = 0;
    etw_unlock(&lock);
    /* The helper is kept: a step still running on another thread may be
     * calling it, and a later session asks it again. */
    __atomic_store_n(&tasks.failed, 0, __ATOMIC_RELAXED);
    for (size_t i = 0; i < cap; i++) {
        if (slots[i].coroutine != NULL) {
            clear_entry(&slots[i]);
        }
    }
    free(slots);
}

#else

void
etw_tasks_clear(void)
{
}

#endif
